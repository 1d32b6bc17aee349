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


def test_ordered_weighted_sum_adds_the_rows_left_to_right():
    # 1e16 + 1 rounds back to 1e16, so the order of the rows shows in the result.
    rows = t([[1e16], [1.0], [1.0], [-1e16]])
    assert K.ordered_weighted_sum(rows, t([1.0, 1.0, 1.0, 1.0])).item() == 0.0
    assert K.ordered_weighted_sum(rows[[1, 2, 0, 3]], t([1.0, 1.0, 1.0, 1.0])).item() == 2.0


@pytest.mark.parametrize("d", [1, 4096, 4097, 10_001])
def test_ordered_weighted_sum_and_blocked_distances_equal_the_whole_matrix_formulas_bit_for_bit(d):
    generator = torch.Generator().manual_seed(d)
    updates = torch.randn(9, d, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(-8, 8, (9, 1), generator=generator)
    coefficients = torch.rand(9, generator=generator, dtype=torch.float64)
    center = torch.randn(d, generator=generator, dtype=torch.float64)
    assert torch.equal(K.ordered_weighted_sum(updates, coefficients), K.sequential_sum(updates * coefficients[:, None]))
    diff = updates - center
    assert torch.equal(K.sq_distances_to(updates, center), K.row_sums(diff * diff))
    assert torch.equal(K.row_norms(updates), K.row_sums(updates * updates).sqrt())
    pairwise = K.pairwise_sq_distances(updates)
    for i in range(9):
        assert torch.equal(pairwise[i, i + 1 :], K.row_sums((updates[i + 1 :] - updates[i]) ** 2))


def test_means_of_chosen_rows_have_the_bits_of_the_copied_rows():
    generator = torch.Generator().manual_seed(5)
    updates = torch.randn(8, 5000, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(-8, 8, (8, 1), generator=generator)
    rows = torch.tensor([6, 1, 3, 0])  # an order of the caller's choosing, not index order
    weights = torch.rand(4, generator=generator, dtype=torch.float64)
    assert torch.equal(K.weighted_mean(updates, weights, rows=rows), K.weighted_mean(updates[rows], weights))
    assert torch.equal(K.ordered_weighted_sum(updates, weights, rows=rows), K.ordered_weighted_sum(updates[rows], weights))
    with pytest.raises(ValueError, match="weights"):
        K.weighted_mean(updates, torch.ones(8, dtype=torch.float64), rows=rows)
    with pytest.raises(ValueError, match="coefficients"):
        K.ordered_weighted_sum(updates, weights, rows=rows[:0])


@pytest.mark.parametrize("n", [1, 2, 7])
def test_the_streamed_clipped_mean_has_the_bits_of_the_whole_matrix_formula(n):
    generator = torch.Generator().manual_seed(n)
    updates = torch.randn(n, 9000, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(-8, 8, (n, 1), generator=generator)
    center = torch.randn(9000, generator=generator, dtype=torch.float64)
    factors = torch.rand(n, generator=generator, dtype=torch.float64)
    expected = K.weighted_mean((updates - center) * factors[:, None], torch.ones(n, dtype=torch.float64))
    assert torch.equal(K.mean_scaled_difference(updates, center, factors), expected)
    assert torch.equal(K.sq_distances_to(updates, center).sqrt(), K.row_norms(updates - center))


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


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 11])
@pytest.mark.parametrize("d", [1, 5, 8192, 20_000])
def test_coordinate_median_has_the_bits_of_the_sorted_middle_values_ties_and_infinities_included(n, d):
    generator = torch.Generator().manual_seed(n * d)
    tied = torch.randint(-3, 4, (n, d), generator=generator).to(torch.float64)  # many equal values
    spread = torch.randn(n, d, generator=generator, dtype=torch.float64)
    spread[0, :3] = torch.tensor([float("inf"), -float("inf"), float("inf")])[:d]
    for updates in (tied, spread):
        assert torch.equal(K.coordinate_median(updates), K.coordinate_trimmed_mean(updates, (n - 1) // 2))


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


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 4, 9, 10])
@pytest.mark.parametrize("d", [3, 8192, 20_001])
def test_coordinate_rules_in_column_blocks_have_the_bits_of_the_whole_matrix_sorts(n, d, threads, monkeypatch):
    # The kernels sort transposed blocks of 8192 coordinates with numpy, count the rows in the
    # kept positions by comparison (a stable sort only where a run of equal values crosses an end)
    # and spread the blocks over threads; a stable torch.sort of dim 0 of the whole matrix is the
    # formula they replace, with the same values, row indices and sums.
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    generator = torch.Generator().manual_seed(n * d)
    tied = torch.randint(-3, 4, (n, d), generator=generator).to(torch.float64) + 0.0
    spread = torch.randn(n, d, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(-6, 6, (n, 1), generator=generator)
    sybil = spread.clone()
    sybil[n // 2 :] = spread[0]  # copies of row 0 at the median of many coordinates
    for updates in (tied, spread, sybil):
        values, rows = torch.sort(updates, dim=0, stable=True)
        middle = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
        assert torch.equal(K.coordinate_median(updates), middle)
        for trim in sorted({0, n // 4, (n - 1) // 2}):
            mean, shares = K.trimmed_mean_with_shares(updates, trim)
            assert torch.equal(mean, K.sequential_sum(values[trim : n - trim], dim=0) / (n - 2 * trim))
            expected = torch.bincount(rows[trim : n - trim].reshape(-1), minlength=n).double() / ((n - 2 * trim) * d)
            assert torch.equal(shares, expected)
        median = (values[(n - 1) // 2] + values[n // 2]) / 2
        for beta in sorted({1, max(n // 2, 1), max(n - 2, 1)}):
            positions = torch.sort(torch.sort((values - median).abs(), dim=0, stable=True).indices[:beta], dim=0).values
            mean, shares = K.mean_around_median_with_shares(updates, beta)
            assert torch.equal(mean, K.sequential_sum(values.gather(0, positions), dim=0) / beta)
            expected = torch.bincount(rows.gather(0, positions).reshape(-1), minlength=n).double() / (beta * d)
            assert torch.equal(shares, expected)


def test_row_counts_take_the_stable_sort_only_where_equal_values_cross_the_kept_positions(monkeypatch):
    sorts = []
    real_sort = torch.sort
    monkeypatch.setattr(torch, "sort", lambda *a, **k: sorts.append(a[0].shape) or real_sort(*a, **k))
    # Coordinate 0: distinct values. Coordinate 1: three rows hold 2.0 across the lower end of
    # the kept positions 1..2 (sorted 2, 2, 2, 9), so which of them is kept depends on the index.
    updates = t([[5.0, 2.0], [1.0, 9.0], [3.0, 2.0], [7.0, 2.0]])
    mean, shares = K.trimmed_mean_with_shares(updates, 1)
    assert mean.tolist() == [4.0, 2.0]
    # Kept: coordinate 0 rows 2 (3.0) and 0 (5.0); coordinate 1 the 2nd and 3rd of rows 0, 2, 3.
    assert shares.tolist() == [0.25, 0.0, 0.5, 0.25]
    assert sorts == [(1, 4)]  # one coordinate sorted, the other counted


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


def test_smallest_indices_breaks_ties_by_index():
    assert K.smallest_indices(t([3.0, 1.0, 1.0, 0.0]), 3).tolist() == [3, 1, 2]
    # A long run of equal values keeps index order (a stable sort), whatever the length.
    assert K.smallest_indices(torch.zeros(40, dtype=torch.float64), 40).tolist() == list(range(40))


def test_smallest_indices_takes_no_rows_to_break_ties_by_content():
    # Row content is the attacker's to choose, so it can no longer be passed in to break ties.
    values, rows = t([1.0, 1.0]), t([[2.0, 0.0], [1.0, 5.0]])
    with pytest.raises(TypeError):
        K.smallest_indices(values, 1, rows=rows)  # type: ignore[call-arg]
    assert not hasattr(K, "_order_ties_by_rows")


def test_nearest_rows_breaks_ties_by_index_not_by_content():
    rows = t([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, 0.5]])
    # squared distances to the origin: 1, 4, 1, 0.25; of the tie, row 0 (1, 0) comes before row 2
    # (-1, 0) although (-1, 0) is lexicographically smaller
    assert K.nearest_rows(rows, t([0.0, 0.0]), 3).tolist() == [3, 0, 2]


def test_krum_scores_by_hand():
    # n = 4, f = 0: each score sums the 2 smallest squared distances to the other rows.
    # row 0: {1, 4, 100} -> 5; row 1: {1, 1, 81} -> 2; row 2: {4, 1, 64} -> 5; row 3: {100, 81, 64} -> 145
    assert K.krum_scores(t([[0.0], [1.0], [2.0], [10.0]]), 0).tolist() == [5.0, 2.0, 5.0, 145.0]
    # f = 1: one neighbour each
    assert K.krum_scores(t([[0.0], [1.0], [2.0], [10.0]]), 1).tolist() == [1.0, 1.0, 1.0, 64.0]


def test_krum_scores_with_too_few_rows_are_zero():
    assert K.krum_scores(t([[0.0], [5.0]]), 1).tolist() == [0.0, 0.0]


def test_krum_scores_with_an_explicit_neighbour_count():
    distances = K.pairwise_sq_distances(t([[0.0], [1.0], [2.0], [10.0]]))
    # f = 1 alone would count 4 - 1 - 2 = 1 neighbour; two are asked for: the f = 0 scores
    assert K.krum_scores_from_distances(distances, 1, neighbours=2).tolist() == [5.0, 2.0, 5.0, 145.0]
    assert K.krum_scores_from_distances(distances, 1, neighbours=0).tolist() == [0.0] * 4
    for neighbours in (-1, 4):
        with pytest.raises(ValueError, match="neighbours"):
            K.krum_scores_from_distances(distances, 1, neighbours=neighbours)


def test_iterated_krum_selection_by_hand():
    # n = 7, f = 1, Bulyan picks theta = 5. Scores sum max(r - f - 2, 2) squared distances:
    # r = 7 (4 neighbours): rows 2 and 3 score 1+1+4+4 = 10, the lowest; tie -> row 2.
    # r = 6 (3): row 3 scores 1 (to 4) + 4 (to 1) + 4 (to 5) = 9.
    # r = 5 (2): rows 1 (1 + 9) and 4 (1 + 9) tie at 10 -> row 1.
    # r = 4 (2): among 0, 4, 5, 100 row 4 scores 1 + 16 = 17.
    # r = 3 (2, where Krum's r - f - 2 would count none): among 0, 5, 100 row 5 scores
    # 25 + 9025, row 0 25 + 10000: row 5, the row closest to the other two, not row 0.
    distances = K.pairwise_sq_distances(t([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]]))
    assert K.iterated_krum_selection(distances, 1, 5).tolist() == [2, 3, 1, 4, 5]
    assert K.iterated_krum_selection(distances, 1, 0).tolist() == []
    with pytest.raises(ValueError, match="count"):
        K.iterated_krum_selection(distances, 1, 8)


def test_iterated_krum_selection_last_pick_with_f_1_is_the_row_closest_to_the_others():
    # Bulyan's last pick sees r = 2f + 1 = 3 rows. Summed squared distances to the other two:
    # row 0 (10): 100 + 81 = 181; row 1 (0): 100 + 1 = 101; row 2 (1): 81 + 1 = 82.
    distances = K.pairwise_sq_distances(t([[10.0], [0.0], [1.0]]))
    assert K.iterated_krum_selection(distances, 1, 1).tolist() == [2]
    # Krum's own count, r - f - 2 = 0, scores every row 0 (row 0 would win on its index alone);
    # one neighbour ties the closest pair, rows 1 and 2 (row 1 would win on its index alone).
    assert K.krum_scores_from_distances(distances, 1).tolist() == [0.0, 0.0, 0.0]
    assert K.krum_scores_from_distances(distances, 1, neighbours=1).tolist() == [81.0, 1.0, 1.0]


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


FLOAT32_MAX = 3.4028235e38


def test_geometric_median_is_not_dragged_off_by_one_far_row():
    # The geometric median of 0..5 and one far row is the median of the line, 3. Starting at the
    # mean and stopping on the objective's relative change (which the far row dominates) gave
    # 30.08 here; the coordinate-wise median start and the movement test give 3.
    for far in (1e10, FLOAT32_MAX):
        rows = t([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [far]])
        point, coefficients = K.geometric_median(rows, torch.ones(7, dtype=torch.float64))
        assert abs(point.item() - 3.0) < 1e-9
        assert float(coefficients[6]) < 1e-15
        assert torch.equal(point, K.weighted_mean(rows, coefficients))


@pytest.mark.parametrize("far", [1e10, 1e30, FLOAT32_MAX, -FLOAT32_MAX])
def test_geometric_median_stays_with_the_honest_rows_up_to_float32_max(far):
    generator = torch.Generator().manual_seed(1)
    honest = torch.randn(7, 20, generator=generator, dtype=torch.float64)
    reference, _ = K.geometric_median(honest, torch.ones(7, dtype=torch.float64), max_iter=1000, tol=0.0)
    spread = float(K.row_norms(honest - reference).max())
    outliers = torch.full((3, 20), far, dtype=torch.float64)
    outliers[1, ::2] = -far  # far away in two directions, not a single one
    rows = torch.cat([honest, outliers])
    point, coefficients = K.geometric_median(rows, torch.ones(10, dtype=torch.float64))
    assert bool(torch.isfinite(point).all()) and bool(torch.isfinite(coefficients).all())
    # 3 of 10 rows, however far, shift the geometric median by a bounded amount: within the
    # honest rows' own spread of their geometric median.
    assert float(K.row_norms((point - reference)[None, :])[0]) < spread
    assert float(coefficients[7:].sum()) < 1e-6
    assert torch.equal(point, K.weighted_mean(rows, coefficients))
    # Another row order moves at most the last bits, far rows included.
    perm = torch.randperm(10, generator=generator)
    assert torch.allclose(K.geometric_median(rows[perm], torch.ones(10, dtype=torch.float64))[0], point, rtol=0, atol=1e-12)


def test_geometric_median_stops_when_the_estimate_stops_moving():
    generator = torch.Generator().manual_seed(2)
    rows = torch.randn(9, 5, generator=generator, dtype=torch.float64)
    rows[8] = 1e12  # a far row: it would dominate an objective-based stopping test
    ones = torch.ones(9, dtype=torch.float64)
    exact, _ = K.geometric_median(rows, ones, max_iter=1000, tol=0.0)
    point, _ = K.geometric_median(rows, ones, tol=1e-7)
    # median distance of the rows from the start is on the order of the honest spread (~2)
    assert float(K.row_norms((point - exact)[None, :])[0]) < 1e-5
    # a single step from the coordinate-wise median is already near the honest rows
    one_step, _ = K.geometric_median(rows, ones, max_iter=1)
    assert float(K.row_norms((one_step - exact)[None, :])[0]) < 2.0


@pytest.mark.parametrize(
    "kwargs",
    [{"nu": 0.0}, {"nu": float("nan")}, {"nu": float("inf")}, {"max_iter": 0}, {"tol": -1.0}, {"tol": float("nan")}],
)
def test_geometric_median_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        K.geometric_median(t([[1.0], [2.0]]), torch.ones(2, dtype=torch.float64), **kwargs)


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
