"""Pure functions behind the omniscient model-poisoning attacks.

Every function takes float64 tensors whose rows are the honest clients' flat updates
(``honest`` of shape ``(k, d)``) and returns new tensors or numbers; nothing here keeps state
or draws random numbers, so tests call these directly.

References:
    Baruch, Baruch and Goldberg (2019), "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS - :func:`alie_z_max`.
    Shejwalkar and Houmansadr (2021), "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS - :func:`perturbation_direction`,
    :func:`search_gamma`, :func:`min_max_gamma`, :func:`min_sum_gamma`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import torch
from torch import Tensor

from torchchain.errors import ConfigError

__all__ = [
    "PERTURBATIONS",
    "alie_z_max",
    "coordinate_std",
    "min_max_gamma",
    "min_max_satisfied",
    "min_sum_gamma",
    "min_sum_satisfied",
    "pairwise_squared_distances",
    "perturbation_direction",
    "search_gamma",
    "squared_distances_to",
]

PERTURBATIONS: tuple[str, ...] = ("sign", "std", "unit_vec")
"""The perturbation directions of Shejwalkar and Houmansadr (2021), by config name."""


def alie_z_max(num_clients: int, num_byzantine: int) -> float:
    """Return ALIE's ``z_max`` for ``n`` clients of which ``f`` are malicious.

    Algorithm 1 of Baruch et al. (2019): the attackers need ``s = floor(n/2 + 1) - f`` honest
    "supporters" for a majority, and take the largest ``z`` with ``Phi(z) < (n - s) / n``, i.e.
    ``z_max = Phi^{-1}((n - s) / n)`` with ``Phi`` the standard normal CDF.

    Examples: ``n=10, f=2`` gives ``s=4`` and ``Phi^{-1}(0.6) = 0.2533``; ``n=25, f=5`` gives
    ``s=8`` and ``Phi^{-1}(0.68) = 0.4677``.

    Raises:
        ConfigError: If ``(n - s) / n`` is not strictly between 0 and 1 (so ``z_max`` is
            undefined): when the malicious clients alone are a majority, or ``f = 0`` with
            ``n <= 2``.
    """
    supporters = math.floor(num_clients / 2 + 1) - num_byzantine
    quantile = (num_clients - supporters) / num_clients
    if not 0.0 < quantile < 1.0:
        raise ConfigError(
            f"alie attack: z_max is undefined for clients={num_clients}, byzantine={num_byzantine} "
            f"(needs 0 < (n - s)/n < 1 with s = floor(n/2 + 1) - f = {supporters}); "
            "set attack.z explicitly or change byzantine"
        )
    return NormalDist().inv_cdf(quantile)


def coordinate_std(honest: Tensor, *, unbiased: bool) -> Tensor:
    """Return the coordinate-wise standard deviation of the rows of ``honest``, shape ``(d,)``.

    Args:
        honest: Shape ``(k, d)``.
        unbiased: ``True`` for the sample standard deviation (divide by ``k - 1``), ``False``
            for the population one (divide by ``k``). With one row the sample standard
            deviation is undefined; it is returned as zeros, the spread of a single point.
    """
    if unbiased and honest.shape[0] < 2:
        return torch.zeros(honest.shape[1], dtype=honest.dtype, device=honest.device)
    return honest.std(dim=0, correction=1 if unbiased else 0)


def perturbation_direction(honest: Tensor, kind: str) -> Tensor:
    """Return the perturbation vector ``p`` of Shejwalkar and Houmansadr (2021), shape ``(d,)``.

    With ``mu`` the coordinate-wise mean of the honest updates:

    * ``"unit_vec"``: ``-mu / ||mu||`` (zeros when ``mu`` is zero);
    * ``"std"``: ``-sigma``, the coordinate-wise sample standard deviation (the authors'
      ``torch.std``; zeros with a single honest update);
    * ``"sign"``: ``-sign(mu)``.

    Raises:
        ConfigError: If ``kind`` is not one of :data:`PERTURBATIONS`.
    """
    mean = honest.mean(dim=0)
    if kind == "unit_vec":
        norm = torch.linalg.vector_norm(mean)
        if norm == 0:
            return torch.zeros_like(mean)
        return -mean / norm
    if kind == "std":
        return -coordinate_std(honest, unbiased=True)
    if kind == "sign":
        return -torch.sign(mean)
    raise ConfigError(f"perturbation must be one of {list(PERTURBATIONS)}, got {kind!r}")


def squared_distances_to(honest: Tensor, point: Tensor) -> Tensor:
    """Return ``||x_i - point||^2`` for every row ``x_i`` of ``honest``, shape ``(k,)``."""
    return ((honest - point) ** 2).sum(dim=1)


def pairwise_squared_distances(honest: Tensor) -> Tensor:
    """Return the ``(k, k)`` matrix of ``||x_i - x_j||^2`` between the rows of ``honest``.

    Computed one row at a time from explicit differences (not the ``a^2 - 2ab + b^2``
    expansion) so that the diagonal is exactly zero and memory stays ``O(k d)``.
    """
    return torch.stack([squared_distances_to(honest, row) for row in honest])


def min_max_satisfied(honest: Tensor, candidate: Tensor) -> bool:
    """Whether ``candidate`` passes the Min-Max constraint of Shejwalkar and Houmansadr (2021).

    The constraint: the largest distance from ``candidate`` to an honest update is at most
    the largest distance between two honest updates.
    """
    limit = pairwise_squared_distances(honest).max()
    return bool(squared_distances_to(honest, candidate).max() <= limit)


def min_sum_satisfied(honest: Tensor, candidate: Tensor) -> bool:
    """Whether ``candidate`` passes the Min-Sum constraint of Shejwalkar and Houmansadr (2021).

    The constraint (their Eq. 3): the sum of squared distances from ``candidate`` to the
    honest updates is at most the largest such sum of one honest update to the others. (The
    authors' released notebooks compare with the smallest sum instead, a stricter bound.)
    """
    limit = pairwise_squared_distances(honest).sum(dim=1).max()
    return bool(squared_distances_to(honest, candidate).sum() <= limit)


def search_gamma(accepts: Callable[[float], bool], *, gamma_init: float, tau: float) -> float:
    """Return the largest scale ``gamma`` that ``accepts`` found, by the authors' halving search.

    The search Shejwalkar and Houmansadr (2021) describe and release: start at ``gamma_init``
    with step ``gamma_init``; halve the step at every try, moving ``gamma`` up by half the step
    after a success and down after a failure; stop when the last success and the current try
    are within ``tau``. The result lies in ``[0, 2 * gamma_init)`` and is ``0.0`` when every
    try failed. It assumes the accepted values form an interval that contains 0, which holds
    for the Min-Max and Min-Sum constraints.

    Args:
        accepts: ``gamma -> bool``, whether the malicious update at scale ``gamma`` is accepted.
        gamma_init: The first scale tried, ``> 0``.
        tau: The stopping tolerance, ``> 0``.
    """
    gamma = gamma_init
    step = gamma_init
    gamma_success = 0.0
    while abs(gamma_success - gamma) > tau:
        if accepts(gamma):
            gamma_success = gamma
            gamma = gamma + step / 2
        else:
            gamma = gamma - step / 2
        step = step / 2
    return gamma_success


def min_max_gamma(honest: Tensor, direction: Tensor, *, gamma_init: float, tau: float) -> float:
    """Return the Min-Max scale: the largest ``gamma`` found with ``mu + gamma * direction`` accepted.

    ``mu`` is the coordinate-wise mean of ``honest``; acceptance is :func:`min_max_satisfied`.
    """
    mean = honest.mean(dim=0)
    limit = pairwise_squared_distances(honest).max()

    def accepts(gamma: float) -> bool:
        return bool(squared_distances_to(honest, mean + gamma * direction).max() <= limit)

    return search_gamma(accepts, gamma_init=gamma_init, tau=tau)


def min_sum_gamma(honest: Tensor, direction: Tensor, *, gamma_init: float, tau: float) -> float:
    """Return the Min-Sum scale: the largest ``gamma`` found with ``mu + gamma * direction`` accepted.

    ``mu`` is the coordinate-wise mean of ``honest``; acceptance is :func:`min_sum_satisfied`.
    """
    mean = honest.mean(dim=0)
    limit = pairwise_squared_distances(honest).sum(dim=1).max()

    def accepts(gamma: float) -> bool:
        return bool(squared_distances_to(honest, mean + gamma * direction).sum() <= limit)

    return search_gamma(accepts, gamma_init=gamma_init, tau=tau)
