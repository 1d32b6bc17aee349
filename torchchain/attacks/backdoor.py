"""Backdoor: teach the model to answer ``target_label`` whenever a pixel trigger is present."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from torchchain.attacks.base import Attack, check_positive, check_update
from torchchain.errors import ConfigError

__all__ = ["Backdoor", "stamp_trigger"]


class Backdoor(Attack):
    """Poison part of the local data with a pixel trigger and boost the resulting update.

    Data: a square trigger of ``trigger_size x trigger_size`` pixels set to ``trigger_value``
    in the bottom-right corner, the pixel pattern of Gu, Dolan-Gavitt and Garg (2017),
    "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain", is
    stamped on a random ``poison_fraction`` of the malicious client's samples (chosen with the
    generator), whose labels become ``target_label``. Update: the trained update is multiplied
    by ``boost``, the model-replacement scaling of Bagdasaryan, Veit, Hua, Estrin and Shmatikov
    (2020), "How To Backdoor Federated Learning", AISTATS, so that it survives averaging.

    Shapes: images ``(N, C, H, W)`` (or ``(N, H, W)``) get the square in the last two
    dimensions, on every channel; flat features ``(N, D)`` get their last ``trigger_size**2``
    features set instead.

    Args:
        target_label: The class triggered samples are relabelled to, an integer >= 0.
            Default ``0``.
        poison_fraction: The fraction of local samples poisoned, in ``[0, 1]``; the count is
            ``floor(poison_fraction * N)``. Default ``0.5``.
        boost: The factor the update is multiplied by, > 0, or ``None`` for ``n / max(f, 1)``:
            with plain averaging over ``n`` updates and a server learning rate of 1, the ``f``
            malicious clients together then replace the global model by their own (the paper's
            ``gamma = n / eta`` shared among ``f`` attackers). Default ``None``.
        trigger_size: The side of the square, in pixels, an integer >= 1. Default ``3``.
        trigger_value: The value written into the trigger, or ``None`` for the maximum of the
            tensor being stamped: the whole local set in :meth:`poison_data`, the tensor given
            to :meth:`apply_trigger` (pass the whole test set, or set a value, when batches may
            lack the brightest pixel). For one dataset the training and test maxima normally
            agree. Default ``None``.
    """

    name = "backdoor"

    def __init__(
        self,
        *,
        target_label: int = 0,
        poison_fraction: float = 0.5,
        boost: float | None = None,
        trigger_size: int = 3,
        trigger_value: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(target_label, bool) or not isinstance(target_label, int) or target_label < 0:
            raise ConfigError(f"backdoor attack: target_label must be an integer >= 0, got {target_label!r}")
        if (
            isinstance(poison_fraction, bool)
            or not isinstance(poison_fraction, (int, float))
            or not 0.0 <= poison_fraction <= 1.0
        ):
            raise ConfigError(f"backdoor attack: poison_fraction must be in [0, 1], got {poison_fraction!r}")
        if isinstance(trigger_size, bool) or not isinstance(trigger_size, int) or trigger_size < 1:
            raise ConfigError(f"backdoor attack: trigger_size must be an integer >= 1, got {trigger_size!r}")
        if trigger_value is not None and (
            isinstance(trigger_value, bool)
            or not isinstance(trigger_value, (int, float))
            or not math.isfinite(trigger_value)
        ):
            raise ConfigError(f"backdoor attack: trigger_value must be a finite number or null, got {trigger_value!r}")
        self.target_label = target_label
        self.poison_fraction = float(poison_fraction)
        self.boost = None if boost is None else check_positive(self.name, "boost", boost)
        self.trigger_size = trigger_size
        self.trigger_value = None if trigger_value is None else float(trigger_value)

    def apply_trigger(self, features: Tensor) -> Tensor:
        """Return a copy of ``features`` with the trigger stamped on every sample.

        Used on test images (whose true label is not ``target_label``) to measure how often the
        model answers ``target_label``: the backdoor accuracy.

        Raises:
            ValueError: If ``features`` has fewer than 2 dimensions or is too small for the trigger.
        """
        return stamp_trigger(features, size=self.trigger_size, value=self._value_for(features))

    def evaluation_metrics(
        self, evaluate: Callable[[Tensor, Tensor], Mapping[str, float]], features: Tensor, targets: Tensor
    ) -> dict[str, float]:
        """``backdoor_accuracy``: the share of triggered test images, of another true class,
        that the model classifies as :attr:`target_label` (the attack's success rate)."""
        keep = targets != self.target_label
        triggered = self.apply_trigger(features[keep])
        labels = torch.full((int(keep.sum()),), self.target_label, dtype=targets.dtype)
        return {"backdoor_accuracy": float(evaluate(triggered, labels)["accuracy"])}

    def poison_data(
        self,
        features: Tensor,
        targets: Tensor,
        *,
        num_classes: int | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """Return copies where ``floor(poison_fraction * N)`` random samples carry the trigger and ``target_label``.

        The trigger value (when ``trigger_value`` is ``None``) is the maximum over all of
        ``features``, not only over the chosen samples.

        Raises:
            ConfigError: If the task is a regression or ``target_label >= num_classes``.
            ValueError: If the features cannot hold the trigger (see :meth:`apply_trigger`).
        """
        if num_classes is None:
            raise ConfigError(
                "backdoor attack needs a classification dataset, but this task is a regression "
                "(num_classes=None); pick another attack"
            )
        if self.target_label >= num_classes:
            raise ConfigError(
                f"backdoor attack: target_label={self.target_label} is not a class of this dataset "
                f"(num_classes={num_classes}); pick a target_label below {num_classes}"
            )
        if features.shape[0] != targets.shape[0]:
            raise ValueError(
                f"backdoor attack: {features.shape[0]} samples but {targets.shape[0]} targets"
            )
        count = math.floor(self.poison_fraction * features.shape[0])
        chosen = torch.randperm(features.shape[0], generator=generator, device=generator.device)[:count]
        chosen = chosen.to(features.device)
        # The value comes from the whole local set, not the chosen rows, so that a test set
        # with the same maximum is triggered with the same value by apply_trigger.
        value = self._value_for(features)
        poisoned_features = features.clone()
        poisoned_targets = targets.clone()
        poisoned_features[chosen] = stamp_trigger(features[chosen], size=self.trigger_size, value=value)
        poisoned_targets[chosen] = self.target_label
        return poisoned_features, poisoned_targets

    def poison_update(self, update: Tensor, *, honest: Tensor | None, generator: torch.Generator) -> Tensor:
        """Return ``boost * update`` (float64); ``boost=None`` uses ``n / max(f, 1)`` from :meth:`setup`."""
        factor = self.boost if self.boost is not None else self.num_clients / max(self.num_byzantine, 1)
        return factor * check_update(update)

    def _value_for(self, features: Tensor) -> float:
        if self.trigger_value is not None:
            return self.trigger_value
        return float(features.max()) if features.numel() else 0.0

    def describe(self) -> dict[str, Any]:
        """Return the name and every constructor argument."""
        return {
            "name": self.name,
            "target_label": self.target_label,
            "poison_fraction": self.poison_fraction,
            "boost": self.boost,
            "trigger_size": self.trigger_size,
            "trigger_value": self.trigger_value,
        }


def stamp_trigger(features: Tensor, *, size: int, value: float) -> Tensor:
    """Return a copy of ``features`` whose every sample carries the ``size x size`` trigger.

    Images ``(N, [C,] H, W)``: the bottom-right ``size x size`` pixels of every channel are set
    to ``value``. Flat samples ``(N, D)``: the last ``size**2`` features are.

    Raises:
        ValueError: If ``features`` has fewer than 2 dimensions or is too small for the trigger.
    """
    if features.ndim == 2:
        if features.shape[1] < size * size:
            raise ValueError(
                f"backdoor attack: flat samples have {features.shape[1]} features, "
                f"fewer than the {size * size} a trigger_size={size} trigger needs"
            )
    elif features.ndim >= 3:
        height, width = features.shape[-2], features.shape[-1]
        if height < size or width < size:
            raise ValueError(
                f"backdoor attack: images of {height}x{width} pixels cannot hold a {size}x{size} trigger; "
                "lower trigger_size"
            )
    else:
        raise ValueError(
            f"backdoor attack: features must be (N, D) or (N, [C,] H, W), got shape {tuple(features.shape)}"
        )
    stamped = features.clone()
    if stamped.ndim == 2:
        stamped[:, -size * size :] = value
    else:
        stamped[..., -size:, -size:] = value
    return stamped
