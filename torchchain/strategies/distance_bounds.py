"""Krum-family selections from one matrix product, with the bits of the exact distances.

Krum, Multi-Krum and Bulyan pick rows by sums of squared distances, and the distances that
define them are :func:`~torchchain.strategies.kernels.pairwise_sq_distances`: explicit
differences summed in a fixed blocked order, the same bits on every machine, at the price of
``n^2 / 2`` passes over ``d`` coordinates (about 5 s for ``n = 100``, ``d = 1.2M`` on 2 cores).
The functions here return exactly the selections those distances give, usually without
computing any of them:

1. **Bounds from the Gram matrix.** ``G = X X^T`` (one BLAS product) gives every distance as
   ``G_ii + G_jj - 2 G_ij``. BLAS adds in an order that differs between machines, so that value
   is never a result, only the centre of an interval. Whatever the order of its additions (with
   or without fused multiply-adds), a dot product of length ``d`` is within
   ``gamma_d * sum_k |a_k b_k| <= gamma_d |a| |b|`` of the real one, with
   ``gamma_m = m u / (1 - m u)`` and ``u = 2^-53`` (Higham, "Accuracy and Stability of Numerical
   Algorithms", 2nd ed., 2002, section 3.1). So the real distance lies within
   ``E_ij = 2 (gamma_d + 3u) (|x_i| + |x_j|)^2`` of the computed one (the factor 2 covers the
   rounding of the bound itself), and the fixed-order kernel, which adds non-negative terms
   along chains of at most ``d / 4096 + 4096`` additions, is within a relative
   ``rho = gamma_(d/4096 + 4100)`` of the real distance. Norms come from the same fixed-order
   kernel; a Gram diagonal that disagrees with them by more than the bounds allow (a BLAS that
   breaks the model, such as a reduced-precision or Strassen-like product) makes the functions
   fall back to the exact distances.
2. **Bounds on scores.** A Krum score is the sum of a row's ``k`` smallest distances, so it lies
   between the sums of its ``k`` smallest lower and upper bounds, widened by the rounding of the
   kernel's own sum of ``k`` terms.
3. **Certified picks.** A row is picked when its score's upper bound is below every rival's lower
   bound. Rows whose intervals overlap get their exact distances to every row (the kernel's bits,
   :func:`~torchchain.strategies.kernels.sq_distances_to`), and the pick is decided again; a row
   whose distances are all exact has the reference score bit for bit, so ties go to the lower
   index exactly as in the reference. Rows that are equal bit for bit (Sybil copies) have equal
   scores in every subset, so they are ranked by index without computing anything.

Only the time depends on how well the bounds separate the rows: the result is always the
reference selection. When more than half the rows would need exact distances, all pairs are
computed as the reference does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchchain.strategies.kernels import (
    iterated_krum_selection,
    krum_scores_from_distances,
    pairwise_sq_distances,
    row_sq_norms,
    smallest_indices,
    sq_distances_to,
)

__all__ = ["iterated_krum_order", "krum_order"]

#: Unit roundoff of float64.
_U = 2.0**-53

#: Block length of the fixed-order kernel (``kernels._BLOCK``), for its rounding bound.
_KERNEL_BLOCK = 4096

#: Above this share of rows needing exact distances, all pairs are computed.
_MAX_EXACT_SHARE = 0.5


def _gamma(m: int) -> float:
    """``m u / (1 - m u)``: the relative error bound of ``m`` float64 roundings."""
    return m * _U / (1 - m * _U)


def _gram(updates: Tensor) -> Tensor:
    """``X X^T`` by BLAS (any summation order)."""
    return updates @ updates.T


class _Bounds:
    """Intervals ``[lo, hi]`` that contain the reference squared distance of every pair.

    ``known[i, j]`` marks exact entries (``lo == hi`` is then the reference value). ``group[i]``
    is the lowest index of the rows equal to row ``i`` bit for bit.
    """

    def __init__(self, updates: Tensor, lo: Tensor, hi: Tensor, group: Tensor) -> None:
        self.updates = updates
        self.lo = lo
        self.hi = hi
        self.group = group
        n = updates.shape[0]
        self.known = torch.eye(n, dtype=torch.bool) | (group[:, None] == group[None, :])
        self.exact_rows = 0

    @classmethod
    def from_gram(cls, updates: Tensor) -> _Bounds | None:
        """The bounds of ``updates``; ``None`` when they cannot be trusted or are too loose to
        help (see :func:`_intervals` and :func:`_twin_groups`)."""
        intervals = _intervals(updates)
        if intervals is None:
            return None
        group = _twin_groups(updates, intervals[0])
        if group is None:
            return None
        bounds = cls(updates, *intervals, group)
        bounds._merge_twins()
        return bounds

    def _merge_twins(self) -> None:
        """Give equal rows the intersection of their intervals (they bound the same values), and
        zero, exactly, between each other."""
        for leader in torch.unique(self.group).tolist():
            members = (self.group == leader).nonzero().flatten()
            if members.numel() < 2:
                continue
            lo = self.lo[members].amax(dim=0)
            hi = self.hi[members].amin(dim=0)
            lo[members] = 0.0
            hi[members] = 0.0
            self.lo[members] = lo
            self.hi[members] = hi
            self.lo[:, members] = lo[:, None]
            self.hi[:, members] = hi[:, None]

    def refine(self, rows: Tensor) -> None:
        """Replace the intervals of ``rows`` (and of the rows equal to them) by the reference
        distances."""
        before = self.exact_rows
        for row in torch.unique(self.group[rows]).tolist():
            if bool(self.known[row].all()):
                continue
            exact = sq_distances_to(self.updates, self.updates[row])
            self.exact_rows += 1
            members = (self.group == row).nonzero().flatten()
            self.lo[members] = exact
            self.hi[members] = exact
            self.lo[:, members] = exact[:, None]
            self.hi[:, members] = exact[:, None]
            self.known[members] = True
            self.known[:, members] = True
        if self.exact_rows == before:
            raise RuntimeError("refine() was asked for rows whose distances are all exact already")

    @property
    def over_budget(self) -> bool:
        """Whether more rows got exact distances than computing all pairs would cost."""
        return self.exact_rows > _MAX_EXACT_SHARE * self.updates.shape[0]

    def scores(self, index: Tensor, neighbours: int) -> tuple[Tensor, Tensor, Tensor]:
        """Bounds on the Krum scores of the rows ``index`` (ascending) among themselves.

        Returns:
            ``(low, high, exact)``: where ``exact`` is set, ``low == high`` is the reference score
            (:func:`~torchchain.strategies.kernels.krum_scores_from_distances` of the exact
            distances), bit for bit.
        """
        lo = self.lo[index][:, index]
        hi = self.hi[index][:, index]
        exact = self.known[index][:, index].all(dim=1)
        r = index.numel()
        diagonal = torch.eye(r, dtype=torch.bool)
        low = torch.sort(lo.masked_fill(diagonal, math.inf), dim=1).values[:, :neighbours].sum(dim=1)
        high = torch.sort(hi.masked_fill(diagonal, math.inf), dim=1).values[:, :neighbours].sum(dim=1)
        widen = 3 * _gamma(neighbours + 2)
        low = low * (1 - widen)
        high = high * (1 + widen) + 2.0**-1070 * neighbours
        if bool(exact.any()):
            rows = exact.nonzero().flatten()
            reference = krum_scores_from_distances(lo, 0, neighbours=neighbours)[rows]
            low[rows] = reference
            high[rows] = reference
        return low, high, exact


def _intervals(updates: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(lo, hi)``, ``(n, n)``: every reference squared distance lies in ``[lo, hi]``; ``None``
    for non-finite values, or a Gram diagonal outside its bound."""
    d = updates.shape[1]
    gram = _gram(updates)
    sq_norms = row_sq_norms(updates)
    if not (bool(torch.isfinite(gram).all()) and bool(torch.isfinite(sq_norms).all())):
        return None
    rho = _gamma(math.ceil(d / _KERNEL_BLOCK) + _KERNEL_BLOCK + 4)
    gamma_d = _gamma(d + 2)
    tiny = (d + 16) * 2.0**-1070  # underflow: at most half a subnormal step per operation
    # |x_i|^2 from the fixed-order kernel, and from BLAS: each within its bound of the real value.
    norm_hi = torch.sqrt(sq_norms / (1 - 2 * rho)) * (1 + 4 * _U) + tiny
    diagonal = gram.diagonal()
    if not bool(((diagonal - sq_norms).abs() <= 2 * (gamma_d + rho) * norm_hi**2 + tiny).all()):
        return None
    centre = diagonal[:, None] + diagonal[None, :] - 2 * gram
    spread = 2 * (gamma_d + 3 * _U) * (norm_hi[:, None] + norm_hi[None, :]) ** 2 + tiny
    lo = torch.clamp(centre - spread, min=0.0) * (1 - 2 * rho)
    hi = (centre + spread) * (1 + 2 * rho) + tiny
    if not bool(torch.isfinite(hi).all()):
        return None
    lo.fill_diagonal_(0.0)
    hi.fill_diagonal_(0.0)
    return lo, hi


