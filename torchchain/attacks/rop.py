"""Relocated orthogonal perturbation: sit on last round's aggregate, push sideways."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from torchchain.attacks.base import Attack, check_honest, check_update
from torchchain.attacks.kernels import rop_z_max, rotated_orthogonal_direction
from torchchain.errors import ConfigError

__all__ = ["ROP"]


class ROP(Attack):
    """Send a perturbation orthogonal to the reference, placed on the previous round's aggregate.

    Ozfatura, Ozfatura, Kupcu and Gunduz (2024), "Byzantines Can Also Learn From History: Fall of
    Centered Clipping in Federated Learning", IEEE Transactions on Information Forensics and
    Security 19, pp. 2010-2022 (arXiv:2208.09894). Centered clipping starts every round from the
    previous aggregate ``m`` and clips each update's distance from it, so an update placed on
    ``m`` and displaced sideways is never clipped away and moves the result where the honest
    updates do not pull. With ``mu`` the mean of the round's ``k`` honest updates and ``m`` the
    previous round's public aggregate (see :meth:`observe_aggregate`; zero before the first
    one is observed), every malicious client sends::

        location  = pi * m + (1 - pi) * mu                    # relocation
        reference = lam * m + (1 - lam) * mu                  # mu alone before any aggregate
        p         = unit vector at `angle` degrees from reference
        update    = location + z * p

    ``p`` is :func:`~torchchain.attacks.kernels.rotated_orthogonal_direction`: the part of the
    all ``-1`` vector orthogonal to ``reference``, rotated towards ``reference`` by
    ``90 - angle`` degrees; at ``angle = 90`` (the default) ``update - location`` is orthogonal
    to ``reference`` and has norm exactly ``z``.

    What is implemented is the authors' released code (github.com/CRYPTO-KU/FL-Byzantine-Library,
    ``attacks/rop.py``), as it maps onto updates rather than gradients: same formulas, the seed
    ``+1`` of the gradient convention becoming ``-1`` (an update is a negative multiple of a
    gradient). The defaults ``pi = 1`` (attack located on the aggregate), ``lam = 0.9`` and
    ``angle = 90`` are the ones of that code's parameter file at the paper's release. The
    perturbation norm ``z`` is not tied to the spread of the updates: the code derives it from
    ``n`` and ``f`` (:func:`~torchchain.attacks.kernels.rop_z_max`, selected here with
    ``z=None``), but that rule gives ``0`` for small federations such as ``n=5, f=1`` (the attack
    then only replays the previous aggregate), so the default here is ``z = 1.0``, the default
    clipping radius ``tau`` of :class:`~torchchain.strategies.CenteredClipping`. Set ``z`` on the
    scale of the run's updates and of ``tau``. Omniscient: needs the round's honest updates.

    State: the last aggregate observed, ``{"previous": (d,) float64}`` (``{}`` before the first),
    saved in run checkpoints so a resumed run attacks as an uninterrupted one does.

    Args:
        z: The perturbation's norm: a finite number ``>= 0``, or ``None`` for the rule of the
            authors' code computed in :meth:`setup`. Default ``1.0``.
        angle: Degrees between the perturbation and the reference, in ``[0, 360]``; ``90``
            (default) is orthogonal, ``180`` points against the reference.
        lam: Weight ``lambda`` of the previous aggregate in the reference, in ``[0, 1]``;
            default ``0.9``.
        pi: Weight ``pi`` of the previous aggregate in the location, in ``[0, 1]``; ``1``
            (default) relocates fully onto it, ``0`` attacks around the honest mean.

    Raises:
        ConfigError: If an argument is out of its range.
    """

    name = "rop"
    omniscient = True

    def __init__(self, *, z: float | None = 1.0, angle: float = 90.0, lam: float = 0.9, pi: float = 1.0) -> None:
        super().__init__()
        if z is not None and (not _is_number(z) or z < 0):
            raise ConfigError(f"rop attack: z must be a finite number >= 0 or null (for the authors' rule), got {z!r}")
        self.z = None if z is None else float(z)
        self.angle = _in_range("angle", angle, 0.0, 360.0)
        self.lam = _in_range("lam", lam, 0.0, 1.0)
        self.pi = _in_range("pi", pi, 0.0, 1.0)
        self._z_used: float | None = self.z
        self._previous: Tensor | None = None

    def setup(self, *, num_clients: int, num_byzantine: int) -> None:
        """Record ``n`` and ``f`` and, when ``z`` is ``None``, compute the authors' ``z`` from them.

        Raises:
            ConfigError: As :meth:`Attack.setup`, or when ``z`` is ``None`` and the rule is
                undefined for these counts (set ``z`` explicitly then).
        """
        super().setup(num_clients=num_clients, num_byzantine=num_byzantine)
        if self.z is None:
            self._z_used = rop_z_max(num_clients, num_byzantine)

    @property
    def z_used(self) -> float:
        """The norm the attack applies: the configured ``z``, else the authors' rule once set up."""
        if self._z_used is None:
            raise RuntimeError("rop attack with z=None: call setup(num_clients=..., num_byzantine=...) first")
        return self._z_used

    @property
    def previous(self) -> Tensor | None:
        """The last aggregate observed (a copy), or ``None`` before the first."""
        return None if self._previous is None else self._previous.clone()

    def observe_aggregate(self, update: Tensor) -> None:
        """Keep a float64 copy of the round's aggregate: next round's ``m``."""
        self._previous = check_update(update).detach().cpu().clone()

    def poison_update(self, update: Tensor, *, honest: Tensor | None, generator: torch.Generator) -> Tensor:
        """Return ``location + z * p`` as the class docstring defines them (float64).

        Raises:
            ValueError: If the inputs are malformed, or the stored aggregate has another length
                than the updates.
        """
        honest = check_honest(self, check_update(update), honest)
        mean = honest.mean(dim=0)
        if self._previous is None:
            previous, reference = torch.zeros_like(mean), mean
        else:
            previous = self._previous
            if previous.shape != mean.shape:
                raise ValueError(
                    f"rop attack: the stored aggregate has {previous.shape[0]} coordinates, the updates "
                    f"{mean.shape[0]}; load a matching state or start a fresh attack"
                )
            reference = self.lam * previous + (1.0 - self.lam) * mean
        location = self.pi * previous + (1.0 - self.pi) * mean
        return location + self.z_used * rotated_orthogonal_direction(reference, self.angle)

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": "rop", "z", "z_used", "angle", "lam", "pi"}`` (``z_used`` is ``None``
        before setup when ``z`` is)."""
        return {
            "name": self.name, "z": self.z, "z_used": self._z_used, "angle": self.angle, "lam": self.lam, "pi": self.pi,
        }

    def state_dict(self) -> dict[str, Any]:
        """``{"previous": (d,) float64}`` once an aggregate was observed, ``{}`` before."""
        return {} if self._previous is None else {"previous": self._previous.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; ``{}`` forgets the stored aggregate.

        Raises:
            ConfigError: If ``state`` is not a mapping, holds other keys, or ``previous`` is not
                a finite 1-D floating tensor.
        """
        if not isinstance(state, Mapping):
            raise ConfigError(f"rop attack: state must be a mapping, got {type(state).__name__}")
        unexpected = sorted(str(key) for key in state if key != "previous")
        if unexpected:
            raise ConfigError(
                f"rop attack: state holds unexpected keys {unexpected} (it keeps only 'previous'); "
                "resume with the attack the checkpoint was written with"
            )
        if "previous" not in state:
            self._previous = None
            return
        previous = state["previous"]
        if not isinstance(previous, Tensor) or previous.ndim != 1 or not previous.is_floating_point():
            raise ConfigError("rop attack: state 'previous' must be a 1-D floating tensor")
        if not bool(torch.isfinite(previous).all()):
            raise ConfigError("rop attack: state 'previous' must be finite")
        self._previous = previous.detach().cpu().to(torch.float64).clone()


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _in_range(key: str, value: object, low: float, high: float) -> float:
    if not _is_number(value) or not low <= value <= high:  # type: ignore[operator]
        raise ConfigError(f"rop attack: {key} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)  # type: ignore[arg-type]
