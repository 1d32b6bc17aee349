"""A multilayer perceptron on flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from torchchain.errors import ConfigError

__all__ = ["MLP"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Fully connected network: flatten, then ``Linear -> activation`` per hidden width, then ``Linear``.

    Args:
        input_shape: Shape of one sample; it is flattened.
        num_outputs: Output width (class count, or regression target width).
        hidden: Width of each hidden layer, in order. Defaults to ``(64,)``; ``()`` gives a
            linear model.
        activation: ``"relu"`` (default), ``"tanh"`` or ``"gelu"``.

    Parameters are initialised from torch's global generator. The ``state_dict`` keys are
    ``layers.<i>.weight`` / ``layers.<i>.bias`` with ``i`` the position in ``self.layers``
    (``layers.1``, ``layers.3``, ... with the default activation layout).

    Raises:
        ConfigError: If a shape or width is not positive or the activation is unknown.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        hidden: Sequence[int] = (64,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(input_shape) == 0 or any(size < 1 for size in input_shape):
            raise ConfigError(f"input_shape must be a non-empty list of positive sizes; got {tuple(input_shape)}")
        if num_outputs < 1:
            raise ConfigError(f"num_outputs must be >= 1; got {num_outputs}")
        if any(width < 1 for width in hidden):
            raise ConfigError(f"model.hidden widths must all be >= 1; got {list(hidden)}")
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"model.activation must be one of {', '.join(_ACTIVATIONS)}; got {activation!r}")
        self.input_shape = tuple(input_shape)

        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for next_width in hidden:
            layers += [nn.Linear(width, next_width), _ACTIVATIONS[activation]()]
            width = next_width
        layers.append(nn.Linear(width, num_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, *input_shape)`` to ``(B, num_outputs)``."""
        return self.layers(x)