def _twin_groups(updates: Tensor, lo: Tensor) -> Tensor | None:
    """For every row, the lowest index of the rows equal to it (compared only where the bounds
    allow a distance of 0); ``None`` when more than ``n`` such pairs turn out unequal (bounds too
    loose to be worth using)."""
    n = updates.shape[0]
    group = torch.arange(n)
    unequal = 0
    for i, j in torch.triu(lo == 0, diagonal=1).nonzero().tolist():
        if group[j] != j:
            continue
        if torch.equal(updates[i], updates[j]):
            group[j] = group[i]
        else:
            unequal += 1
            if unequal > n:
                return None
    return group


def _first(low: Tensor, high: Tensor, exact: Tensor, group: Tensor, alive: Tensor) -> tuple[int, Tensor]:
    """The row that certainly has the smallest score among ``alive`` (ties: lower index), or the
    rows to refine before that can be decided.

    Returns:
        ``(row, ambiguous)``: ``row`` is -1 when ``ambiguous`` (indices) is not empty.
    """
    candidate_high = torch.where(alive, high, math.inf)
    winner = int(torch.argmin(candidate_high))  # the first of equal values: the lower index
    rivals = alive.clone()
    rivals[winner] = False
    # A rival is beaten when its lowest possible score is above the winner's highest one, when
    # both scores are exact (the winner then has the smaller score, or the same and a lower
    # index), or when it equals the winner bit for bit (same score, higher index).
    beaten = (low > high[winner]) | (exact & exact[winner]) | (group == group[winner])
    ambiguous = (rivals & ~beaten).nonzero().flatten()
    if ambiguous.numel():
        unsure = torch.cat([ambiguous, torch.tensor([winner])])
        return -1, unsure[~exact[unsure]]
    return winner, ambiguous


