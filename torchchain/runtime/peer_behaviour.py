"""Byzantine peers, for tests and studies: what a malicious participant does differently.

A :class:`~torchchain.runtime.peer.Peer` given a :class:`PeerFault` follows the protocol except
in two places: what it proposes when it is the proposer (:meth:`PeerFault.propose`) and what it
attests (:meth:`PeerFault.attest`). Everything else (training, exchanging bundles, committing
what a majority accepted) it does as an honest peer would, so it stays in step with the others
and attacks every round.

Kinds (:class:`Fault`):

* ``bad_nonce``: proposes its block with a nonce that misses the difficulty (re-signed, so only
  the proof of work is wrong).
* ``wrong_model``: proposes a block whose model hash is not the strategy's aggregate of its
  transactions, validly mined and signed.
* ``drop_tx``: proposes a block without one accepted transaction of another peer's client
  (censorship), mined and signed, its model the aggregate of what is left.
* ``forge_attestation``: its attestations claim the next peer's key, signed with its own key.
* ``equivocate``: sends one block to half of the other peers and a different valid block (the
  same round, one millisecond later) to the rest.
* ``withhold``: announces a candidate in the race, then sends every peer an empty proposal.

A faulty peer claims zero hash attempts in the race (``wins_race``), a lie the lockstep race
cannot check, so it proposes first. Peers in a ``coalition`` accept each other's blocks whatever
they hold and reject every other proposer's (colluding); a lone faulty peer attests honestly
on others' blocks.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torchchain.chain.block import ZERO_HASH, Block, make_block
from torchchain.chain.crypto import sha256_hex
from torchchain.chain.pow import meets_difficulty
from torchchain.errors import ConfigError
from torchchain.protocol.attestation import Attestation
from torchchain.protocol.submission import Submission
from torchchain.updates.serialize import update_to_bytes

if TYPE_CHECKING:
    from torchchain.runtime.node import PreparedBlock
    from torchchain.runtime.peer import Peer

__all__ = ["Fault", "PeerFault", "Proposal", "honest_proposal"]


class Fault(str, enum.Enum):
    """What a Byzantine peer does wrong (see the module docstring)."""

    BAD_NONCE = "bad_nonce"
    WRONG_MODEL = "wrong_model"
    DROP_TX = "drop_tx"
    FORGE_ATTESTATION = "forge_attestation"
    EQUIVOCATE = "equivocate"
    WITHHOLD = "withhold"


@dataclass(frozen=True)
class Proposal:
    """What a proposer sends.

    Attributes:
        announced: The candidate block hash it announces in the race.
        own: The block bytes it holds as its proposal (what it contributes when the peers
            compare what they received).
        messages: The bytes each other rank receives, by rank.
    """

    announced: str
    own: bytes
    messages: Mapping[int, bytes]


def honest_proposal(block: Block, ranks: Sequence[int]) -> Proposal:
    """The same block to every other rank."""
    data = block.to_bytes()
    return Proposal(announced=block.hash, own=data, messages={rank: data for rank in ranks})


@dataclass(frozen=True)
class PeerFault:
    """A Byzantine peer's behaviour.

    Args:
        kind: What it does wrong (a :class:`Fault` or its name).
        coalition: Ranks of the other faulty peers it colludes with.
        wins_race: Claim zero hash attempts, so that it proposes first (ties: lowest rank).
    """

    kind: Fault
    coalition: frozenset[int] = field(default_factory=frozenset)
    wins_race: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", Fault(self.kind))
        except ValueError:
            kinds = ", ".join(f.value for f in Fault)
            raise ConfigError(f"unknown peer fault {self.kind!r}; choose one of {kinds}") from None
        object.__setattr__(self, "coalition", frozenset(self.coalition))

    def race_attempts(self, honest: int) -> int:
        """The hash attempts it claims in the race."""
        return 0 if self.wins_race else honest

    def propose(self, peer: Peer, candidate: PreparedBlock, submissions: Sequence[Submission]) -> Proposal:
        """The proposal of a faulty proposer whose honest block would be ``candidate``."""
        others = [rank for rank in range(peer.world_size) if rank != peer.rank]
        block = candidate.block
        header = block.header
        if self.kind is Fault.BAD_NONCE:
            if header.difficulty == 0:
                raise ConfigError("a bad_nonce peer needs chain.difficulty > 0: at difficulty 0 every nonce is valid")
            nonce = header.nonce + 1
            while meets_difficulty(header.with_nonce(nonce).hash(), header.difficulty):
                nonce += 1
            bad = Block(header=header.with_nonce(nonce), transactions=block.transactions, meta=block.meta).signed(peer.key)
            return honest_proposal(bad, others)
        if self.kind is Fault.WRONG_MODEL:
            shifted = {k: v + 0.5 if v.is_floating_point() else v for k, v in candidate.model.items()}
            wrong = _remake(peer, block, model_hash=sha256_hex(update_to_bytes(shifted)))
            return honest_proposal(wrong, others)
        if self.kind is Fault.DROP_TX:
            own = {c.public_key for c in peer.clients}
            victims = [tx for tx in block.transactions if tx.client not in own] or list(block.transactions)
            if not victims:
                return honest_proposal(block, others)
            kept = [s for s in submissions if s.transaction.tx_hash != victims[0].tx_hash]
            censored = peer.node.prepare(header.round, kept, peer.global_state, time_ms=header.time_ms)
            return honest_proposal(censored.block, others)
        if self.kind is Fault.EQUIVOCATE:
            twin = _remake(peer, block, time_ms=header.time_ms + 1).to_bytes()
            first = set(others[: (len(others) + 1) // 2])
            data = block.to_bytes()
            return Proposal(
                announced=block.hash, own=data, messages={rank: data if rank in first else twin for rank in others}
            )
        if self.kind is Fault.WITHHOLD:
            return Proposal(announced=block.hash, own=block.to_bytes(), messages={rank: b"" for rank in others})
        return honest_proposal(block, others)

    def attest(self, peer: Peer, proposer: int, block: Block | None, honest: Attestation) -> bytes:
        """The bytes it sends as its attestation, given the one an honest peer would send."""
        if self.kind is Fault.FORGE_ATTESTATION:
            victim = peer.peer_keys[(peer.rank + 1) % peer.world_size]
            claimed = dataclasses.replace(honest, peer=victim, signature="")
            return dataclasses.replace(claimed, signature=peer.key.sign(claimed.signing_payload())).to_bytes()
        coalition = self.coalition | {peer.rank}
        height = peer.ledger.height + 1
        if proposer in coalition and block is not None:
            return Attestation(peer=peer.key.public_key, height=height, block_hash=block.hash, verdict="accept").signed(peer.key).to_bytes()
        if len(coalition) > 1:
            return Attestation(
                peer=peer.key.public_key, height=height, block_hash=ZERO_HASH if block is None else block.hash,
                verdict="reject", reason="not proposed by the coalition",
            ).signed(peer.key).to_bytes()
        return honest.to_bytes()


def _remake(peer: Peer, block: Block, *, model_hash: str | None = None, time_ms: int | None = None) -> Block:
    """``block`` with another model hash or time, mined and signed again by ``peer``."""
    header = block.header
    return make_block(
        prev=peer.ledger.head, round=header.round, transactions=block.transactions, meta=block.meta,
        model_hash=header.model_hash if model_hash is None else model_hash, miner=peer.key,
        difficulty=header.difficulty, time_ms=header.time_ms if time_ms is None else time_ms,
    )
