"""Argument checks the image models share."""

from __future__ import annotations

from collections.abc import Sequence

from torchchain.errors import ConfigError

__all__ = ["check_image_model"]


def check_image_model(model: str, input_shape: Sequence[int], num_outputs: int) -> tuple[int, int, int]:
    """``input_shape`` as ``(channels, height, width)``, checked for an image model.

    Args:
        model: The model's config name, for the message (``"cnn"``, ``"lenet"``).
        input_shape: The shape of one sample.
        num_outputs: Number of classes.

    Raises:
        ConfigError: If ``input_shape`` is not an image shape with positive sizes or
            ``num_outputs`` is not positive.
    """
    if len(input_shape) != 3 or any(size < 1 for size in input_shape):
        raise ConfigError(
            f"model={model} needs image samples of shape (channels, height, width); got {tuple(input_shape)} "
            f"(use model=mlp or model=linear for tabular data)"
        )
    if num_outputs < 1:
        raise ConfigError(f"num_outputs must be >= 1; got {num_outputs}")
    channels, height, width = input_shape
    return channels, height, width
