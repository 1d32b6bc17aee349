"""Krum-family selections from Gram-matrix bounds equal the selections of the exact distances."""

from __future__ import annotations

import pytest
import torch

from torchchain.strategies import distance_bounds as B
from torchchain.strategies import kernels as K


def _rows(kind: str, n: int, d: int, seed: int) -> torch.Tensor:
    """Inputs that stress the bounds: plain noise, a huge shared vector with tiny differences
    (the Gram centre then cancels catastrophically), Sybil copies inside the honest cloud, exact
    ties by symmetry, rows of very different scales, rows one ulp apart, and all zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "cancellation":
        x = 1e8 * torch.randn(1, d, generator=g, dtype=torch.float64) + 1e-3 * x
    elif kind == "sybils":
        x = torch.randn(1, d, generator=g, dtype=torch.float64) + 0.1 * x
        x[: n // 3] = x[n // 2]  # copies of an honest-looking row, above and below its index
    elif kind == "symmetric":
        x = torch.zeros(n, d, dtype=torch.float64)
        x[torch.arange(n), torch.arange(n) % d] = torch.where(torch.arange(n) % 2 == 0, -1.0, 1.0).to(torch.float64)
    elif kind == "scales":
        x = x * torch.logspace(-6, 6, n, dtype=torch.float64)[:, None]
    elif kind == "ulps":
        x[1:] = x[0]
        x[1:, 0] = torch.nextafter(x[0, 0], torch.tensor(torch.inf, dtype=torch.float64))
        x[2:, -1] += 1e-300
    elif kind == "zeros":
        x = torch.zeros(n, d, dtype=torch.float64)
    return x + 0.0


KINDS = ["noise", "cancellation", "sybils", "symmetric", "scales", "ulps", "zeros"]
SHAPES = [(3, 1), (5, 7), (11, 4097), (16, 300), (24, 9000)]


def _cases():
    for kind in KINDS:
        for seed, (n, d) in enumerate(SHAPES):
            yield pytest.param(kind, n, d, seed, id=f"{kind}-{n}x{d}")


@pytest.mark.parametrize(("kind", "n", "d", "seed"), list(_cases()))
def test_the_bounds_contain_every_exact_distance(kind, n, d, seed):
    updates = _rows(kind, n, d, seed)
    exact = K.pairwise_sq_distances(updates)
    lo, hi = B._intervals(updates)
    assert bool((lo <= exact).all()) and bool((exact <= hi).all())
    bounds = B._Bounds.from_gram(updates)  # equal rows' intervals intersected
    if bounds is not None:
        assert bool((bounds.lo <= exact).all()) and bool((exact <= bounds.hi).all())


def test_the_cancellation_rows_put_the_gram_centre_far_from_the_exact_distances():
    # The containment test has teeth: on these rows the Gram centre misses the exact distances
    # by more than a ten-thousandth of the bound, so a bound that forgot the factor d of the
    # dot products' rounding (or any factor above 10^4) would fail it.
    updates = _rows("cancellation", 16, 9000, 0)
    gram = updates @ updates.T
    centre = gram.diagonal()[:, None] + gram.diagonal()[None, :] - 2 * gram
    lo, hi = B._intervals(updates)
    assert bool(((centre - K.pairwise_sq_distances(updates)).abs() > (hi - lo) / 2 / 10_000).any())


@pytest.mark.parametrize(("kind", "n", "d", "seed"), list(_cases()))
def test_krum_order_is_the_selection_of_the_exact_distances(kind, n, d, seed):
    updates = _rows(kind, n, d, seed)
    distances = K.pairwise_sq_distances(updates)
    for f in range(0, (n - 3) // 2 + 1):
        for count in sorted({1, 2, n - f, n} & set(range(n + 1))):
            expected = K.smallest_indices(K.krum_scores_from_distances(distances, f), count)
            assert torch.equal(B.krum_order(updates, f, count), expected), (f, count)


@pytest.mark.parametrize(("kind", "n", "d", "seed"), list(_cases()))
def test_iterated_krum_order_is_the_selection_of_the_exact_distances(kind, n, d, seed):
    updates = _rows(kind, n, d, seed)
    distances = K.pairwise_sq_distances(updates)
    for f in range(0, (n - 3) // 4 + 1):
        count = n - 2 * f
        expected = K.iterated_krum_selection(distances, f, count)
        assert torch.equal(B.iterated_krum_order(updates, f, count), expected), f


def _forbid_exact_distances(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("exact distances were computed")

    monkeypatch.setattr(B, "sq_distances_to", refuse)
    monkeypatch.setattr(B, "pairwise_sq_distances", refuse)


def test_separated_rows_and_sybil_copies_need_no_exact_distance(monkeypatch):
    g = torch.Generator().manual_seed(1)
    n, d, f = 30, 20_000, 6
    updates = torch.randn(1, d, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    updates[:f] = updates[f : f + 1] * 0.9  # identical attackers close to the honest mean: they win Krum
    updates[f] = -10 * updates[f]
    expected_krum = K.smallest_indices(K.krum_scores(updates, f), n - f)
    expected_bulyan = K.iterated_krum_selection(K.pairwise_sq_distances(updates), f, n - 2 * f)
    _forbid_exact_distances(monkeypatch)
    assert torch.equal(B.krum_order(updates, f, n - f), expected_krum)
    assert set(expected_krum[:f].tolist()) == set(range(f))  # the copies lead, in index order
    assert torch.equal(B.iterated_krum_order(updates, f, n - 2 * f), expected_bulyan)


def test_rows_the_bounds_cannot_separate_get_their_exact_distances(monkeypatch):
    g = torch.Generator().manual_seed(3)
    # Rows 0.001 apart around a shared vector of norm 3,000: the bounds order most rows but
    # leave some scores overlapping.
    updates = 30 * torch.randn(1, 9000, generator=g, dtype=torch.float64)
    updates = updates + 1e-3 * torch.randn(16, 9000, generator=g, dtype=torch.float64)
    refined = []
    refine = B._Bounds.refine

    def counting(self, rows):
        refined.append(rows.tolist())
        return refine(self, rows)

    monkeypatch.setattr(B._Bounds, "refine", counting)
    expected = K.smallest_indices(K.krum_scores(updates, 3), 5)
    assert torch.equal(B.krum_order(updates, 3, 5), expected)
    assert 0 < len(sum(refined, [])) <= 8  # some rows were computed exactly, not all pairs


@pytest.mark.parametrize(
    "gram",
    [
        pytest.param(lambda x: (x.float() @ x.float().T).double(), id="float32-product"),
        pytest.param(lambda x: x @ x.T * (1 + 1e-9), id="biased-product"),
    ],
)
def test_a_gram_product_outside_the_rounding_model_falls_back_to_the_exact_distances(monkeypatch, gram):
    updates = _rows("noise", 12, 5000, 4)
    expected = K.smallest_indices(K.krum_scores(updates, 2), 3)
    expected_iterated = K.iterated_krum_selection(K.pairwise_sq_distances(updates), 2, 8)
    monkeypatch.setattr(B, "_gram", gram)
    assert B._intervals(updates) is None
    assert torch.equal(B.krum_order(updates, 2, 3), expected)
    assert torch.equal(B.iterated_krum_order(updates, 2, 8), expected_iterated)


def test_rows_whose_squares_overflow_fall_back_to_the_exact_distances():
    updates = _rows("noise", 7, 50, 5) * 1e160
    assert B._intervals(updates) is None
    assert torch.equal(B.krum_order(updates, 1, 2), K.smallest_indices(K.krum_scores(updates, 1), 2))


def test_exact_ties_everywhere_fall_back_to_all_pairs(monkeypatch):
    updates = _rows("symmetric", 12, 12, 0)  # +-e_i: every score ties exactly
    calls = []
    pairwise = K.pairwise_sq_distances
    monkeypatch.setattr(B, "pairwise_sq_distances", lambda x: calls.append(1) or pairwise(x))
    assert torch.equal(B.krum_order(updates, 2, 12), K.smallest_indices(K.krum_scores(updates, 2), 12))
    assert calls  # past half the rows refined, all pairs were computed as the reference does


@pytest.mark.parametrize("bad", [{"f": -1, "count": 1}, {"f": 0, "count": 4}, {"f": 0, "count": -1}])
def test_arguments_out_of_range_are_refused(bad):
    updates = _rows("noise", 3, 4, 0)
    for order in (B.krum_order, B.iterated_krum_order):
        with pytest.raises(ValueError):
            order(updates, **bad)
