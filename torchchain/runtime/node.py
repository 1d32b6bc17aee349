"""The mining node: validate submitted updates, aggregate the valid ones, mine and append a block.

This is the only place where the chain, the updates and the strategy meet. A submission that
fails any check is rejected with a :class:`~torchchain.errors.RejectedUpdate` whose code and
reason go into the block's metadata; the round goes on with the rest (DESIGN.md invariant 5).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from torchchain.chain.block import Block, Transaction, make_block
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import Ledger
from torchchain.errors import RejectedUpdate, SerializationError
from torchchain.strategies.base import Strategy
from torchchain.updates.delta import apply_delta, flatten, float_keys, unflatten
from torchchain.updates.serialize import update_from_bytes, update_to_bytes

__all__ = ["Node", "RoundOutcome", "Submission", "aggregate_round"]


@dataclass(frozen=True)
class Submission:
    """What a client sends to the miner: a signed transaction and the update bytes it commits to."""

    transaction: Transaction
    payload: bytes


@dataclass
class RoundOutcome:
    """The result of one mined round.

    Attributes:
        block: The block appended to the ledger.
        state: The new global model (CPU state dict), whose canonical bytes hash to
            ``block.header.model_hash``.
        accepted: Accepted transactions, sorted by client key (the aggregation order).
        rejected: One record per rejected submission: ``client``, ``update_hash``, ``code``, ``reason``.
        trust: The weight the strategy gave each accepted client, by public key.
        blobs: The bytes the block refers to (accepted updates, the model, the reference update),
            stored by :meth:`Node.commit` before the block itself.
        seconds: Wall time of the node's phases: ``validate``, ``aggregate``, ``mine``, ``write``.
    """

    block: Block
    state: dict[str, torch.Tensor]
    accepted: list[Transaction]
    rejected: list[dict[str, str]]
    trust: dict[str, float]
    blobs: list[bytes] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def aggregate_round(
    strategy: Strategy,
    global_state: Mapping[str, torch.Tensor],
    updates: Sequence[tuple[Transaction, Mapping[str, torch.Tensor]]],
    *,
    generator: torch.Generator | None = None,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Apply the strategy's aggregate of ``updates`` to ``global_state``: the model of the next block.

    This is the one definition of a round's aggregation, shared by the mining node and by an
    auditor replaying the ledger, so both compute bit-identical models (DESIGN.md invariant 3):
    updates are taken in order of client key, flattened to float64, aggregated on CPU and added
    to the model in float64.

    Args:
        strategy: The aggregation strategy (already ``setup``).
        global_state: The model the round started from.
        updates: Accepted (transaction, tensors) pairs, in any order.
        generator: Randomness for strategies that use it, seeded per round.
        reference: The server's own update on its clean root set, for strategies with
            ``requires_reference`` (FLTrust); recorded in the block so the round can be replayed.

    Returns:
        The new model state and the weight the strategy gave each client, by public key.
    """
    if not updates:
        return {k: v.detach().cpu().clone() for k, v in global_state.items()}, {}
    ordered = sorted(updates, key=lambda pair: pair[0].client)
    template = {k: global_state[k] for k in float_keys(global_state)}
    stacked = torch.stack([flatten(tensors) for _, tensors in ordered])
    weights = torch.tensor([float(tx.num_samples) for tx, _ in ordered], dtype=torch.float64)
    if strategy.requires_reference:
        if reference is None:
            raise ValueError(f"{type(strategy).__name__} needs the server's reference update, and none was given")
        strategy.set_reference(flatten(reference))
    result = strategy(stacked, weights, generator=generator)
    state = apply_delta(global_state, unflatten(result.update, template, dtype=torch.float64))
    trust = {tx.client: float(w) for (tx, _), w in zip(ordered, result.trust.tolist())}
    return state, trust


