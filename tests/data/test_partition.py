"""Partitioners: disjoint and covering, seeded, and skewed the way each scheme promises."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchchain.data.partition import (
    PARTITIONS,
    dirichlet_partition,
    iid_partition,
    partition,
    shard_partition,
)
from torchchain.errors import ConfigError

# 10 classes of 60 samples each, interleaved so that label order differs from index order.
BALANCED = torch.arange(600) % 10


def assert_disjoint_and_covering(parts: list[torch.Tensor], num_samples: int) -> None:
    for part in parts:
        assert part.dtype == torch.int64
        assert torch.equal(part, part.sort().values)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(num_samples))


def labels_per_client(parts: list[torch.Tensor], targets: torch.Tensor) -> list[int]:
    return [len(torch.unique(targets[part])) for part in parts]


@settings(max_examples=50, deadline=None)
@given(num_samples=st.integers(1, 300), data=st.data(), seed=st.integers(0, 2**31))
def test_iid_partition_covers_everything_with_near_equal_sizes(num_samples: int, data, seed: int) -> None:
    num_clients = data.draw(st.integers(1, num_samples))
    parts = iid_partition(num_samples, num_clients, seed=seed)
    assert len(parts) == num_clients
    assert_disjoint_and_covering(parts, num_samples)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_partition_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    first = iid_partition(100, 4, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(first, iid_partition(100, 4, seed=7)))
    assert not all(torch.equal(a, b) for a, b in zip(first, iid_partition(100, 4, seed=8)))


def test_iid_partition_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    iid_partition(100, 4, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("alpha", [0.05, 0.5, 100.0])
def test_dirichlet_partition_covers_everything(alpha: float) -> None:
    parts = dirichlet_partition(BALANCED, 8, alpha=alpha, seed=0)
    assert len(parts) == 8
    assert_disjoint_and_covering(parts, 600)
    assert min(len(part) for part in parts) >= 1


def test_dirichlet_partition_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    first = dirichlet_partition(BALANCED, 5, alpha=0.5, seed=3)
    again = dirichlet_partition(BALANCED, 5, alpha=0.5, seed=3)
    other = dirichlet_partition(BALANCED, 5, alpha=0.5, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def mean_majority_share(alpha: float) -> float:
        """Average, over clients, of the fraction of a client's samples in its commonest label."""
        shares = []
        for seed in range(3):
            for part in dirichlet_partition(BALANCED, 10, alpha=alpha, seed=seed):
                shares.append(torch.bincount(BALANCED[part]).max().item() / len(part))
        return sum(shares) / len(shares)

    near_iid, moderate, skewed = mean_majority_share(100.0), mean_majority_share(1.0), mean_majority_share(0.05)
    assert near_iid < 0.2  # ten equally likely labels: about 0.1 each
    assert near_iid < moderate < skewed
    assert skewed > 0.6


def test_dirichlet_min_size_is_respected() -> None:
    parts = dirichlet_partition(BALANCED, 10, alpha=0.3, seed=0, min_size=20)
    assert min(len(part) for part in parts) >= 20
    assert_disjoint_and_covering(parts, 600)


def test_dirichlet_gives_up_with_a_clear_error_when_min_size_is_unreachable() -> None:
    # Only an exactly even split of the 400 samples would do; alpha=0.01 practically never draws one.
    with pytest.raises(ConfigError, match="could not give each of 4 clients at least 100 samples"):
        dirichlet_partition(torch.zeros(400, dtype=torch.int64), 4, alpha=0.01, seed=0, min_size=100)


def test_shard_partition_gives_each_client_at_most_its_shard_count_of_labels() -> None:
    # 600 samples in 20 shards of 30; each class (60) is exactly two shards.
    parts = shard_partition(BALANCED, 10, shards_per_client=2, seed=0)
    assert_disjoint_and_covering(parts, 600)
    assert [len(part) for part in parts] == [60] * 10
    assert max(labels_per_client(parts, BALANCED)) <= 2
    one_shard = shard_partition(BALANCED, 20, shards_per_client=1, seed=0)
    assert labels_per_client(one_shard, BALANCED) == [1] * 20


def test_shard_partition_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    first = shard_partition(BALANCED, 10, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, shard_partition(BALANCED, 10, seed=1)))
    assert not all(torch.equal(a, b) for a, b in zip(first, shard_partition(BALANCED, 10, seed=2)))


def test_shard_partition_with_uneven_classes_still_covers_everything() -> None:
    targets = torch.tensor([0] * 7 + [1] * 5 + [2] * 11)
    parts = shard_partition(targets, 3, shards_per_client=2, seed=0)
    assert_disjoint_and_covering(parts, 23)
    assert max(labels_per_client(parts, targets)) <= 4


@pytest.mark.parametrize("kind", PARTITIONS)
def test_dispatcher_matches_the_named_function(kind: str) -> None:
    parts = partition(kind, BALANCED, 6, seed=5, alpha=0.3, shards_per_client=3)
    expected = {
        "iid": lambda: iid_partition(600, 6, seed=5),
        "dirichlet": lambda: dirichlet_partition(BALANCED, 6, alpha=0.3, seed=5),
        "shards": lambda: shard_partition(BALANCED, 6, shards_per_client=3, seed=5),
    }[kind]()
    assert all(torch.equal(a, b) for a, b in zip(parts, expected, strict=True))


def test_iid_dispatch_accepts_regression_targets() -> None:
    parts = partition("iid", torch.zeros(10, 1), 3, seed=0)
    assert_disjoint_and_covering(parts, 10)


def test_unknown_kind_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"partition.kind must be one of iid, dirichlet, shards; got 'foo'"):
        partition("foo", BALANCED, 2, seed=0)


@pytest.mark.parametrize("kind", PARTITIONS)
def test_more_clients_than_samples_is_a_config_error(kind: str) -> None:
    with pytest.raises(ConfigError, match="lower clients"):
        partition(kind, torch.tensor([0, 1, 0, 1]), 5, seed=0)


@pytest.mark.parametrize("kind", PARTITIONS)
def test_zero_clients_is_a_config_error(kind: str) -> None:
    with pytest.raises(ConfigError, match="clients must be >= 1"):
        partition(kind, BALANCED, 0, seed=0)


@pytest.mark.parametrize("kind", ["dirichlet", "shards"])
def test_label_schemes_reject_regression_targets(kind: str) -> None:
    with pytest.raises(ConfigError, match="use partition.kind=iid for regression"):
        partition(kind, torch.zeros(10, 1), 2, seed=0)


def test_bad_alpha_and_shard_count_name_their_keys() -> None:
    with pytest.raises(ConfigError, match="partition.alpha must be > 0"):
        dirichlet_partition(BALANCED, 2, alpha=0.0, seed=0)
    with pytest.raises(ConfigError, match="partition.shards_per_client must be >= 1"):
        shard_partition(BALANCED, 2, shards_per_client=0, seed=0)
