"""A Little Is Enough: hide just inside the honest updates' spread."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from torchchain.attacks.base import Attack, check_honest, check_update
from torchchain.attacks.kernels import alie_z_max, coordinate_std
from torchchain.errors import ConfigError

__all__ = ["ALIE"]


class ALIE(Attack):
    """Send ``mu + z * sigma``, a small coordinate-wise shift that robust rules cannot tell apart.

    Baruch, Baruch and Goldberg (2019), "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS. ``mu`` and ``sigma`` are the coordinate-wise mean and
    population standard deviation (dividing by ``k``, as the authors' code does) of the
    round's ``k`` honest updates. Omniscient: needs the round's honest updates.

    The sign is the paper's Algorithm 1, ``(p_mal)_j = mu_j + z_max * sigma_j``, applied to
    updates (deltas of the parameters). Implementations that act on gradients write
    ``mu - z * sigma``; a delta is a negative multiple of a gradient, so both move the same way.

    With ``z=None``, :meth:`setup` computes the paper's ``z_max`` for ``n`` clients of which
    ``f`` are malicious: ``s = floor(n/2 + 1) - f`` and ``z_max = Phi^{-1}((n - s) / n)`` (see
    :func:`~torchchain.attacks.kernels.alie_z_max`).

    Args:
        z: How many standard deviations to shift each coordinate by; any finite number, or
            ``None`` for the paper's ``z_max``. Default ``None``.
    """

    name = "alie"
    omniscient = True

    def __init__(self, *, z: float | None = None) -> None:
        super().__init__()
        if z is not None and (isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z)):
            raise ConfigError(f"alie attack: z must be a finite number or null (for the paper's z_max), got {z!r}")
        self.z = None if z is None else float(z)
        self._z_used: float | None = self.z

    def setup(self, *, num_clients: int, num_byzantine: int) -> None:
        """Record ``n`` and ``f`` and, when ``z`` is ``None``, compute ``z_max`` from them.

        Raises:
            ConfigError: As :meth:`Attack.setup`, or when ``z`` is ``None`` and ``z_max`` is
                undefined for these counts (set ``z`` explicitly then).
        """
        super().setup(num_clients=num_clients, num_byzantine=num_byzantine)
        if self.z is None:
            self._z_used = alie_z_max(num_clients, num_byzantine)

    @property
    def z_used(self) -> float:
        """The ``z`` the attack applies: the configured one, else ``z_max`` once set up."""
        if self._z_used is None:
            raise RuntimeError("alie attack with z=None: call setup(num_clients=..., num_byzantine=...) first")
        return self._z_used

    def poison_update(self, update: Tensor, *, honest: Tensor | None, generator: torch.Generator) -> Tensor:
        """Return ``honest.mean(0) + z * honest.std(0, correction=0)`` (float64)."""
        honest = check_honest(self, check_update(update), honest)
        return honest.mean(dim=0) + self.z_used * coordinate_std(honest, unbiased=False)

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": "alie", "z": <configured>, "z_used": <applied, None before setup>}``."""
        return {"name": self.name, "z": self.z, "z_used": self._z_used}
