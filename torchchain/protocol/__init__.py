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
  definition of a round's outcome;
* :mod:`~torchchain.protocol.secure_round`: secure aggregation (``privacy.kind: secagg``): its
  configuration rules, signed protocol messages, the round transcript and the unmasking that
  :func:`execute_round` calls.

``audit``, ``inspect`` and ``verify`` read ledgers on top of these.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use, so that ``torchchain verify`` and ``inspect`` (which need only
# the record schema) start without importing torch.
_WHERE = {
    "Attestation": "attestation",
    "AttestationError": "attestation",
    "Tally": "attestation",
    "committed": "attestation",
    "count_attestations": "attestation",
    "decode_submissions": "bundle",
    "encode_submissions": "bundle",
    "round_generator": "randomness",
    "round_randomness": "randomness",
    "Rejections": "record",
    "RoundRecord": "record",
    "SecAggRecord": "record",
    "build_strategy": "registry",
    "builtin_strategy_targets": "registry",
    "ReplayMismatch": "round",
    "RoundInputs": "round",
    "RoundResult": "round",
    "RoundRules": "round",
    "SecAggResult": "round",
    "execute_round": "round",
    "replay_round": "round",
    "decode_state": "state",
    "encode_state": "state",
    "RoundContext": "submission",
    "Selection": "submission",
    "Submission": "submission",
    "check_submission": "submission",
    "select_submissions": "submission",
    "Transcript": "secure_round",
    "check_transcript": "secure_round",
    "secagg_config": "secure_round",
    "unmask_round": "secure_round",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'torchchain.protocol' has no attribute {name!r}")
    return getattr(importlib.import_module(f"torchchain.protocol.{_WHERE[name]}"), name)


__all__ = [
    "Attestation",
    "AttestationError",
    "Rejections",
    "ReplayMismatch",
    "RoundContext",
    "RoundInputs",
    "RoundRecord",
    "RoundResult",
    "RoundRules",
    "SecAggRecord",
    "SecAggResult",
    "Selection",
    "Submission",
    "Transcript",
    "build_strategy",
    "builtin_strategy_targets",
    "check_submission",
    "check_transcript",
    "decode_state",
    "encode_state",
    "execute_round",
    "replay_round",
    "round_generator",
    "round_randomness",
    "secagg_config",
    "select_submissions",
    "unmask_round",
]
