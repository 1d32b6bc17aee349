"""Label flipping: train on ``C - 1 - y`` instead of ``y``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchchain.attacks.base import Attack
from torchchain.errors import ConfigError

__all__ = ["LabelFlip"]


class LabelFlip(Attack):
    """Train on flipped labels: class ``y`` becomes ``num_classes - 1 - y``; features are kept.

    The label-flipping Byzantine behaviour, in the ``C - 1 - y`` form of Allen-Zhu, Ebrahimian,
    Li and Alistarh (2021), "Byzantine-Resilient Non-Convex Stochastic Gradient Descent", ICLR.
    The update trained on the flipped labels is then sent as is. It takes no arguments.
    """

    name = "labelflip"

    def poison_data(
        self,
        features: Tensor,
        targets: Tensor,
        *,
        num_classes: int | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """Return ``features`` unchanged and the new targets ``num_classes - 1 - targets``.

        Raises:
            ConfigError: If the task is a regression (``num_classes is None``) or has fewer than
                two classes.
            ValueError: If ``targets`` are not integer class indices in ``[0, num_classes)``.
        """
        if num_classes is None:
            raise ConfigError(
                "labelflip attack needs a classification dataset, but this task is a regression "
                "(num_classes=None); pick another attack"
            )
        if num_classes < 2:
            raise ConfigError(f"labelflip attack needs at least 2 classes, got num_classes={num_classes}")
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise ValueError(f"labelflip attack: targets must be integer class indices, got {targets.dtype}")
        if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(
                f"labelflip attack: targets must lie in [0, {num_classes}), "
                f"got values in [{int(targets.min())}, {int(targets.max())}]"
            )
        return features, (num_classes - 1) - targets

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": "labelflip"}``."""
        return {"name": self.name}
