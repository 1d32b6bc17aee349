"""Geometric median (robust federated aggregation, RFA)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torchchain.strategies.base import (
    MAX_ITERATIONS,
    MAX_NORM,
    WEIGHTINGS,
    Aggregate,
    PreAggregator,
    Strategy,
    require_choice,
    require_int,
    require_number,
)
from torchchain.strategies.kernels import geometric_median

__all__ = ["GeoMed"]


class GeoMed(Strategy):
    """The geometric median of the updates, by smoothed Weiszfeld iterations.

    Pillutla et al., 2022, "Robust Aggregation for Federated Learning" (RFA). Approximately
    minimises ``sum_i w_i * |z - x_i|``. The paper weights by the clients' sample counts, but
    those are claimed by the clients: one client claiming ``2**63 - 1`` samples would hold all
    the weight and own the result. So the default is ``weights="equal"`` (every row counts
    alike, robust while fewer than half of the rows are Byzantine); ``weights="samples"`` is the
    paper's weighting, robust only while the Byzantine clients claim less than half of the total
    count. Needs no ``f``. A single row comes back as is.

    The iterations start at the coordinate-wise median and stop once a step moves the estimate
    by at most ``tol`` times the rows' median distance from that start, so one far row changes
    neither where they start nor when they stop
    (:func:`~torchchain.strategies.kernels.geometric_median`).

    Trust: the normalised Weiszfeld coefficients of the last step; the result is exactly their
    weighted mean of the rows.

    Args:
        nu: Smoothing, distances below ``nu`` count as ``nu``; in ``(0, MAX_NORM]``, default
            ``1e-6``.
        max_iter: The most Weiszfeld steps, an int in ``[1, MAX_ITERATIONS]``; default 100.
        tol: Stop when a step moves the estimate by at most ``tol`` times the rows' median
            distance from the start; in ``[0, 1]``, default ``1e-7``.
        weights: ``"equal"`` (default) to ignore the sample counts, or ``"samples"`` to weight
            by them.
        f: Byzantine clients assumed; only pre-aggregation steps use it. Default ``None``.
        pre: Pre-aggregation steps; default none.

    Raises:
        ConfigError: If an argument is out of its range, naming it and the range.
    """

    name = "geomed"

    def __init__(
        self,
        *,
        nu: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-7,
        weights: str = "equal",
        f: int | None = None,
        pre: Sequence[PreAggregator | str] = (),
    ) -> None:
        super().__init__(f=f, pre=pre)
        self.nu = require_number(self.name, "nu", nu, minimum=0.0, maximum=MAX_NORM, include_minimum=False)
        self.max_iter = require_int(self.name, "max_iter", max_iter, minimum=1, maximum=MAX_ITERATIONS)
        self.tol = require_number(self.name, "tol", tol, minimum=0.0, maximum=1.0)
        self.weights = require_choice(self.name, "weights", weights, WEIGHTINGS)

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        if self.weights == "equal":
            weights = torch.ones_like(weights)
        point, coefficients = geometric_median(updates, weights, nu=self.nu, max_iter=self.max_iter, tol=self.tol)
        return Aggregate(update=point, trust=coefficients)

    def hyperparameters(self) -> dict[str, Any]:
        return {"nu": self.nu, "max_iter": self.max_iter, "tol": self.tol, "weights": self.weights}
