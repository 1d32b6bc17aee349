"""FLTrust: trust bootstrapped from the server's own update on a clean root set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from torchchain.strategies.base import MAX_COUNT, Aggregate, PreAggregator, Strategy, require_int
from torchchain.strategies.kernels import cosine_similarities, row_norms, sorted_sum, weighted_mean

__all__ = ["FLTrust"]


class FLTrust(Strategy):
    """Updates weighted by their agreement with the server's reference update.

    Cao et al., 2021, "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping".
    The server trains on a small clean root set of its own and passes the resulting update to
    :meth:`set_reference` before each aggregation. Each client update gets the trust score
    ``ReLU(cos(x_i, reference))``, is rescaled to the reference's norm, and the result is the
    trust-weighted mean. Sample counts and ``f`` are not used by the rule.

    The reference is used by the next aggregation only and then cleared, so a stale one is never
    reused. If no update has a positive cosine with the reference (or the reference is zero) the
    result is the zero update and the trust is all zero. The result is anchored to the reference,
    so with a single row it is that row rescaled (or zero), not the row itself.

    Trust: the normalised trust scores ``ReLU(cos)``.

    Args:
        root_samples: Size of the server's clean root set, which the runtime cuts from the
            training data; an int in ``[1, MAX_COUNT]``, default 100.
        f: Byzantine clients assumed; only pre-aggregation steps use it. Default ``None``.
        pre: Pre-aggregation steps; default none.

    Raises:
        ConfigError: If ``root_samples`` is out of range.
    """

    name = "fltrust"
    requires_reference: ClassVar[bool] = True

    def __init__(
        self, *, root_samples: int = 100, f: int | None = None, pre: Sequence[PreAggregator | str] = ()
    ) -> None:
        super().__init__(f=f, pre=pre)
        self.root_samples = require_int(self.name, "root_samples", root_samples, minimum=1, maximum=MAX_COUNT)
        self._reference: Tensor | None = None

    def set_reference(self, update: Tensor) -> None:
        """Set the server's update on its root set, flattened like the client updates.

        Args:
            update: ``(d,)`` float64 CPU tensor, finite.

        Raises:
            TypeError: If ``update`` is not a float64 tensor.
            ValueError: If it is not 1-D, not on the CPU, or not finite.
        """
        if not isinstance(update, Tensor) or update.dtype != torch.float64:
            raise TypeError("fltrust: the reference update must be a float64 tensor")
        if update.ndim != 1 or update.device.type != "cpu":
            raise ValueError(f"fltrust: the reference update must be a 1-D CPU tensor, got shape {tuple(update.shape)}")
        if not bool(torch.isfinite(update).all()):
            raise ValueError("fltrust: the reference update must be finite")
        self._reference = update.contiguous() + 0.0

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        if self._reference is None:
            raise RuntimeError(
                "fltrust needs the server's reference update: call set_reference(update) before every "
                f"aggregation (the update the server trains on its root set of {self.root_samples} samples)"
            )
        reference, self._reference = self._reference, None
        n, d = updates.shape
        if reference.shape != (d,):
            raise ValueError(
                f"fltrust: the reference update has {reference.shape[0]} coordinates, the updates have {d}"
            )
        cosines = cosine_similarities(updates, reference)
        scores = torch.where(cosines > 0, cosines, torch.zeros_like(cosines))
        total = sorted_sum(scores)
        if not total > 0:
            return Aggregate(update=torch.zeros(d, dtype=torch.float64), trust=torch.zeros(n, dtype=torch.float64))
        norms = row_norms(updates)
        reference_norm = row_norms(reference[None, :])[0]
        # Rows with a positive score have a positive norm, so the division is safe where it counts.
        scale = torch.where(norms > 0, reference_norm / torch.where(norms > 0, norms, torch.ones_like(norms)), norms)
        update = weighted_mean(updates * scale[:, None], scores)
        return Aggregate(update=update, trust=scores / total)

    def hyperparameters(self) -> dict[str, Any]:
        return {"root_samples": self.root_samples}
