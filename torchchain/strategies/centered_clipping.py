"""Centered clipping: clipped steps from the previous aggregate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from torchchain.errors import ConfigError
from torchchain.strategies.base import (
    MAX_ITERATIONS,
    MAX_NORM,
    Aggregate,
    PreAggregator,
    Strategy,
    require_int,
    require_number,
)
from torchchain.strategies.kernels import (
    mean_scaled_difference,
    median_norm_clip_factors,
    norm_clip_factors,
    sorted_sum,
    sq_distances_to,
)

__all__ = ["AUTO", "MAX_MOMENTUM", "CenteredClipping"]

#: The ``tau`` that sets the radius from each iteration's own distances (their median).
AUTO = "auto"
#: The largest server momentum ``beta`` a config may give: ``1 / (1 - beta)`` rounds of memory
#: at most 1000 (``beta = 1`` would freeze the update at the first round's aggregate).
MAX_MOMENTUM = 0.999


class CenteredClipping(Strategy):
    """Average of the updates' differences from a centre, each clipped to norm ``tau``.

    Karimireddy et al., 2021, "Learning from History for Byzantine Robust Optimization". Starting
    from ``v`` = the previous round's aggregate (zero in the first round), each iteration sets
    ``v = v + (1/n) * sum_i min(1, tau / |x_i - v|) * (x_i - v)``; the result is the final ``v``,
    which becomes the next round's starting point. Sample counts are ignored, as in the paper.
    A Byzantine client moves the result by at most ``tau / n`` per iteration.

    **Radius.** ``tau="auto"`` (the default) sets it in every iteration from that iteration's
    distances to the centre:
    ``tau = median_i |x_i - v|`` (for even ``n`` the mean of the two middle distances;
    :func:`~torchchain.strategies.kernels.median_clip_factors`). If more than half the rows are
    honest, that median lies between the smallest and the largest honest distance whatever the
    other rows hold, so each Byzantine row still moves the centre by at most ``tau / n`` per
    iteration, with ``tau`` on the honest rows' own scale, and no ``f`` is needed. Multiplying
    every update and the centre by ``c > 0`` multiplies the result by ``c``, which no fixed
    radius can do. The analysis of Karimireddy et al. sets the radius from the Byzantine fraction
    and the honest variance, neither known in practice; Allouah et al., 2024, "The Vital Role of
    Gradient Clipping in Byzantine-Resilient Distributed Learning" (arXiv:2405.14432, adaptive
    robust clipping, ARC) clip to an order statistic of the norms chosen with ``f``. The median
    is the ``f``-free order statistic: it assumes only an honest majority. About half the rows
    are clipped every iteration, honest ones included, so the step is a robust (Huber-like)
    estimate rather than the honest mean. With ``tau = 0`` (more than half the rows sit on the
    centre) the centre stays where it is. :attr:`radii` holds the radius of each iteration of
    the last aggregation. A number ``tau`` is a fixed radius instead; it must be on the scale of
    the honest updates' spread, which changes as training converges (too small and the centre
    barely moves, too large and nothing is clipped).

    **Server momentum.** With ``momentum = beta > 0`` the update returned is the server's
    momentum of the robust aggregates, ``m_t = beta * m_{t-1} + (1 - beta) * v_t`` with
    ``m_1 = v_1``: ``torch.optim.SGD(momentum=beta, dampening=beta)`` applied to the aggregates.
    This is server momentum as in FedAvgM (Hsu et al., 2019, "Measuring the Effects of
    Non-Identical Data Distribution for Federated Visual Classification"), whose form
    ``m_t = beta * m_{t-1} + v_t`` is ours times ``1 / (1 - beta)``: the damped form keeps the
    step on the aggregates' scale, so the learning rate need not change with ``beta``. The
    clipping itself is untouched: the next round's centre is ``v_t``, not ``m_t``. It smooths the
    model's path across rounds; it does not make the aggregate more robust (the worker momentum
    that Karimireddy et al., 2021 analyse is the clients' own, the run's top-level ``momentum``).
    ``beta = 0`` (default) returns ``v_t`` itself, bit for bit.

    Stateful: every call advances the centre (and the momentum). To recompute a past round,
    restore the state from before it with :meth:`load_state_dict`. The result is anchored to the
    centre, so with a single row it is the clipped step towards that row, not the row itself.

    Trust: the clipping factors ``min(1, tau / |x_i - v|)`` of the last iteration, normalised
    (this round's rows only; the momentum's earlier rounds are not attributed).

    Args:
        tau: Clipping radius around the centre, in ``(0, MAX_NORM]``, or ``"auto"`` (default)
            for the median distance of each iteration.
        iterations: Clipping iterations per round, an int in ``[1, MAX_ITERATIONS]``; default 1.
        momentum: Server momentum ``beta`` in ``[0, MAX_MOMENTUM]``; default 0.0 (none).
        f: Byzantine clients assumed; only pre-aggregation steps use it. Default ``None``.
        pre: Pre-aggregation steps; default none.

    Raises:
        ConfigError: If ``tau``, ``iterations`` or ``momentum`` is out of its range.
    """

    name = "centered_clipping"

    def __init__(
        self,
        *,
        tau: float | str = AUTO,
        iterations: int = 1,
        momentum: float = 0.0,
        f: int | None = None,
        pre: Sequence[PreAggregator | str] = (),
    ) -> None:
        super().__init__(f=f, pre=pre)
        self.tau: float | str = _radius(self.name, tau)
        self.iterations = require_int(self.name, "iterations", iterations, minimum=1, maximum=MAX_ITERATIONS)
        self.momentum = require_number(self.name, "momentum", momentum, minimum=0.0, maximum=MAX_MOMENTUM)
        #: The radius of each iteration of the last aggregation (``tau`` itself when fixed).
        self.radii: tuple[float, ...] = ()
        self._center: Tensor | None = None
        self._momentum: Tensor | None = None

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        n, d = updates.shape
        center = torch.zeros(d, dtype=torch.float64) if self._center is None else self._center
        for key, stored in (("centre", center), ("momentum", self._momentum)):
            if stored is not None and stored.shape != (d,):
                raise ValueError(
                    f"centered_clipping: the stored {key} has {stored.shape[0]} coordinates but the updates have "
                    f"{d}; load a matching state or start a fresh strategy"
                )
        factors = torch.ones(n, dtype=torch.float64)
        radii = []
        for _ in range(self.iterations):
            distances = sq_distances_to(updates, center).sqrt()
            if self.tau == AUTO:
                factors, radius = median_norm_clip_factors(distances)
                radii.append(float(radius))
            else:
                factors = norm_clip_factors(distances, self.tau)
                radii.append(float(self.tau))
            center = center + mean_scaled_difference(updates, center, factors)
        self._center = center.clone()
        self.radii = tuple(radii)
        update = center
        if self.momentum > 0:
            if self._momentum is not None:
                update = self.momentum * self._momentum + (1.0 - self.momentum) * center
            self._momentum = update.clone()
        return Aggregate(update=update, trust=factors / sorted_sum(factors))

    def hyperparameters(self) -> dict[str, Any]:
        return {"tau": self.tau, "iterations": self.iterations, "momentum": self.momentum}

    def state_dict(self) -> dict[str, Any]:
        """``{}`` before the first aggregation; after it ``{"center": (d,) float64}``, plus
        ``"momentum": (d,) float64`` (the last update returned) when ``momentum > 0``."""
        state: dict[str, Any] = {}
        if self._center is not None:
            state["center"] = self._center.clone()
        if self._momentum is not None:
            state["momentum"] = self._momentum.clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; ``{}`` resets the centre (and the momentum) to the start.

        Raises:
            ValueError: If ``state`` has keys other than ``"center"`` (and ``"momentum"`` when
                ``momentum > 0``), holds one of the two without the other (``momentum > 0``), or
                a value is not a finite 1-D float64 tensor, or the two differ in length.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"centered_clipping state must be a mapping, got {type(state).__name__}")
        keys = ("center", "momentum") if self.momentum > 0 else ("center",)
        unexpected = sorted(str(key) for key in state if key not in keys)
        if unexpected:
            expected = " and ".join(repr(key) for key in keys)
            hint = " (a 'momentum' state needs momentum > 0)" if "momentum" in unexpected else ""
            raise ValueError(
                f"centered_clipping state has unexpected keys {unexpected}; expected only {expected}{hint}"
            )
        present = [key for key in keys if key in state]
        if present and len(present) != len(keys):
            raise ValueError(
                f"centered_clipping state with momentum > 0 holds both 'center' and 'momentum' or neither, "
                f"got only {present[0]!r}"
            )
        loaded = {}
        for key in present:
            value = state[key]
            if not isinstance(value, Tensor) or value.dtype != torch.float64 or value.ndim != 1:
                raise ValueError(f"centered_clipping state {key!r} must be a 1-D float64 tensor")
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"centered_clipping state {key!r} must be finite")
            loaded[key] = value.detach().cpu().clone()
        if len(loaded) == 2 and loaded["center"].shape != loaded["momentum"].shape:
            raise ValueError(
                f"centered_clipping state 'center' and 'momentum' must have the same length, got "
                f"{loaded['center'].shape[0]} and {loaded['momentum'].shape[0]}"
            )
        self._center = loaded.get("center")
        self._momentum = loaded.get("momentum")


def _radius(owner: str, tau: Any) -> float | str:
    """``tau`` checked: ``"auto"``, or a number in ``(0, MAX_NORM]`` returned as a float."""
    if isinstance(tau, str) and tau == AUTO:
        return AUTO
    try:
        return require_number(owner, "tau", tau, minimum=0.0, maximum=MAX_NORM, include_minimum=False)
    except ConfigError as error:
        raise ConfigError(f"{error}; or tau={AUTO!r} for the median distance to the centre") from None
