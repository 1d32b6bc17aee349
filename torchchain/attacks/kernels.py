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
    Ozfatura, Ozfatura, Kupcu and Gunduz (2024), "Byzantines Can Also Learn From History: Fall of
    Centered Clipping in Federated Learning", IEEE TIFS - :func:`rop_z_max`,
    :func:`rotated_orthogonal_direction`.
    Allouah et al. (2023), "Fixing by Mixing: A Recipe for Optimal Byzantine ML under
    Heterogeneity", AISTATS, and the ByzFL library - :func:`expand_contract_search`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import torch
from torch import Tensor

from torchchain.errors import ConfigError

__all__ = [
    "MAX_SEARCH_EVALS",
    "PERTURBATIONS",
    "alie_z_max",
    "best_scale_against",
    "check_search_settings",
    "coordinate_std",
    "expand_contract_search",
    "min_max_gamma",
    "min_max_satisfied",
    "min_sum_gamma",
    "min_sum_satisfied",
    "pairwise_squared_distances",
    "perturbation_direction",
    "rop_z_max",
    "rotated_orthogonal_direction",
    "search_gamma",
    "squared_distances_to",
]

PERTURBATIONS: tuple[str, ...] = ("sign", "std", "unit_vec")
"""The perturbation directions of Shejwalkar and Houmansadr (2021), by config name."""

MAX_SEARCH_EVALS = 1000
"""The most evaluations of the defence a scale search may make per round."""


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


def rop_z_max(num_clients: int, num_byzantine: int) -> float:
    """Return the perturbation norm ROP's released code uses when none is configured.

    The rule of Ozfatura et al.'s code (borrowed from their ALIE implementation), over the
    ``n - f`` honest clients: ``s = floor(n/2 + 1) - f`` and ``z = Phi^{-1}((n - f - s) / (n - f))``
    with ``Phi`` the standard normal CDF. It is ``0`` for small federations (``n=5, f=1`` and
    ``n=10, f=2`` give a quantile of exactly 0.5) and ``0.2533`` for ``n=25, f=5``.

    Raises:
        ConfigError: If the quantile is not strictly between 0 and 1 (no honest client, or the
            malicious clients alone are a majority).
    """
    honest = num_clients - num_byzantine
    supporters = math.floor(num_clients / 2 + 1) - num_byzantine
    quantile = (honest - supporters) / honest if honest > 0 else math.nan
    if not 0.0 < quantile < 1.0:
        raise ConfigError(
            f"rop attack: the automatic z is undefined for clients={num_clients}, byzantine={num_byzantine} "
            f"(needs 0 < (n - f - s)/(n - f) < 1 with s = floor(n/2 + 1) - f = {supporters}); "
            "set attack.z explicitly or change byzantine"
        )
    return NormalDist().inv_cdf(quantile)


def rotated_orthogonal_direction(reference: Tensor, angle: float) -> Tensor:
    """Return the unit vector at ``angle`` degrees from ``reference`` that ROP perturbs along, shape ``(d,)``.

    ``p`` is the part of the seed vector ``-1`` (all coordinates ``-1``) orthogonal to
    ``reference``, normalised; ``u`` is ``reference`` normalised; the result is
    ``sin(angle) * p + cos(angle) * u``, a unit vector at exactly ``angle`` degrees from ``u``
    (``angle = 90`` gives ``p`` itself, orthogonal to ``reference``).

    The released code of Ozfatura et al. seeds with ``+1`` on gradients; an update is a
    negative multiple of a gradient, so the same geometry on updates seeds with ``-1``.

    Degenerate cases: when ``reference`` is zero, ``u`` is zero and ``p`` the normalised seed;
    when the seed is parallel to ``reference``, the alternating vector ``(-1, 1, -1, ...)``
    seeds instead; with one coordinate there is no orthogonal direction and ``p`` is zero. The
    result is then shorter than 1 (or zero), never undefined.
    """
    d = reference.shape[0]
    reference_norm = torch.linalg.vector_norm(reference)
    unit_reference = reference / reference_norm if reference_norm > 0 else torch.zeros_like(reference)
    orthogonal = torch.zeros_like(reference)
    alternating = torch.ones_like(reference)
    alternating[0::2] = -1.0
    for seed in (-torch.ones_like(reference), alternating):
        candidate = seed - (seed @ unit_reference) * unit_reference
        norm = torch.linalg.vector_norm(candidate)
        # Anything below rounding noise of the seed's length counts as parallel to the reference.
        if d > 1 and norm > 1e-9 * math.sqrt(d):
            orthogonal = candidate / norm
            break
    radians = math.radians(angle)
    return math.sin(radians) * orthogonal + math.cos(radians) * unit_reference


