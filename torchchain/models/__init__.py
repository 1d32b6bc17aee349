"""Models a client can train; every one is built as ``cls(input_shape=..., num_outputs=..., **options)``.

None of them uses batch normalisation, so a model's whole state is trainable parameters and a
client's update is fully described by its parameter deltas.
"""

from __future__ import annotations

from torchchain.models.cnn import CNN
from torchchain.models.lenet import LeNet5
from torchchain.models.linear import LinearRegression
from torchchain.models.mlp import MLP

__all__ = ["CNN", "LeNet5", "LinearRegression", "MLP"]
