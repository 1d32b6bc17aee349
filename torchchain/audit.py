"""Replay a ledger's training and check that every recorded global model is what it claims to be.

:func:`~torchchain.chain.verify.verify_ledger` shows that the blocks are well-formed, linked,
mined, signed by members, and that every blob is intact. It cannot show that the node
aggregated honestly. :func:`audit_ledger` can: starting from the genesis model, for each round
block in order it decodes every accepted update from its blob, runs the strategy recorded in
the genesis config exactly as the mining node did
(:func:`~torchchain.runtime.node.aggregate_round`, with the round's derived generator) and
checks that the new model hashes to the block's ``model_hash`` and that the trust weights equal
the recorded ones. This works because aggregation is bit-identical on every CPU (DESIGN.md
invariant 3).

The recorded strategy is rebuilt from its Hydra ``_target_``, which means importing the module
it names, as ``train.py`` would. Before anything is called, every ``_target_`` in the recorded
strategy must resolve to a :class:`~torchchain.strategies.Strategy` or
:class:`~torchchain.strategies.PreAggregator` subclass, so a crafted ledger cannot make the
auditor call an arbitrary function.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from torchchain.chain.block import Block
from torchchain.chain.crypto import sha256_hex
from torchchain.chain.ledger import Ledger, block_file_name
from torchchain.chain.verify import VerifyReport, verify_ledger
from torchchain.errors import LedgerError, SerializationError, TorchchainError
from torchchain.ledger_summary import RoundRecord
from torchchain.runtime.node import aggregate_round
from torchchain.runtime.simulation import derive_generator
from torchchain.strategies.base import PreAggregator, Strategy
from torchchain.updates.delta import float_keys
from torchchain.updates.serialize import update_from_bytes, update_to_bytes

__all__ = [
    "ROUND_TABLE_HEADER",
    "AuditReport",
    "ReplayMismatch",
    "RoundReplay",
    "audit_ledger",
    "build_recorded_strategy",
    "format_round",
]

_SHORT = 12  # hash prefix shown in the table

#: Column titles of the per-round table; :func:`format_round` writes the rows.
ROUND_TABLE_HEADER = f"{'round':>5}  {'block':<{_SHORT}}  accepted  rejected  trusted  model hash"


@dataclass(frozen=True)
class RoundReplay:
    """The replay of one round block.

    Attributes:
        height: The block's height.
        round: The round the block closes.
        block_hash: The block's hash.
        accepted: Number of accepted updates (transactions).
        rejected: Number of rejected submissions the node recorded.
        trusted: Number of accepted clients the replayed strategy gave a positive weight.
        recorded_model_hash: The model hash in the block header.
        replayed_model_hash: The hash of the model the replay computed.
        trust_matches: Whether the replayed trust weights equal the recorded ones exactly.
    """

    height: int
    round: int
    block_hash: str
    accepted: int
    rejected: int
    trusted: int
    recorded_model_hash: str
    replayed_model_hash: str
    trust_matches: bool

    @property
    def model_matches(self) -> bool:
        """Whether the replayed model hashes to the recorded model hash."""
        return self.replayed_model_hash == self.recorded_model_hash

    @property
    def matches(self) -> bool:
        """Whether both the model and the trust weights were reproduced."""
        return self.model_matches and self.trust_matches


class ReplayMismatch(LedgerError):
    """Replaying a block's aggregation did not reproduce what the block records.

    Attributes:
        replay: The round's replay, with both hashes.
    """

    def __init__(self, reason: str, *, block: str, replay: RoundReplay) -> None:
        super().__init__(reason, block=block)
        self.replay = replay


@dataclass(frozen=True)
class AuditReport:
    """The result of a successful :func:`audit_ledger`.

    Attributes:
        verify: What the structural verification checked.
        strategy: The recorded strategy's ``_target_``.
        rounds: One replay per round block, in chain order; every one matches.
    """

    verify: VerifyReport
    strategy: str
    rounds: tuple[RoundReplay, ...]

    def summary(self) -> str:
        """Two lines for a terminal: the verification's and the replay's."""
        return (
            f"{self.verify.summary()}\n"
            f"audit OK: {len(self.rounds)} rounds replayed with {self.strategy}, every model hash and trust "
            f"weight matches; head {self.verify.head[:_SHORT]}"
        )


def format_round(replay: RoundReplay) -> str:
    """One row of the per-round table (see :data:`ROUND_TABLE_HEADER`)."""
    if replay.matches:
        verdict = f"match {replay.recorded_model_hash[:_SHORT]}"
    elif not replay.model_matches:
        verdict = (
            f"MISMATCH: recorded {replay.recorded_model_hash[:_SHORT]}, replayed {replay.replayed_model_hash[:_SHORT]}"
        )
    else:
        verdict = f"match {replay.recorded_model_hash[:_SHORT]}, TRUST MISMATCH"
    trusted = f"{replay.trusted}/{replay.accepted}"
    return (
        f"{replay.round:>5}  {replay.block_hash[:_SHORT]}  {replay.accepted:>8}  {replay.rejected:>8}  "
        f"{trusted:>7}  {verdict}"
    )


# -- rebuilding the recorded strategy -----------------------------------------------------------


def _locate(path: str) -> Any:
    """Import the object named by a dotted path such as ``my_pkg.rules.MyStrategy``.

    Raises:
        ImportError: The path is malformed, a module is missing, or it has no such attribute.
    """
    parts = path.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise ImportError(f"{path!r} is not a dotted import path such as 'my_pkg.MyStrategy'")
    missing: ModuleNotFoundError | None = None
    # The longest importable prefix is the module; what follows are attributes (nested classes).
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
                raise  # the module exists but itself imports something missing
            missing = exc
            continue
        for attribute in parts[split:]:
            if not hasattr(obj, attribute):
                raise ImportError(f"{'.'.join(parts[:split])} has no attribute {attribute!r}")
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(str(missing))


def _check_targets(node: Any, where: str) -> None:
    """Refuse any ``_target_`` below ``node`` that is not a Strategy or PreAggregator class."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            target = node["_target_"]
            if not isinstance(target, str):
                raise LedgerError(f"{where}._target_ must be a dotted import path, got {target!r}")
            try:
                obj = _locate(target)
            except Exception as exc:  # importing runs the module's own code, which may raise anything
                raise LedgerError(
                    f"cannot import the recorded {where}._target_={target!r} ({type(exc).__name__}: {exc}); "
                    "install the package that defines it to audit this ledger"
                ) from None
            if not (isinstance(obj, type) and issubclass(obj, (Strategy, PreAggregator))):
                raise LedgerError(
                    f"the recorded {where}._target_={target!r} is not a Strategy or PreAggregator class; "
                    "the auditor refuses to call it"
                )
        for key, value in node.items():
            _check_targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_targets(value, f"{where}[{i}]")


