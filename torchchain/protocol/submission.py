"""The one submission check: what the miner, every validating peer and the auditor apply.

A submission is a client's signed :class:`~torchchain.chain.block.Transaction` and the update
bytes it commits to. :func:`check_submission` decides whether one submission is acceptable in a
round; :func:`select_submissions` applies it to everything a round received, refuses both
updates of a client that signed two different ones (equivocation), and returns the accepted
ones in aggregation order together with a bounded record of the rejections.

Checks run cheapest first, so a flood of junk costs little: membership, then round and base
block, then size and codec, then the signature, then the bytes (hash, strict parse, names,
shapes, dtypes, finiteness).

On a secure-aggregation chain (:mod:`torchchain.protocol.secure_round`) the payload is a masked
ring input instead of float tensors: the transaction must name the ``secagg`` codec, its client
must have dealt shares in the round (``not_participant``), and the bytes must be the client's
masked input for this round, of the model's length, in the ring (``malformed_masked_input``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from torchchain.chain.block import Transaction
from torchchain.chain.crypto import sha256_hex
from torchchain.errors import RejectedUpdate, SerializationError
from torchchain.privacy.secagg import InvalidMaskedInput, SecAggConfig, check_masked_input
from torchchain.protocol.secure_round import MASKED_KEY, SECAGG_CODEC
from torchchain.updates.codecs import Codec, NoCodec, codec_seed
from torchchain.updates.serialize import update_from_bytes

__all__ = [
    "RoundContext",
    "Selection",
    "Submission",
    "check_submission",
    "check_tensors",
    "select_submissions",
]

@dataclass(frozen=True)
class Submission:
    """What a client sends: a signed transaction and the update bytes it commits to."""

    transaction: Transaction
    payload: bytes


@dataclass(frozen=True)
class RoundContext:
    """What a submission is checked against in one round.

    Attributes:
        members: Client keys the genesis block lists.
        round: The round being closed.
        base_hash: Hash of the block whose model every update must be computed against.
        template: The model's float tensors (names, shapes and dtypes an update must have).
        max_update_bytes: Larger payloads are refused unread.
        codec: The chain's update codec; every transaction must name it (its ``tag()``) and
            every payload must decode with it.
        sampled: The members sampled for this round (:mod:`torchchain.protocol.sampling`), or
            ``None`` when every member may submit.
        secagg: The chain's secure-aggregation parameters, or ``None`` for plain updates.
        participants: On a secagg chain, the clients that dealt shares this round (only they
            may submit a masked input).
    """

    members: frozenset[str]
    round: int
    base_hash: str
    template: Mapping[str, torch.Tensor]
    max_update_bytes: int
    codec: Codec = field(default_factory=NoCodec)
    sampled: frozenset[str] | None = None
    secagg: SecAggConfig | None = None
    participants: frozenset[str] | None = None

    @property
    def codec_tag(self) -> str:
        """The codec every transaction of the round must name."""
        return SECAGG_CODEC if self.secagg is not None else self.codec.tag()

    @property
    def dim(self) -> int:
        """The number of float coordinates of an update."""
        return sum(t.numel() for t in self.template.values())


def check_tensors(payload: bytes, template: Mapping[str, torch.Tensor], *, max_bytes: int) -> dict[str, torch.Tensor]:
    """Parse update bytes strictly and check them against the model's float tensors.

    Raises:
        RejectedUpdate: ``malformed``, ``tensor_names``, ``shape_mismatch``, ``dtype_mismatch``
            or ``non_finite``, with the tensor named.
    """
    try:
        tensors = update_from_bytes(payload, max_bytes=max_bytes)
    except SerializationError as exc:
        raise RejectedUpdate("malformed", str(exc)) from None
    if tensors.keys() != template.keys():
        missing = sorted(set(template) - set(tensors))
        extra = sorted(set(tensors) - set(template))
        raise RejectedUpdate("tensor_names", f"tensor names differ from the model (missing {missing[:8]}, unexpected {extra[:8]})")
    for name, ref in template.items():
        got = tensors[name]
        if got.shape != ref.shape:
            raise RejectedUpdate("shape_mismatch", f"tensor {name!r} has shape {tuple(got.shape)}, the model has {tuple(ref.shape)}")
        if got.dtype != ref.dtype:
            raise RejectedUpdate("dtype_mismatch", f"tensor {name!r} has dtype {got.dtype}, the model has {ref.dtype}")
        if not bool(torch.isfinite(got).all()):
            raise RejectedUpdate("non_finite", f"tensor {name!r} holds NaN or infinite values")
    return tensors


def _check_claims(tx: Transaction, context: RoundContext) -> None:
    """The checks that need no signature and no payload: who, when, against what."""
    if tx.client not in context.members:
        raise RejectedUpdate("unknown_client", f"key {tx.client[:12]}… is not a member listed in the genesis block")
    if context.sampled is not None and tx.client not in context.sampled:
        raise RejectedUpdate("not_sampled", f"client {tx.client[:12]}… is not in round {context.round}'s sample")
    if tx.round != context.round:
        raise RejectedUpdate(
            "wrong_round", f"transaction is for round {tx.round}, the current round is {context.round} (replayed or stale)"
        )
    if tx.base_hash != context.base_hash:
        raise RejectedUpdate(
            "stale_base", f"update was computed against block {tx.base_hash[:12]}…, not the head {context.base_hash[:12]}…"
        )
    if tx.num_samples < 1:
        raise RejectedUpdate("bad_num_samples", f"num_samples must be positive, got {tx.num_samples}")
    if tx.codec != context.codec_tag:
        raise RejectedUpdate(
            "unknown_codec", f"transaction names codec {tx.codec[:40]!r}, the chain encodes updates with {context.codec_tag!r}"
        )
    if context.secagg is not None and (context.participants is None or tx.client not in context.participants):
        raise RejectedUpdate(
            "not_participant",
            f"client {tx.client[:12]}… dealt no shares in round {context.round}, so its masked input cannot be unmasked",
        )
    if not tx.has_valid_signature():
        raise RejectedUpdate("bad_signature", f"signature does not match the public key of client {tx.client[:12]}…")


def _check_payload(tx: Transaction, payload: bytes, context: RoundContext) -> dict[str, torch.Tensor]:
    if len(payload) > context.max_update_bytes:
        raise RejectedUpdate("oversized", f"update is {len(payload)} bytes, over the limit of {context.max_update_bytes}")
    if sha256_hex(payload) != tx.update_hash:
        raise RejectedUpdate("hash_mismatch", "update bytes do not hash to the signed update_hash")
    if context.secagg is not None:
        try:
            masked = check_masked_input(
                payload, client=tx.client, round_number=tx.round, dim=context.dim, config=context.secagg
            )
        except InvalidMaskedInput as exc:
            raise RejectedUpdate("malformed_masked_input", exc.reason[:400]) from None
        return {MASKED_KEY: masked}
    if isinstance(context.codec, NoCodec):
        return check_tensors(payload, context.template, max_bytes=context.max_update_bytes)
    # The hash covers the encoded bytes; every node decodes them the same way, in float64.
    try:
        tensors = context.codec.decode(
            payload, context.template, seed=codec_seed(tx.round, tx.client), max_bytes=context.max_update_bytes
        )
    except SerializationError as exc:
        raise RejectedUpdate("malformed", f"{context.codec.tag()} payload does not decode: {exc}") from None
    for name, value in tensors.items():
        if not bool(torch.isfinite(value).all()):
            raise RejectedUpdate("non_finite", f"tensor {name!r} decodes to NaN or infinite values")
    return tensors


def check_submission(submission: Submission, context: RoundContext) -> dict[str, torch.Tensor]:
    """Check one submission against the round; return its tensors.

    This is the rule the miner applies to what it receives, every peer to a proposed block's
    transactions, and ``torchchain audit`` to every accepted update in a ledger.

    The payload is decoded with the chain's codec (the transaction's hash covers the encoded
    bytes); the returned tensors are the decoded update. On a secagg chain the one returned
    tensor, named :data:`~torchchain.protocol.secure_round.MASKED_KEY`, is the masked input.

    Raises:
        RejectedUpdate: naming the first check that failed (codes ``unknown_client``,
            ``not_sampled``, ``wrong_round``, ``stale_base``, ``bad_num_samples``, ``unknown_codec``,
            ``not_participant``, ``bad_signature``, ``oversized``, ``hash_mismatch``, ``malformed``,
            ``malformed_masked_input``, ``tensor_names``, ``shape_mismatch``, ``dtype_mismatch``,
            ``non_finite``).
    """
    _check_claims(submission.transaction, context)
    return _check_payload(submission.transaction, submission.payload, context)


@dataclass(frozen=True)
class Selection:
    """The outcome of checking everything one round received.

    Attributes:
        accepted: ``(transaction, payload, tensors)`` of each accepted submission, sorted by
            client key (the aggregation and block order).
        rejected: ``(transaction, code, reason)`` of each refused submission, in arrival order.
    """

    accepted: tuple[tuple[Transaction, bytes, dict[str, torch.Tensor]], ...]
    rejected: tuple[tuple[Transaction, str, str], ...]


def select_submissions(submissions: Sequence[Submission], context: RoundContext) -> Selection:
    """Check every submission of a round and pick the accepted ones.

    A client may send its update more than once (identical copies are accepted once and the
    extra copies rejected as ``duplicate``), but a client that signed two *different*
    transactions for the same round and base has equivocated: every one of its submissions is
    rejected as ``equivocation``, whatever the arrival order. Forged or replayed transactions
    fail their own checks first, so nobody can make an honest client look like an equivocator.

    Returns:
        The accepted submissions (sorted by client key) and the rejections.
    """
    rejected: list[tuple[Transaction, str, str]] = []
    by_client: dict[str, list[Submission]] = {}
    for submission in submissions:
        tx = submission.transaction
        try:
            _check_claims(tx, context)
        except RejectedUpdate as exc:
            rejected.append((tx, exc.code, exc.reason))
            continue
        by_client.setdefault(tx.client, []).append(submission)

    accepted = []
    for client in sorted(by_client):
        copies = by_client[client]
        distinct = {s.transaction.tx_hash for s in copies}
        if len(distinct) > 1:
            reason = f"client {client[:12]}… signed {len(distinct)} different updates for round {context.round}; all are refused"
            rejected.extend((s.transaction, "equivocation", reason) for s in copies)
            continue
        # A copy whose bytes fail (someone resent the signed transaction with other bytes)
        # must not displace the client's valid copy: take the first copy that passes.
        chosen = None
        for s in copies:
            if chosen is not None:
                rejected.append((s.transaction, "duplicate", f"client {client[:12]}… sent the same update again"))
                continue
            try:
                chosen = (s.transaction, s.payload, _check_payload(s.transaction, s.payload, context))
            except RejectedUpdate as exc:
                rejected.append((s.transaction, exc.code, exc.reason))
        if chosen is not None:
            accepted.append(chosen)
    return Selection(accepted=tuple(accepted), rejected=tuple(rejected))
