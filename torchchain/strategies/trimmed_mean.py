"""Coordinate-wise trimmed mean."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from torchchain.errors import ConfigError
from torchchain.strategies.base import MAX_COUNT, Aggregate, PreAggregator, Strategy, require_int
from torchchain.strategies.kernels import trimmed_mean_with_shares

__all__ = ["TrimmedMean"]


class TrimmedMean(Strategy):
    """The coordinate-wise trimmed mean of the updates.

    Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates".
    For every coordinate the ``trim`` largest and ``trim`` smallest values are dropped and the
    rest averaged (unweighted: a client could claim any sample count). Requires ``n > 2 * trim``.

    When fewer rows arrive than that allows, at most ``(n - 1) // 2`` values per side are
    dropped, so a single row comes back as is.

    Trust: the share of kept (coordinate, value) slots each row filled.

    Args:
        trim: Values dropped per side of each coordinate: an int count in ``[0, MAX_COUNT]``, a
            float fraction of ``n`` in ``[0, 0.5)`` (rounded down), or ``None`` (default) for ``f``.
        f: Byzantine clients assumed; default ``None`` (the run's byzantine count).
        pre: Pre-aggregation steps; default none.

    Raises:
        ConfigError: If ``trim`` is a count out of range, or a fraction not in ``[0, 0.5)``.
    """

    name = "trimmed_mean"

    def __init__(
        self, *, trim: int | float | None = None, f: int | None = None, pre: Sequence[PreAggregator | str] = ()
    ) -> None:
        super().__init__(f=f, pre=pre)
        if isinstance(trim, bool) or not (trim is None or isinstance(trim, (int, float))):
            raise ConfigError(f"trimmed_mean: trim must be an int count, a float fraction or null, got {trim!r:.80}")
        if isinstance(trim, int):
            require_int(self.name, "trim (a count)", trim, minimum=0, maximum=MAX_COUNT)
        if isinstance(trim, float) and not 0.0 <= trim < 0.5:
            raise ConfigError(
                f"trimmed_mean: a fractional trim must lie in [0, 0.5), got {trim} (write an int for a count)"
            )
        self.trim = trim

    def trim_count(self, n: int, f: int) -> int:
        """Values dropped per side for ``n`` rows when ``f`` are Byzantine (before clamping)."""
        if self.trim is None:
            return f
        if isinstance(self.trim, int):
            return self.trim
        return math.floor(self.trim * n)

    def max_f(self, n: int) -> int:
        return (n - 1) // 2

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        trim = self.trim_count(n, f)
        if 2 * trim >= n:
            raise ConfigError(
                f"trimmed_mean needs n > 2*trim clients, got n={n}, f={f}, trim={trim}: "
                "lower byzantine (or trim) or raise clients"
            )

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        n = updates.shape[0]
        if self.trim is None:
            trim = self.effective_f(n)
        else:
            trim = min(self.trim_count(n, 0), (n - 1) // 2)
        update, shares = trimmed_mean_with_shares(updates, trim)
        return Aggregate(update=update, trust=shares)

    def hyperparameters(self) -> dict[str, Any]:
        return {"trim": self.trim}
