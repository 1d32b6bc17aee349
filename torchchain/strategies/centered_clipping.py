"""Centered clipping: clipped steps from the previous aggregate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from torchchain.strategies.base import (
    MAX_ITERATIONS,
    MAX_NORM,
    Aggregate,
    PreAggregator,
    Strategy,
    require_int,
    require_number,
)
from torchchain.strategies.kernels import clip_factors, sorted_sum, weighted_mean

__all__ = ["CenteredClipping"]


class CenteredClipping(Strategy):
    """Average of the updates' differences from a centre, each clipped to norm ``tau``.

    Karimireddy et al., 2021, "Learning from History for Byzantine Robust Optimization". Starting
    from ``v`` = the previous round's aggregate (zero in the first round), each iteration sets
    ``v = v + (1/n) * sum_i min(1, tau / |x_i - v|) * (x_i - v)``; the result is the final ``v``,
    which becomes the next round's starting point. Sample counts are ignored, as in the paper.
    A Byzantine client moves the result by at most ``tau / n`` per iteration; choose ``tau`` on
    the scale of honest updates' spread.

    Stateful: every call advances the centre. To recompute a past round, restore the state
    from before it with :meth:`load_state_dict`. The result is anchored to the centre, so with a
    single row it is the clipped step towards that row, not the row itself.

    Trust: the clipping factors ``min(1, tau / |x_i - v|)`` of the last iteration, normalised.

    Args:
        tau: Clipping radius around the centre, in ``(0, MAX_NORM]``; default 1.0.
        iterations: Clipping iterations per round, an int in ``[1, MAX_ITERATIONS]``; default 1.
        f: Byzantine clients assumed; only pre-aggregation steps use it. Default ``None``.
        pre: Pre-aggregation steps; default none.

    Raises:
        ConfigError: If ``tau`` or ``iterations`` is out of its range.
    """

    name = "centered_clipping"

    def __init__(
        self,
        *,
        tau: float = 1.0,
        iterations: int = 1,
        f: int | None = None,
        pre: Sequence[PreAggregator | str] = (),
    ) -> None:
        super().__init__(f=f, pre=pre)
        self.tau = require_number(self.name, "tau", tau, minimum=0.0, maximum=MAX_NORM, include_minimum=False)
        self.iterations = require_int(self.name, "iterations", iterations, minimum=1, maximum=MAX_ITERATIONS)
        self._center: Tensor | None = None

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        n, d = updates.shape
        center = torch.zeros(d, dtype=torch.float64) if self._center is None else self._center
        if center.shape != (d,):
            raise ValueError(
                f"centered_clipping: the stored centre has {center.shape[0]} coordinates but the updates have {d}; "
                "load a matching state or start a fresh strategy"
            )
        uniform = torch.ones(n, dtype=torch.float64)
        factors = uniform
        for _ in range(self.iterations):
            differences = updates - center
            factors = clip_factors(differences, self.tau)
            center = center + weighted_mean(differences * factors[:, None], uniform)
        self._center = center.clone()
        return Aggregate(update=center, trust=factors / sorted_sum(factors))

    def hyperparameters(self) -> dict[str, Any]:
        return {"tau": self.tau, "iterations": self.iterations}

    def state_dict(self) -> dict[str, Any]:
        """``{"center": (d,) float64}`` after the first aggregation, ``{}`` before it."""
        return {} if self._center is None else {"center": self._center.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; ``{}`` resets the centre to zero.

        Raises:
            ValueError: If ``state`` has keys other than ``"center"`` or the centre is not a
                finite 1-D float64 tensor.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"centered_clipping state must be a mapping, got {type(state).__name__}")
        unexpected = sorted(str(key) for key in state if key != "center")
        if unexpected:
            raise ValueError(f"centered_clipping state has unexpected keys {unexpected}; expected only 'center'")
        if "center" not in state:
            self._center = None
            return
        center = state["center"]
        if not isinstance(center, Tensor) or center.dtype != torch.float64 or center.ndim != 1:
            raise ValueError("centered_clipping state 'center' must be a 1-D float64 tensor")
        if not bool(torch.isfinite(center).all()):
            raise ValueError("centered_clipping state 'center' must be finite")
        self._center = center.detach().cpu().clone()
