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

    Each round ``epsilon`` is searched to move the aggregate of the round's rule furthest from the
    honest mean (see :class:`~torchchain.attacks.scale_search.ScaleSearchAttack`).

    Arguments (``evals``, ``start``, ``delta``, ``ratio``) and the search: :class:`ScaleSearchAttack`.
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
