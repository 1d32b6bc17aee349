"""A small convolutional network for image classification."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchchain.errors import ConfigError
from torchchain.models.checks import check_image_model

__all__ = ["CNN"]


class CNN(nn.Module):
    """Convolutional blocks ``Conv -> ReLU -> MaxPool(2)``, then ``Linear(hidden) -> ReLU -> Linear``.

    With the defaults on MNIST this is the conv32-conv64-fc128 network often used in federated
    learning experiments (421,642 parameters). Convolutions use stride 1 and padding
    ``kernel_size // 2`` ("same" size for odd kernels); each pool halves height and width
    (rounding down), so 8x8 digits, 28x28 MNIST and 32x32 CIFAR images all work with the
    default two blocks. There is deliberately no batch normalisation: its running statistics
    are buffers, not trainable deltas, and would not be aggregated.

    Args:
        input_shape: ``(channels, height, width)`` of one image.
        num_outputs: Number of classes.
        channels: Output channels of each convolutional block, in order. Defaults to ``(32, 64)``.
        hidden: Width of the hidden fully connected layer. Defaults to 128.
        kernel_size: Side of the square convolution kernels. Defaults to 3.

    Parameters are initialised from torch's global generator. The ``state_dict`` keys are
    ``features.<i>.weight`` / ``.bias`` for convolutions (``features.0``, ``features.3``, ...)
    and ``classifier.1`` / ``classifier.3`` for the fully connected layers.

    Raises:
        ConfigError: If ``input_shape`` is not an image shape, a size is not positive, or the
            image is too small for the number of pooling blocks.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        check_image_model("cnn", input_shape, num_outputs)
        if len(channels) == 0 or any(count < 1 for count in channels):
            raise ConfigError(f"model.channels must be a non-empty list of positive counts; got {list(channels)}")
        if hidden < 1:
            raise ConfigError(f"model.hidden must be >= 1; got {hidden}")
        if kernel_size < 1:
            raise ConfigError(f"model.kernel_size must be >= 1; got {kernel_size}")
        self.input_shape = tuple(input_shape)

        in_channels, height, width = input_shape
        padding = kernel_size // 2
        blocks: list[nn.Module] = []
        for out_channels in channels:
            blocks += [
                nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
            # Output size of a stride-1 convolution, then of a 2x2 pool (which rounds down).
            height = (height + 2 * padding - kernel_size + 1) // 2
            width = (width + 2 * padding - kernel_size + 1) // 2
            if height < 1 or width < 1:
                raise ConfigError(
                    f"images of shape {tuple(input_shape)} are too small for {len(channels)} pooling blocks "
                    f"(model.channels={list(channels)}): use fewer channel entries"
                )
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, C, H, W)`` to logits ``(B, num_outputs)``."""
        return self.classifier(self.features(x))
