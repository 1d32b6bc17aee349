"""l-nearest aggregation: the mean of the updates nearest to the coordinate-wise median."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torchchain.errors import ConfigError
from torchchain.strategies.base import MAX_COUNT, Aggregate, PreAggregator, Strategy, require_int
from torchchain.strategies.kernels import coordinate_median, nearest_rows, weighted_mean

__all__ = ["LNearest"]


class LNearest(Strategy):
    """The mean of the ``l`` updates nearest in L2 to the coordinate-wise median.

    The l-nearest aggregation rule: the coordinate-wise median (cf. Yin et al., 2018,
    "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates") serves as a robust
    centre, and, as in Krum (cf. Blanchard et al., 2017, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent"), whole updates are selected by distance, here the ``l``
    closest to that centre, and averaged with equal weight (a client could claim any sample
    count). Unlike the median itself, the result is an average of real updates, so it keeps
    their correlations across coordinates.

    With fewer rows than expected, ``l`` becomes ``n - effective_f(n)`` (``None``) or
    ``min(l, n)`` (explicit), so a single row comes back as is. Among rows equally far, the
    lower row index (client-key order) is taken first, never the row content.

    Trust: ``1/l`` for each selected row, 0 for the others.

    Args:
        l: Updates averaged; ``None`` (default) for ``n - f``. Must satisfy ``1 <= l <= n`` and
            ``l <= MAX_COUNT``.
        f: Byzantine clients assumed; default ``None`` (the run's byzantine count).
        pre: Pre-aggregation steps; default none.

    Raises:
        ConfigError: If ``l`` is not an int in ``[1, MAX_COUNT]`` (or ``None``).
    """

    name = "lnearest"

    def __init__(
        self, *, l: int | None = None, f: int | None = None, pre: Sequence[PreAggregator | str] = ()  # noqa: E741
    ) -> None:
        super().__init__(f=f, pre=pre)
        if l is not None:
            require_int("lnearest", "l (null for n - f)", l, minimum=1, maximum=MAX_COUNT)
        self.l = l

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if self.l is not None and self.l > n:
            raise ConfigError(f"lnearest needs l <= n, got l={self.l}, n={n}, f={f}: lower l or raise clients")

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        n = updates.shape[0]
        count = min(self.l, n) if self.l is not None else n - self.effective_f(n)
        chosen = nearest_rows(updates, coordinate_median(updates), count)
        update = weighted_mean(updates[chosen], torch.ones(count, dtype=torch.float64))
        trust = torch.zeros(n, dtype=torch.float64)
        trust[chosen] = 1.0 / count
        return Aggregate(update=update, trust=trust)

    def hyperparameters(self) -> dict[str, Any]:
        return {"l": self.l}
