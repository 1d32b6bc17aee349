"""Pure tensor functions behind the aggregation rules.

Every function here takes float64 CPU tensors, changes none of its inputs, and returns the same
bits on every machine for the same input. That is what lets every node of the ledger recompute a
block's aggregate and compare model hashes, so the functions keep three rules:

* **Sums run in one fixed order.** torch's ordinary reductions split long sums across threads and
  SIMD lanes, so their rounding can depend on ``torch.get_num_threads()`` and on the CPU. Every sum
  here runs in a fixed order: a sequential scan (:func:`torch.cumsum`, which adds in index order
  on the CPU), or element-wise additions of fixed-size blocks where the vectors are long
  (:func:`row_sums`).
* **Sums over clients add the rows in row order.** Rows arrive sorted by client key, an order
  the ledger fixes before any update is seen (DESIGN.md invariant 3), so every node adds the same
  terms in the same order: a weighted mean is ``c_0 x_0 + c_1 x_1 + ...`` left to right
  (:func:`ordered_weighted_sum`), one pass over each row with no ``(n, d)`` temporary. Listing
  the same rows in another order can change the last bits of a mean (never the rows an
  order-based rule keeps); sums over the ``n`` weights or scores, which are short, still add
  their terms in ascending order (:func:`sorted_sum`).
* **Ties are broken by row index.** Among rows with equal scores or distances, selections
  prefer the row with the smaller index (a stable sort by value, then index). Rows arrive sorted
  by client key, so that is client-key order, which the ledger fixes before any update is seen.
  Breaking ties by row *content* instead (say, the lexicographically smaller row) would hand the
  tie to whoever chose the smaller coordinate, which is the attacker's to choose. Exact ties
  between distinct rows need exactly equal float64 scores, so they are rare outside symmetric
  or degenerate inputs; selections whose ties are structural (Krum with one neighbour, where the
  two rows of the closest pair always tie) say so.

Callers should pass updates whose zeros are all ``+0.0`` (``x + 0.0`` does that): ``-0.0`` and
``+0.0`` compare equal, so a sort could put either first and an order statistic could come back
with either sign. :class:`~torchchain.strategies.base.Strategy` does this before aggregating.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "clip_factors",
    "clip_to_norm",
    "coordinate_median",
    "coordinate_trimmed_mean",
    "cosine_similarities",
    "geometric_median",
    "iterated_krum_selection",
    "krum_scores",
    "krum_scores_from_distances",
    "mean_around_median_with_shares",
    "mean_scaled_difference",
    "median_norm_clip_factors",
    "median_clip_factors",
    "nearest_rows",
    "norm_clip_factors",
    "ordered_weighted_sum",
    "pairwise_sq_distances",
    "row_norms",
    "row_sq_norms",
    "row_sums",
    "sequential_sum",
    "smallest_indices",
    "sorted_sum",
    "sq_distances_to",
    "trimmed_mean_with_shares",
    "weighted_mean",
]

T = TypeVar("T")

#: Block length of :func:`row_sums`.
_BLOCK = 4096

#: Coordinates per block of the coordinate-wise rules (a block of ``n`` rows is transposed).
_COLUMNS = 8192


# -- sums in a fixed order ------------------------------------------------------------------


def sequential_sum(values: Tensor, dim: int = 0) -> Tensor:
    """Sum along ``dim`` strictly in index order, starting from ``+0.0``.

    Args:
        values: A float64 tensor.
        dim: The dimension to sum over.

    Returns:
        ``values`` summed over ``dim``; zeros where ``dim`` is empty. The order of the additions is
        fixed, so the result does not depend on the thread count or the CPU's vector width.
    """
    if values.shape[dim] == 0:
        return values.sum(dim=dim)
    return values.cumsum(dim=dim).select(dim, -1)


def sorted_sum(values: Tensor, dim: int = 0) -> Tensor:
    """Sum along ``dim`` in ascending order of the values.

    The result depends only on the multiset of values along ``dim``, not on their order, which
    is what makes means over clients independent of how the clients were listed.

    Args:
        values: A float64 tensor without NaNs.
        dim: The dimension to sum over.

    Returns:
        ``values`` summed over ``dim``.
    """
    return sequential_sum(torch.sort(values, dim=dim).values, dim=dim)


def row_sums(values: Tensor) -> Tensor:
    """Sum over the last dimension in a fixed blocked order.

    Long rows are cut into blocks of 4096 consecutive coordinates; the blocks are added
    coordinate by coordinate in block order (the last, shorter block into the first positions),
    then the 4096 partial sums are added in index order. Both stages have a fixed order, so the
    bits do not depend on threads or SIMD width, and the rounding error grows with
    ``d / 4096 + 4096`` terms rather than ``d``.

    Args:
        values: A float64 tensor of shape ``(..., d)``.

    Returns:
        A tensor of shape ``(...)``.
    """
    return _blocked_row_sums(lambda start, stop: values[..., start:stop], values.shape[-1])


def _blocked_row_sums(terms: Callable[[int, int], Tensor], d: int) -> Tensor:
    """:func:`row_sums` of a ``(..., d)`` matrix of terms that is never built whole.

    ``terms(start, stop)`` returns the terms of coordinates ``start:stop`` (a new tensor or a
    view; it is not changed). Only one block of terms and the ``(..., 4096)`` partial sums live
    at a time, so a distance or a norm costs one pass over the rows and no ``(n, d)``
    temporary, with the bits :func:`row_sums` gives on the whole matrix.
    """
    if d <= _BLOCK:
        return sequential_sum(terms(0, d), dim=-1)
    full = d // _BLOCK
    partial = terms(0, _BLOCK).clone()
    for block in range(1, full):
        partial += terms(block * _BLOCK, (block + 1) * _BLOCK)
    if full * _BLOCK < d:
        tail = terms(full * _BLOCK, d)
        partial[..., : tail.shape[-1]] += tail
    return sequential_sum(partial, dim=-1)


# -- means ----------------------------------------------------------------------------------


def ordered_weighted_sum(updates: Tensor, coefficients: Tensor, rows: Tensor | None = None) -> Tensor:
    """``c_0 * x_0 + c_1 * x_1 + ...``, added left to right in row order.

    Each product is rounded, then added to the running total, row after row; the result equals
    ``sequential_sum(updates * coefficients[:, None])`` bit for bit, without building the
    ``(n, d)`` products. Element-wise products and sums are exact IEEE operations, so the bits
    do not depend on threads or the CPU's vector width.

    Args:
        updates: ``(n, d)`` float64, ``n >= 1``, in the order to add them (client-key order).
        coefficients: ``(n,)`` float64, or one per entry of ``rows``.
        rows: Indices of the rows to add, in the order to add them; default all rows in order.
            The same bits as passing ``updates[rows]``, without copying those rows.

    Returns:
        ``(d,)`` float64.
    """
    _check_matrix(updates)
    order = list(range(updates.shape[0])) if rows is None else rows.tolist()
    if not order or coefficients.shape != (len(order),):
        raise ValueError(
            f"coefficients must have shape ({len(order)},) to match the rows added, got {tuple(coefficients.shape)}"
        )
    total = updates[order[0]] * coefficients[0]
    term = torch.empty_like(total)
    for row, coefficient in zip(order[1:], coefficients[1:]):
        total += torch.mul(updates[row], coefficient, out=term)
    return total


def weighted_mean(updates: Tensor, weights: Tensor, rows: Tensor | None = None) -> Tensor:
    """Mean of the rows of ``updates`` weighted by ``weights``.

    The weights are normalised first (``c_i = w_i / sum_j w_j``, the total added in ascending
    order) and the result is ``sum_i c_i * updates[i]`` added in row order
    (:func:`ordered_weighted_sum`), so a row holding all the weight comes back exactly, and the
    coefficients a caller reports as trust are the ones that were applied.

    Args:
        updates: ``(n, d)`` float64, ``n >= 1``, in client-key order.
        weights: ``(n,)`` float64, non-negative, with a positive sum; or one per entry of ``rows``.
        rows: Indices of the rows to average, in the order to add them; default all rows. The
            same bits as ``weighted_mean(updates[rows], weights)``, without copying the rows.

    Returns:
        ``(d,)`` float64, the same bits for the same rows in the same order on every machine.

    Raises:
        ValueError: If the shapes disagree or the weights are negative or sum to zero.
    """
    _check_matrix(updates)
    count = updates.shape[0] if rows is None else rows.numel()
    if weights.shape != (count,):
        raise ValueError(f"weights must have shape ({count},) to match the rows averaged, got {tuple(weights.shape)}")
    if bool((weights < 0).any()):
        raise ValueError("weights must be non-negative")
    total = sorted_sum(weights)
    if not total > 0:
        raise ValueError("weights must have a positive sum")
    return ordered_weighted_sum(updates, weights / total, rows)


def trimmed_mean_with_shares(updates: Tensor, trim: int) -> tuple[Tensor, Tensor]:
    """Coordinate-wise trimmed mean, and how much each row contributed to it.

    For every coordinate the ``trim`` largest and ``trim`` smallest values are dropped and the
    remaining ``n - 2 * trim`` are averaged (Yin et al., 2018, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates").

    Args:
        updates: ``(n, d)`` float64.
        trim: Values dropped at each end, ``0 <= trim`` and ``2 * trim < n``.

    Returns:
        ``(mean, shares)``: the ``(d,)`` trimmed mean, and an ``(n,)`` vector whose entry ``i`` is
        the fraction of the kept (coordinate, value) slots that row ``i`` filled; it sums to 1.
        Among equal values, the row with the smaller index counts as the smaller value.

    Raises:
        ValueError: If ``trim`` is out of range.
    """
    _check_matrix(updates)
    n, d = updates.shape
    if trim < 0 or 2 * trim >= n:
        raise ValueError(f"trim must satisfy 0 <= trim and 2*trim < n, got trim={trim}, n={n}")
    kept = n - 2 * trim
    mean = torch.empty(d, dtype=torch.float64)
    positions = torch.arange(trim, n - trim)

    def block(start: int, columns: Tensor) -> Tensor:
        values = _sorted_rows(columns)
        mean[start : start + columns.shape[0]] = sequential_sum(values[:, trim : n - trim], dim=1) / kept
        return _rows_at(columns, values, positions.expand(columns.shape[0], -1))

    counts = torch.stack(_map_column_blocks(updates, block)).sum(dim=0)  # integers: exact in any order
    return mean, counts.to(torch.float64) / (kept * d)


def coordinate_trimmed_mean(updates: Tensor, trim: int) -> Tensor:
    """Coordinate-wise trimmed mean; see :func:`trimmed_mean_with_shares`.

    Args:
        updates: ``(n, d)`` float64.
        trim: Values dropped at each end of every coordinate, ``2 * trim < n``.

    Returns:
        ``(d,)`` float64.
    """
    return trimmed_mean_with_shares(updates, trim)[0]


def coordinate_median(updates: Tensor) -> Tensor:
    """Coordinate-wise median; for even ``n`` the mean of the two middle values.

    (``torch.median`` returns the lower of the two middle values instead, which biases it.) The
    same bits as :func:`coordinate_trimmed_mean` with ``trim = (n - 1) // 2``: blocks of
    :data:`_COLUMNS` coordinates are transposed so each column is contiguous and sorted
    (:func:`_sorted_rows`), and the middle value, or the mean of the two middle values, is read off.

    Args:
        updates: ``(n, d)`` float64.

    Returns:
        ``(d,)`` float64.
    """
    _check_matrix(updates)
    n, d = updates.shape
    median = torch.empty(d, dtype=torch.float64)

    def block(start: int, columns: Tensor) -> None:
        values = _sorted_rows(columns)
        middle = values[:, n // 2] if n % 2 else (values[:, n // 2 - 1] + values[:, n // 2]) / 2
        median[start : start + columns.shape[0]] = middle

    _map_column_blocks(updates, block)
    return median


def mean_around_median_with_shares(updates: Tensor, beta: int) -> tuple[Tensor, Tensor]:
    """Per coordinate, the mean of the ``beta`` values closest to the coordinate's median.

    This is the second stage of Bulyan (El Mhamdi et al., 2018, "The Hidden Vulnerability of
    Distributed Learning in Byzantium"). The median is :func:`coordinate_median`'s. Among values
    equally far from the median, the smaller value is kept first.

    Args:
        updates: ``(n, d)`` float64.
        beta: Values kept per coordinate, ``1 <= beta <= n``.

    Returns:
        ``(mean, shares)``: the ``(d,)`` mean, and an ``(n,)`` vector with the fraction of the kept
        (coordinate, value) slots each row filled; it sums to 1.

    Raises:
        ValueError: If ``beta`` is out of range.
    """
    _check_matrix(updates)
    n, d = updates.shape
    if not 1 <= beta <= n:
        raise ValueError(f"beta must satisfy 1 <= beta <= n, got beta={beta}, n={n}")
    mean = torch.empty(d, dtype=torch.float64)
    window = torch.arange(beta)

    def block(start: int, columns: Tensor) -> Tensor:
        values = _sorted_rows(columns)
        median = (values[:, (n - 1) // 2] + values[:, n // 2]) / 2
        distances = (values - median[:, None]).abs()
        # The values within the beta-th smallest distance of the median are one run of the sorted
        # values (the distances fall, then rise, along it). Where that run holds exactly beta
        # values it is the kept set; where more values tie at that distance, a stable sort of the
        # distances picks the smaller values first.
        within = distances <= _sorted_rows(distances)[:, beta - 1 : beta]
        below = (~within & (values < median[:, None])).sum(dim=1)
        positions = below[:, None] + window
        ties = (within.sum(dim=1) > beta).nonzero().squeeze(1)
        if ties.numel():
            closest = torch.sort(distances[ties], dim=1, stable=True).indices[:, :beta]
            positions[ties] = torch.sort(closest, dim=1).values
        # Positions in ascending value order, so the kept values are summed smallest first.
        mean[start : start + columns.shape[0]] = sequential_sum(values.gather(1, positions), dim=1) / beta
        return _rows_at(columns, values, positions)

    counts = torch.stack(_map_column_blocks(updates, block)).sum(dim=0)  # integers: exact in any order
    return mean, counts.to(torch.float64) / (beta * d)


# -- distances and selections ---------------------------------------------------------------


def sq_distances_to(updates: Tensor, center: Tensor) -> Tensor:
    """Squared L2 distance of every row to ``center``, from explicit differences.

    Args:
        updates: ``(n, d)`` float64.
        center: ``(d,)`` float64.

    Returns:
        ``(n,)`` float64; exactly 0 for a row equal to ``center``.
    """
    _check_matrix(updates)
    if center.shape != updates.shape[1:]:
        raise ValueError(f"center must have shape ({updates.shape[1]},), got {tuple(center.shape)}")

    def squares(start: int, stop: int) -> Tensor:
        diff = updates[:, start:stop] - center[start:stop]
        return diff.mul_(diff)

    return _blocked_row_sums(squares, updates.shape[1])


def row_sq_norms(vectors: Tensor) -> Tensor:
    """Squared L2 norm of every row, summed in :func:`row_sums`' fixed order.

    Args:
        vectors: ``(n, d)`` float64.

    Returns:
        ``(n,)`` float64.
    """
    return _blocked_row_sums(lambda start, stop: vectors[..., start:stop] * vectors[..., start:stop], vectors.shape[-1])


def row_norms(vectors: Tensor) -> Tensor:
    """L2 norm of every row (the square root of :func:`row_sq_norms`).

    Args:
        vectors: ``(n, d)`` float64.

    Returns:
        ``(n,)`` float64.
    """
    return row_sq_norms(vectors).sqrt()


def pairwise_sq_distances(updates: Tensor) -> Tensor:
    """Squared L2 distances between all pairs of rows.

    Each distance is computed from the explicit difference of the two rows (the expansion
    ``|a|^2 + |b|^2 - 2<a, b>`` cancels catastrophically for nearby rows and relies on BLAS,
    whose summation order varies), once per pair, so the matrix is exactly symmetric with an
    exactly zero diagonal.

    Args:
        updates: ``(n, d)`` float64.

    Returns:
        ``(n, n)`` float64.
    """
    _check_matrix(updates)
    n = updates.shape[0]
    distances = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n - 1):
        row = sq_distances_to(updates[i + 1 :], updates[i])
        distances[i, i + 1 :] = row
        distances[i + 1 :, i] = row
    return distances


def smallest_indices(values: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` smallest entries of a vector, smallest first.

    The sort is stable: among equal values the smaller index comes first. Callers pass rows in
    client-key order, so ties go to the client whose key sorts first, never to the row content.

    Args:
        values: ``(n,)`` float64 without NaNs.
        k: How many indices to return, ``0 <= k <= n``.

    Returns:
        ``(k,)`` int64.

    Raises:
        ValueError: If ``k`` is out of range.
    """
    n = values.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must satisfy 0 <= k <= {n}, got {k}")
    return torch.sort(values, stable=True).indices[:k].to(torch.int64)


def nearest_rows(updates: Tensor, center: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` rows nearest in L2 to ``center``, nearest first.

    Among rows equally far, the lower index comes first (:func:`smallest_indices`).

    Args:
        updates: ``(n, d)`` float64.
        center: ``(d,)`` float64.
        k: How many rows, ``0 <= k <= n``.

    Returns:
        ``(k,)`` int64.
    """
    return smallest_indices(sq_distances_to(updates, center), k)


def krum_scores_from_distances(sq_distances: Tensor, f: int, *, neighbours: int | None = None) -> Tensor:
    """Krum scores from a matrix of squared distances.

    The score of row ``i`` is the sum of its squared distances to its ``n - f - 2`` nearest other
    rows (Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent"). When ``n - f - 2 < 0`` (fewer than ``f + 2`` rows) no neighbours count and every
    score is 0. With one neighbour the two rows of the closest pair always tie.

    Args:
        sq_distances: ``(n, n)`` float64, symmetric, as from :func:`pairwise_sq_distances`.
        f: The number of Byzantine rows assumed, ``f >= 0``.
        neighbours: How many nearest other rows a score sums, ``0 <= neighbours <= n - 1``;
            ``None`` (default) for Krum's ``max(n - f - 2, 0)``.

    Returns:
        ``(n,)`` float64; lower is better. Each score is a sum in ascending order, so it does not
        depend on the order of the rows.

    Raises:
        ValueError: If ``f`` is negative or ``neighbours`` out of range.
    """
    if f < 0:
        raise ValueError(f"f must be non-negative, got {f}")
    n = sq_distances.shape[0]
    if neighbours is None:
        neighbours = max(n - f - 2, 0)
    elif not 0 <= neighbours <= max(n - 1, 0):
        raise ValueError(f"neighbours must satisfy 0 <= neighbours <= n - 1 = {n - 1}, got {neighbours}")
    others = sq_distances.clone()
    others.fill_diagonal_(float("inf"))
    nearest = torch.sort(others, dim=1).values[:, :neighbours]
    return sequential_sum(nearest, dim=1)


def krum_scores(updates: Tensor, f: int) -> Tensor:
    """Krum scores of the rows of ``updates``; see :func:`krum_scores_from_distances`.

    Args:
        updates: ``(n, d)`` float64.
        f: The number of Byzantine rows assumed.

    Returns:
        ``(n,)`` float64; lower is better.
    """
    return krum_scores_from_distances(pairwise_sq_distances(updates), f)


def iterated_krum_selection(sq_distances: Tensor, f: int, count: int) -> Tensor:
    """Bulyan's first stage: pick the best Krum-scored row, remove it, repeat ``count`` times.

    El Mhamdi et al., 2018, "The Hidden Vulnerability of Distributed Learning in Byzantium",
    apply Krum to the rows not yet selected. With ``r`` rows left, Krum's score sums the
    ``r - f - 2`` nearest neighbours, which at Bulyan's last pick (``count = n - 2f``, so
    ``r = 2f + 1``) falls to ``f - 1``: for ``f = 1`` no neighbour counts, every score is 0 and
    the pick says nothing about the rows; for ``f = 2`` one neighbour counts, and the two rows of
    the closest pair always tie. So each score here sums ``max(r - f - 2, 2)`` neighbours (at
    most the ``r - 1`` there are): for ``r >= f + 4`` that is Krum's own count, and below it the
    pick is still the row with the smallest summed distance to its two nearest remaining rows (at
    ``r = 3``, the row closest to the other two), whose scores tie only when distances happen to
    coincide, not by construction.

    Args:
        sq_distances: ``(n, n)`` float64, symmetric, as from :func:`pairwise_sq_distances`.
        f: The number of Byzantine rows assumed, ``f >= 0``.
        count: How many rows to pick, ``0 <= count <= n``.

    Returns:
        ``(count,)`` int64, the picks in the order they were made. Among equal scores the lower
        index is picked.

    Raises:
        ValueError: If ``f`` is negative or ``count`` out of range.
    """
    n = sq_distances.shape[0]
    if f < 0:
        raise ValueError(f"f must be non-negative, got {f}")
    if not 0 <= count <= n:
        raise ValueError(f"count must satisfy 0 <= count <= {n}, got {count}")
    remaining = list(range(n))
    selected: list[int] = []
    while len(selected) < count:
        r = len(remaining)
        index = torch.tensor(remaining, dtype=torch.int64)
        neighbours = min(max(r - f - 2, 2), r - 1)
        scores = krum_scores_from_distances(sq_distances[index][:, index], f, neighbours=neighbours)
        # ``remaining`` is in ascending index order, so a stable pick keeps ties by index.
        best = remaining[int(smallest_indices(scores, 1)[0])]
        selected.append(best)
        remaining.remove(best)
    return torch.tensor(selected, dtype=torch.int64)


# -- robust centres and clipping ------------------------------------------------------------


def geometric_median(
    updates: Tensor, weights: Tensor, *, nu: float = 1e-6, max_iter: int = 100, tol: float = 1e-7
) -> tuple[Tensor, Tensor]:
    """Weighted geometric median by the smoothed Weiszfeld algorithm.

    Approximately minimises ``g(z) = sum_i w_i * |z - x_i|`` (Pillutla et al., 2022, "Robust
    Aggregation for Federated Learning", smoothed Weiszfeld). Each step sets
    ``c_i = w_i / max(nu, |z - x_i|)`` and ``z = sum_i c_i x_i / sum_i c_i``.

    * **Start** at the coordinate-wise median of the rows (:func:`coordinate_median`), which
      stays with any majority of the rows whatever the others hold. (The weighted mean, the
      usual start, is dragged arbitrarily far by a single row, and the iterations then need
      many steps to come back.)
    * **Stop** after ``max_iter`` steps, or once a step moves ``z`` by at most ``tol * s``, where
      ``s = max(nu, median_i |z_0 - x_i|)`` is the rows' median distance from the start: a scale
      set by the majority of the rows. (The relative change of ``g`` is no such measure: one far
      row dominates ``g``, so it looks converged while ``z`` still moves on the honest rows'
      scale.)

    A row too far away for its distance to be represented in float64 gets coefficient 0.

    Args:
        updates: ``(n, d)`` float64.
        weights: ``(n,)`` float64, non-negative, positive sum.
        nu: Smoothing, finite and positive: distances below ``nu`` count as ``nu``, so a point
            sitting on a row does not divide by zero.
        max_iter: The most Weiszfeld steps, ``>= 1``.
        tol: Stop when a step moves the estimate by at most ``tol`` times the rows' median
            distance from the start; ``>= 0``.

    Returns:
        ``(point, coefficients)``: the ``(d,)`` estimate, and the ``(n,)`` normalised coefficients
        of the last step, so that ``point == weighted_mean(updates, coefficients)`` exactly.
        Each step costs two passes over the rows (distances, then the weighted sum) and no
        ``(n, d)`` temporary.

    Raises:
        ValueError: If an argument is out of range, or no row with positive weight is at a
            distance from the estimate that float64 can represent (rows beyond about ``1e154``).
    """
    _check_matrix(updates)
    n = updates.shape[0]
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) to match updates, got {tuple(weights.shape)}")
    if not (isinstance(nu, (int, float)) and math.isfinite(nu) and nu > 0):
        raise ValueError(f"nu must be a finite positive number, got {nu!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite non-negative number, got {tol!r}")
    if bool((weights < 0).any()):
        raise ValueError("weights must be non-negative")
    total = sorted_sum(weights)
    if not total > 0:
        raise ValueError("weights must have a positive sum")
    shares = weights / total
    point = coordinate_median(updates)
    distances = sq_distances_to(updates, point).sqrt()
    scale = max(float(coordinate_median(distances[:, None])[0]), float(nu))
    coefficients = shares
    for _ in range(max_iter):
        step = shares / distances.clamp_min(nu)
        step_total = sorted_sum(step)
        if not step_total > 0:
            raise ValueError(
                "geometric_median: every row with positive weight is too far from the estimate for float64 "
                "to measure (entries beyond about 1e154); clip the updates first"
            )
        coefficients = step / step_total
        new_point = weighted_mean(updates, coefficients)
        moved = float(row_norms((new_point - point)[None, :])[0])
        point = new_point
        if moved <= tol * scale:
            break
        distances = sq_distances_to(updates, point).sqrt()
    return point, coefficients


def clip_factors(vectors: Tensor, c: float) -> Tensor:
    """The factor ``min(1, c / |v|)`` that clips each row to L2 norm at most ``c``.

    Args:
        vectors: ``(n, d)`` float64.
        c: The largest norm kept, ``c > 0``.

    Returns:
        ``(n,)`` float64 in ``(0, 1]``; 1 for rows already within ``c`` (zero rows included).
    """
    return norm_clip_factors(row_norms(vectors), c)


def norm_clip_factors(norms: Tensor, c: float) -> Tensor:
    """:func:`clip_factors` from the rows' norms ``(n,)``."""
    if not c > 0:
        raise ValueError(f"the clipping norm c must be positive, got {c}")
    return torch.where(norms > c, c / norms, torch.ones_like(norms))


def median_clip_factors(vectors: Tensor) -> tuple[Tensor, Tensor]:
    """The factors that clip each row to the median of the rows' L2 norms, and that median.

    The radius is ``r = median_i |v_i|`` (:func:`coordinate_median` of the norms: the middle
    norm for odd ``n``, the mean of the two middle norms for even ``n``) and row ``i`` gets the
    factor ``min(1, r / |v_i|)``, as :func:`clip_factors` with ``c = r`` (up to the last bit:
    here the quotient is one division, there a reciprocal times ``c``). The median needs no
    count of Byzantine rows: if more than half the rows are honest, ``r`` lies between the
    smallest and the largest honest norm whatever the other rows hold, so no row keeps more
    than an honest norm after clipping.

    When ``r = 0`` (more than half the rows are zero) the rows of positive norm get factor 0,
    the limit of ``min(1, r / |v_i|)`` as ``r`` goes to 0, and the zero rows factor 1.

    Args:
        vectors: ``(n, d)`` float64.

    Returns:
        ``(factors, radius)``: ``(n,)`` float64 in ``[0, 1]``, and the radius as a 0-d float64
        tensor. Both depend only on the multiset of rows, not on their order; multiplying every
        row by a power of two multiplies the radius by it and leaves the factors' bits as they
        are (the scaling is exact, barring overflow and underflow).
    """
    _check_matrix(vectors)
    return median_norm_clip_factors(row_norms(vectors))


def median_norm_clip_factors(norms: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`median_clip_factors` from the rows' norms ``(n,)``."""
    radius = coordinate_median(norms[:, None])[0]
    # Rows within the radius keep factor 1; torch.where never uses the quotients it discards,
    # so a zero norm (0/0 or r/0 there) does no harm.
    factors = torch.where(norms > radius, radius / norms, torch.ones_like(norms))
    return factors, radius


def mean_scaled_difference(updates: Tensor, center: Tensor, factors: Tensor) -> Tensor:
    """``weighted_mean((updates - center) * factors[:, None], ones)``, bit for bit, one row at a
    time: no ``(n, d)`` temporary.

    Each row's difference is rounded, scaled by its factor, multiplied by ``1 / n`` and added
    in row order, the operations :func:`weighted_mean` applies to the whole matrix.

    Args:
        updates: ``(n, d)`` float64.
        center: ``(d,)`` float64.
        factors: ``(n,)`` float64.

    Returns:
        ``(d,)`` float64.
    """
    _check_matrix(updates)
    n = updates.shape[0]
    coefficient = 1.0 / n  # weighted_mean's 1 / sorted_sum(ones): n is exact in float64
    total = (updates[0] - center).mul_(factors[0]).mul_(coefficient)
    term = torch.empty_like(center)
    for row in range(1, n):
        total += torch.sub(updates[row], center, out=term).mul_(factors[row]).mul_(coefficient)
    return total


def clip_to_norm(vectors: Tensor, c: float) -> Tensor:
    """Rows with L2 norm above ``c`` rescaled to norm ``c``; the others unchanged.

    Args:
        vectors: ``(n, d)`` float64.
        c: The largest norm kept, ``c > 0``.

    Returns:
        A new ``(n, d)`` tensor.
    """
    return vectors * clip_factors(vectors, c)[:, None]


def cosine_similarities(updates: Tensor, reference: Tensor) -> Tensor:
    """Cosine similarity of every row with ``reference``; 0 where either vector is zero.

    Args:
        updates: ``(n, d)`` float64.
        reference: ``(d,)`` float64.

    Returns:
        ``(n,)`` float64 in ``[-1, 1]`` (up to rounding).
    """
    _check_matrix(updates)
    if reference.shape != updates.shape[1:]:
        raise ValueError(f"reference must have shape ({updates.shape[1]},), got {tuple(reference.shape)}")
    dots = _blocked_row_sums(lambda start, stop: updates[:, start:stop] * reference[start:stop], updates.shape[1])
    norms = row_norms(updates) * row_norms(reference[None, :])[0]
    positive = norms > 0
    return torch.where(positive, dots / torch.where(positive, norms, torch.ones_like(norms)), torch.zeros_like(dots))


def _map_column_blocks(updates: Tensor, work: Callable[[int, Tensor], T]) -> list[T]:
    """``work(start, columns)`` for every block of :data:`_COLUMNS` coordinates, in block order.

    ``columns`` is the ``(c, n)`` transpose of ``updates[:, start:start + c]``, contiguous, so that
    per-coordinate sorts and selections read each coordinate's ``n`` values from one contiguous
    run instead of ``n`` strided loads, and no ``(n, d)`` sorted copy is held. The blocks run on
    ``torch.get_num_threads()`` threads (numpy's sort and comparisons release the GIL, as torch's
    kernels do); each block's work reads and writes only its own coordinates, so the results do
    not depend on the thread count.
    """
    starts = range(0, updates.shape[1], _COLUMNS)

    def run(start: int) -> T:
        return work(start, updates[:, start : start + _COLUMNS].T.contiguous())

    workers = min(torch.get_num_threads(), len(starts))
    if workers <= 1:
        return [run(start) for start in starts]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, starts))


def _sorted_rows(columns: Tensor) -> Tensor:
    """Each row of a contiguous ``(c, n)`` float64 block in ascending order.

    numpy's sort (vectorised with AVX2 or AVX-512 where the CPU has them) sorts these short rows
    about 10× faster than ``torch.sort``, which also sorts an index alongside. A sorted sequence
    is unique, so the values are the bits of ``torch.sort(columns, dim=1).values`` on any CPU,
    for rows without NaN whose zeros are ``+0.0`` (see the module docstring)."""
    return torch.from_numpy(np.sort(columns.numpy(), axis=1))


def _rows_at(columns: Tensor, values: Tensor, positions: Tensor) -> Tensor:
    """How often each row sits at ``positions`` of its coordinate's stable ascending order.

    Args:
        columns: ``(c, n)`` block, one coordinate per row (:func:`_map_column_blocks`).
        values: ``columns`` with every row sorted (:func:`_sorted_rows`).
        positions: ``(c, w)`` ascending positions in each coordinate's sorted order, where equal
            values are ranked by row index (``torch.sort(..., stable=True)``).

    Returns:
        ``(n,)`` int64: for every row ``i``, the number of (coordinate, position) slots it fills.

    Where a coordinate's positions are one run ``a..b`` and no run of equal values crosses ``a``
    or ``b``, the rows there are exactly those with ``values[a] <= x <= values[b]``, counted by
    comparison; the other coordinates (ties at an end, or a gap) take the stable sort's indices.
    """
    n = columns.shape[1]
    first, last = positions[:, :1], positions[:, -1:]
    low, high = values.gather(1, first), values.gather(1, last)
    simple = last - first == positions.shape[1] - 1
    simple &= (first == 0) | (values.gather(1, (first - 1).clamp(min=0)) != low)
    simple &= (last == n - 1) | (values.gather(1, (last + 1).clamp(max=n - 1)) != high)
    # numpy's comparisons run about twice as fast as torch's on these blocks, and release the GIL.
    inside = (columns.numpy() >= low.numpy()) & (columns.numpy() <= high.numpy()) & simple.numpy()
    counts = torch.from_numpy(inside.sum(axis=0, dtype=np.int64))
    hard = (~simple).squeeze(1).nonzero().squeeze(1)
    if hard.numel():
        rows = torch.sort(columns[hard], dim=1, stable=True).indices.gather(1, positions[hard])
        counts += torch.bincount(rows.reshape(-1), minlength=n)
    return counts


def _check_matrix(updates: Tensor) -> None:
    if updates.ndim != 2 or updates.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, d) matrix of updates, got shape {tuple(updates.shape)}")
