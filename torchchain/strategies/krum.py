"""Krum: the update closest to its neighbours."""

from __future__ import annotations

import torch
from torch import Tensor

from torchchain.errors import ConfigError
from torchchain.strategies.base import Aggregate, Strategy
from torchchain.strategies.distance_bounds import krum_order
from torchchain.strategies.kernels import weighted_mean

__all__ = ["Krum"]


class Krum(Strategy):
    """The single update whose ``n - f - 2`` nearest neighbours are closest to it.

    Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent". Each row's score is the sum of squared L2 distances to its ``n - f - 2`` nearest
    other rows; the row with the lowest score is the result, exactly. Among equal scores the row
    with the lower index wins, i.e. the client whose key sorts first: never the row content,
    which the attacker chooses. Requires ``n >= 2f + 3``. Sample counts are ignored (a client
    could claim any count).

    The scores are those of the exact, fixed-order distances
    (:func:`~torchchain.strategies.kernels.pairwise_sq_distances`); the selection is decided from
    rounding bounds on a Gram matrix where they separate the rows
    (:func:`~torchchain.strategies.distance_bounds.krum_order`), with the same result.

    With fewer rows than that allows, ``effective_f(n) = min(f, (n - 3) // 2)`` (at least 0) is
    used; with one or two rows every score is 0 and row 0 is returned, and with three rows (one
    neighbour each) the two rows of the closest pair tie and the lower index wins.

    Subclasses change how many best-scored rows are averaged by overriding
    :meth:`selection_size` (see :class:`~torchchain.strategies.multikrum.MultiKrum`).

    Trust: 1 for the selected row, 0 for the others.

    Args:
        f: Byzantine clients assumed; default ``None`` (the run's byzantine count).
        pre: Pre-aggregation steps; default none.
    """

    name = "krum"

    def max_f(self, n: int) -> int:
        return (n - 3) // 2

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if n < 2 * f + 3:
            raise ConfigError(
                f"{self._label()} needs n >= 2f+3 clients, got n={n}, f={f}: lower byzantine or raise clients"
            )

    def selection_size(self, n: int, f: int) -> int:
        """How many of the best-scored rows are averaged (Krum: 1)."""
        return 1

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        n = updates.shape[0]
        f = self.effective_f(n)
        count = self.selection_size(n, f)
        chosen = krum_order(updates, f, count)
        update = weighted_mean(updates, torch.ones(count, dtype=torch.float64), rows=chosen)
        trust = torch.zeros(n, dtype=torch.float64)
        trust[chosen] = 1.0 / count
        return Aggregate(update=update, trust=trust)