def _recorded_int(config: Mapping[str, Any], key: str, minimum: int | None = None) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        wanted = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise LedgerError(f"the genesis config must record {key!r} as {wanted}, got {value!r}")
    return value


def build_recorded_strategy(config: Mapping[str, Any]) -> Strategy:
    """The strategy a run used, rebuilt from its recorded config and set up as the run did.

    Args:
        config: The genesis config (:attr:`Ledger.config`): its ``strategy`` node (Hydra
            ``_target_`` plus keyword arguments), ``clients`` and ``byzantine`` (a count).

    Returns:
        A fresh strategy, ``setup`` with the recorded client and Byzantine counts.

    Raises:
        LedgerError: The config lacks one of these keys, a ``_target_`` cannot be imported or
            is not a strategy (nothing is called then), or the strategy refuses the recorded
            arguments; the message names the target.
    """
    node = config.get("strategy")
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise LedgerError("the genesis config records no 'strategy' with a '_target_'; there is nothing to replay")
    clients = _recorded_int(config, "clients", 1)
    byzantine = _recorded_int(config, "byzantine", 0)
    _check_targets(node, "strategy")
    target = node["_target_"]
    try:
        strategy = instantiate(dict(node), _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise LedgerError(f"the recorded strategy {target} cannot be built from its arguments: {cause}") from None
    if not isinstance(strategy, Strategy):
        raise LedgerError(f"the recorded strategy {target} did not build a Strategy (got {type(strategy).__name__})")
    try:
        strategy.setup(num_clients=clients, num_byzantine=byzantine)
    except TorchchainError as exc:
        raise LedgerError(
            f"the recorded strategy {target} refuses clients={clients}, byzantine={byzantine}: {exc}"
        ) from None
    return strategy


# -- replaying blocks ---------------------------------------------------------------------------


def _decode(
    ledger: Ledger, digest: str, what: str, template: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Read blob ``digest`` and parse it as an update shaped like ``template``.

    Raises:
        LedgerError: (without ``.block``) the blob is missing, corrupt, not canonical
            safetensors, or its tensors differ from the model's in names, shapes or dtypes,
            or hold NaN or infinity.
    """
    data = ledger.get_blob(digest)
    try:
        tensors = update_from_bytes(data, max_bytes=len(data))
    except SerializationError as exc:
        raise LedgerError(f"{what} {digest[:_SHORT]} is not a valid update: {exc}") from None
    if sorted(tensors) != sorted(template):
        raise LedgerError(
            f"{what} {digest[:_SHORT]} has tensors {sorted(tensors)}, the model's float tensors are {sorted(template)}"
        )
    for name, ref in template.items():
        got = tensors[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise LedgerError(
                f"{what} {digest[:_SHORT]}: tensor {name!r} is {got.dtype} {tuple(got.shape)}, "
                f"the model's is {ref.dtype} {tuple(ref.shape)}"
            )
        if not bool(torch.isfinite(got).all()):
            raise LedgerError(f"{what} {digest[:_SHORT]}: tensor {name!r} holds NaN or infinite values")
    return tensors


def _replay_block(
    ledger: Ledger, block: Block, strategy: Strategy, state: Mapping[str, torch.Tensor], *, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, float], RoundReplay]:
    """Recompute one round block's model and trust weights from ``state``, the model of the block before it.

    Raises:
        LedgerError: (without ``.block``) a blob is bad or the strategy cannot run on it.
    """
    record = RoundRecord.from_block(block)
    template = {k: state[k] for k in float_keys(state)}
    updates = []
    for i, tx in enumerate(block.transactions):
        who = f"transaction {i} (client {tx.client[:_SHORT]})"
        if tx.num_samples < 1:
            raise LedgerError(f"{who} claims {tx.num_samples} samples; a node accepts only positive counts")
        updates.append((tx, _decode(ledger, tx.update_hash, f"{who}: update blob", template)))
    reference = None
    if record.reference is not None:
        reference = _decode(ledger, record.reference, "reference update blob", template)
    elif strategy.requires_reference and updates:
        raise LedgerError(
            f"the recorded strategy {strategy.describe()['name']} needs the server's reference update, "
            "but the block's meta records no 'reference'"
        )
    try:
        new_state, trust = aggregate_round(
            strategy,
            state,
            updates,
            generator=derive_generator(seed, "aggregate", block.header.round),
            reference=reference,
        )
    except (TorchchainError, ValueError, TypeError, RuntimeError) as exc:
        raise LedgerError(f"the recorded strategy failed on this block's updates: {exc}") from None
    replay = RoundReplay(
        height=block.header.height,
        round=block.header.round,
        block_hash=block.hash,
        accepted=len(block.transactions),
        rejected=len(record.rejected),
        trusted=sum(1 for w in trust.values() if w > 0),
        recorded_model_hash=block.header.model_hash,
        replayed_model_hash=sha256_hex(update_to_bytes(new_state)),
        trust_matches=trust == record.trust,
    )
    return new_state, trust, replay


def _mismatch_reason(
    replay: RoundReplay, *, recorded: Mapping[str, float], replayed: Mapping[str, float], strategy: str
) -> str:
    if not replay.model_matches:
        return (
            f"round {replay.round}: the recorded strategy {strategy} gives a model hashing to "
            f"{replay.replayed_model_hash[:_SHORT]}, but the block records {replay.recorded_model_hash[:_SHORT]}: "
            "its model is not the aggregate of its accepted updates"
        )
    client = next(c for c in sorted(set(recorded) | set(replayed)) if recorded.get(c) != replayed.get(c))
    return (
        f"round {replay.round}: the model matches, but the block records trust {recorded.get(client)} for client "
        f"{client[:_SHORT]} where {strategy} gives {replayed.get(client)}"
    )


def audit_ledger(
    path: str | os.PathLike[str], *, on_round: Callable[[RoundReplay], None] | None = None
) -> AuditReport:
    """Verify the ledger at ``path`` in full, then replay every round from genesis.

    Args:
        path: The ledger folder.
        on_round: Called with each round's replay as soon as it is computed, the mismatching
            one included (for a live table).

    Returns:
        The report; every round in it matches.

    Raises:
        ReplayMismatch: The first block whose model hash (or trust weights) the replay does not
            reproduce; ``.block`` names the block file.
        LedgerError: Verification failed, a blob cannot be decoded, or the recorded strategy
            cannot be rebuilt; ``.block`` names the block file at fault.
    """
    report = verify_ledger(path)
    ledger = Ledger.open(Path(path))
    blocks = ledger.blocks()
    genesis_name = block_file_name(blocks[0])
    config = ledger.config
    try:
        strategy = build_recorded_strategy(config)
        seed = _recorded_int(config, "seed")
        data = ledger.get_blob(blocks[0].header.model_hash)
        state = update_from_bytes(data, max_bytes=len(data))
    except (LedgerError, SerializationError) as exc:
        reason = exc.reason if isinstance(exc, LedgerError) else f"the initial model blob is not valid: {exc}"
        raise LedgerError(reason, block=genesis_name) from None
    target = str(config["strategy"]["_target_"])

    rounds = []
    for block in blocks[1:]:
        name = block_file_name(block)
        try:
            # One strategy object in chain order: stateful rules carry their state between rounds.
            state, trust, replay = _replay_block(ledger, block, strategy, state, seed=seed)
        except LedgerError as exc:
            raise LedgerError(exc.reason, block=name) from None
        if on_round is not None:
            on_round(replay)
        if not replay.matches:
            recorded = RoundRecord.from_block(block).trust
            reason = _mismatch_reason(replay, recorded=recorded, replayed=trust, strategy=target)
            raise ReplayMismatch(reason, block=name, replay=replay)
        # The next round starts from the replayed state: it has the recorded model's exact bytes.
        rounds.append(replay)
    return AuditReport(verify=report, strategy=target, rounds=tuple(rounds))
