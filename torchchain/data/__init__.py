"""Datasets as whole tensors, and the partitioners that split a training set among clients.

This package knows nothing of the chain or of Hydra: loaders return a
:class:`~torchchain.data.datasets.TaskData`, partitioners return index tensors.
"""

from __future__ import annotations

from torchchain.data.datasets import (
    DataSplit,
    TaskData,
    load_cifar10,
    load_diabetes,
    load_digits,
    load_fashion_mnist,
    load_mnist,
)
from torchchain.data.partition import (
    PARTITIONS,
    dirichlet_partition,
    iid_partition,
    partition,
    shard_partition,
)

__all__ = [
    "DataSplit",
    "PARTITIONS",
    "TaskData",
    "dirichlet_partition",
    "iid_partition",
    "load_cifar10",
    "load_diabetes",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "partition",
    "shard_partition",
]
