"""Byzantine behaviours of the malicious clients: data poisoning and model poisoning.

A configuration selects one by its file in ``conf/attack/`` (``attack=alie``), whose
``_target_`` names the class; subclass :class:`Attack` for a new one.
"""

from __future__ import annotations

from torchchain.attacks.alie import ALIE
from torchchain.attacks.backdoor import Backdoor
from torchchain.attacks.base import Attack
from torchchain.attacks.gaussian import Gaussian
from torchchain.attacks.ipm import IPM
from torchchain.attacks.labelflip import LabelFlip
from torchchain.attacks.malformed import MalformedEncoding
from torchchain.attacks.mimic import Mimic
from torchchain.attacks.minmax import MinMax
from torchchain.attacks.minsum import MinSum
from torchchain.attacks.none import NoAttack
from torchchain.attacks.optimal_alie import OptimalALIE
from torchchain.attacks.optimal_ipm import OptimalIPM
from torchchain.attacks.replay import Replay
from torchchain.attacks.rop import ROP
from torchchain.attacks.signflip import SignFlip
from torchchain.attacks.sybil import Sybil

__all__ = [
    "ALIE",
    "Attack",
    "Backdoor",
    "Gaussian",
    "IPM",
    "LabelFlip",
    "MalformedEncoding",
    "Mimic",
    "MinMax",
    "MinSum",
    "NoAttack",
    "OptimalALIE",
    "OptimalIPM",
    "ROP",
    "Replay",
    "SignFlip",
    "Sybil",
]
