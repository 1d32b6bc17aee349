"""Geometric median (robust federated aggregation, RFA)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from torchchain.errors import ConfigError
from torchchain.strategies.base import Aggregate, PreAggregator, Strategy
from torchchain.strategies.kernels import geometric_median

__all__ = ["GeoMed"]


class GeoMed(Strategy):
    """The sample-weighted geometric median of the updates, by smoothed Weiszfeld iterations.

    Pillutla et al., 2022, "Robust Aggregation for Federated Learning" (RFA). Approximately
    minimises ``sum_i w_i * |z - x_i|`` with ``w_i`` the sample counts, as in the paper; robust
    while the Byzantine clients hold less than half of the total weight, so pass equal weights
    where clients may misreport their sample counts. Needs no ``f``. A single row comes back as
    is.

    Trust: the normalised Weiszfeld coefficients of the last step; the result is exactly their
    weighted mean of the rows.

    Args:
        nu: Smoothing, distances below ``nu`` count as ``nu``; default ``1e-6``.
        max_iter: The most Weiszfeld steps; default 100.
        tol: Stop when the objective changes by at most ``tol`` relative; default ``1e-7``.
        f: Byzantine clients assumed; only pre-aggregation steps use it. Default ``None``.
        pre: Pre-aggregation steps; default none.

    Raises:
        ConfigError: If ``nu`` is not positive, ``max_iter`` not a positive int, or ``tol`` negative.
    """

    name = "geomed"

    def __init__(
        self,
        *,
        nu: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-7,
        f: int | None = None,
        pre: Sequence[PreAggregator | str] = (),
    ) -> None:
        super().__init__(f=f, pre=pre)
        if isinstance(nu, bool) or not isinstance(nu, (int, float)) or not nu > 0:
            raise ConfigError(f"geomed: nu must be a positive number, got {nu!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ConfigError(f"geomed: max_iter must be a positive int, got {max_iter!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise ConfigError(f"geomed: tol must be a non-negative number, got {tol!r}")
        self.nu = float(nu)
        self.max_iter = max_iter
        self.tol = float(tol)

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        point, coefficients = geometric_median(updates, weights, nu=self.nu, max_iter=self.max_iter, tol=self.tol)
        return Aggregate(update=point, trust=coefficients)

    def hyperparameters(self) -> dict[str, Any]:
        return {"nu": self.nu, "max_iter": self.max_iter, "tol": self.tol}
