"""Multi-Krum: the mean of the best-scored updates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchchain.errors import ConfigError
from torchchain.strategies.base import MAX_COUNT, PreAggregator, require_int
from torchchain.strategies.krum import Krum

__all__ = ["MultiKrum"]


class MultiKrum(Krum):
    """The mean of the ``m`` updates with the lowest Krum scores.

    Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent" (Multi-Krum). Scores and requirements are Krum's (``n >= 2f + 3``); the ``m``
    best rows (among equal scores, the rows with the lower indices, i.e. client-key order) are
    averaged with equal weight. With fewer rows than expected, ``m`` becomes ``min(m, n)``, or
    ``n - effective_f(n)`` when ``m`` is ``None``.

    Trust: ``1/m`` for each selected row, 0 for the others.

    Args:
        m: Updates averaged; ``None`` (default) for ``n - f``. Must satisfy ``1 <= m <= n`` and
            ``m <= MAX_COUNT``.
        f: Byzantine clients assumed; default ``None`` (the run's byzantine count).
        pre: Pre-aggregation steps; default none.

    Raises:
        ConfigError: If ``m`` is not an int in ``[1, MAX_COUNT]`` (or ``None``).
    """

    name = "multikrum"

    def __init__(self, *, m: int | None = None, f: int | None = None, pre: Sequence[PreAggregator | str] = ()) -> None:
        super().__init__(f=f, pre=pre)
        if m is not None:
            require_int("multikrum", "m (null for n - f)", m, minimum=1, maximum=MAX_COUNT)
        self.m = m

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if self.m is not None and self.m > n:
            raise ConfigError(f"multikrum needs m <= n, got m={self.m}, n={n}, f={f}: lower m or raise clients")

    def selection_size(self, n: int, f: int) -> int:
        return min(self.m, n) if self.m is not None else n - f

    def hyperparameters(self) -> dict[str, Any]:
        return {"m": self.m}
