"""The pure math of the strategies, on small inputs whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchchain.strategies import kernels as K


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# -- sums -----------------------------------------------------------------------------------


def test_sequential_sum_adds_in_index_order():
    # 1e16 + 1 rounds back to 1e16 in float64, so the order of the additions shows in the result.
    assert K.sequential_sum(t([1e16, 1.0, 1.0, -1e16])).item() == 0.0
    assert K.sequential_sum(t([1.0, 1.0, 1e16, -1e16])).item() == 2.0
    assert K.sequential_sum(t([[1e16, 1.0], [1.0, 1.0]]), dim=1).tolist() == [1e16, 2.0]


def test_sorted_sum_does_not_depend_on_the_order_of_the_values():
    values = t([1e16, 1.0, 1.0, -1e16, 3.0])
    expected = K.sorted_sum(values)
    for perm in ([4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 2, 3, 4, 0]):
        assert torch.equal(K.sorted_sum(values[perm]), expected)


def test_row_sums_of_long_rows_are_exact_on_integers():
    # 10_001 coordinates: two full blocks of 4096 and a shorter last block
    rows = torch.stack([torch.ones(10_001, dtype=torch.float64), torch.arange(10_001, dtype=torch.float64)])
    assert K.row_sums(rows).tolist() == [10_001.0, 10_001 * 10_000 / 2]
    assert K.row_sums(t([[1.0, 2.0, 3.0]])).tolist() == [6.0]
    assert K.row_sums(rows[1]).item() == 10_001 * 10_000 / 2  # a single vector works too


def test_sums_are_bit_identical_for_any_thread_count():
    generator = torch.Generator().manual_seed(0)
    updates = torch.randn(6, 70_001, generator=generator, dtype=torch.float64)
    weights = torch.rand(6, generator=generator, dtype=torch.float64) + 0.5
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(
                (K.pairwise_sq_distances(updates), K.weighted_mean(updates, weights), K.row_norms(updates))
            )
    finally:
        torch.set_num_threads(threads)
    for first, second in zip(*results):
        assert torch.equal(first, second)


# -- means ----------------------------------------------------------------------------------


def test_weighted_mean_by_hand():
    # (1 * [1, 2] + 3 * [3, 6]) / 4 = [2.5, 5]
    assert K.weighted_mean(t([[1.0, 2.0], [3.0, 6.0]]), t([1.0, 3.0])).tolist() == [2.5, 5.0]


def test_weighted_mean_of_one_row_is_that_row_exactly():
    row = t([[0.1, -0.7, 1e-300]])
    assert torch.equal(K.weighted_mean(row, t([3.0])), row[0])


def test_weighted_mean_ignores_rows_with_zero_weight():
    assert K.weighted_mean(t([[1.0], [1000.0], [3.0]]), t([1.0, 0.0, 1.0])).tolist() == [2.0]


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0]])
def test_weighted_mean_rejects_weights_without_a_positive_total(weights):
    with pytest.raises(ValueError, match="weights"):
        K.weighted_mean(t([[1.0], [2.0]]), t(weights))


def test_coordinate_median_odd_n():
    # column 0: 1, 2, 3 -> 2; column 1: 1, 5, 9 -> 5
    assert K.coordinate_median(t([[1.0, 5.0], [3.0, 1.0], [2.0, 9.0]])).tolist() == [2.0, 5.0]


def test_coordinate_median_even_n_is_the_mean_of_the_two_middle_values():
    # column 0 sorted: 1, 2, 3, 10 -> (2 + 3) / 2; column 1 sorted: 2, 4, 6, 8 -> (4 + 6) / 2
    assert K.coordinate_median(t([[1.0, 4.0], [3.0, 2.0], [10.0, 8.0], [2.0, 6.0]])).tolist() == [2.5, 5.0]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=9).flatmap(
        lambda n: st.lists(
            st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=3), min_size=n, max_size=n
        )
    )
)
def test_coordinate_median_matches_numpy(rows):
    expected = np.median(np.array(rows, dtype=np.float64), axis=0)
    assert np.allclose(K.coordinate_median(t(rows)).numpy(), expected, rtol=1e-12, atol=1e-9)


def test_trimmed_mean_drops_trim_values_at_each_end_of_every_coordinate():
    updates = t([[1.0, 7.0], [2.0, -100.0], [3.0, 6.0], [100.0, 5.0]])
    mean, shares = K.trimmed_mean_with_shares(updates, 1)
    # column 0 keeps 2, 3 (rows 1, 2); column 1 keeps 5, 6 (rows 3, 2)
    assert mean.tolist() == [2.5, 5.5]
    assert shares.tolist() == [0.0, 0.25, 0.5, 0.25]
    assert torch.equal(K.coordinate_trimmed_mean(updates, 1), mean)


def test_trimmed_mean_with_trim_zero_is_the_plain_mean():
    assert K.coordinate_trimmed_mean(t([[1.0], [2.0], [6.0]]), 0).tolist() == [3.0]


@pytest.mark.parametrize("trim", [-1, 2])
def test_trimmed_mean_rejects_a_trim_that_leaves_nothing(trim):
    with pytest.raises(ValueError, match="trim"):
        K.coordinate_trimmed_mean(t([[1.0], [2.0], [3.0], [4.0]]), trim)


def test_mean_around_median_keeps_the_values_closest_to_the_median():
    # column 0: 0, 1, 2, 3, 10; median 2; the three closest are 1, 2, 3.
    # column 1: 0, 1, 5, 9, 9.5; median 5; distances 5, 4, 0, 4, 4.5 -> 5, 1, 9.
    updates = t([[0.0, 0.0], [1.0, 1.0], [2.0, 5.0], [3.0, 9.0], [10.0, 9.5]])
    mean, shares = K.mean_around_median_with_shares(updates, 3)
    assert mean.tolist() == [2.0, 5.0]
    # kept slots: column 0 rows 1, 2, 3; column 1 rows 2, 1, 3 -> rows 1, 2, 3 fill 2 of 6 slots each
    assert shares.tolist() == [0.0, 1 / 3, 1 / 3, 1 / 3, 0.0]
    # beta = 2 on column 1: the median and, of the tie 1 / 9 at distance 4, the smaller value.
    assert K.mean_around_median_with_shares(updates[:, 1:], 2)[0].tolist() == [3.0]


# -- distances and selections ---------------------------------------------------------------


def test_pairwise_sq_distances_by_hand():
    distances = K.pairwise_sq_distances(t([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]))
    assert distances.tolist() == [[0.0, 25.0, 100.0], [25.0, 0.0, 25.0], [100.0, 25.0, 0.0]]


def test_pairwise_sq_distances_of_nearby_rows_do_not_cancel():
    # |a|^2 + |b|^2 - 2<a, b> would lose every digit here; explicit differences keep them.
    # The rows differ by 2**-13 in one coordinate (exactly representable next to 1e8).
    distances = K.pairwise_sq_distances(t([[1e8, 1e8], [1e8 + 2**-13, 1e8]]))
    assert distances[0, 1].item() == 2.0**-26


def test_sq_distances_and_norms_by_hand():
    assert K.sq_distances_to(t([[1.0, 1.0], [4.0, 5.0]]), t([1.0, 1.0])).tolist() == [0.0, 25.0]
    assert K.row_norms(t([[3.0, 4.0], [0.0, 0.0]])).tolist() == [5.0, 0.0]


def test_smallest_indices_breaks_ties_by_index_without_rows():
    assert K.smallest_indices(t([3.0, 1.0, 1.0, 0.0]), 3).tolist() == [3, 1, 2]


def test_smallest_indices_breaks_ties_by_row_content_then_index():
    values = t([1.0, 1.0, 1.0, 1.0, 0.0])
    rows = t([[2.0, 0.0], [1.0, 5.0], [1.0, 4.0], [1.0, 4.0], [9.0, 9.0]])
    # row 4 first; then among the tie: (1, 4) twice (rows 2, 3 by index), (1, 5), (2, 0)
    assert K.smallest_indices(values, 5, rows=rows).tolist() == [4, 2, 3, 1, 0]
    assert K.smallest_indices(values, 2, rows=rows).tolist() == [4, 2]


def test_nearest_rows_by_hand():
    rows = t([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, 0.5]])
    # squared distances to the origin: 1, 4, 1, 0.25; of the tie, (-1, 0) sorts before (1, 0)
    assert K.nearest_rows(rows, t([0.0, 0.0]), 3).tolist() == [3, 2, 0]


def test_krum_scores_by_hand():
    # n = 4, f = 0: each score sums the 2 smallest squared distances to the other rows.
    # row 0: {1, 4, 100} -> 5; row 1: {1, 1, 81} -> 2; row 2: {4, 1, 64} -> 5; row 3: {100, 81, 64} -> 145
    assert K.krum_scores(t([[0.0], [1.0], [2.0], [10.0]]), 0).tolist() == [5.0, 2.0, 5.0, 145.0]
    # f = 1: one neighbour each
    assert K.krum_scores(t([[0.0], [1.0], [2.0], [10.0]]), 1).tolist() == [1.0, 1.0, 1.0, 64.0]


def test_krum_scores_with_too_few_rows_are_zero():
    assert K.krum_scores(t([[0.0], [5.0]]), 1).tolist() == [0.0, 0.0]


# -- robust centres and clipping ------------------------------------------------------------


def test_geometric_median_of_a_square_is_its_centre():
    square = t([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    point, coefficients = K.geometric_median(square, torch.ones(4, dtype=torch.float64))
    assert point.tolist() == [1.0, 1.0]
    assert coefficients.tolist() == [0.25] * 4


def test_geometric_median_minimises_the_weighted_sum_of_distances():
    updates = t([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [1.0, 1.0], [30.0, -20.0]])
    weights = t([1.0, 2.0, 1.0, 1.0, 1.0])
    point, coefficients = K.geometric_median(updates, weights, nu=1e-9, max_iter=1000, tol=1e-14)

    def objective(z: torch.Tensor) -> float:
        return float((weights * (updates - z).norm(dim=1)).sum())

    best = objective(point)
    for direction in ([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.6, -0.8]):
        for step in (1e-2, 1e-4):
            assert best <= objective(point + step * t(direction)) + 1e-9
    # The estimate is exactly the weighted mean under the reported coefficients.
    assert torch.equal(point, K.weighted_mean(updates, coefficients))
    assert math.isclose(float(coefficients.sum()), 1.0, rel_tol=1e-12)


def test_geometric_median_of_one_row_is_that_row():
    row = t([[0.3, -1.7]])
    point, coefficients = K.geometric_median(row, t([2.0]))
    assert torch.equal(point, row[0]) and coefficients.tolist() == [1.0]


def test_clip_to_norm_by_hand():
    vectors = t([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    assert K.clip_factors(vectors, 1.0).tolist() == [0.2, 1.0, 1.0]
    clipped = K.clip_to_norm(vectors, 1.0)
    assert torch.allclose(clipped, t([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="positive"):
        K.clip_to_norm(vectors, 0.0)


def test_cosine_similarities_by_hand():
    cosines = K.cosine_similarities(t([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), t([2.0, 0.0]))
    assert torch.allclose(cosines, t([1.0, 0.0, -1.0, 0.0, 1 / math.sqrt(2)]), rtol=0, atol=1e-15)
