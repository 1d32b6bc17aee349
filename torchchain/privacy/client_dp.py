"""Client-level differential privacy: clip a client's whole update, then add Gaussian noise.

This is the per-update step of DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning
Differentially Private Recurrent Language Models", ICLR): the update ``Δ`` (every tensor
together, as one vector) is scaled down to L2 norm at most ``C``, so that one client's entire
data set can move it by at most ``C``, and then every coordinate receives independent noise
``N(0, (σC)²)``. With sensitivity ``C`` and noise standard deviation ``σC`` this is the
Gaussian mechanism with noise multiplier ``σ``; :mod:`torchchain.privacy.accountant` turns a
sequence of such releases into an ``(ε, δ)`` guarantee.

Here the noise is added by each client to its own update before it is signed and published (the
ledger shows every update, attributed to its client), not once by a trusted server to the sum as
in the paper. The guarantee therefore holds for each published update on its own, and the
aggregate, a function of published updates, inherits it.

Where the noise comes from matters: it must be drawn from randomness only the client knows.
Noise drawn from a public seed (the experiment seed, the round number, a block hash) protects
nothing, because an auditor can regenerate exactly the same noise and subtract it from the
published update, recovering the clipped update unprotected. Pass a generator seeded from the
client's own secret (``os.urandom``, or a secret key), never one an outsider could rebuild.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from torchchain.errors import ConfigError, TorchchainError

__all__ = ["ClientDP", "ClipReport", "NonFiniteUpdateError", "clip_and_noise"]

#: The largest accepted noise multiplier (the accountant's limit, too).
MAX_NOISE_MULTIPLIER = 1e6


class NonFiniteUpdateError(TorchchainError, ValueError):
    """The update to privatise holds NaN or infinite values; clipping cannot bound it.

    Attributes:
        tensor: The name of the first offending tensor.
    """

    def __init__(self, tensor: str) -> None:
        self.tensor = tensor
        super().__init__(f"tensor {tensor!r} holds NaN or infinite values; a non-finite update cannot be clipped")


@dataclass(frozen=True)
class ClipReport:
    """What clipping did to one update.

    Attributes:
        norm_before: The global L2 norm of the update before clipping (all tensors together).
        clipped: Whether the update was scaled down (``norm_before > clip``).
    """

    norm_before: float
    clipped: bool


def _check_clip(clip: object, key: str = "clip") -> float:
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
        raise ConfigError(f"{key} must be a finite number > 0 (the L2 bound on an update), got {clip!r}")
    return float(clip)


def _check_noise_multiplier(value: object, *, allow_zero: bool, key: str = "noise_multiplier") -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and value <= MAX_NOISE_MULTIPLIER
    if not ok:
        low = "[0" if allow_zero else "(0"
        raise ConfigError(
            f"{key} must be a number in {low}, {MAX_NOISE_MULTIPLIER:g}] (noise std = {key} × clip), got {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class ClientDP:
    """Client-level DP settings.

    Attributes:
        clip: ``C``, the bound on the L2 norm of a client's whole update; finite, > 0.
        noise_multiplier: ``σ``; each coordinate gets noise of standard deviation ``σC``.
            Must lie in ``(0, 1e6]``: a zero multiplier gives no privacy and the accountant
            would report ``ε = ∞``.

    Raises:
        ConfigError: If either value is out of range.
    """

    clip: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip", _check_clip(self.clip, "clip"))
        object.__setattr__(
            self, "noise_multiplier", _check_noise_multiplier(self.noise_multiplier, allow_zero=False)
        )

    def apply(
        self, update: Mapping[str, Tensor], *, generator: torch.Generator
    ) -> tuple[dict[str, Tensor], ClipReport]:
        """:func:`clip_and_noise` with these settings."""
        return clip_and_noise(update, clip=self.clip, noise_multiplier=self.noise_multiplier, generator=generator)


def clip_and_noise(
    update: Mapping[str, Tensor],
    *,
    clip: float,
    noise_multiplier: float,
    generator: torch.Generator,
) -> tuple[dict[str, Tensor], ClipReport]:
    """Clip ``update`` to global L2 norm ``clip``, then add ``N(0, (noise_multiplier·clip)²)`` per coordinate.

    The norm is taken over all tensors together, in float64. An update with norm above ``clip``
    is multiplied by ``clip / norm``; a smaller one is left as it is. Noise is drawn in float64
    on the CPU from ``generator``, tensor by tensor in the mapping's order, added to the clipped
    values, and the sum is cast back to each tensor's dtype and device, so the result does not
    depend on where the tensors live. The clipped norm is ``≤ clip`` up to the rounding of the
    tensors' own dtype (a relative ``1e-7`` for float32).

    Args:
        update: Named float tensors (the client's ``Δ``); not modified.
        clip: ``C > 0``, the L2 bound.
        noise_multiplier: ``σ ≥ 0``; ``0`` only clips (and protects nothing).
        generator: A CPU generator known only to this client. Noise from a public seed can be
            regenerated and subtracted by anyone, which undoes the protection.

    Returns:
        The privatised tensors (new tensors, same names, dtypes, shapes and devices) and a
        :class:`ClipReport`.

    Raises:
        ConfigError: If ``clip`` or ``noise_multiplier`` is out of range.
        TypeError: If a value is not a floating-point tensor, or ``generator`` is not a CPU generator.
        NonFiniteUpdateError: If a tensor holds NaN or infinite values.
    """
    clip = _check_clip(clip)
    sigma = _check_noise_multiplier(noise_multiplier, allow_zero=True)
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError("clip_and_noise needs a CPU torch.Generator (private to the client) for the noise")
    for name, value in update.items():
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"tensor {name!r} must be a floating-point tensor, got {kind}")
    peak = 0.0
    for name, value in update.items():
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteUpdateError(name)
        if value.numel():
            peak = max(peak, float(value.detach().abs().max().to(torch.float64)))
    total = 0.0
    if peak > 0:  # scaled by the largest entry so that squaring cannot overflow float64
        for value in update.values():
            total += float((value.detach().to(dtype=torch.float64) / peak).square().sum())
    norm = peak * math.sqrt(total)
    clipped = norm > clip
    scale = clip / norm if clipped else 1.0
    std = sigma * clip
    out: dict[str, Tensor] = {}
    for name, value in update.items():
        wide = value.detach().to(device="cpu", dtype=torch.float64) * scale
        if std > 0:
            wide = wide + torch.normal(0.0, std, size=tuple(value.shape), generator=generator, dtype=torch.float64)
        out[name] = wide.to(device=value.device, dtype=value.dtype)
    return out, ClipReport(norm_before=norm, clipped=clipped)