def _ordered_prefix(bounds: _Bounds, neighbours: int, count: int) -> Tensor | None:
    """The first ``count`` rows by (Krum score, index), or ``None`` once too many rows needed
    exact distances."""
    n = bounds.updates.shape[0]
    index = torch.arange(n)
    while True:
        low, high, exact = bounds.scores(index, neighbours)
        alive = torch.ones(n, dtype=torch.bool)
        order: list[int] = []
        unsure = torch.empty(0, dtype=torch.int64)
        while len(order) < count:
            row, unsure = _first(low, high, exact, bounds.group, alive)
            if row < 0:
                break
            order.append(row)
            alive[row] = False
        if len(order) == count:
            return torch.tensor(order, dtype=torch.int64)
        bounds.refine(unsure)
        if bounds.over_budget:
            return None


def _check_arguments(n: int, f: int, count: int) -> None:
    if f < 0:
        raise ValueError(f"f must be non-negative, got {f}")
    if not 0 <= count <= n:
        raise ValueError(f"count must satisfy 0 <= count <= {n}, got {count}")


def krum_order(updates: Tensor, f: int, count: int) -> Tensor:
    """``smallest_indices(krum_scores(updates, f), count)``, bit for bit, from a Gram matrix.

    The ``count`` rows with the smallest Krum scores (Blanchard et al., 2017, "Machine Learning
    with Adversaries: Byzantine Tolerant Gradient Descent"), best first, ties to the lower index;
    see the module docstring for how the selection is certified.

    Args:
        updates: ``(n, d)`` float64, finite.
        f: Byzantine rows assumed, ``f >= 0``.
        count: Rows to return, ``0 <= count <= n``.

    Returns:
        ``(count,)`` int64.
    """
    n = updates.shape[0]
    _check_arguments(n, f, count)
    neighbours = max(n - f - 2, 0)
    if neighbours == 0 or count == 0:  # every score is 0: the first rows by index
        return torch.arange(count, dtype=torch.int64)
    bounds = _Bounds.from_gram(updates)
    order = None if bounds is None else _ordered_prefix(bounds, neighbours, count)
    if order is None:
        return smallest_indices(krum_scores_from_distances(pairwise_sq_distances(updates), f), count)
    return order


def iterated_krum_order(updates: Tensor, f: int, count: int) -> Tensor:
    """``iterated_krum_selection(pairwise_sq_distances(updates), f, count)``, bit for bit, from a
    Gram matrix.

    Bulyan's first stage (El Mhamdi et al., 2018, "The Hidden Vulnerability of Distributed
    Learning in Byzantium"): the best Krum-scored row among those left, ``count`` times; each pick
    is certified as in :func:`krum_order`.

    Args:
        updates: ``(n, d)`` float64, finite.
        f: Byzantine rows assumed, ``f >= 0``.
        count: Rows to pick, ``0 <= count <= n``.

    Returns:
        ``(count,)`` int64, in the order picked.
    """
    n = updates.shape[0]
    _check_arguments(n, f, count)
    if count == 0:
        return torch.empty(0, dtype=torch.int64)
    bounds = _Bounds.from_gram(updates) if n > 2 else None
    if bounds is None:
        return iterated_krum_selection(pairwise_sq_distances(updates), f, count)
    remaining = list(range(n))
    selected: list[int] = []
    while len(selected) < count:
        r = len(remaining)
        neighbours = min(max(r - f - 2, 2), r - 1)
        index = torch.tensor(remaining, dtype=torch.int64)
        low, high, exact = bounds.scores(index, neighbours)
        row, unsure = _first(low, high, exact, bounds.group[index], torch.ones(r, dtype=torch.bool))
        if row < 0:
            bounds.refine(index[unsure])
            if bounds.over_budget:
                return iterated_krum_selection(pairwise_sq_distances(updates), f, count)
            continue
        selected.append(remaining.pop(row))
    return torch.tensor(selected, dtype=torch.int64)
