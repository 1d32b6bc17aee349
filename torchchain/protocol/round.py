"""The one definition of a round's outcome, shared by the miner, every peer and the auditor.

:func:`execute_round` turns a round's accepted updates into the next global model, trust weights
and strategy state. The miner mines what it returns; :func:`replay_round` re-derives the same
inputs from a block and its blobs, checks every accepted update with the same submission rule
the miner applied, runs :func:`execute_round` and compares everything the block records.

Aggregation is bit-identical on every CPU (DESIGN.md invariant 3): updates in order of client
key, flattened to float64, aggregated on CPU, added to the model in float64, randomness only
from the round's :func:`~torchchain.protocol.randomness.round_randomness`.

On a secure-aggregation chain (``privacy.kind: secagg``, :mod:`torchchain.protocol.secure_round`)
the accepted updates are masked ring inputs and the round also has a transcript; the same two
functions unmask the survivors' sum from them (exact ring arithmetic, then one float64 division
by the number of survivors) and the replay checks the recorded sum, dropout set, rejected reveals
and failure besides the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchchain.chain.block import Block, Transaction
from torchchain.chain.block import config_hash as hash_of_config
from torchchain.chain.crypto import sha256_hex
from torchchain.errors import ConfigError, LedgerError, RejectedUpdate, SerializationError
from torchchain.privacy.secagg import SecAggConfig, SecAggError
from torchchain.protocol.privacy import PrivacyRules, split_state
from torchchain.protocol.randomness import round_generator, round_randomness
from torchchain.protocol.record import MAX_REASON_CHARS, RoundRecord
from torchchain.protocol.registry import build_codec, build_strategy
from torchchain.protocol.retention import updates_kept
from torchchain.protocol.sampling import round_sample, sample_size
from torchchain.protocol.secure_round import (
    MASKED_KEY,
    CheckedTranscript,
    SecureOutcome,
    Transcript,
    check_transcript,
    secagg_config,
    transcript_max_bytes,
    unmask_round,
)
from torchchain.protocol.state import decode_state, encode_state
from torchchain.protocol.submission import RoundContext, Submission, check_submission, check_tensors
from torchchain.strategies.base import Strategy
from torchchain.updates.codecs import Codec, NoCodec
from torchchain.updates.delta import apply_delta, flatten, float_keys, unflatten
from torchchain.updates.serialize import update_to_bytes

__all__ = [
    "MAX_UPDATE_MB",
    "ReplayMismatch",
    "RoundInputs",
    "RoundResult",
    "RoundRules",
    "SecAggResult",
    "execute_round",
    "replay_round",
]

#: The largest ``chain.max_update_mb`` a chain may set.
MAX_UPDATE_MB = 4096

BlobSource = Callable[[str], bytes]


def _config_int(config: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = config.get(key)
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"the genesis config must record {key!r} as an integer in [{low}, {high}], got {str(value)[:40]!r}")
    return value


def max_update_bytes(config: Mapping[str, Any]) -> int:
    """``chain.max_update_mb`` of a protocol config, in bytes.

    Raises:
        ConfigError: Missing, not a number, not finite, or outside (0, :data:`MAX_UPDATE_MB`].
    """
    chain = config.get("chain")
    value = chain.get("max_update_mb") if isinstance(chain, Mapping) else None
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 < value <= MAX_UPDATE_MB:
        raise ConfigError(f"chain.max_update_mb must be a number in (0, {MAX_UPDATE_MB}], got {str(value)[:40]!r}")
    return int(value * (1 << 20))


@dataclass(frozen=True)
class RoundRules:
    """The protocol as a genesis block fixes it: who may submit, how big, and the strategy.

    Attributes:
        strategy: The aggregation rule, set up for the chain's client and Byzantine counts. Its
            state is loaded from the parent block before every round, so one object serves any
            number of rounds and branches.
        members: Client keys allowed to submit.
        max_update_bytes: The largest accepted update.
        keep_updates: How many of the latest blocks keep their update blobs (``None``: all);
            see :mod:`torchchain.protocol.retention`.
        codec: How clients encode updates (:mod:`torchchain.updates.codecs`); recorded in every
            transaction, decoded identically by every node.
        clients_per_round: How many members a round samples (``None``: all); see
            :mod:`torchchain.protocol.sampling`.
        privacy: What each accepted update spends of its client's privacy budget; see
            :mod:`torchchain.protocol.privacy`.
        secagg: The secure-aggregation parameters (``privacy.kind: secagg``), or ``None``; see
            :mod:`torchchain.protocol.secure_round`.
        config_hash: The hash of the chain's configuration (every header's ``config_hash``);
            with the round number it seeds the sample and the round's randomness. Rules built
            from a config set it; the default suits rules built by hand for one process.
    """

    strategy: Strategy
    members: frozenset[str]
    max_update_bytes: int
    keep_updates: int | None = None
    codec: Codec = field(default_factory=NoCodec)
    clients_per_round: int | None = None
    privacy: PrivacyRules = field(default_factory=lambda: PrivacyRules(kind="none", members=()))
    secagg: SecAggConfig | None = None
    config_hash: str = "0" * 64

    @classmethod
    def from_genesis(cls, genesis: Block, *, trusted: Iterable[str] = ()) -> RoundRules:
        """The rules of the chain ``genesis`` starts, built without Hydra from its config.

        Args:
            genesis: The genesis block (already checked by the chain layer).
            trusted: Import paths of user strategy classes the caller trusts (see
                :func:`~torchchain.protocol.registry.build_strategy`).

        Raises:
            ConfigError: The config lacks ``clients``, ``byzantine``, ``strategy`` or
                ``chain.max_update_mb``, the strategy cannot be built from it, or
                ``privacy.kind: secagg`` is combined with a rule that needs individual updates
                (:func:`~torchchain.protocol.secure_round.secagg_config`).
        """
        return cls.from_config(genesis.meta["config"], genesis.meta["members"], trusted=trusted)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], members: Iterable[str], *, trusted: Iterable[str] = ()) -> RoundRules:
        """The rules a protocol config and member list give (what :meth:`from_genesis` reads).

        Raises:
            ConfigError: As :meth:`from_genesis`.
        """
        members = frozenset(members)
        clients = _config_int(config, "clients", 1, 1_000_000)
        if clients != len(members):
            raise ConfigError(f"the genesis config records clients={clients} but lists {len(members)} members")
        byzantine = _config_int(config, "byzantine", 0, clients)
        per_round = sample_size(config, clients)
        # A round aggregates at most the sampled clients, and any of them may be malicious.
        rows = clients if per_round is None else per_round
        secagg = secagg_config(config, round_size=rows)
        strategy = build_strategy(
            config.get("strategy"), num_clients=rows, num_byzantine=min(byzantine, rows), trusted=trusted
        )
        return cls(
            strategy=strategy, members=members, max_update_bytes=max_update_bytes(config),
            keep_updates=updates_kept(config), codec=build_codec(config.get("codec")), clients_per_round=per_round,
            privacy=PrivacyRules.from_config(config, members), secagg=secagg, config_hash=hash_of_config(config),
        )

    def sample(self, round: int) -> frozenset[str]:  # noqa: A002 - the protocol's word
        """The members that may submit in round ``round``."""
        return round_sample(self.config_hash, round, self.members, self.clients_per_round)

    def randomness(self, round: int, transactions: Sequence[Transaction]) -> str:  # noqa: A002
        """The seed of round ``round`` with these accepted transactions (client-key order)."""
        return round_randomness(self.config_hash, round, [(tx.client, tx.update_hash) for tx in transactions])

    @property
    def round_size(self) -> int:
        """How many members a round samples."""
        return len(self.members) if self.clients_per_round is None else self.clients_per_round

    def context(
        self, round: int, base_hash: str, model: Mapping[str, torch.Tensor], *, participants: Iterable[str] | None = None
    ) -> RoundContext:
        """What a submission of ``round``, computed against block ``base_hash`` whose model is
        ``model``, is checked against (on a secagg chain, ``participants`` are the clients that
        dealt shares in the round)."""
        template = {k: model[k] for k in float_keys(model)}
        return RoundContext(
            members=self.members, round=round, base_hash=base_hash, template=template,
            max_update_bytes=self.max_update_bytes, codec=self.codec,
            sampled=None if self.clients_per_round is None else self.sample(round),
            secagg=self.secagg, participants=None if participants is None else frozenset(participants),
        )


@dataclass(frozen=True)
class RoundInputs:
    """What a round's outcome depends on.

    Attributes:
        round: The round number.
        transactions: The accepted transactions, sorted by client key.
        updates: Their tensors, in the same order.
        reference: The server's reference update (strategies with ``requires_reference``).
        secagg: On a secagg chain, the round's checked transcript; ``updates`` then hold each
            client's masked input under :data:`~torchchain.protocol.secure_round.MASKED_KEY`.
    """

    round: int
    transactions: tuple[Transaction, ...]
    updates: tuple[Mapping[str, torch.Tensor], ...]
    reference: Mapping[str, torch.Tensor] | None = None
    secagg: CheckedTranscript | None = None


@dataclass(frozen=True)
class SecAggResult:
    """What a secagg round adds to its result: the blobs the record names, and the unmasking.

    Attributes:
        transcript_bytes: The transcript blob.
        sum_bytes: The unmasked sum as canonical float64 tensors named like the model's float
            tensors, or ``None`` when the round failed before unmasking.
        outcome: Survivors, dropped clients, rejected reveals and the failure, if any.
    """

    transcript_bytes: bytes
    sum_bytes: bytes | None
    outcome: SecureOutcome

    @property
    def transcript_hash(self) -> str:
        return sha256_hex(self.transcript_bytes)

    @property
    def sum_hash(self) -> str | None:
        return None if self.sum_bytes is None else sha256_hex(self.sum_bytes)

    @property
    def failure(self) -> dict[str, str] | None:
        """``{"code", "reason"}`` as the record holds it (reason cut to the record's limit), or ``None``."""
        if self.outcome.failure is None:
            return None
        code, reason = self.outcome.failure
        return {"code": code, "reason": reason[:MAX_REASON_CHARS]}

    @property
    def rejected(self) -> dict[str, str]:
        """Rejected reveals as the record holds them (reasons cut to the record's limit)."""
        return {client: reason[:MAX_REASON_CHARS] for client, reason in sorted(self.outcome.rejected.items())}


@dataclass(frozen=True)
class RoundResult:
    """What :func:`execute_round` computes.

    Attributes:
        model: The next global model (CPU state dict).
        model_bytes: Its canonical bytes; their SHA-256 is the block's model hash.
        state: The strategy state after the round.
        state_bytes: Its canonical bytes, or ``None`` for no state.
        trust: The weight given to each accepted client, by key.
        outcome: ``aggregated``, or ``kept_parent`` when the aggregate was not finite.
        randomness: The round's seed.
        epsilon: The largest privacy loss of any member after the round, or ``None`` when the
            chain keeps no privacy ledger.
        secagg: What the secure aggregation gave (secagg chains only).
    """

    model: dict[str, torch.Tensor]
    model_bytes: bytes
    state: dict[str, torch.Tensor]
    state_bytes: bytes | None
    trust: dict[str, float]
    outcome: str
    randomness: str
    epsilon: float | None = None
    secagg: SecAggResult | None = None

    @property
    def model_hash(self) -> str:
        return sha256_hex(self.model_bytes)

    @property
    def state_hash(self) -> str | None:
        return None if self.state_bytes is None else sha256_hex(self.state_bytes)


def _copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def execute_round(
    rules: RoundRules,
    parent_model: Mapping[str, torch.Tensor],
    parent_state: Mapping[str, torch.Tensor],
    inputs: RoundInputs,
) -> RoundResult:
    """The outcome of a round: a pure function of the parent model, the parent's round state and
    the accepted updates.

    The strategy's state is loaded from ``parent_state`` first, so nothing a previous call left
    in the strategy object matters. The privacy ledger (:mod:`torchchain.protocol.privacy`)
    advances by every accepted update, whatever the outcome: its bytes are public either way. If the aggregate model is not finite (one huge but finite
    update can overflow a float32 model), the round keeps the parent's model and state and gives
    every client zero trust (``outcome="kept_parent"``): a node never commits a non-finite model,
    which would make every later honest update fail.

    Raises:
        ValueError: The transactions are not sorted by client key, or a strategy that needs a
            reference update got none.
    """
    clients = [tx.client for tx in inputs.transactions]
    if clients != sorted(set(clients)) or len(inputs.updates) != len(clients):
        raise ValueError("a round's transactions must be sorted by client key, one per client, with one update each")
    strategy = rules.strategy
    strategy_state, privacy_state = split_state(parent_state)
    strategy.load_state_dict(strategy_state)
    privacy_after = rules.privacy.advance(privacy_state, inputs.transactions)
    epsilon = rules.privacy.epsilon(privacy_after) if rules.privacy.accounts else None
    randomness = rules.randomness(inputs.round, inputs.transactions)
    parent = _copy(parent_model)

    def keep_parent(outcome: str, trust: dict[str, float], secagg: SecAggResult | None = None) -> RoundResult:
        state = {**_copy(strategy_state), **privacy_after}
        return RoundResult(
            model=parent, model_bytes=update_to_bytes(parent), state=state, state_bytes=encode_state(state),
            trust=trust, outcome=outcome, randomness=randomness, epsilon=epsilon, secagg=secagg,
        )

    if rules.secagg is not None:
        checked = inputs.secagg
        if checked is None:
            raise ValueError("a round of a secagg chain needs its checked transcript (RoundInputs.secagg)")
        if any(tx.round != checked.transcript.round for tx in inputs.transactions):
            raise ValueError("the transactions and the secagg transcript are for different rounds")
        template = {k: parent[k] for k in float_keys(parent)}
        dim = sum(t.numel() for t in template.values())
        secure = unmask_round(checked, {c: u[MASKED_KEY] for c, u in zip(clients, inputs.updates)}, dim=dim)
        if secure.failure is not None:
            return keep_parent("kept_parent", {c: 0.0 for c in clients}, SecAggResult(checked.data, None, secure))
        assert secure.sum is not None
        sum_bytes = update_to_bytes(unflatten(secure.sum, template, dtype=torch.float64))
        mean = secure.sum / float(len(secure.survivors))
        model = apply_delta(parent, unflatten(mean, template, dtype=torch.float64))
        if not all(bool(torch.isfinite(v).all()) for v in model.values() if v.is_floating_point()):
            failed = SecureOutcome(
                sum=secure.sum, survivors=secure.survivors, dropped=secure.dropped, rejected=secure.rejected,
                failure=("non_finite_model", "the parent model plus the mean update is not finite"),
            )
            return keep_parent("kept_parent", {c: 0.0 for c in clients}, SecAggResult(checked.data, sum_bytes, failed))
        share = 1.0 / len(secure.survivors)
        state = {**strategy.state_dict(), **privacy_after}
        return RoundResult(
            model=model, model_bytes=update_to_bytes(model), state=state, state_bytes=encode_state(state),
            trust={c: share for c in clients}, outcome="aggregated", randomness=randomness, epsilon=epsilon,
            secagg=SecAggResult(checked.data, sum_bytes, secure),
        )
    if not clients:
        return keep_parent("aggregated", {})
    template = {k: parent[k] for k in float_keys(parent)}
    stacked = torch.stack([flatten(update) for update in inputs.updates])
    weights = torch.tensor([float(tx.num_samples) for tx in inputs.transactions], dtype=torch.float64)
    if strategy.requires_reference:
        if inputs.reference is None:
            raise ValueError(f"{type(strategy).__name__} needs the server's reference update, and none was given")
        strategy.set_reference(flatten(inputs.reference))  # type: ignore[attr-defined]
    result = strategy(stacked, weights, generator=round_generator(randomness))
    model = apply_delta(parent, unflatten(result.update, template, dtype=torch.float64))
    if not all(bool(torch.isfinite(v).all()) for v in model.values() if v.is_floating_point()):
        return keep_parent("kept_parent", {c: 0.0 for c in clients})
    state = {**strategy.state_dict(), **privacy_after}
    trust = {c: float(w) for c, w in zip(clients, result.trust.tolist())}
    return RoundResult(
        model=model, model_bytes=update_to_bytes(model), state=state, state_bytes=encode_state(state),
        trust=trust, outcome="aggregated", randomness=randomness, epsilon=epsilon,
    )


class ReplayMismatch(LedgerError):
    """Replaying a block does not reproduce what it records, or it accepted what the rules reject.

    Attributes:
        recorded_model_hash: The block's model hash.
        replayed_model_hash: The hash of the replayed model, or ``None`` when the replay stopped
            before aggregating (an update the rules reject).
    """

    def __init__(self, reason: str, *, recorded: str, replayed: str | None, block: str | None = None) -> None:
        super().__init__(reason, block=block)
        self.recorded_model_hash = recorded
        self.replayed_model_hash = replayed


def _blob(blobs: BlobSource, digest: str, what: str) -> bytes:
    try:
        return blobs(digest)
    except LedgerError as exc:
        raise LedgerError(f"{what}: {exc.reason}") from None


def replay_round(
    parent_model: Mapping[str, torch.Tensor],
    round_state: Mapping[str, torch.Tensor],
    block: Block,
    blobs: BlobSource,
    *,
    rules: RoundRules,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Check a round block against the rules and return the model and round state after it.

    Args:
        parent_model: The model of the block's parent (from its model blob).
        round_state: The round state after the parent (from its ``state`` blob; ``{}`` after genesis).
        block: The round block (its structure, links, PoW and signatures already checked by the
            chain layer).
        blobs: Reads a blob by digest, checking its hash (``Ledger.get_blob``).
        rules: The chain's rules (:meth:`RoundRules.from_genesis`).

    Returns:
        ``(model, round_state)`` after the block: what the next block builds on.

    Raises:
        ReplayMismatch: The block accepted an update the submission check rejects, its
            transactions are not in client-key order, or its model hash, trust weights, state,
            randomness or outcome differ from the replay.
        LedgerError: The round record is malformed or a blob is missing or corrupt.
    """
    recorded_hash = block.header.model_hash
    record = RoundRecord.from_block(block)

    def mismatch(reason: str, replayed: str | None = None) -> ReplayMismatch:
        return ReplayMismatch(f"round {block.header.round}: {reason}", recorded=recorded_hash, replayed=replayed)

    checked = None
    participants = None
    if rules.secagg is not None:
        if record.secagg is None:
            raise mismatch("the chain aggregates securely (privacy=secagg), but the block records no secagg entry")
        checked = _secagg_transcript(blobs, record.secagg.transcript, block, rules, mismatch)
        participants = checked.participants
    elif record.secagg is not None:
        raise mismatch("the block records a secure aggregation, but the chain does not use privacy=secagg")
    context = rules.context(block.header.round, block.header.prev_hash, parent_model, participants=participants)
    clients = [tx.client for tx in block.transactions]
    if clients != sorted(clients):
        raise mismatch("the transactions are not in client-key order")
    updates = []
    for i, tx in enumerate(block.transactions):
        what = f"transaction {i} (client {tx.client[:12]})"
        payload = _blob(blobs, tx.update_hash, f"{what}: update blob")
        try:
            updates.append(check_submission(Submission(tx, payload), context))
        except RejectedUpdate as exc:
            raise mismatch(f"{what} was accepted, but the protocol rejects it: {exc.code}: {exc.reason}") from None
    reference = None
    if rules.strategy.requires_reference and clients:
        if record.reference is None:
            raise mismatch("the strategy needs the server's reference update, but the block records none")
        data = _blob(blobs, record.reference, "reference update blob")
        try:
            reference = check_tensors(data, context.template, max_bytes=len(data))
        except RejectedUpdate as exc:
            raise mismatch(f"the reference update blob is not a valid update: {exc.reason}") from None
    elif record.reference is not None:
        raise mismatch("the block records a reference update that its strategy does not use")
    inputs = RoundInputs(
        round=block.header.round, transactions=block.transactions, updates=tuple(updates), reference=reference,
        secagg=checked,
    )
    try:
        result = execute_round(rules, parent_model, round_state, inputs)
    except SecAggError as exc:
        raise mismatch(f"the secagg transcript does not fit the block: {exc.reason}") from None
    except (ConfigError, ValueError, TypeError, RuntimeError) as exc:
        raise mismatch(f"the strategy fails on this block's updates: {exc}") from None
    replayed = result.model_hash
    if result.randomness != record.randomness:
        raise mismatch("the recorded randomness is not derived from the config hash, the round and the accepted updates", replayed)
    if replayed != recorded_hash:
        raise mismatch(
            f"the strategy gives a model hashing to {replayed[:12]}, but the block records {recorded_hash[:12]}: "
            "its model is not the aggregate of its accepted updates",
            replayed,
        )
    if result.outcome != record.outcome:
        raise mismatch(f"the block records outcome {record.outcome!r}, the replay gives {result.outcome!r}", replayed)
    if result.secagg is not None and record.secagg is not None:
        _compare_secagg(result.secagg, record.secagg, lambda reason: mismatch(reason, replayed))
    if result.trust != dict(record.trust):
        client = next(c for c in clients if result.trust.get(c) != record.trust.get(c))
        raise mismatch(
            f"the model matches, but the block records trust {record.trust.get(client)} for client {client[:12]} "
            f"where the strategy gives {result.trust.get(client)}",
            replayed,
        )
    if result.state_hash != record.state:
        raise mismatch("the recorded round state is not the strategy's state after this block", replayed)
    if (result.epsilon is None) != (record.epsilon is None) or (
        result.epsilon is not None and not math.isclose(result.epsilon, record.epsilon, rel_tol=1e-9, abs_tol=1e-12)
    ):
        raise mismatch(
            f"the block records privacy loss epsilon={record.epsilon}, but its transactions spend "
            f"epsilon={result.epsilon} by the chain's privacy rules",
            replayed,
        )
    if result.epsilon is not None and rules.privacy.over_budget(result.epsilon):
        raise mismatch(
            f"the block spends epsilon={result.epsilon:.4g}, beyond the genesis privacy.target_epsilon="
            f"{rules.privacy.target_epsilon}",
            replayed,
        )
    return result.model, result.state


def _secagg_transcript(
    blobs: BlobSource, digest: str, block: Block, rules: RoundRules, mismatch: Callable[[str], ReplayMismatch]
) -> CheckedTranscript:
    """The block's transcript, read, parsed and checked (signatures, rounds, clients)."""
    assert rules.secagg is not None
    data = _blob(blobs, digest, "secagg transcript blob")
    try:
        transcript = Transcript.from_bytes(data, max_bytes=transcript_max_bytes(rules.round_size))
        return check_transcript(
            transcript, round_number=block.header.round, sample=rules.sample(block.header.round), config=rules.secagg
        )
    except SerializationError as exc:
        raise mismatch(f"the secagg transcript is malformed: {exc}") from None
    except SecAggError as exc:
        raise mismatch(f"the secagg transcript is not valid: {exc.reason}") from None


def _compare_secagg(result: SecAggResult, record: Any, mismatch: Callable[[str], ReplayMismatch]) -> None:
    """Compares what the replayed unmasking gives with the block's ``secagg`` entry."""
    outcome = result.outcome
    if list(outcome.dropped) != list(record.dropped):
        raise mismatch(
            f"the block records {len(record.dropped)} dropped clients, but its transcript and transactions drop "
            f"{len(outcome.dropped)}: the dropout set {[c[:12] for c in record.dropped][:8]} is not the replay's "
            f"{[c[:12] for c in outcome.dropped][:8]}"
        )
    if result.failure != (None if record.failure is None else dict(record.failure)):
        raise mismatch(f"the block records secagg failure {record.failure}, the replay gives {result.failure}")
    if result.sum_hash != record.sum:
        raise mismatch(
            f"the block records the unmasked sum {str(record.sum)[:12]}, but unmasking its transcript gives "
            f"{str(result.sum_hash)[:12]}"
        )
    if result.rejected != dict(record.rejected):
        raise mismatch(
            f"the block records the rejected reveals {sorted(c[:12] for c in record.rejected)}, the replay rejects "
            f"{sorted(c[:12] for c in result.rejected)} (or for other reasons)"
        )


def load_state_blob(blobs: BlobSource, digest: str | None) -> dict[str, torch.Tensor]:
    """The round state a block records (``{}`` for none), read and parsed strictly.

    Raises:
        LedgerError: The blob is missing, corrupt or not canonical tensor bytes.
    """
    if digest is None:
        return {}
    data = _blob(blobs, digest, "round state blob")
    try:
        return decode_state(data)
    except SerializationError as exc:
        raise LedgerError(f"round state blob {digest[:12]}: {exc}") from None


def round_inputs_from(
    round: int,  # noqa: A002 - the protocol's word
    accepted: Sequence[tuple[Transaction, bytes, Mapping[str, torch.Tensor]]],
    reference: Mapping[str, torch.Tensor] | None,
) -> RoundInputs:
    """The inputs of a round from what :func:`~torchchain.protocol.submission.select_submissions` accepted."""
    return RoundInputs(
        round=round,
        transactions=tuple(tx for tx, _, _ in accepted),
        updates=tuple(t for _, _, t in accepted),
        reference=reference,
    )
