"""Replay a ledger's training and check that every recorded global model is what it claims to be.

:func:`~torchchain.protocol.verify.verify_ledger` shows that the blocks are well-formed, linked,
mined and signed by authorized miners, that transactions are signed by members, and that every
blob is intact. It cannot show that the miner aggregated honestly. :func:`audit_ledger` can: it
rebuilds the chain's rules from the genesis config (:meth:`RoundRules.from_genesis`: an
allow-listed strategy, never Hydra, nothing imported that the user did not trust) and replays
every round block with :func:`~torchchain.protocol.round.replay_round`, the function the miner's
outcome came from. Every accepted update must pass the submission check, and every model hash,
trust weight, round state and randomness must be reproduced.

When the genesis block lists more than one miner (a chain of peers, :mod:`torchchain.runtime.peer`),
every round block must also carry the signed attestations of a strict majority of those peers
(:mod:`torchchain.protocol.attestation`); the audit recounts them before replaying. A chain with
``validation=vote`` must also hold, for every transaction, signed approvals from a strict
majority of the peers (:mod:`torchchain.protocol.vote`); the audit recounts those too.

The ledger may come from an enemy: blocks are streamed one at a time (memory stays bounded by
the largest block), nothing is written, and the replay can start at any height from the model
and round state the previous block commits to.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from torchchain.chain.ledger import Ledger, block_file_name
from torchchain.chain.verify import VerifyReport
from torchchain.errors import ConfigError, LedgerError, SerializationError
from torchchain.protocol.attestation import AttestationError, attestation_set_bound, check_attestation_set
from torchchain.protocol.record import RoundRecord
from torchchain.protocol.retention import first_retained_height
from torchchain.protocol.round import ReplayMismatch, RoundRules, load_state_blob, replay_round
from torchchain.protocol.verify import verify_ledger
from torchchain.protocol.vote import VoteError, VoteRules, check_vote_set, vote_set_bound
from torchchain.updates.serialize import update_from_bytes

__all__ = [
    "ROUND_TABLE_HEADER",
    "AttestationError",
    "AuditReport",
    "ReplayMismatch",
    "RoundReplay",
    "audit_ledger",
    "format_round",
    "VoteError",
    "recount_attestations",
    "recount_votes",
]

_SHORT = 12


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


@dataclass(frozen=True)
class AuditReport:
    """The result of a successful :func:`audit_ledger`.

    Attributes:
        verify: What the structural verification checked.
        strategy: The recorded strategy's ``_target_``.
        rounds: One replay per replayed round block, in chain order; every one matches.
        skipped: The heights ``(first, last)`` not replayed because the retention rule let their
            update blobs be pruned, or ``None``.
        keep_updates: The chain's ``chain.keep_updates`` (``None``: all).
        attested: For a chain of several peers, how many round blocks had their attestations
            recounted (every one of the best chain); ``None`` for a chain with one miner.
        peers: The number of peers (genesis miners).
        voted: For a chain with ``validation=vote``, how many round blocks had their votes
            recounted; ``None`` otherwise.
    """

    verify: VerifyReport
    strategy: str
    rounds: tuple[RoundReplay, ...]
    skipped: tuple[int, int] | None = None
    keep_updates: int | None = None
    attested: int | None = None
    peers: int = 1
    voted: int | None = None

    def summary(self) -> str:
        """The verification's line, the replay's, and which heights were not replayed and why."""
        lines = [
            self.verify.summary(),
            f"audit OK: {len(self.rounds)} rounds replayed with {self.strategy}, every model hash and trust "
            f"weight matches; head {self.verify.head[:_SHORT]}",
        ]
        if self.attested is not None:
            lines.append(
                f"attestations OK: each of {self.attested} round blocks is accepted by a strict majority of the "
                f"{self.peers} peers, every signature valid"
            )
        if self.voted is not None:
            lines.append(
                f"votes OK: every update of the {self.voted} round blocks is approved by a strict majority of the "
                f"{self.peers} peers, every ballot signed"
            )
        if self.skipped is not None:
            low, high = self.skipped
            lines.append(
                f"not replayed: heights {low} to {high}, whose update blobs the chain's retention rule "
                f"(chain.keep_updates={self.keep_updates}) lets nodes delete; the replay started from the "
                f"model and round state block {high} commits to"
            )
        return "\n".join(lines)


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




def _genesis_rules(ledger: Ledger, trust: Iterable[str]) -> RoundRules:
    try:
        return RoundRules.from_genesis(ledger.genesis, trusted=trust)
    except ConfigError as exc:
        raise LedgerError(f"the recorded protocol cannot be rebuilt: {exc}", block=block_file_name(ledger.genesis)) from None


def _model_at(ledger: Ledger, height: int) -> tuple[dict, dict]:
    """The model and round state after the best chain's block at ``height``."""
    block = ledger.block(height)
    name = block_file_name(block)
    try:
        data = ledger.get_blob(block.header.model_hash)
        model = update_from_bytes(data, max_bytes=len(data))
        state = {} if height == 0 else load_state_blob(ledger.get_blob, RoundRecord.from_block(block).state)
    except (LedgerError, SerializationError) as exc:
        reason = exc.reason if isinstance(exc, LedgerError) else f"the model blob is not valid: {exc}"
        raise LedgerError(reason, block=name) from None
    return model, state


