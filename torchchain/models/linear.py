"""A single linear layer on flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from torchchain.errors import ConfigError

__all__ = ["LinearRegression"]


class LinearRegression(nn.Module):
    """Linear model ``y = W x + b`` on the flattened input.

    Trained with mean squared error this is least-squares linear regression; trained with
    cross-entropy on ``num_outputs`` classes it is multinomial logistic regression.

    Args:
        input_shape: Shape of one sample, e.g. ``(10,)`` or ``(1, 8, 8)``; it is flattened.
        num_outputs: Output width (1 for scalar regression; the class count for classification).
            Defaults to 1.

    Parameters are initialised from torch's global generator (seed it with
    ``torch.manual_seed`` first for a reproducible model). The ``state_dict`` keys are
    ``linear.weight`` and ``linear.bias``.

    Raises:
        ConfigError: If ``input_shape`` or ``num_outputs`` is not positive.
    """

    def __init__(self, *, input_shape: Sequence[int], num_outputs: int = 1) -> None:
        super().__init__()
        if len(input_shape) == 0 or any(size < 1 for size in input_shape):
            raise ConfigError(f"input_shape must be a non-empty list of positive sizes; got {tuple(input_shape)}")
        if num_outputs < 1:
            raise ConfigError(f"num_outputs must be >= 1; got {num_outputs}")
        self.input_shape = tuple(input_shape)
        self.linear = nn.Linear(math.prod(input_shape), num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, *input_shape)`` to ``(B, num_outputs)``."""
        return self.linear(x.flatten(start_dim=1))