class Node:
    """A miner that turns one round's submissions into the next block.

    Args:
        ledger: The ledger to append to; its genesis lists the member keys.
        strategy: The aggregation strategy (already ``setup``).
        key: The node's own key; its public key is recorded as the block's miner.
        difficulty: Proof-of-work difficulty in leading zero bits.
        max_update_bytes: Submissions larger than this are rejected unread.
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        strategy: Strategy,
        key: SigningKey,
        difficulty: int,
        max_update_bytes: int,
    ) -> None:
        self.ledger = ledger
        self.strategy = strategy
        self.key = key
        self.difficulty = difficulty
        self.max_update_bytes = max_update_bytes
        self._members = frozenset(ledger.members)

    def validate(
        self,
        submission: Submission,
        *,
        round: int,
        base_hash: str,
        template: Mapping[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Check one submission against the round and the model; return its tensors.

        Raises:
            RejectedUpdate: naming the first check that failed.
        """
        tx, payload = submission.transaction, submission.payload
        if tx.client not in self._members:
            raise RejectedUpdate("unknown_client", f"key {tx.client[:12]}… is not a member listed in the genesis block")
        if not tx.has_valid_signature():
            raise RejectedUpdate("bad_signature", f"signature does not match the public key of client {tx.client[:12]}…")
        if tx.round != round:
            raise RejectedUpdate("wrong_round", f"transaction is for round {tx.round}, the current round is {round} (replayed or stale)")
        if tx.base_hash != base_hash:
            raise RejectedUpdate("stale_base", f"update was computed against block {tx.base_hash[:12]}…, not the head {base_hash[:12]}…")
        if tx.num_samples < 1:
            raise RejectedUpdate("bad_num_samples", f"num_samples must be positive, got {tx.num_samples}")
        if tx.codec != "none":
            raise RejectedUpdate("unknown_codec", f"codec {tx.codec!r} is not supported")
        if len(payload) > self.max_update_bytes:
            raise RejectedUpdate("oversized", f"update is {len(payload)} bytes, over the limit of {self.max_update_bytes}")
        if sha256_hex(payload) != tx.update_hash:
            raise RejectedUpdate("hash_mismatch", "update bytes do not hash to the signed update_hash")
        try:
            tensors = update_from_bytes(payload, max_bytes=self.max_update_bytes)
        except SerializationError as exc:
            raise RejectedUpdate("malformed", str(exc)) from None
        if sorted(tensors) != sorted(template):
            missing = sorted(set(template) - set(tensors))
            extra = sorted(set(tensors) - set(template))
            raise RejectedUpdate("tensor_names", f"tensor names differ from the model (missing {missing}, unexpected {extra})")
        for name, ref in template.items():
            got = tensors[name]
            if got.shape != ref.shape:
                raise RejectedUpdate("shape_mismatch", f"tensor {name!r} has shape {tuple(got.shape)}, the model has {tuple(ref.shape)}")
            if got.dtype != ref.dtype:
                raise RejectedUpdate("dtype_mismatch", f"tensor {name!r} has dtype {got.dtype}, the model has {ref.dtype}")
            if not torch.isfinite(got).all():
                raise RejectedUpdate("non_finite", f"tensor {name!r} holds NaN or infinite values")
        return tensors

    def mine_round(
        self,
        round: int,
        submissions: Sequence[Submission],
        global_state: Mapping[str, torch.Tensor],
        *,
        generator: torch.Generator | None = None,
        reference: Mapping[str, torch.Tensor] | None = None,
        time_ms: int | None = None,
    ) -> RoundOutcome:
        """:meth:`prepare` the block of ``round`` and :meth:`commit` it to the ledger."""
        outcome = self.prepare(
            round, submissions, global_state, generator=generator, reference=reference, time_ms=time_ms
        )
        self.commit(outcome)
        return outcome

    def prepare(
        self,
        round: int,
        submissions: Sequence[Submission],
        global_state: Mapping[str, torch.Tensor],
        *,
        generator: torch.Generator | None = None,
        reference: Mapping[str, torch.Tensor] | None = None,
        time_ms: int | None = None,
    ) -> RoundOutcome:
        """Validate, aggregate and mine the block of ``round``, without writing anything.

        The ledger is untouched until :meth:`commit`, so a caller can first save whatever must
        survive a crash together with the block (a runtime's checkpoint).

        Args:
            round: The round number the block closes.
            submissions: Everything received this round, in any order.
            global_state: The global model the round started from (the head block's model).
            generator: Randomness for strategies that use it (bucketing); seed it per round so
                that a validator can repeat the aggregation.
            reference: The node's own update on its root set, for FLTrust-like strategies; its
                bytes are stored as a blob and its hash recorded as the block's ``reference``.
            time_ms: The block's timestamp; now when ``None``.
        """
        seconds: dict[str, float] = {}
        head = self.ledger.head
        template = {k: global_state[k] for k in float_keys(global_state)}

        start = time.perf_counter()
        valid: dict[str, tuple[Submission, dict[str, torch.Tensor]]] = {}
        rejected: list[dict[str, str]] = []
        for sub in submissions:
            tx = sub.transaction
            try:
                tensors = self.validate(sub, round=round, base_hash=head.hash, template=template)
                if tx.client in valid:
                    raise RejectedUpdate("duplicate", f"client {tx.client[:12]}… already submitted an update this round")
            except RejectedUpdate as exc:
                rejected.append({"client": tx.client, "update_hash": tx.update_hash, "code": exc.code, "reason": exc.reason})
                continue
            valid[tx.client] = (sub, tensors)
        seconds["validate"] = time.perf_counter() - start

        start = time.perf_counter()
        clients = sorted(valid)  # deterministic aggregation order: by client key
        accepted = [valid[c][0].transaction for c in clients]
        state, trust = aggregate_round(
            self.strategy,
            global_state,
            [(valid[c][0].transaction, valid[c][1]) for c in clients],
            generator=generator,
            reference=reference,
        )
        model_bytes = update_to_bytes(state)
        seconds["aggregate"] = time.perf_counter() - start

        start = time.perf_counter()
        meta: dict[str, object] = {"rejected": rejected, "trust": trust}
        reference_bytes = None
        if reference is not None:
            reference_bytes = update_to_bytes(reference)
            meta["reference"] = sha256_hex(reference_bytes)
        block = make_block(
            prev=head,
            round=round,
            transactions=accepted,
            meta=meta,
            model_hash=sha256_hex(model_bytes),
            miner=self.key.public_key,
            difficulty=self.difficulty,
            time_ms=int(time.time() * 1000) if time_ms is None else time_ms,
        )
        seconds["mine"] = time.perf_counter() - start

        blobs = [valid[c][0].payload for c in clients] + [model_bytes]
        if reference_bytes is not None:
            blobs.append(reference_bytes)
        return RoundOutcome(
            block=block, state=state, accepted=accepted, rejected=rejected, trust=trust, blobs=blobs, seconds=seconds
        )

    def commit(self, outcome: RoundOutcome) -> None:
        """Store the outcome's blobs, then append its block (atomically: it is whole or absent)."""
        start = time.perf_counter()
        for blob in outcome.blobs:
            self.ledger.put_blob(blob)
        self.ledger.append(outcome.block)
        outcome.seconds["write"] = time.perf_counter() - start
