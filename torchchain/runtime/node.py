"""The mining node: select a round's valid submissions, execute the round, mine and append a block.

Everything a node decides is the protocol's (:mod:`torchchain.protocol`): which submissions are
accepted (:func:`~torchchain.protocol.submission.select_submissions`), what the round's model,
trust and state are (:func:`~torchchain.protocol.round.execute_round`), and what the block
records (:class:`~torchchain.protocol.record.RoundRecord`). A validator replays the block with
the same functions. The node only adds mining and writing.

The round state (the strategy's state) advances only in :meth:`Node.commit`: a block that is
prepared but never committed (a failed write, a lost mining race) leaves the node where it was.

On a secure-aggregation chain (``privacy.kind: secagg``) the node also runs the server side of
the protocol for the round: a :class:`SecureSession` (:class:`torchchain.runtime.secure.SecureRound`)
knows which clients dealt shares before the masked inputs are selected, and collects the
survivors' reveals once they are; the node checks the resulting transcript with the same function
the auditor uses.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from torchchain.chain.block import Block, Transaction, make_block
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import Ledger
from torchchain.protocol.record import MAX_REASON_CHARS, MAX_SECAGG_CLIENTS, Rejections, RoundRecord, SecAggRecord
from torchchain.protocol.round import RoundResult, RoundRules, execute_round, load_state_blob, round_inputs_from
from torchchain.protocol.secure_round import Transcript, check_transcript
from torchchain.protocol.state import encode_state
from torchchain.protocol.submission import Submission, select_submissions
from torchchain.updates.serialize import update_to_bytes

__all__ = ["Node", "PreparedBlock", "SecureSession", "Submission"]


class SecureSession(Protocol):
    """The server side of one secure-aggregation round, as the node needs it.

    Attributes:
        participants: The clients whose share bundles were accepted (only they may submit).
        refused: Client key -> why a protocol message of it was refused before the transcript.
    """

    participants: frozenset[str]
    refused: Mapping[str, str]

    def finish(self, survivors: Sequence[str]) -> Transcript:
        """Asks the survivors for their shares (when the round can unmask) and returns the transcript."""
        ...


@dataclass
class PreparedBlock:
    """A mined block and everything that must be stored with it.

    Attributes:
        block: The mined, signed block.
        result: The round's outcome (model, trust, round state) that the block commits to.
        rejections: The bounded record of refused submissions.
        blobs: The bytes the block refers to (accepted updates, model, state, reference).
        update_bytes: The size of each accepted update payload, in block order.
        seconds: Wall time of the node's phases: ``validate``, ``aggregate``, ``mine``, ``write``.
    """

    block: Block
    result: RoundResult
    rejections: Rejections
    blobs: list[bytes] = field(default_factory=list)
    update_bytes: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def model(self) -> dict[str, torch.Tensor]:
        """The new global model."""
        return self.result.model

    @property
    def accepted(self) -> list[Transaction]:
        """The accepted transactions, in block (client-key) order."""
        return list(self.block.transactions)

    @property
    def rejected(self) -> list[dict[str, str]]:
        """The recorded sample of refusals (``client``, ``update_hash``, ``code``, ``reason``)."""
        return [dict(entry) for entry in self.rejections.sample]

    @property
    def trust(self) -> dict[str, float]:
        """The weight each accepted client got, by key."""
        return self.result.trust


class Node:
    """A miner that turns one round's submissions into the next block.

    Args:
        ledger: The ledger to append to (opened for writing).
        rules: The chain's rules (:meth:`RoundRules.from_genesis` of the ledger's genesis).
        key: The node's own key; it must be one of the genesis block's miners.
        difficulty: Proof-of-work difficulty in leading zero bits (the genesis difficulty).
        mine_workers: Processes that split the nonce search (local; the block is the same).
    """

    def __init__(
        self, *, ledger: Ledger, rules: RoundRules, key: SigningKey, difficulty: int, mine_workers: int = 1
    ) -> None:
        self.ledger = ledger
        self.rules = rules
        self.key = key
        self.difficulty = difficulty
        self.mine_workers = mine_workers
        self.round_state = self._head_state()

    def _head_state(self) -> dict[str, torch.Tensor]:
        head = self.ledger.head
        if head.header.height == 0:
            return {}
        return load_state_blob(self.ledger.get_blob, RoundRecord.from_block(head).state)

    def prepare(
        self,
        round: int,
        submissions: Sequence[Submission],
        parent_model: Mapping[str, torch.Tensor],
        *,
        reference: Mapping[str, torch.Tensor] | None = None,
        time_ms: int | None = None,
        secure: SecureSession | None = None,
    ) -> PreparedBlock:
        """Select, execute and mine the block of ``round`` on the head, without writing anything.

        The ledger and the node's round state are untouched until :meth:`commit`, so a caller
        can first save whatever must survive a crash together with the block.

        Args:
            round: The round number the block closes.
            submissions: Everything received this round, in any order.
            parent_model: The head block's model.
            reference: The node's own update on its root set, for FLTrust-like strategies.
            time_ms: The block's timestamp; now when ``None``.
            secure: The round's secure-aggregation session (secagg chains only).

        Raises:
            ValueError: A secagg chain's round without its session, or a session on another chain.
        """
        seconds: dict[str, float] = {}
        head = self.ledger.head
        if (self.rules.secagg is None) != (secure is None):
            raise ValueError("a secagg chain's round needs its SecureSession, and only a secagg chain takes one")
        start = time.perf_counter()
        participants = None if secure is None else secure.participants
        context = self.rules.context(round, head.hash, parent_model, participants=participants)
        selection = select_submissions(submissions, context)
        rejections = Rejections.from_refusals(selection.rejected)
        seconds["validate"] = time.perf_counter() - start

        start = time.perf_counter()
        inputs = round_inputs_from(round, selection.accepted, reference if self.rules.strategy.requires_reference else None)
        if secure is not None:
            assert self.rules.secagg is not None
            transcript = secure.finish([tx.client for tx in inputs.transactions])
            checked = check_transcript(
                transcript, round_number=round, sample=self.rules.sample(round), config=self.rules.secagg
            )
            inputs = dataclasses.replace(inputs, secagg=checked)
            seconds["reveal"] = time.perf_counter() - start
            start = time.perf_counter()
        result = execute_round(self.rules, parent_model, self.round_state, inputs)
        seconds["aggregate"] = time.perf_counter() - start

        start = time.perf_counter()
        blobs = [payload for _, payload, _ in selection.accepted] + [result.model_bytes]
        secagg_record = None
        if result.secagg is not None:
            assert secure is not None
            blobs.append(result.secagg.transcript_bytes)
            if result.secagg.sum_bytes is not None:
                blobs.append(result.secagg.sum_bytes)
            secagg_record = SecAggRecord(
                transcript=result.secagg.transcript_hash,
                sum=result.secagg.sum_hash,
                dropped=result.secagg.outcome.dropped,
                rejected=result.secagg.rejected,
                refused={c: r[:MAX_REASON_CHARS] for c, r in sorted(secure.refused.items())[:MAX_SECAGG_CLIENTS]},
                failure=result.secagg.failure,
            )
        reference_hash = None
        if inputs.reference is not None and inputs.transactions:
            reference_bytes = update_to_bytes(inputs.reference)
            reference_hash = sha256_hex(reference_bytes)
            blobs.append(reference_bytes)
        if result.state_bytes is not None:
            blobs.append(result.state_bytes)
        record = RoundRecord(
            outcome=result.outcome,
            trust=result.trust,
            rejected=rejections,
            randomness=result.randomness,
            state=result.state_hash,
            reference=reference_hash,
            epsilon=result.epsilon,
            secagg=secagg_record,
        )
        block = make_block(
            prev=head,
            round=round,
            transactions=inputs.transactions,
            meta=record.to_meta(),
            model_hash=result.model_hash,
            miner=self.key,
            difficulty=self.difficulty,
            time_ms=int(time.time() * 1000) if time_ms is None else time_ms,
            workers=self.mine_workers,
        )
        seconds["mine"] = time.perf_counter() - start
        return PreparedBlock(
            block=block, result=result, rejections=rejections, blobs=blobs,
            update_bytes=[len(payload) for _, payload, _ in selection.accepted], seconds=seconds,
        )

    def commit(self, prepared: PreparedBlock) -> None:
        """Store the block's blobs, append it (atomically: whole or absent), then advance the round state."""
        start = time.perf_counter()
        for blob in prepared.blobs:
            self.ledger.put_blob(blob)
        record = RoundRecord.from_block(prepared.block)
        self.ledger.append(prepared.block, blobs=[digest for digest, _ in record.blobs()])
        self.round_state = prepared.result.state
        self._prune()
        prepared.seconds["write"] = time.perf_counter() - start

    def adopt(
        self,
        block: Block,
        *,
        payloads: Sequence[bytes],
        model: Mapping[str, torch.Tensor],
        round_state: Mapping[str, torch.Tensor],
    ) -> None:
        """Append a block this node did not prepare, once the caller has checked it
        (:func:`~torchchain.protocol.round.replay_round` gave ``model`` and ``round_state``):
        store its update payloads and the model and state blobs, append it, advance the round
        state.

        Raises:
            ValueError: ``model`` or ``round_state`` is not what the block commits to.
        """
        model_bytes = update_to_bytes(model)
        if sha256_hex(model_bytes) != block.header.model_hash:
            raise ValueError(f"the model given is not the one block {block.hash[:12]} commits to")
        record = RoundRecord.from_block(block)
        state_bytes = encode_state(round_state)
        if (None if state_bytes is None else sha256_hex(state_bytes)) != record.state:
            raise ValueError(f"the round state given is not the one block {block.hash[:12]} commits to")
        for blob in [*payloads, model_bytes, *([] if state_bytes is None else [state_bytes])]:
            self.ledger.put_blob(blob)
        self.ledger.append(block, blobs=[digest for digest, _ in record.blobs()])
        self.round_state = dict(round_state)
        self._prune()

    @property
    def ledger_bytes(self) -> int:
        """Bytes of the ledger folder (block files and blobs)."""
        return self.ledger.disk_bytes()

    def _prune(self) -> int:
        """Apply the chain's retention rule: delete the update blobs of the block that just left
        the retained window (those no retained block also refers to). Returns the bytes freed."""
        kept = self.rules.keep_updates
        height = self.ledger.height
        if kept is None or height - kept < 1:
            return 0
        retained = {tx.update_hash for block in self.ledger.iter_blocks(height - kept + 1) for tx in block.transactions}
        leaving = self.ledger.block(height - kept)
        return sum(
            self.ledger.delete_blob(tx.update_hash) for tx in leaving.transactions if tx.update_hash not in retained
        )

    def mine_round(
        self,
        round: int,
        submissions: Sequence[Submission],
        parent_model: Mapping[str, torch.Tensor],
        *,
        reference: Mapping[str, torch.Tensor] | None = None,
        time_ms: int | None = None,
        secure: SecureSession | None = None,
    ) -> PreparedBlock:
        """:meth:`prepare` the block of ``round`` and :meth:`commit` it."""
        prepared = self.prepare(round, submissions, parent_model, reference=reference, time_ms=time_ms, secure=secure)
        self.commit(prepared)
        return prepared
