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

    Each round, ``z`` maximises ``||aggregate(honest + f copies of mu + z * sigma) - mu||_2``,
    with ``aggregate`` the round's rule lent by the runtime (:meth:`observe_defence`) and ``f``
    the run's number of malicious clients, found by
    :func:`~torchchain.attacks.kernels.expand_contract_search`: ``evals`` evaluations, an
    expansion from ``start`` by steps ``delta, 2 delta, 4 delta, ...`` while the distance grows,
    then a contraction by ``ratio``. The defaults are ByzFL's. The search runs once per round:
    every malicious client of the round sends the same vector, and a randomised rule
    (bucketing) is simulated with one seed drawn from the first malicious client's generator.
    Omniscient: needs the round's honest updates.

    Args:
        evals: Evaluations of the defence per round, an int in ``[1, 1000]``; default 20.
        start: The first ``z`` tried, finite; default 0.0.
        delta: The first step, finite and non-zero (its sign is the search direction);
            default 10.0.
        ratio: The step's contraction factor, in ``(0.5, 1)``; default 0.8.

    Raises:
        ConfigError: If an argument is out of its range.
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
