"""A Little Is Enough with its scale searched against the defence in use."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from torchchain.attacks.kernels import coordinate_std
from torchchain.attacks.scale_search import ScaleSearchAttack

__all__ = ["OptimalALIE"]


class OptimalALIE(ScaleSearchAttack):
    """Send ``mu + z * sigma`` with the ``z`` that moves the defence's aggregate furthest.

    ALIE (Baruch, Baruch and Goldberg (2019), "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS) with its factor optimised against the aggregation rule, as
    ByzFL's ``Optimal_ALittleIsEnough`` does (used in Allouah, Farhadkhani, Guerraoui, Gupta,
    Pinot and Stephan (2023), "Fixing by Mixing: A Recipe for Optimal Byzantine ML under
    Heterogeneity", AISTATS). ``mu`` is the coordinate-wise mean of the round's ``k`` honest
    updates and ``sigma`` their coordinate-wise *sample* standard deviation (dividing by
    ``k - 1``, as ByzFL; zero with one honest update), unlike :class:`~torchchain.attacks.ALIE`,
    which follows the ALIE authors' population standard deviation.

    Each round ``z`` is searched to move the aggregate of the round's rule furthest from the
    honest mean (see :class:`~torchchain.attacks.scale_search.ScaleSearchAttack`).

    Arguments (``evals``, ``start``, ``delta``, ``ratio``) and the search: :class:`ScaleSearchAttack`.
    """

    name = "optimal_alie"

    def candidate(self, honest: Tensor) -> Callable[[float], Tensor]:
        """``z -> mu + z * sigma`` with ``sigma`` the coordinate-wise sample standard deviation (ByzFL's)."""
        mean = honest.mean(dim=0)
        sigma = coordinate_std(honest, unbiased=True)
        return lambda scale: mean + scale * sigma

    @property
    def last_z(self) -> float | None:
        """The ``z`` the last search chose (``None`` before the first)."""
        return self.last_scale
