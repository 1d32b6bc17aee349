"""Bucketing, nearest-neighbour mixing and clipping, alone and composed with strategies."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from torchchain.errors import ConfigError
from torchchain.strategies import Bucketing, Clipping, Krum, Median, NearestNeighborMixing


def t(rows) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def ones(n: int) -> Tensor:
    return torch.ones(n, dtype=torch.float64)


def test_bucketing_without_a_generator_groups_neighbouring_rows():
    updates, weights = t([[1.0], [3.0], [5.0], [7.0], [9.0]]), t([1.0, 2.0, 3.0, 4.0, 5.0])
    means, bucket_weights, mixing = Bucketing(s=2)(updates, weights, f=1)
    assert means.tolist() == [[2.0], [6.0], [9.0]]
    assert bucket_weights.tolist() == [3.0, 7.0, 5.0]
    assert mixing.tolist() == [[0.5, 0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]
    assert Bucketing(s=2).output_rows(5) == 3


def test_bucketing_follows_the_seeded_generator_and_repeats_with_the_same_seed():
    updates = torch.arange(7, dtype=torch.float64)[:, None] * 10
    first = Bucketing(s=3)(updates, ones(7), f=1, generator=torch.Generator().manual_seed(5))
    second = Bucketing(s=3)(updates, ones(7), f=1, generator=torch.Generator().manual_seed(5))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    order = torch.randperm(7, generator=torch.Generator().manual_seed(5))
    assert first[0][-1].tolist() == [10.0 * order[6].item()]  # the last bucket holds the last shuffled row
    assert first[0][0].item() == pytest.approx(10.0 * order[:3].double().mean().item())


def test_bucketed_median_is_deterministic_with_a_seeded_generator():
    generator = torch.Generator().manual_seed(0)
    updates = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    results = [
        Median(f=1, pre=["bucketing"])(updates, ones(9), generator=torch.Generator().manual_seed(3)) for _ in range(2)
    ]
    assert torch.equal(results[0].update, results[1].update)
    assert torch.equal(results[0].trust, results[1].trust)


@pytest.mark.parametrize("s", [0, -2, 1.5, True])
def test_bucketing_rejects_a_bad_bucket_size(s):
    with pytest.raises(ConfigError, match="bucket size"):
        Bucketing(s=s)


def test_nnm_replaces_each_row_by_the_mean_of_its_n_minus_f_nearest():
    # f = 1, so each row averages its 2 nearest rows (itself included).
    mixed, weights, mixing = NearestNeighborMixing()(t([[0.0], [1.0], [10.0]]), t([1.0, 2.0, 3.0]), f=1)
    assert mixed.tolist() == [[0.5], [0.5], [5.5]]
    assert weights.tolist() == [1.0, 2.0, 3.0]
    assert mixing.tolist() == [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]


def test_nnm_breaks_equal_distances_by_row_index_not_by_content():
    # f = 1: each row averages its 2 nearest. Rows 1 (1) and 2 (-1) are equally far from row 0;
    # row 1 has the lower index, so row 0 mixes with it although -1 is the smaller value.
    mixed, _, mixing = NearestNeighborMixing()(t([[0.0], [1.0], [-1.0]]), ones(3), f=1)
    assert mixed[0].tolist() == [0.5]
    assert mixing[0].tolist() == [0.5, 0.5, 0.0]


def test_nnm_clamps_f_when_few_rows_arrive():
    mixed, _, mixing = NearestNeighborMixing()(t([[2.0], [4.0]]), ones(2), f=5)
    assert mixed.tolist() == [[2.0], [4.0]] and mixing.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_clipping_rescales_long_rows_and_keeps_the_identity_mixing():
    clipped, weights, mixing = Clipping(c=2.0)(t([[6.0, 8.0], [0.6, 0.8]]), t([1.0, 4.0]), f=0)
    assert torch.allclose(clipped, t([[1.2, 1.6], [0.6, 0.8]]), rtol=0, atol=1e-15)
    assert weights.tolist() == [1.0, 4.0]
    assert mixing.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ConfigError, match="positive"):
        Clipping(c=0)


def test_krum_after_nnm_back_projects_trust_to_the_clients():
    # NNM with f = 1 averages 4 nearest rows: rows 0-3 all become 1.5, row 4 becomes
    # (100 + 3 + 2 + 1) / 4 = 26.5. Krum picks mixed row 0 (ties by index), which is the mean of
    # clients 0-3, so they share the trust and the outlier gets none.
    strategy = Krum(pre=["nnm"])
    strategy.setup(num_clients=5, num_byzantine=1)
    result = strategy(t([[0.0], [1.0], [2.0], [3.0], [100.0]]), ones(5))
    assert result.update.tolist() == [1.5]
    assert result.trust.tolist() == [0.25, 0.25, 0.25, 0.25, 0.0]
