"""The base of attacks whose scale is searched each round against the defence in use."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from torchchain.attacks.base import Attack, DefenceOracle, check_honest, check_update
from torchchain.attacks.kernels import best_scale_against, check_search_settings

__all__ = ["ScaleSearchAttack"]


class ScaleSearchAttack(Attack):
    """An attack ``candidate(scale)`` whose ``scale`` maximises the harm to the round's aggregate.

    Each round the scale maximises ``||aggregate(honest + f copies of candidate(scale)) - mu||_2``
    (``mu`` the honest mean), with ``aggregate`` the round's rule lent by the runtime
    (:meth:`observe_defence`) and ``f`` the run's number of malicious clients, found by
    :func:`~torchchain.attacks.kernels.expand_contract_search`: ``evals`` evaluations, an
    expansion from ``start`` by steps ``delta, 2 delta, 4 delta, ...`` while the distance grows,
    then a contraction by ``ratio``, as ByzFL's ``Optimal_*`` attacks search (Allouah et al. 2023,
    "Fixing by Mixing", AISTATS). The search runs once per round: every malicious client of the
    round sends the same vector, and a randomised rule (bucketing) is simulated with one seed drawn
    from the first malicious client's generator. Omniscient: needs the round's honest updates.

    Subclasses set :attr:`name` and implement :meth:`candidate`.

    Args:
        evals: Evaluations of the defence per round, an int in ``[1, 1000]``; default 20.
        start: The first scale tried, finite; default 0.0.
        delta: The first step, finite and non-zero (its sign is the search direction); default 10.0.
        ratio: The step's contraction factor, in ``(0.5, 1)``; default 0.8.

    Raises:
        ConfigError: If an argument is out of its range.
    """

    omniscient = True
    needs_defence = True

    def __init__(self, *, evals: int = 20, start: float = 0.0, delta: float = 10.0, ratio: float = 0.8) -> None:
        super().__init__()
        self.evals, self.start, self.delta, self.ratio = check_search_settings(
            self.name, evals=evals, start=start, delta=delta, ratio=ratio
        )
        self._aggregate: DefenceOracle | None = None
        self._round: tuple[Tensor, Tensor] | None = None
        self.last_scale: float | None = None

    @abstractmethod
    def candidate(self, honest: Tensor) -> Callable[[float], Tensor]:
        """The vector sent at each scale, given the round's ``(k, d)`` float64 honest updates."""

    def observe_defence(self, aggregate: DefenceOracle) -> None:
        """Keep the round's aggregation rule; the next :meth:`poison_update` searches against it."""
        self._aggregate = aggregate
        self._round = None

    def poison_update(self, update: Tensor, *, honest: Tensor | None, generator: torch.Generator) -> Tensor:
        """Return ``candidate(scale)`` at the searched scale (float64).

        The first call after :meth:`observe_defence` searches; later calls with the same honest
        updates return the same vector without searching again.

        Raises:
            ValueError: If the inputs are malformed or :meth:`observe_defence` was never called.
        """
        honest = check_honest(self, check_update(update), honest)
        if self._aggregate is None:
            raise ValueError(f"{self.name} attack needs the defence: call observe_defence(aggregate) first")
        if self._round is not None and torch.equal(self._round[0], honest):
            return self._round[1].clone()
        candidate = self.candidate(honest)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        scale = best_scale_against(
            self._aggregate, honest, candidate, copies=self.num_byzantine, seed=seed,
            start=self.start, delta=self.delta, ratio=self.ratio, evals=self.evals,
        )
        poisoned = candidate(scale)
        self._round = (honest.clone(), poisoned)
        self.last_scale = scale
        return poisoned.clone()

    def describe(self) -> dict[str, Any]:
        """Return ``{"name", "evals", "start", "delta", "ratio"}``."""
        return {"name": self.name, "evals": self.evals, "start": self.start, "delta": self.delta, "ratio": self.ratio}