def recount_attestations(ledger: Ledger) -> int:
    """Recount the stored attestations of every round block of the best chain; the number of
    blocks recounted.

    Each block needs a stored attestation set (:meth:`Ledger.get_attestations`) whose entries
    are all well-formed, validly signed attestations of that block, and whose accepting peers
    (genesis miners, each counted once) are a strict majority of the genesis miners.

    Raises:
        AttestationError: The first block whose attestations are missing, malformed, forged or
            short of a majority; ``.block`` names its file.
    """
    peers = ledger.miners
    bound = attestation_set_bound(len(peers))
    count = 0
    for block in ledger.iter_blocks(1):
        name = block_file_name(block)
        try:
            data = ledger.get_attestations(block.hash, max_bytes=bound)
        except LedgerError as exc:
            raise AttestationError(
                f"{exc.reason}: the block has no strict majority of attesting peers on record", peers=len(peers), block=name
            ) from None
        check_attestation_set(data, block_hash=block.hash, height=block.header.height, peers=peers, name=name)
        count += 1
    return count


def recount_votes(ledger: Ledger) -> int:
    """Recount the stored votes of every round block of the best chain (``validation=vote``);
    the number of blocks recounted.

    Raises:
        VoteError: The first block whose votes are missing or malformed, hold a ballot that is
            forged, of a non-peer or about another block, or leave one of its transactions
            without approvals from a strict majority of the peers; ``.block`` names its file.
    """
    peers = ledger.miners
    members = len(ledger.members)
    count = 0
    for block in ledger.iter_blocks(1):
        name = block_file_name(block)
        try:
            data = ledger.get_votes(block.hash, max_bytes=vote_set_bound(len(peers), members))
        except LedgerError as exc:
            raise VoteError(f"{exc.reason}: the block's updates have no approvals on record", block=name) from None
        check_vote_set(
            data, block_hash=block.hash, height=block.header.height, base_hash=block.header.prev_hash,
            tx_hashes=[tx.tx_hash for tx in block.transactions], peers=peers, members=members, name=name,
        )
        count += 1
    return count


def audit_ledger(
    path: str | os.PathLike[str],
    *,
    trust: Iterable[str] = (),
    expect_head: str | None = None,
    start: int = 1,
    on_round: Callable[[RoundReplay], None] | None = None,
) -> AuditReport:
    """Verify the ledger at ``path`` in full, then replay every round block of the best chain.

    Args:
        path: The ledger folder.
        trust: Import paths of user strategy classes the caller trusts; the recorded strategy
            is imported only if it is built in or listed here.
        expect_head: The head hash the caller expects (e.g. from the run's ``summary.json``).
        start: The first height to replay (from the model and round state block ``start - 1``
            commits to); 1 replays from genesis.
        on_round: Called with each round's replay as soon as it is computed, the mismatching
            one included (for a live table).

    Returns:
        The report; every replayed round in it matches.

    Raises:
        AttestationError: A chain of several peers (more than one genesis miner) holds a round
            block without valid attestations from a strict majority of them (checked before
            the replay); ``.block`` names the block file.
        VoteError: A chain with ``validation=vote`` holds a transaction without approvals from
            a strict majority of the peers, or its votes are missing or forged.
        ReplayMismatch: The first block that the replay does not reproduce, or that accepted an
            update the rules reject; ``.block`` names the block file.
        LedgerError: Verification failed, a blob cannot be decoded, or the recorded protocol
            cannot be rebuilt (a strategy that is not allow-listed, bad arguments);
            ``.block`` names the block file at fault.
    """
    report = verify_ledger(path, expect_head=expect_head)
    ledger = Ledger.open(Path(path))
    if type(start) is not int or not 1 <= start <= max(ledger.height, 1):
        raise LedgerError(f"start must be a height in [1, {ledger.height}], got {start!r}")
    attested = recount_attestations(ledger) if len(ledger.miners) > 1 else None
    try:
        votes = VoteRules.from_config(ledger.config).votes
    except ConfigError as exc:
        raise LedgerError(f"the recorded validation section is invalid: {exc}") from None
    voted = recount_votes(ledger) if votes else None
    rules = _genesis_rules(ledger, trust)
    retained = first_retained_height(ledger.height, rules.keep_updates)
    skipped = None
    if start < retained:
        # Heights below `retained` may have lost their update blobs to the retention rule: the
        # replay starts where the rule guarantees every input is stored.
        skipped = (start, retained - 1)
        start = retained
    target = str(ledger.config["strategy"]["_target_"])
    model, state = _model_at(ledger, start - 1)
    rounds = []
    for block in ledger.iter_blocks(start):
        name = block_file_name(block)
        record_rejected, accepted = 0, len(block.transactions)
        try:
            record = RoundRecord.from_block(block)
            record_rejected = record.rejected.total
            model, state = replay_round(model, state, block, ledger.get_blob, rules=rules)
        except ReplayMismatch as exc:
            replay = RoundReplay(
                height=block.header.height, round=block.header.round, block_hash=block.hash, accepted=accepted,
                rejected=record_rejected, trusted=0, recorded_model_hash=exc.recorded_model_hash,
                replayed_model_hash=exc.replayed_model_hash or "-" * 64, trust_matches=False,
            )
            if on_round is not None:
                on_round(replay)
            raise ReplayMismatch(exc.reason, recorded=exc.recorded_model_hash, replayed=exc.replayed_model_hash, block=name) from None
        except LedgerError as exc:
            raise LedgerError(exc.reason, block=name) from None
        replay = RoundReplay(
            height=block.header.height, round=block.header.round, block_hash=block.hash, accepted=accepted,
            rejected=record_rejected, trusted=sum(1 for w in record.trust.values() if w > 0),
            recorded_model_hash=block.header.model_hash, replayed_model_hash=block.header.model_hash,
            trust_matches=True,
        )
        if on_round is not None:
            on_round(replay)
        rounds.append(replay)
    return AuditReport(
        verify=report, strategy=target, rounds=tuple(rounds), skipped=skipped, keep_updates=rules.keep_updates,
        attested=attested, peers=len(ledger.miners), voted=voted,
    )
