"""Runtimes that wire clients, strategies, attacks and the chain together."""

from torchchain.runtime.client import Client, LocalTraining, evaluate, train_local
from torchchain.runtime.node import Node, PreparedBlock, Submission
from torchchain.runtime.simulation import Simulation, SimulationSettings, derive_generator

__all__ = [
    "Client",
    "LocalTraining",
    "Node",
    "PreparedBlock",
    "Simulation",
    "SimulationSettings",
    "Submission",
    "derive_generator",
    "evaluate",
    "train_local",
]
