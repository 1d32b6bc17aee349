"""Min-Max: the furthest push along a direction that stays within the honest updates' diameter."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchchain.attacks.base import Attack, check_honest, check_positive, check_update
from torchchain.attacks.kernels import PERTURBATIONS, min_max_gamma, perturbation_direction
from torchchain.errors import ConfigError

__all__ = ["MinMax"]


class MinMax(Attack):
    """Send ``mu + gamma * p`` with the largest ``gamma`` whose distance to every honest update stays in range.

    The AGR-agnostic Min-Max attack of Shejwalkar and Houmansadr (2021), "Manipulating the
    Byzantine: Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS.
    ``mu`` is the coordinate-wise mean of the round's honest updates and ``p`` the
    perturbation direction (see :func:`~torchchain.attacks.kernels.perturbation_direction`).
    ``gamma`` is the largest value the authors' halving search finds with

        ``max_i ||mu + gamma * p - x_i|| <= max_{i,j} ||x_i - x_j||``

    over the honest updates ``x_i``: the malicious update is no further from any honest one
    than the two most distant honest updates are from each other. The search tries
    ``gamma`` in ``[0, 2 * gamma_init)``; ``gamma = 0`` (sending ``mu``) always satisfies the
    constraint. Omniscient: needs the round's honest updates.

    Args:
        perturbation: ``"unit_vec"`` (``-mu / ||mu||``), ``"std"`` (``-sigma``, coordinate-wise
            sample standard deviation) or ``"sign"`` (``-sign(mu)``). Default ``"unit_vec"``.
        gamma_init: The first ``gamma`` tried, > 0. Default ``10.0``, the value in most of the
            authors' released notebooks (some use 30 or 50); raise it when updates are large
            enough that the search ends near its upper limit ``2 * gamma_init``.
        tau: The search stops when two tries are within ``tau``, > 0. Default ``1e-5``, as in
            the authors' code.
    """

    name = "minmax"
    omniscient = True

    def __init__(self, *, perturbation: str = "unit_vec", gamma_init: float = 10.0, tau: float = 1e-5) -> None:
        super().__init__()
        if perturbation not in PERTURBATIONS:
            raise ConfigError(f"{self.name} attack: perturbation must be one of {list(PERTURBATIONS)}, got {perturbation!r}")
        self.perturbation = perturbation
        self.gamma_init = check_positive(self.name, "gamma_init", gamma_init)
        self.tau = check_positive(self.name, "tau", tau)
        # The last honest updates and the vector sent against them: every malicious client of a
        # round sends the same vector, and the search (all pairwise distances, then one pass per
        # try) is the round's largest cost, so it runs once per round.
        self._round: tuple[Tensor, Tensor] | None = None

    def poison_update(self, update: Tensor, *, honest: Tensor | None, generator: torch.Generator) -> Tensor:
        """Return ``mu + gamma * p`` for the ``gamma`` the search finds (float64); later calls
        with the same honest updates return the same vector without searching again."""
        honest = check_honest(self, check_update(update), honest)
        if self._round is not None and torch.equal(self._round[0], honest):
            return self._round[1].clone()
        direction = perturbation_direction(honest, self.perturbation)
        gamma = self.search_gamma(honest, direction)
        poisoned = honest.mean(dim=0) + gamma * direction
        self._round = (honest.clone(), poisoned)
        return poisoned.clone()

    def search_gamma(self, honest: Tensor, direction: Tensor) -> float:
        """The largest ``gamma`` meeting this attack's constraint (Min-Max's: the maximum distance)."""
        return min_max_gamma(honest, direction, gamma_init=self.gamma_init, tau=self.tau)

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": ..., "perturbation": ..., "gamma_init": ..., "tau": ...}``."""
        return {"name": self.name, "perturbation": self.perturbation, "gamma_init": self.gamma_init, "tau": self.tau}
