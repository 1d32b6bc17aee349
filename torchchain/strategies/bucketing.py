"""Bucketing: average random groups of updates before a robust rule sees them."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from torchchain.strategies.base import MAX_COUNT, PreAggregator, require_int
from torchchain.strategies.kernels import sorted_sum, weighted_mean

__all__ = ["Bucketing"]


class Bucketing(PreAggregator):
    """Shuffle the rows, cut them into buckets of ``s``, and replace each bucket by its mean.

    Karimireddy et al., 2022, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing". Averaging shrinks the spread of honest updates under heterogeneous data, while
    ``f`` Byzantine rows still spoil at most ``f`` of the ``ceil(n / s)`` buckets; the strategy
    after it then aggregates the buckets with the same ``f``, so its requirements apply to
    ``ceil(n / s)`` rows. The last bucket is smaller when ``s`` does not divide ``n``.

    The shuffle is ``torch.randperm(n, generator=generator)``, so it is the same on every node
    given the same seeded generator. Without a generator the rows keep their order (sorted by
    client key), i.e. buckets are fixed groups of neighbouring keys, which is deterministic but
    not the paper's random bucketing.

    Rows in a bucket are averaged with equal weight, as in the paper; a bucket carries the sum of
    its members' sample counts. Mixing: ``1/|bucket|`` from each member to its bucket.

    Args:
        s: Bucket size, an int in ``[1, MAX_COUNT]``; default 2.

    Raises:
        ConfigError: If ``s`` is out of range.
    """

    name = "bucketing"

    def __init__(self, *, s: int = 2) -> None:
        self.s = require_int(self.name, "the bucket size s", s, minimum=1, maximum=MAX_COUNT)

    def output_rows(self, n: int) -> int:
        return math.ceil(n / self.s)

    def __call__(
        self, updates: Tensor, weights: Tensor, *, f: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = updates.shape[0]
        order = torch.arange(n) if generator is None else torch.randperm(n, generator=generator)
        buckets = [order[start : start + self.s] for start in range(0, n, self.s)]
        mixing = torch.zeros(len(buckets), n, dtype=torch.float64)
        for row, members in enumerate(buckets):
            mixing[row, members] = 1.0 / len(members)
        means = torch.stack(
            [weighted_mean(updates[members], torch.ones(len(members), dtype=torch.float64)) for members in buckets]
        )
        bucket_weights = torch.stack([sorted_sum(weights[members]) for members in buckets])
        return means, bucket_weights, mixing

    def hyperparameters(self) -> dict[str, Any]:
        return {"s": self.s}
