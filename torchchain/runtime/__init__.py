"""Runtimes that wire clients, strategies, attacks and the chain together."""

from torchchain.runtime.client import Client, LocalTraining, evaluate, train_local
from torchchain.runtime.node import Node, PreparedBlock, Submission
from torchchain.runtime.peer import ConsensusError, Peer, PeerOutcome, run_in_process, run_peer
from torchchain.runtime.peer_behaviour import Fault, PeerFault
from torchchain.runtime.simulation import Simulation, SimulationSettings, derive_generator

__all__ = [
    "Client",
    "ConsensusError",
    "Fault",
    "LocalTraining",
    "Node",
    "Peer",
    "PeerFault",
    "PeerOutcome",
    "PreparedBlock",
    "Simulation",
    "SimulationSettings",
    "Submission",
    "derive_generator",
    "evaluate",
    "run_in_process",
    "run_peer",
    "train_local",
]
