"""Min-Sum: the furthest push along a direction whose total squared distance stays in range."""

from __future__ import annotations

from torch import Tensor

from torchchain.attacks.kernels import min_sum_gamma
from torchchain.attacks.minmax import MinMax

__all__ = ["MinSum"]


class MinSum(MinMax):
    """Send ``mu + gamma * p`` with the largest ``gamma`` whose summed squared distance stays in range.

    The AGR-agnostic Min-Sum attack of Shejwalkar and Houmansadr (2021), "Manipulating the
    Byzantine: Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS.
    ``mu`` is the coordinate-wise mean of the round's honest updates and ``p`` the
    perturbation direction (see :func:`~torchchain.attacks.kernels.perturbation_direction`).
    ``gamma`` is the largest value the authors' halving search finds with

        ``sum_i ||mu + gamma * p - x_i||^2 <= max_i sum_j ||x_i - x_j||^2``

    over the honest updates ``x_i`` (the paper's Eq. 3; the authors' released notebooks use
    the minimum over ``i`` on the right, a stricter bound). The search tries ``gamma`` in
    ``[0, 2 * gamma_init)``; ``gamma = 0`` (sending ``mu``) always satisfies the constraint.
    Omniscient: needs the round's honest updates.

    Args:
        perturbation: ``"unit_vec"`` (``-mu / ||mu||``), ``"std"`` (``-sigma``, coordinate-wise
            sample standard deviation) or ``"sign"`` (``-sign(mu)``). Default ``"unit_vec"``.
        gamma_init: The first ``gamma`` tried, > 0. Default ``10.0``, the value in most of the
            authors' released notebooks (some use 30 or 50); raise it when updates are large
            enough that the search ends near its upper limit ``2 * gamma_init``.
        tau: The search stops when two tries are within ``tau``, > 0. Default ``1e-5``, as in
            the authors' code.
    """

    name = "minsum"

    def search_gamma(self, honest: Tensor, direction: Tensor) -> float:
        """The largest ``gamma`` whose summed squared distance to the honest updates stays in range."""
        return min_sum_gamma(honest, direction, gamma_init=self.gamma_init, tau=self.tau)
