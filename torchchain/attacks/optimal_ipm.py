"""Inner product manipulation with its scale searched against the defence in use."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from torchchain.attacks.scale_search import ScaleSearchAttack

__all__ = ["OptimalIPM"]


class OptimalIPM(ScaleSearchAttack):
    """Send ``-epsilon * mu`` with the ``epsilon`` that moves the defence's aggregate furthest.

    IPM (Xie, Koyejo and Gupta (2019), "Fall of Empires: Breaking Byzantine-tolerant SGD by
    Inner Product Manipulation", UAI) with its factor optimised against the aggregation rule, as
    ByzFL's ``Optimal_InnerProductManipulation`` does (used in Allouah, Farhadkhani, Guerraoui,
    Gupta, Pinot and Stephan (2023), "Fixing by Mixing: A Recipe for Optimal Byzantine ML under
    Heterogeneity", AISTATS). ``mu`` is the mean of the round's honest updates.

    Each round, ``epsilon`` maximises ``||aggregate(honest + f copies of -epsilon * mu) - mu||_2``,
    with ``aggregate`` the round's rule lent by the runtime (:meth:`observe_defence`) and ``f``
    the run's number of malicious clients, found by
    :func:`~torchchain.attacks.kernels.expand_contract_search`: ``evals`` evaluations, an
    expansion from ``start`` by steps ``delta, 2 delta, 4 delta, ...`` while the distance grows,
    then a contraction by ``ratio``. The defaults are ByzFL's. The search runs once per round:
    every malicious client of the round sends the same vector, and a randomised rule
    (bucketing) is simulated with one seed drawn from the first malicious client's generator.
    The factor may end up at any real value, including ``start`` itself. Omniscient: needs the
    round's honest updates.

    Args:
        evals: Evaluations of the defence per round, an int in ``[1, 1000]``; default 20.
        start: The first ``epsilon`` tried, finite; default 0.0.
        delta: The first step, finite and non-zero (its sign is the search direction);
            default 10.0.
        ratio: The step's contraction factor, in ``(0.5, 1)``; default 0.8.

    Raises:
        ConfigError: If an argument is out of its range.
    """

    name = "optimal_ipm"

    def candidate(self, honest: Tensor) -> Callable[[float], Tensor]:
        """``epsilon -> -epsilon * mu``."""
        mean = honest.mean(dim=0)
        return lambda scale: -scale * mean

    @property
    def last_epsilon(self) -> float | None:
        """The ``epsilon`` the last search chose (``None`` before the first)."""
        return self.last_scale