def expand_contract_search(
    objective: Callable[[float], float], *, start: float, delta: float, ratio: float, evals: int
) -> float:
    """Return the scale with the largest ``objective`` found by ByzFL's expansion-contraction search.

    The line search of ByzFL's ``Optimal_ALittleIsEnough`` and ``Optimal_InnerProductManipulation``
    (Allouah et al., 2023), with ``evals`` calls of ``objective`` in all:

    * expansion: evaluate ``start``; then, while calls remain, try ``best + step``: if it
      scores strictly higher it becomes ``best`` and ``step`` doubles, else ``step`` is
      multiplied by ``ratio`` and the expansion ends;
    * contraction: while calls remain, try ``best + step``, keep it if it scores strictly
      higher, and multiply ``step`` by ``ratio`` after every try.

    Only ``best + step`` is ever tried, so the search moves away from ``start`` in the direction
    of the sign of ``delta``. A ``nan`` score never wins a comparison.

    Args:
        objective: ``scale -> score`` to maximise (a deterministic function).
        start: The first scale evaluated.
        delta: The first step, non-zero.
        ratio: The step's contraction factor, in ``(0.5, 1)``.
        evals: The number of calls of ``objective``, ``>= 1``.
    """
    best_x = start
    best_y = objective(best_x)
    step = delta
    remaining = evals - 1
    while remaining > 0:
        x = best_x + step
        y = objective(x)
        remaining -= 1
        if y > best_y:
            best_x, best_y = x, y
            step *= 2
        else:
            step *= ratio
            break
    while remaining > 0:
        x = best_x + step
        y = objective(x)
        remaining -= 1
        if y > best_y:
            best_x, best_y = x, y
        step *= ratio
    return best_x


def check_search_settings(
    attack_name: str, *, evals: int, start: float, delta: float, ratio: float
) -> tuple[int, float, float, float]:
    """Return ``(evals, start, delta, ratio)`` of :func:`expand_contract_search` after checking them.

    Raises:
        ConfigError: Unless ``evals`` is an int in ``[1, MAX_SEARCH_EVALS]``, ``start`` finite,
            ``delta`` finite and non-zero and ``ratio`` in ``(0.5, 1)`` (ByzFL's ranges).
    """

    def number(value: object) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)

    if isinstance(evals, bool) or not isinstance(evals, int) or not 1 <= evals <= MAX_SEARCH_EVALS:
        raise ConfigError(f"{attack_name} attack: evals must be an int in [1, {MAX_SEARCH_EVALS}], got {evals!r}")
    if not number(start):
        raise ConfigError(f"{attack_name} attack: start must be a finite number, got {start!r}")
    if not number(delta) or delta == 0:
        raise ConfigError(f"{attack_name} attack: delta must be a finite non-zero number, got {delta!r}")
    if not number(ratio) or not 0.5 < ratio < 1.0:
        raise ConfigError(f"{attack_name} attack: ratio must be a number in (0.5, 1), got {ratio!r}")
    return evals, float(start), float(delta), float(ratio)


def best_scale_against(
    aggregate: Callable[..., Tensor],
    honest: Tensor,
    candidate: Callable[[float], Tensor],
    *,
    copies: int,
    seed: int,
    start: float,
    delta: float,
    ratio: float,
    evals: int,
) -> float:
    """Return the scale whose candidate moves the defence's aggregate furthest from the honest mean.

    The objective of ByzFL's optimal attacks: for a scale ``s``, the submissions are the rows of
    ``honest`` followed by ``copies`` copies of ``candidate(s)``, and the score is
    ``||aggregate(submissions) - mean(honest)||_2``; :func:`expand_contract_search` maximises it.
    Every call of ``aggregate`` gets a fresh generator seeded with ``seed``, so a randomised rule
    (bucketing) sees the same draws for every candidate and the comparison is between scales only.

    Args:
        aggregate: ``(m, d) float64 -> (d,) float64``, called with a ``generator`` keyword.
        honest: ``(k, d)`` float64.
        candidate: ``scale -> (d,)`` float64, the malicious update at that scale.
        copies: How many malicious rows to append (the number of malicious clients).
        seed: Seeds the generator passed to ``aggregate``.
        start, delta, ratio, evals: As :func:`expand_contract_search`.
    """
    mean = honest.mean(dim=0)

    def damage(scale: float) -> float:
        rows = torch.cat([honest, candidate(scale).expand(copies, -1)])
        result = aggregate(rows, generator=torch.Generator().manual_seed(seed))
        return float(torch.linalg.vector_norm(result.to(torch.float64) - mean))

    return expand_contract_search(damage, start=start, delta=delta, ratio=ratio, evals=evals)
