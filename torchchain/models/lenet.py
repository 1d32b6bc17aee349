"""LeNet-5, the convolutional network of LeCun, Bottou, Bengio and Haffner (1998)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torchchain.models.checks import check_image_model

__all__ = ["LeNet5"]

#: The input side LeNet-5 was designed for; smaller images are zero-padded up to it.
_PAPER_SIDE = 32


class LeNet5(nn.Module):
    """``conv6(5x5) -> pool -> conv16(5x5) -> pool -> fc120 -> fc84 -> fc(num_outputs)``.

    LeCun, Bottou, Bengio and Haffner, 1998, "Gradient-Based Learning Applied to Document
    Recognition". The layer sizes are the paper's; two simplifications are the usual modern
    ones: ReLU instead of the scaled tanh, and 2x2 max-pooling instead of the trainable
    subsampling layers, with every C3 map connected to all six S2 maps and a plain linear output
    instead of the RBF units. On 1x28x28 MNIST with 10 classes it has 61,706 parameters.

    The paper feeds 32x32 images (28x28 digits centred in a blank field), so an image smaller
    than 32x32 is zero-padded to 32x32, evenly on both sides (the odd pixel on the right and
    bottom): for MNIST that is the common ``padding=2`` on the first convolution, and 8x8
    scikit-learn digits work too. Larger images are not padded and simply give a wider first
    fully connected layer (3x32x32 CIFAR-10 gets the paper's 16x5x5 too).

    Args:
        input_shape: ``(channels, height, width)`` of one image.
        num_outputs: Number of classes.

    Parameters are initialised from torch's global generator. The ``state_dict`` keys are
    ``features.1`` and ``features.4`` (the convolutions, after the padding layer
    ``features.0``), then ``classifier.1``, ``classifier.3`` and ``classifier.5``
    (``.weight`` / ``.bias``). There is no batch normalisation, so the whole state is trainable.

    Raises:
        ConfigError: If ``input_shape`` is not an image shape or ``num_outputs`` is not positive.
    """

    def __init__(self, *, input_shape: Sequence[int], num_outputs: int) -> None:
        super().__init__()
        check_image_model("lenet", input_shape, num_outputs)
        self.input_shape = tuple(input_shape)

        channels, height, width = input_shape
        pad_h, pad_w = max(0, _PAPER_SIDE - height), max(0, _PAPER_SIDE - width)
        height, width = height + pad_h, width + pad_w
        self.features = nn.Sequential(
            nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)),
            nn.Conv2d(channels, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        # Two valid 5x5 convolutions, each followed by a 2x2 pool that rounds down.
        height, width = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * height * width, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, C, H, W)`` to logits ``(B, num_outputs)``."""
        return self.classifier(self.features(x))
