"""Nearest-neighbour mixing: replace each update by the mean of its nearest neighbours."""

from __future__ import annotations

import torch
from torch import Tensor

from torchchain.strategies.base import PreAggregator
from torchchain.strategies.kernels import pairwise_sq_distances, smallest_indices, weighted_mean

__all__ = ["NearestNeighborMixing"]


class NearestNeighborMixing(PreAggregator):
    """Replace every row by the mean of its ``n - f`` nearest rows (itself included).

    Allouah et al., 2023, "Fixing by Mixing: A Recipe for Optimal Byzantine ML under
    Heterogeneity". Mixing pulls honest rows towards each other and bounds how far Byzantine
    rows can sit from them, which lets rules such as Krum or the median reach optimal error
    under heterogeneous data. Distances are L2; among rows equally far the lower row index
    (client-key order) is taken first, never the row content. A row is at distance 0 from
    itself, so it is among its own neighbours (unless it has ``n - f`` or more exact duplicates
    with lower indices, which give the same mean).
    ``f`` is clamped to ``n - 1`` when fewer rows arrive. Sample counts pass through unchanged
    and the means are unweighted, as in the paper.

    Mixing: ``1/(n - f)`` from each neighbour to the row it replaces.
    """

    name = "nnm"

    def __call__(
        self, updates: Tensor, weights: Tensor, *, f: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = updates.shape[0]
        count = n - max(0, min(f, n - 1))
        distances = pairwise_sq_distances(updates)
        uniform = torch.ones(count, dtype=torch.float64)
        mixing = torch.zeros(n, n, dtype=torch.float64)
        mixed = torch.empty_like(updates)
        for row in range(n):
            neighbours = smallest_indices(distances[row], count)
            mixing[row, neighbours] = 1.0 / count
            mixed[row] = weighted_mean(updates[neighbours], uniform)
        return mixed, weights.clone(), mixing
