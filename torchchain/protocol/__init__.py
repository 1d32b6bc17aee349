"""The rules of a round, shared by the miner, every validating peer and the auditor.

Pure functions over bytes and tensors, no I/O of their own:

* :mod:`~torchchain.protocol.submission`: the one submission check
  (:func:`check_submission`, :func:`select_submissions`);
* :mod:`~torchchain.protocol.record`: the round record, the schema of a round block's metadata;
* :mod:`~torchchain.protocol.randomness`: round randomness derived from chain data;
* :mod:`~torchchain.protocol.state`: round state (the strategy's state) as canonical bytes;
* :mod:`~torchchain.protocol.registry`: the recorded strategy built from an allow-list, never
  through Hydra;
* :mod:`~torchchain.protocol.round`: :func:`execute_round` and :func:`replay_round`, the one
  definition of a round's outcome.

``audit``, ``inspect`` and ``verify`` read ledgers on top of these.
"""

from __future__ import annotations

from torchchain.protocol.randomness import round_generator, round_randomness
from torchchain.protocol.record import Rejections, RoundRecord
from torchchain.protocol.registry import build_strategy, builtin_strategy_targets
from torchchain.protocol.round import (
    ReplayMismatch,
    RoundInputs,
    RoundResult,
    RoundRules,
    execute_round,
    replay_round,
)
from torchchain.protocol.state import decode_state, encode_state
from torchchain.protocol.submission import RoundContext, Selection, Submission, check_submission, select_submissions

__all__ = [
    "Rejections",
    "ReplayMismatch",
    "RoundContext",
    "RoundInputs",
    "RoundRecord",
    "RoundResult",
    "RoundRules",
    "Selection",
    "Submission",
    "build_strategy",
    "builtin_strategy_targets",
    "check_submission",
    "decode_state",
    "encode_state",
    "execute_round",
    "replay_round",
    "round_generator",
    "round_randomness",
    "select_submissions",
]
