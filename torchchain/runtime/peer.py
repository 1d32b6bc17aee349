"""One participant of a decentralized run: its clients, its own ledger, mining, checking and attesting.

Every peer keeps its own ledger and commits a block only when a strict majority of the peers
(the genesis block's ``miners``) checked it on their own and signed an accepting
:class:`~torchchain.protocol.attestation.Attestation`. Peers talk only through a
:class:`~torchchain.runtime.transport.Transport` (threads in one process, or torch.distributed
processes), in lockstep. One round:

1. **Train.** The peer's sampled clients train from the head's model and sign their updates
   (the same per-client random streams as :class:`~torchchain.runtime.simulation.Simulation`).
2. **Bundles.** ``all_gather`` of each peer's submissions as one bundle
   (:mod:`torchchain.protocol.bundle`; at most ``ceil(clients / peers)`` entries of at most
   ``max_update_bytes`` plus 64 KiB each), parsed strictly. Every peer now holds every update.
   With ``validation=vote`` (:mod:`torchchain.protocol.vote`) every peer then scores each update
   the rules accept on its own validation data, the peers ``all_gather`` signed ballots, and only
   the updates a strict majority approves go on; the ballots are stored with the block.
3. **Candidates and the race.** Every peer selects, executes and mines its own candidate block
   with the protocol (:meth:`~torchchain.runtime.node.Node.prepare`: real proof of work at the
   genesis difficulty, its own clock for ``time_ms``), then ``all_gather`` of a race message
   ``{"attempts": nonce - 0, "candidate": hash}`` (at most :data:`MAX_RACE_BYTES`). Peers
   propose in order of fewest attempts, ties to the lowest rank: a lockstep stand-in for "the
   first to find a nonce broadcasts first". Nobody can check a peer's claim; a liar only moves
   itself up the order, where its block is checked like any other.
4. **Proposal.** The proposer sends its block to every other peer point to point
   (``send_bytes``, at most :data:`~torchchain.chain.block.MAX_BLOCK_BYTES`), so a proposer
   that sends different blocks to different peers is expressible and caught. An empty message
   means "withheld". Each peer checks what it received on its own: a block; mined by the
   proposer; the candidate it announced; :func:`~torchchain.chain.ledger.check_block` (PoW,
   link, authorship, signatures); time within :data:`~torchchain.chain.ledger.MAX_CLOCK_SKEW_MS`
   of its clock; exactly the transactions the rules accept from the round's bundles (no valid
   one dropped, none added); :func:`~torchchain.protocol.round.replay_round` with the payloads
   from step 2; the round record the protocol gives. It signs accept, or reject with the reason.
5. **Attestations.** ``all_gather`` of attestations (at most
   :data:`~torchchain.protocol.attestation.MAX_ATTESTATION_BYTES` each). An entry counts only
   if it parses, its signature is valid, and it is signed by the key of the rank that sent it.
   A block hash accepted by a strict majority of all peers wins. Unless every peer accepted
   the same hash, peers then ``all_gather`` the block each received: two different blocks
   signed by the proposer for this height prove it equivocated and the proposal fails; a
   peer that did not receive the winning block takes it from there and checks it itself.
6. **Commit or retry.** With a majority the peer writes the winning block's attestations
   (``attestations/<hash>.json``), its blobs and the block. A peer whose own check rejects
   the block the majority accepted stops with :class:`ConsensusError` ``code="outvoted"``
   rather than follow it. Without a majority the next peer in race order proposes; after
   every peer has proposed, the peer stops with ``code="no_majority"``: no block, no fork.

Every rejection, invalid attestation, equivocation and failed proposal is logged (logger
``torchchain.peer``, WARNING) and kept in :attr:`Peer.events`. A peer that dies or stalls is
named by the transport (:class:`~torchchain.runtime.transport.TransportError`); the others
stop at once, every ledger whole up to its last block.

Malicious clients (``settings.byzantine``, the ones a simulation picks) live on the peer that
owns them and run the attack there (:func:`run_peer`); attacks that forge transactions are
refused. After every peer was stopped or killed, ``resume`` continues from their ledgers
(:func:`run_peer`, :meth:`Peer.catch_up`). What is not done: client-side privacy under peers,
strategies with a server reference update (FLTrust), secure aggregation.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchchain.attacks.base import Attack
from torchchain.chain.block import MAX_BLOCK_BYTES, ZERO_HASH, Block, make_genesis
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.encoding import canonical_json, parse_json_object
from torchchain.chain.ledger import BLOCKS_DIR, MAX_CLOCK_SKEW_MS, Ledger, check_block, check_genesis
from torchchain.data import DataSplit, TaskData
from torchchain.data.partition import partition
from torchchain.errors import ConfigError, LedgerError, SerializationError, TorchchainError
from torchchain.protocol.attestation import (
    MAX_ATTESTATION_BYTES,
    Attestation,
    attestation_set_bound,
    check_attestation_set,
    clip_reason,
    committed,
    count_attestations,
    encode_attestation_set,
)
from torchchain.protocol.bundle import bundle_bound, decode_submissions, encode_submissions
from torchchain.protocol.package import decode_package, encode_package, package_bound
from torchchain.protocol.round import RoundRules, replay_round
from torchchain.protocol.submission import Submission, select_submissions
from torchchain.protocol.vote import (
    Ballot,
    VoteRules,
    approved_by_majority,
    ballot_bound,
    check_vote_set,
    encode_vote_set,
    vote_set_bound,
)
from torchchain.runtime.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from torchchain.runtime.client_state import ClientStates
from torchchain.runtime.client import Client, evaluate
from torchchain.runtime.executor import LocalExecutor
from torchchain.runtime.node import Node, PreparedBlock
from torchchain.runtime.peer_behaviour import PeerFault, Proposal, honest_proposal
from torchchain.runtime.poisoning import poison_updates, tamper_hook
from torchchain.runtime.seeding import client_key, derive_generator
from torchchain.runtime.simulation import SimulationSettings
from torchchain.runtime.transport import Transport, TransportError, run_peers
from torchchain.updates.delta import compute_delta, flatten
from torchchain.updates.serialize import update_from_bytes, update_to_bytes

__all__ = [
    "MAX_RACE_BYTES",
    "ConsensusError",
    "Peer",
    "PeerEvent",
    "PeerOutcome",
    "RoundStats",
    "join_chain",
    "peer_key",
    "evaluate_model",
    "run_in_process",
    "run_peer",
]

MAX_RACE_BYTES = 256
"""The largest race message: ``{"attempts": <= 20 digits, "candidate": 64 hex}`` takes ~110."""
MAX_STATUS_BYTES = 256
"""The largest status after a restart: ``{"genesis": 64 hex, "head": 64 hex, "height": int}`` takes ~180."""
_MAX_ATTEMPTS = 2**64

_log = logging.getLogger("torchchain.peer")


class ConsensusError(TorchchainError):
    """The peers could not agree, and this peer stopped rather than fork.

    Attributes:
        code: ``"no_majority"`` (no proposal of the round won a strict majority of the
            peers), ``"outvoted"`` (a majority accepted a block this peer finds invalid, or
            one it never received), ``"genesis"`` (the genesis block rank 0 sent is not the
            one this peer expects) or ``"resume"`` (after a restart, the peers' ledgers cannot
            be brought to one head: :meth:`Peer.catch_up`).
        round: The round, or ``None`` for genesis.
        reason: The reason alone.
    """

    def __init__(self, code: str, reason: str, *, round: int | None = None) -> None:
        self.code = code
        self.round = round
        self.reason = reason
        where = f"round {round}: " if round is not None else ""
        label = code.replace("_", " ")
        super().__init__(f"{label}: {where}{reason}")


@dataclass(frozen=True)
class PeerEvent:
    """Something a peer noticed, as logged.

    Attributes:
        round: The round.
        proposal: Which proposal of the round (1 for the race winner's), 0 before any.
        rank: The peer it is about (the proposer, or the sender of a bad message).
        kind: ``rejected`` (this peer's check refused a proposal), ``invalid_bundle``,
            ``invalid_race``, ``invalid_attestation``, ``equivocation``, ``no_majority`` (a
            proposal failed), ``committed``, ``invalid_ballot`` and ``voted_out``
            (``validation=vote``), or ``fetched`` (after a restart, a block this peer lacked,
            taken from another peer and checked).
        reason: Why, in words.
    """

    round: int
    proposal: int
    rank: int | None
    kind: str
    reason: str


@dataclass(frozen=True)
class RoundStats:
    """What one committed round cost a peer.

    Attributes:
        round: The round.
        seconds: Wall seconds by stage: ``train`` (its sampled clients train and sign),
            ``bundles`` (exchanging and parsing the submissions), ``vote`` (``validation=vote``:
            scoring every update and exchanging ballots), ``mine`` (selecting,
            aggregating and mining its own candidate), ``race``, ``attest`` (from the proposal
            received to the tally of the attestations, summed over the round's proposals; it
            includes this peer's own check of the block), ``commit`` (writing the block, its
            attestations and blobs) and ``round`` (all of it).
        proposals: How many proposals the round took (1 when the race winner's block won).
        bytes_sent: What this peer's transport sent during the round (headers and payloads).
        bytes_received: What it received during the round.
        voted_out: Updates the rules accept that lacked approvals from a strict majority of
            the peers (``validation=vote``; 0 otherwise).
    """

    round: int
    seconds: dict[str, float]
    proposals: int
    bytes_sent: int
    bytes_received: int
    voted_out: int = 0

    @property
    def consensus_seconds(self) -> float:
        """Everything but local training and mining: exchanging bundles, votes, the race,
        proposals, checks, attestations and the commit."""
        return max(self.seconds["round"] - self.seconds["train"] - self.seconds["mine"], 0.0)


def peer_key(seed: int, rank: int) -> SigningKey:
    """The key of peer ``rank`` in a run seeded with ``seed`` (a simulation's convention:
    anyone who knows the seed can derive it)."""
    return SigningKey.from_seed_material(f"torchchain/node/{rank}/seed={seed}")


class Peer:
    """One participant: trains its clients, mines, checks and attests every proposal, commits
    what a strict majority of the peers accepted.

    Args:
        rank: This peer's rank (its transport's).
        transport: How it talks to the other peers.
        ledger: Its own ledger, opened for writing, starting at the agreed genesis.
        rules: The chain's rules (:meth:`RoundRules.from_genesis`).
        key: Its key; ``peer_keys[rank]`` must be its public key.
        peer_keys: Every peer's public key, in rank order (the genesis block's miners).
        clients: This peer's clients.
        model: A model of the run's architecture, private to this peer (trained in place).
        settings: Training, seed and chain settings (as for a simulation).
        fault: A Byzantine behaviour for this peer (:mod:`torchchain.runtime.peer_behaviour`),
            or ``None`` for an honest peer.
        attack: What this peer's malicious clients (``Client.byzantine``) do to their updates,
            after ``setup``; this peer's own copy (its state follows this peer's clients).
            ``None``: no client attacks.
        clock: Milliseconds since the epoch (default: the system clock).
        checkpoints: Folder for the state of its clients and attack that the ledger does not
            hold (momentum, codec residuals), saved with every block it commits, keyed by the
            block's hash (:mod:`torchchain.runtime.checkpoint`); ``None``: none saved.
        validation: Its own held-out data, on which it scores every update of a chain with
            ``validation=vote`` (required there, unused otherwise).
    """

    def __init__(
        self,
        *,
        rank: int,
        transport: Transport,
        ledger: Ledger,
        rules: RoundRules,
        key: SigningKey,
        peer_keys: Sequence[str],
        clients: Sequence[Client],
        model: nn.Module,
        settings: SimulationSettings,
        fault: PeerFault | None = None,
        attack: Attack | None = None,
        clock: Callable[[], int] | None = None,
        checkpoints: str | Path | None = None,
        validation: DataSplit | None = None,
    ) -> None:
        if transport.rank != rank or transport.world_size != len(peer_keys):
            raise ValueError(f"rank {rank} of {len(peer_keys)} peers does not match its transport")
        if peer_keys[rank] != key.public_key:
            raise ValueError(f"peer_keys[{rank}] is not the public key of this peer's key")
        if tuple(sorted(peer_keys)) != tuple(ledger.miners):
            raise ValueError("the peers' keys are not the miners the ledger's genesis block lists")
        self.rank = rank
        self.world_size = len(peer_keys)
        self.transport = transport
        self.ledger = ledger
        self.rules = rules
        self.key = key
        self.peer_keys = tuple(peer_keys)
        self.clients = list(clients)
        self.model = model.to(settings.device)
        self.settings = settings
        self.fault = fault
        self.attack = attack
        self.checkpoints = None if checkpoints is None else Path(checkpoints)
        # Each client's momentum and codec residual: on disk between its rounds when there are
        # checkpoints, in memory otherwise.
        self.client_states = ClientStates(None if self.checkpoints is None else self.checkpoints / "clients")
        self.votes = VoteRules.from_config(ledger.config)
        if self.votes.votes and validation is None:
            raise ValueError("a chain with validation=vote needs this peer's validation data")
        self.validation = validation
        self._ballots: list[Ballot] = []
        self._voted_out = 0
        self._clock = clock or (lambda: int(time.time() * 1000))
        self.node = Node(
            ledger=ledger, rules=rules, key=key, difficulty=ledger.genesis_info.difficulty,
            mine_workers=settings.mine_workers,
        )
        blob = ledger.get_blob(ledger.head.header.model_hash)
        self.global_state = update_from_bytes(blob, max_bytes=len(blob))
        self.executor = LocalExecutor(
            settings.executor, batch_clients=settings.batch_clients, workers=settings.workers,
            model_factory=settings.model_factory, client_data={c.index: c.data for c in self.clients},
        )
        self.events: list[PeerEvent] = []
        self.stats: list[RoundStats] = []
        self._seconds: dict[str, float] = {}
        members = len(ledger.members)
        self._bundle_entries = math.ceil(members / self.world_size)
        self._bundle_bound = bundle_bound(self._bundle_entries, rules.max_update_bytes)
        self._package_bound = package_bound(peers=self.world_size, max_payloads=members, max_payload_bytes=rules.max_update_bytes)

    # -- one round -----------------------------------------------------------------------------

    def run(self, rounds: int, *, on_round: Callable[[Peer, Block, RoundStats], None] | None = None) -> None:
        """Run rounds until the ledger holds ``rounds`` round blocks, then meet the other peers
        at a barrier (so none leaves while another still waits for it).

        Args:
            rounds: The last round.
            on_round: Called after each committed round with this peer, the block and what the
                round cost (:class:`RoundStats`), e.g. to evaluate and log.
        """
        for rnd in range(self.ledger.height + 1, rounds + 1):
            block = self.run_round(rnd)
            if on_round is not None:
                on_round(self, block, self.stats[-1])
        self.transport.barrier()

    def run_round(self, round: int) -> Block:
        """Run one round (see the module docstring); the committed block.

        Raises:
            ConsensusError: No proposal won a strict majority, or the majority accepted a block
                this peer refuses.
            TransportError: A peer died, stalled or broke the wire protocol.
        """
        started = time.perf_counter()
        sent, received = self.transport.bytes_sent, self.transport.bytes_received
        self._seconds = {"attest": 0.0, "commit": 0.0}
        self._voted_out = 0
        head = self.ledger.head
        sample = self.rules.sample(round)
        submissions = self._train(round, head.hash, [c for c in self.clients if c.public_key in sample])
        self._seconds["train"] = time.perf_counter() - started

        stage = time.perf_counter()
        gathered = self.transport.all_gather_bytes(encode_submissions(submissions), max_bytes=self._bundle_bound)
        everything: list[Submission] = []
        for rank, data in enumerate(gathered):
            try:
                everything += decode_submissions(
                    data, max_entries=self._bundle_entries, max_payload_bytes=self.rules.max_update_bytes,
                    what=f"bundle of rank {rank}",
                )
            except SerializationError as exc:
                self._note(round, 0, rank, "invalid_bundle", str(exc))
        self._seconds["bundles"] = time.perf_counter() - stage
        if self.votes.votes:
            stage = time.perf_counter()
            everything = self._vote(round, everything)
            self._seconds["vote"] = time.perf_counter() - stage
        payloads = {sha256_hex(s.payload): s.payload for s in everything}

        stage = time.perf_counter()
        candidate = self.node.prepare(round, everything, self.global_state, time_ms=self._clock())
        self._seconds["mine"] = time.perf_counter() - stage
        stage = time.perf_counter()
        others = [rank for rank in range(self.world_size) if rank != self.rank]
        if self.fault is None:
            proposal = honest_proposal(candidate.block, others)
            attempts = candidate.block.header.nonce
        else:
            proposal = self.fault.propose(self, candidate, everything)
            attempts = self.fault.race_attempts(candidate.block.header.nonce)
        race = canonical_json({"attempts": attempts, "candidate": proposal.announced})
        order, announced = self._race(round, self.transport.all_gather_bytes(race, max_bytes=MAX_RACE_BYTES))
        self._seconds["race"] = time.perf_counter() - stage

        failures = []
        for number, proposer in enumerate(order, start=1):
            block = self._propose(round, number, proposer, announced[proposer], candidate, proposal, payloads)
            if block is not None:
                self._seconds["round"] = time.perf_counter() - started
                self.stats.append(
                    RoundStats(
                        round=round, seconds=dict(self._seconds), proposals=number,
                        bytes_sent=self.transport.bytes_sent - sent,
                        bytes_received=self.transport.bytes_received - received, voted_out=self._voted_out,
                    )
                )
                return block
            failures.append(f"rank {proposer}")
        raise ConsensusError(
            "no_majority",
            f"none of the {len(order)} proposals ({', '.join(failures)}) was accepted by a strict majority of the "
            f"{self.world_size} peers; this peer stops without a block for the round rather than fork",
            round=round,
        )

    # -- votes (validation=vote) -----------------------------------------------------------------

    def _vote(self, round: int, submissions: list[Submission]) -> list[Submission]:
        """Score every update the rules accept on this peer's validation data, exchange signed
        ballots, and keep only the updates a strict majority of the peers approve (and the
        submissions the rules refuse anyway, so that the block records why)."""
        head = self.ledger.head
        selection = select_submissions(submissions, self.rules.context(round, head.hash, self.global_state))
        before = self._validation_loss(self.global_state)
        approve, reject = [], []
        for tx, _, update in selection.accepted:
            after = self._validation_loss(
                {k: v + update[k].to(v.dtype) if k in update else v for k, v in self.global_state.items()}
            )
            (approve if after <= before + self.votes.threshold else reject).append(tx.tx_hash)
        mine = Ballot(
            peer=self.key.public_key, height=head.header.height + 1, base_hash=head.hash,
            approve=tuple(sorted(set(approve))), reject=tuple(sorted(set(reject) - set(approve))),
        ).signed(self.key)
        bound = ballot_bound(len(self.ledger.members))
        ballots = []
        for rank, data in enumerate(self.transport.all_gather_bytes(mine.to_bytes(), max_bytes=bound)):
            try:
                ballot = Ballot.from_bytes(data, max_bytes=bound, what=f"ballot of rank {rank}")
                if ballot.peer != self.peer_keys[rank]:
                    raise SerializationError(f"rank {rank} sent a ballot of peer {ballot.peer[:12]}, not its own")
                if ballot.height != mine.height or ballot.base_hash != head.hash:
                    raise SerializationError(f"rank {rank} voted on height {ballot.height}, not {mine.height}")
            except SerializationError as exc:
                self._note(round, 0, rank, "invalid_ballot", str(exc))
                continue
            ballots.append(ballot)
        self._ballots = ballots
        voted = {tx.tx_hash for tx, _, _ in selection.accepted}
        approved = approved_by_majority(ballots, self.peer_keys, voted)
        out = sorted(voted - approved)
        self._voted_out = len(out)
        if out:
            clients = {s.transaction.tx_hash: s.transaction.client for s in submissions}
            self._note(
                round, 0, None, "voted_out",
                f"{len(out)} update(s) without approvals from a strict majority of the {self.world_size} peers "
                f"left out: client(s) {', '.join(clients[h][:12] for h in out)}",
                level=logging.INFO,
            )
        return [s for s in submissions if s.transaction.tx_hash in approved or s.transaction.tx_hash not in voted]

    def _validation_loss(self, state: Mapping[str, torch.Tensor]) -> float:
        assert self.validation is not None
        self.model.load_state_dict(state)
        return evaluate(self.model, self.validation, task=self.settings.training.task, device=self.settings.device)["loss"]

    # -- after a restart -------------------------------------------------------------------------

    def restore(self) -> None:
        """Take up the state of its clients and attack saved with the head block (after a restart).

        Raises:
            ConfigError: The checkpoint of the head block is missing or malformed.
        """
        if self.ledger.height == 0 or self.checkpoints is None:
            return
        state = load_checkpoint(checkpoint_path(self.checkpoints, self.ledger.head_hash))
        if self.attack is not None:
            self.attack.load_state_dict(state["attack"])
        self.client_states.load_manifest(state["clients"], clients={c.index for c in self.clients})

    def catch_up(self) -> int:
        """Bring every peer to the same head after a restart; the number of blocks this peer fetched.

        Collective: every peer announces its genesis, height and head. Peers at the greatest
        height must hold the same head; each peer behind takes every block it lacks from the
        lowest such rank as a package (:mod:`torchchain.protocol.package`) and checks it on its
        own, as it checks a proposal: :func:`~torchchain.chain.ledger.check_block` on its own
        head, a strict majority of valid attestations, and a replay of the round from the
        update payloads. Its clients then train that round again, with the same random streams,
        so their momentum, codec residuals and the attack's state are those of a peer that never
        stopped.

        Raises:
            ConsensusError: ``code="resume"``: the peers hold different genesis blocks or
                different heads at the same height, a status is malformed, or a fetched block
                fails this peer's check.
            TransportError: A peer died, stalled or broke the wire protocol.
        """
        ledger = self.ledger
        mine = canonical_json({"genesis": ledger.genesis.hash, "head": ledger.head_hash, "height": ledger.height})
        statuses = []
        for rank, data in enumerate(self.transport.all_gather_bytes(mine, max_bytes=MAX_STATUS_BYTES)):
            try:
                d = parse_json_object(data, what=f"status of rank {rank}", max_bytes=MAX_STATUS_BYTES)
                if (
                    d.keys() != {"genesis", "head", "height"} or type(d["height"]) is not int or d["height"] < 0
                    or not all(type(d[k]) is str and len(d[k]) == 64 for k in ("genesis", "head"))
                ):
                    raise SerializationError(f"status of rank {rank}: not {{genesis, head, height}}")
            except SerializationError as exc:
                raise ConsensusError("resume", str(exc)) from None
            statuses.append(d)
        shown = "; ".join(f"rank {r}: height {d['height']}, head {d['head'][:12]}" for r, d in enumerate(statuses))
        if len({d["genesis"] for d in statuses}) > 1:
            raise ConsensusError("resume", f"the peers' ledgers start from different genesis blocks ({shown}); start a new run")
        top = max(d["height"] for d in statuses)
        leaders = [r for r, d in enumerate(statuses) if d["height"] == top]
        if len({statuses[r]["head"] for r in leaders}) > 1:
            raise ConsensusError(
                "resume", f"the peers at height {top} hold different heads ({shown}): their ledgers forked; start a new run"
            )
        source = leaders[0]
        fetched = 0
        for height in range(min(d["height"] for d in statuses) + 1, top + 1):
            package = self._package(height) if self.rank == source else None
            data = self.transport.broadcast_bytes(package, src=source, max_bytes=self._package_bound)
            if ledger.height == height - 1:
                self._adopt(data, source, height)
                fetched += 1
        return fetched

    def _package(self, height: int) -> bytes:
        """Block ``height`` of this peer's ledger, its attestations and its update payloads."""
        block = self.ledger.block(height)
        attestations = self.ledger.get_attestations(block.hash, max_bytes=attestation_set_bound(self.world_size))
        members = len(self.ledger.members)
        votes = self.ledger.get_votes(block.hash, max_bytes=vote_set_bound(self.world_size, members)) if self.votes.votes else b""
        payloads = [self.ledger.get_blob(tx.update_hash) for tx in block.transactions if self.ledger.has_blob(tx.update_hash)]
        return encode_package(block.to_bytes(), attestations, votes, payloads)

    def _adopt(self, data: bytes, source: int, height: int) -> None:
        """Check block ``height`` as rank ``source`` sent it, then commit it as a peer that never stopped would."""
        what = f"block {height} from rank {source}"
        try:
            block_bytes, attestations, votes, payloads = decode_package(
                data, peers=self.world_size, max_payloads=len(self.ledger.members),
                max_payload_bytes=self.rules.max_update_bytes, what=what,
            )
            block = Block.from_bytes(block_bytes, name=what)
            check_block(block, prev=self.ledger.head.header, genesis=self.ledger.genesis_info)
            check_attestation_set(attestations, block_hash=block.hash, height=height, peers=self.ledger.miners)
            if self.votes.votes:
                check_vote_set(
                    votes, block_hash=block.hash, height=height, base_hash=block.header.prev_hash,
                    tx_hashes=[tx.tx_hash for tx in block.transactions], peers=self.ledger.miners,
                    members=len(self.ledger.members),
                )
            by_hash = {sha256_hex(p): p for p in payloads}

            def blob(digest: str) -> bytes:
                if digest not in by_hash:
                    raise LedgerError(f"rank {source} sent no payload with hash {digest[:12]}")
                return by_hash[digest]

            model, state = replay_round(self.global_state, self.node.round_state, block, blob, rules=self.rules)
        except (SerializationError, LedgerError) as exc:
            raise ConsensusError("resume", f"{what} fails this peer's check: {exc}", round=None) from None
        round = block.header.round
        # The round this peer missed, for its clients: they train again with the same streams.
        sample = self.rules.sample(round)
        self._train(round, block.header.prev_hash, [c for c in self.clients if c.public_key in sample])
        if self.attack is not None:
            self.attack.observe_aggregate(flatten(compute_delta(model, self.global_state)))
        self._save_checkpoint(block)
        if self.votes.votes:
            self.ledger.put_votes(block.hash, votes)
        self.ledger.put_attestations(block.hash, attestations)
        needed = {tx.update_hash for tx in block.transactions}
        self.node.adopt(block, payloads=[p for h, p in by_hash.items() if h in needed], model=model, round_state=state)
        self.global_state = model
        self._note(round, 0, source, "fetched", f"block {block.hash[:12]} at height {height} from rank {source}, checked", level=logging.INFO)

    def _save_checkpoint(self, block: Block) -> None:
        if self.checkpoints is None:
            return
        save_checkpoint(
            self.checkpoints, block.hash, parent=block.header.prev_hash,
            attack_state={} if self.attack is None else self.attack.state_dict(),
            clients=self.client_states,
        )

    # -- one round, continued ----------------------------------------------------------------

    def _train(self, round: int, base_hash: str, clients: list[Client]) -> list[Submission]:
        """The peer's sampled clients train from the global model and sign their updates, with
        the per-client random streams a simulation uses (``train`` and ``codec``)."""
        if not clients:
            return []
        settings = self.settings
        self.client_states.checkout(clients)
        updates = self.executor.train(
            self.model, self.global_state, [c.data for c in clients], settings.training, device=settings.device,
            generators=[derive_generator(settings.seed, "train", round, c.index) for c in clients],
            momentum_buffers=[c.momentum_buffers for c in clients], clients=[c.index for c in clients],
        )
        deltas = {client.index: update for client, update in zip(clients, updates)}
        attack = self.attack
        if attack is not None:
            poison_updates(
                attack, clients=clients, deltas=deltas, rules=self.rules, round_state=self.node.round_state,
                seed=settings.seed, round=round,
            )
        return [
            client.submit(
                deltas[client.index], round=round, base_hash=base_hash, codec=self.rules.codec,
                generator=derive_generator(settings.seed, "codec", round, client.index),
                tamper=tamper_hook(attack, seed=settings.seed, round=round, index=client.index)
                if attack is not None and client.byzantine else None,
            )
            for client in clients
        ]

    def _race(self, round: int, messages: list[bytes]) -> tuple[list[int], list[str | None]]:
        """The proposer order (fewest attempts first, ties to the lowest rank; malformed
        messages last) and each rank's announced candidate hash."""
        ranked: list[tuple[float, int]] = []
        announced: list[str | None] = []
        for rank, data in enumerate(messages):
            try:
                d = parse_json_object(data, what=f"race message of rank {rank}", max_bytes=MAX_RACE_BYTES)
                attempts, candidate = d.get("attempts"), d.get("candidate")
                if (
                    d.keys() != {"attempts", "candidate"}
                    or type(attempts) is not int or not 0 <= attempts <= _MAX_ATTEMPTS
                    or type(candidate) is not str or len(candidate) != 64 or candidate.strip("0123456789abcdef")
                    or canonical_json(d) != data
                ):
                    raise SerializationError(f"race message of rank {rank}: not {{attempts, candidate}} in canonical form")
            except SerializationError as exc:
                self._note(round, 0, rank, "invalid_race", str(exc))
                ranked.append((math.inf, rank))
                announced.append(None)
                continue
            ranked.append((attempts, rank))
            announced.append(candidate)
        return [rank for _, rank in sorted(ranked)], announced

    def _propose(
        self,
        round: int,
        number: int,
        proposer: int,
        announced: str | None,
        candidate: PreparedBlock,
        proposal: Proposal,
        payloads: Mapping[str, bytes],
    ) -> Block | None:
        """One proposal: deliver, check, attest, count; the committed block, or ``None``."""
        height = self.ledger.height + 1
        if proposer == self.rank:
            for dst, data in proposal.messages.items():
                self.transport.send_bytes(data, dst=dst)
            received = proposal.own
        else:
            received = self.transport.recv_bytes(src=proposer, max_bytes=MAX_BLOCK_BYTES)
        delivered = time.perf_counter()
        if proposer == self.rank and self.fault is None:
            block, refusal = candidate.block, None  # its own candidate, made by the rules just now
        else:
            block, refusal = self._check(received, proposer, announced, candidate, payloads)
        if refusal is not None:
            self._note(round, number, proposer, "rejected", refusal)
        honest = Attestation(
            peer=self.key.public_key, height=height, block_hash=ZERO_HASH if block is None else block.hash,
            verdict="accept" if refusal is None else "reject", reason="" if refusal is None else clip_reason(refusal),
        ).signed(self.key)
        sent = honest.to_bytes() if self.fault is None else self.fault.attest(self, proposer, block, honest)

        valid = []
        for rank, data in enumerate(self.transport.all_gather_bytes(sent, max_bytes=MAX_ATTESTATION_BYTES)):
            try:
                attestation = Attestation.from_bytes(data, what=f"attestation of rank {rank}")
                if attestation.peer != self.peer_keys[rank]:
                    raise SerializationError(
                        f"rank {rank} sent an attestation of peer {attestation.peer[:12]}, not one signed with its own key"
                    )
                if attestation.height != height:
                    raise SerializationError(f"rank {rank} attests height {attestation.height}, not {height}")
            except SerializationError as exc:
                self._note(round, number, rank, "invalid_attestation", str(exc))
                continue
            valid.append(attestation)

        winner = None
        for block_hash in sorted({a.block_hash for a in valid if a.accepts}):
            tally = count_attestations(valid, self.peer_keys, block_hash)
            if committed(tally, self.world_size):
                winner = (block_hash, tally)
        self._seconds["attest"] += time.perf_counter() - delivered
        unanimous = winner is not None and winner[1].accepts == self.world_size
        if not unanimous and any(a.accepts for a in valid):
            # Compare what everyone received: the proposer's signature on two different
            # blocks for this height is proof that it equivocated.
            held = self.transport.all_gather_bytes(received, max_bytes=MAX_BLOCK_BYTES)
            signed = self._signed_by(proposer, held)
            if len(signed) > 1:
                hashes = ", ".join(h[:12] for h in sorted(signed))
                self._note(
                    round, number, proposer, "equivocation",
                    f"proposer rank {proposer} signed {len(signed)} different blocks for height {height} ({hashes}); "
                    "its proposal fails",
                )
                return None
        else:
            signed = {} if block is None else {block.hash: block}
        if winner is None:
            verdicts = "; ".join(
                f"rank {self.peer_keys.index(a.peer)}: {a.verdict}{': ' + a.reason if a.reason else ''}" for a in valid
            )
            self._note(
                round, number, proposer, "no_majority",
                f"the proposal of rank {proposer} won no strict majority of the {self.world_size} peers ({verdicts})",
            )
            return None

        block_hash, tally = winner
        if block is None or block.hash != block_hash:
            block = signed.get(block_hash)
            if block is None:
                raise ConsensusError(
                    "outvoted",
                    f"{tally.accepts} of {self.world_size} peers accepted block {block_hash[:12]} from rank {proposer}, "
                    "but no peer sent this one its bytes; it stops rather than follow a block it cannot check",
                    round=round,
                )
            block, refusal = self._check(block.to_bytes(), proposer, announced, candidate, payloads)
        if refusal is not None:
            raise ConsensusError(
                "outvoted",
                f"{tally.accepts} of {self.world_size} peers accepted block {block_hash[:12]} from rank {proposer}, "
                f"which this peer refuses ({refusal}); it stops rather than follow it",
                round=round,
            )
        assert block is not None
        stage = time.perf_counter()
        self._commit(block, candidate, [a for a in valid if a.block_hash == block_hash])
        self._seconds["commit"] += time.perf_counter() - stage
        self._note(
            round, number, proposer, "committed",
            f"block {block_hash[:12]} of rank {proposer} accepted by {tally.accepts} of {self.world_size} peers",
            level=logging.INFO,
        )
        return block

    def _check(
        self,
        data: bytes,
        proposer: int,
        announced: str | None,
        candidate: PreparedBlock,
        payloads: Mapping[str, bytes],
    ) -> tuple[Block | None, str | None]:
        """This peer's own verdict on the bytes it received: the block (if they hold one) and
        ``None`` to accept, or the reason to reject."""
        if not data:
            return None, f"proposer rank {proposer} withheld its block (it sent an empty proposal)"
        try:
            block = Block.from_bytes(data, name=f"proposal of rank {proposer}")
        except SerializationError as exc:
            return None, f"the proposal of rank {proposer} is not a block: {exc}"
        header = block.header
        if header.miner != self.peer_keys[proposer]:
            return block, f"the block is mined by {header.miner[:12]}, not by proposer rank {proposer}"
        if block.hash != announced:
            said = "no valid candidate" if announced is None else f"candidate {announced[:12]}"
            return block, f"rank {proposer} announced {said} in the race but sent block {block.hash[:12]} (equivocation)"
        try:
            check_block(block, prev=self.ledger.head.header, genesis=self.ledger.genesis_info)
        except LedgerError as exc:
            return block, exc.reason
        skew = header.time_ms - self._clock()
        if abs(skew) > MAX_CLOCK_SKEW_MS:
            return block, f"the block's time is {skew} ms from this peer's clock, beyond {MAX_CLOCK_SKEW_MS} ms"
        expected = {tx.tx_hash: tx for tx in candidate.block.transactions}
        included = {tx.tx_hash: tx for tx in block.transactions}
        missing = [tx for h, tx in expected.items() if h not in included]
        if missing:
            tx = missing[0]
            return block, (
                f"the block omits the accepted transaction of client {tx.client[:12]} (update {tx.update_hash[:12]}); "
                f"{len(missing)} valid transaction(s) of the round are missing"
            )
        extra = [tx for h, tx in included.items() if h not in expected]
        if extra:
            tx = extra[0]
            return block, (
                f"the block includes a transaction of client {tx.client[:12]} (update {tx.update_hash[:12]}) that "
                "the rules do not accept from this round's submissions"
            )

        def blob(digest: str) -> bytes:
            return payloads[digest] if digest in payloads else self.ledger.get_blob(digest)

        try:
            replay_round(self.global_state, self.node.round_state, block, blob, rules=self.rules)
        except LedgerError as exc:
            return block, exc.reason
        if block.meta != candidate.block.meta:
            return block, "the round record (block metadata) differs from what the protocol gives for this round's submissions"
        return block, None

    def _signed_by(self, proposer: int, held: Sequence[bytes]) -> dict[str, Block]:
        """The distinct blocks among ``held`` that the proposer signed for the next height."""
        head = self.ledger.head
        found: dict[str, Block] = {}
        for data in held:
            if not data:
                continue
            try:
                block = Block.from_bytes(data)
            except SerializationError:
                continue
            header = block.header
            if (
                header.miner == self.peer_keys[proposer]
                and header.prev_hash == head.hash
                and header.height == head.header.height + 1
                and block.has_valid_signature()
            ):
                found[block.hash] = block
        return found

    def _commit(self, block: Block, candidate: PreparedBlock, attestations: list[Attestation]) -> None:
        """Attestations first, then blobs and the block: a crash leaves no block without them."""
        if self.attack is not None:
            # The block's public aggregate: the committed block holds the candidate's model.
            self.attack.observe_aggregate(flatten(compute_delta(candidate.model, self.global_state)))
        # Saved before the block is written, keyed by its hash: whenever a crash hits, the state
        # that goes with the ledger's last whole block is on disk.
        self._save_checkpoint(block)
        if self.votes.votes:
            self.ledger.put_votes(block.hash, encode_vote_set(block.hash, self._ballots))
        self.ledger.put_attestations(block.hash, encode_attestation_set(block.hash, attestations))
        # The block was checked to hold exactly the candidate's transactions, model and record,
        # so the candidate's blobs and round state are the block's.
        prepared = candidate
        if block.hash != candidate.block.hash:
            prepared = PreparedBlock(
                block=block, result=candidate.result, rejections=candidate.rejections, blobs=candidate.blobs,
                update_bytes=candidate.update_bytes, seconds=dict(candidate.seconds),
            )
        self.node.commit(prepared)
        blob = self.ledger.get_blob(block.header.model_hash)
        self.global_state = update_from_bytes(blob, max_bytes=len(blob))

    def _note(self, round: int, proposal: int, rank: int | None, kind: str, reason: str, *, level: int = logging.WARNING) -> None:
        self.events.append(PeerEvent(round=round, proposal=proposal, rank=rank, kind=kind, reason=reason))
        _log.log(level, "peer rank %d, round %d, proposal %d: %s (rank %s): %s", self.rank, round, proposal, kind, rank, reason)


# ---------------------------------------------------------------------------------------------
# Starting a run of peers


def join_chain(
    transport: Transport,
    *,
    key: SigningKey,
    peer_keys: Sequence[str],
    members: Sequence[str],
    config: Mapping[str, Any],
    model_bytes: bytes,
    difficulty: int,
    ledger_dir: str | Path,
    time_ms: int | None = None,
    mine_workers: int = 1,
) -> Ledger:
    """Agree on the genesis block and start this peer's ledger with it.

    Rank 0 mines and signs the genesis block (``miners``: every peer's key) and broadcasts it;
    every other peer checks it (:func:`~torchchain.chain.ledger.check_genesis`) and that it
    lists exactly the members, miners, config, initial model and difficulty it expects.

    Raises:
        ConsensusError: ``code="genesis"``: the block rank 0 sent is malformed or not the one
            expected.
        TransportError: Rank 0 did not send it.
    """
    if transport.rank == 0:
        genesis = make_genesis(
            members=members, config=dict(config), model_hash=sha256_hex(model_bytes), miner=key, miners=peer_keys,
            difficulty=difficulty, time_ms=int(time.time() * 1000) if time_ms is None else time_ms, workers=mine_workers,
        )
        data: bytes | None = genesis.to_bytes()
    else:
        data = None
    data = transport.broadcast_bytes(data, src=0, max_bytes=MAX_BLOCK_BYTES)
    try:
        genesis = Block.from_bytes(data, name="genesis block from rank 0")
        info = check_genesis(genesis)
    except (SerializationError, LedgerError) as exc:
        raise ConsensusError("genesis", f"rank 0 sent a genesis block this peer refuses: {exc}") from None
    expected = {
        "members": tuple(sorted(members)) == info.members,
        "miners": tuple(sorted(peer_keys)) == info.miners,
        "config": canonical_json(dict(config)) == canonical_json(dict(info.config)),
        "initial model": genesis.header.model_hash == sha256_hex(model_bytes),
        "difficulty": info.difficulty == difficulty,
        "miner": genesis.header.miner == peer_keys[0],
    }
    wrong = [name for name, ok in expected.items() if not ok]
    if wrong:
        raise ConsensusError(
            "genesis", f"the genesis block rank 0 sent differs from this peer's in: {', '.join(wrong)}"
        )
    return Ledger.create(ledger_dir, genesis, blobs=[model_bytes])


@dataclass
class PeerOutcome:
    """How one peer's run ended.

    Attributes:
        rank: The peer's rank.
        key: Its public key.
        ledger: Its ledger folder.
        height: Its ledger's height at the end.
        head: Its head block's hash.
        model_hash: The model hash its head commits to.
        events: Everything it logged (:class:`PeerEvent`).
        error: Why it stopped early (:class:`ConsensusError`, :class:`TransportError`), or
            ``None`` when it finished every round.
        metrics: The final model's evaluation on the test split (empty after an error).
        stats: What each round it committed cost it (:class:`RoundStats`), in round order.
        byzantine_clients: The indices of the run's malicious clients (on every peer).
    """

    rank: int
    key: str
    ledger: Path
    height: int
    head: str
    model_hash: str
    events: list[PeerEvent] = field(default_factory=list)
    error: TorchchainError | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    stats: list[RoundStats] = field(default_factory=list)
    byzantine_clients: tuple[int, ...] = ()

    def rejections(self) -> list[PeerEvent]:
        """The proposals this peer's own check rejected."""
        return [e for e in self.events if e.kind == "rejected"]


def _clients(data: TaskData, settings: SimulationSettings) -> list[Client]:
    """Every client of the run, with the keys, IID/non-IID partition and malicious clients a
    simulation gives them (their data not yet poisoned)."""
    n = settings.clients
    parts = partition(
        settings.partition, data.train.targets, n, seed=settings.seed, alpha=settings.alpha,
        shards_per_client=settings.shards_per_client,
    )
    order = torch.randperm(n, generator=derive_generator(settings.seed, "byzantine"))
    malicious = set(order[: settings.byzantine].tolist())
    return [
        Client(
            index=i, key=client_key(settings.seed, i), data=data.train.subset(idx), byzantine=i in malicious,
            momentum_buffers={},
        )
        for i, idx in enumerate(parts)
    ]


def _poison_data(clients: Sequence[Client], attack: Attack, data: TaskData, seed: int) -> None:
    """Malicious clients train on the data the attack gives them (once, as in a simulation)."""
    for client in clients:
        if client.byzantine:
            x, y = attack.poison_data(
                client.data.features, client.data.targets, num_classes=data.num_classes,
                generator=derive_generator(seed, "poison_data", client.index),
            )
            client.data = DataSplit(features=x, targets=y)


def _check_supported(settings: SimulationSettings, rules: RoundRules, attack: Attack | None) -> None:
    if attack is not None and attack.forges_transactions:
        name = type(attack).__name__
        raise ConfigError(
            f"attack {name} forges transactions (replayed updates or sybil identities) through a single node's "
            "forger, which a run of peers does not have; use one node (runtime.peers=1) for it, or an attack that "
            "poisons updates or data"
        )
    if settings.privacy.kind != "none":
        raise ConfigError(f"privacy={settings.privacy.kind} is not supported by a run of peers yet; use privacy=none")
    if rules.strategy.requires_reference:
        raise ConfigError(
            f"{type(rules.strategy).__name__} needs one trusted server's root set, which peers cannot agree on; "
            "choose another strategy for a run of peers"
        )
    if getattr(rules, "secagg", None) is not None:
        raise ConfigError("secure aggregation is not supported by a run of peers yet")


def evaluate_model(
    model: nn.Module, state: Mapping[str, torch.Tensor], data: TaskData, *, device: torch.device,
    attack: Attack | None = None,
) -> dict[str, float]:
    """The metrics of the global model ``state`` on the test split, as a simulation reports them
    (RMSE in the target's units; the attack's own metrics, such as a backdoor's success rate)."""
    model.load_state_dict(state)
    test = data.test
    metrics = evaluate(model, test, task=data.task, device=device)
    if "rmse" in metrics:
        metrics["rmse"] *= data.target_scale
    if attack is not None:
        metrics.update(
            attack.evaluation_metrics(
                lambda x, y: evaluate(model, DataSplit(features=x, targets=y), task=data.task, device=device),
                test.features, test.targets,
            )
        )
    return metrics


def _reopen(
    transport: Transport, ledger_dir: Path, *, config: Mapping[str, Any], members: Sequence[str], peer_keys: Sequence[str]
) -> Ledger | None:
    """This peer's ledger to resume from, or ``None`` when no peer holds one (a fresh start).

    Collective: every peer says whether it holds a ledger of this run.

    Raises:
        ConfigError: This peer's ledger is another run's, or only some peers hold a ledger.
    """
    ledger = None
    if any((ledger_dir / BLOCKS_DIR).glob("*.json")):
        ledger = Ledger.open_writer(ledger_dir)
        expected = {
            "config": json.loads(json.dumps(dict(config))) == ledger.config,
            "members": tuple(sorted(members)) == ledger.members,
            "miners": tuple(sorted(peer_keys)) == ledger.miners,
        }
        wrong = [name for name, ok in expected.items() if not ok]
        if wrong:
            ledger.close()
            raise ConfigError(
                f"cannot resume {ledger_dir}: its genesis block differs from this run's in: {', '.join(wrong)}; "
                "resume with the run's own config.yaml and the same number of peers, or start a new run"
            )
    held = transport.all_gather_bytes(b"1" if ledger is not None else b"0", max_bytes=1)
    missing = [rank for rank, flag in enumerate(held) if flag != b"1"]
    if missing and len(missing) < transport.world_size:
        if ledger is not None:
            ledger.close()
        ranks = ", ".join(str(rank) for rank in missing)
        raise ConfigError(
            f"cannot resume: rank(s) {ranks} hold no ledger (<run>/rank<k>/ledger) while the others do; restore those "
            "folders, or start a new run"
        )
    return ledger


def run_peer(
    transport: Transport,
    *,
    data: TaskData,
    model: nn.Module,
    settings: SimulationSettings,
    config: Mapping[str, Any],
    run_dir: str | Path,
    fault: PeerFault | None = None,
    attack: Attack | None = None,
    trusted: tuple[str, ...] = (),
    genesis_time_ms: int | None = None,
    clock: Callable[[], int] | None = None,
    on_round: Callable[[Peer, Block, RoundStats], None] | None = None,
    resume: bool = False,
) -> PeerOutcome:
    """Run every round as peer ``transport.rank`` of ``transport.world_size``.

    Client ``i`` belongs to peer ``i % world_size``; peer ``k``'s key is :func:`peer_key`
    ``(seed, k)``; its ledger is ``<run_dir>/rank<k>/ledger``. Every peer must be given the same
    data, initial model, settings and config (they are checked against the genesis block).

    The run's ``settings.byzantine`` malicious clients are those a simulation picks; each lives
    on the peer that owns it and runs ``attack`` there: it poisons its data or its update, and an
    omniscient attack sees the honest updates of that peer's own sampled clients of the round
    only (a simulation shows it every honest client's).

    Args:
        attack: What malicious clients do (``setup`` already called); this peer works on its
            own copy. Attacks that forge transactions (replay, sybil) are refused.
        genesis_time_ms: Rank 0's genesis time (default: its clock).
        clock: Milliseconds since the epoch for the blocks this peer mines and checks (default:
            the system clock).
        on_round: Called after every committed round (:meth:`Peer.run`).
        resume: Continue from the ledgers in ``run_dir`` (after every peer was stopped or
            killed): each peer reopens ``<run_dir>/rank<k>/ledger``, checks it is this run's,
            takes up its clients' and attack's state from the checkpoint of its head
            (``<run_dir>/rank<k>/checkpoints``), and the peers agree on one head
            (:meth:`Peer.catch_up`: a peer behind fetches and checks the blocks it lacks).
            When no peer has a ledger yet, the run starts afresh.

    Returns:
        How the run ended for this peer; a :class:`ConsensusError` or
        :class:`~torchchain.runtime.transport.TransportError` ends it early and is returned in
        :attr:`PeerOutcome.error` (the ledger is whole up to its last block).

    Raises:
        ConfigError: The settings ask for what a run of peers does not support, or ``resume``
            finds a ledger of another run, some peers without a ledger, or no checkpoint for a
            head block.
    """
    rank, world = transport.rank, transport.world_size
    keys = [peer_key(settings.seed, k) for k in range(world)]
    peer_keys = [k.public_key for k in keys]
    clients = _clients(data, settings)
    members = [c.public_key for c in clients]
    rules = RoundRules.from_config(config, members, trusted=trusted)
    _check_supported(settings, rules, attack)
    own = [c for c in clients if c.index % world == rank]
    if attack is not None:
        attack = copy.deepcopy(attack)
        _poison_data(own, attack, data, settings.seed)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ledger_dir = Path(run_dir) / f"rank{rank}" / "ledger"
    ledger = _reopen(transport, ledger_dir, config=config, members=members, peer_keys=peer_keys) if resume else None
    if ledger is None:
        ledger = join_chain(
            transport, key=keys[rank], peer_keys=peer_keys, members=members, config=config,
            model_bytes=update_to_bytes(state), difficulty=settings.difficulty, ledger_dir=ledger_dir,
            time_ms=genesis_time_ms, mine_workers=settings.mine_workers,
        )
    error: TorchchainError | None = None
    metrics: dict[str, float] = {}
    peer: Peer | None = None
    try:
        peer = Peer(
            rank=rank, transport=transport, ledger=ledger, rules=rules, key=keys[rank], peer_keys=peer_keys,
            clients=own, model=model, settings=settings, fault=fault, attack=attack, clock=clock,
            checkpoints=Path(run_dir) / f"rank{rank}" / "checkpoints",
            validation=data.test.subset(torch.arange(rank, len(data.test), world)),
        )
        try:
            if resume:
                peer.restore()
                peer.catch_up()
            peer.run(settings.rounds, on_round=on_round)
        except (ConsensusError, TransportError) as exc:
            _log.warning("peer rank %d stops: %s", rank, exc)
            error = exc
        else:
            metrics = evaluate_model(model, peer.global_state, data, device=settings.device, attack=attack)
        head = ledger.head
        return PeerOutcome(
            rank=rank, key=peer_keys[rank], ledger=ledger_dir, height=ledger.height, head=head.hash,
            model_hash=head.header.model_hash, events=list(peer.events), error=error, metrics=metrics,
            stats=list(peer.stats), byzantine_clients=tuple(sorted(c.index for c in clients if c.byzantine)),
        )
    finally:
        try:
            if peer is not None:
                peer.executor.close()  # no training worker outlives its peer
        finally:
            ledger.close()


def run_in_process(
    *,
    data: TaskData,
    model: nn.Module,
    settings: SimulationSettings,
    config: Mapping[str, Any],
    run_dir: str | Path,
    peers: int,
    faults: Mapping[int, PeerFault] | None = None,
    attack: Attack | None = None,
    timeout: float = 60.0,
    trusted: tuple[str, ...] = (),
    clock: Callable[[], int] | None = None,
    on_round: Callable[[Peer, Block, RoundStats], None] | None = None,
    resume: bool = False,
) -> list[PeerOutcome]:
    """Run ``peers`` peers in this process, one thread each, over an
    :class:`~torchchain.runtime.transport.InProcessNetwork`; their outcomes in rank order.

    Args:
        data: The task's splits (every peer partitions them the same way).
        model: The initial model; each peer trains its own copy.
        settings: Sizes, seed, training and chain settings.
        config: The protocol config recorded in the genesis block.
        run_dir: Peer ``k``'s ledger goes to ``<run_dir>/rank<k>/ledger``.
        peers: Number of peers.
        faults: Byzantine behaviours by rank (:mod:`torchchain.runtime.peer_behaviour`).
        attack: What the malicious clients do (``setup`` already called; see :func:`run_peer`).
        timeout: Seconds each exchange waits for the other peers.
        trusted: Import paths of user strategy classes the config may name.
        clock: Milliseconds since the epoch for every peer's blocks and genesis (default: the
            system clock); a fixed clock makes ledgers reproducible.
        on_round: Called on rank 0's thread after every committed round (:meth:`Peer.run`).
        resume: Continue from the ledgers in ``run_dir`` (see :func:`run_peer`).

    Raises:
        ConfigError: ``peers`` is not a positive integer, a fault names a rank that does not
            exist, or the settings ask for what a run of peers does not support.
    """
    if isinstance(peers, bool) or not isinstance(peers, int) or peers < 1:
        raise ConfigError(f"peers must be a positive integer, got {peers!r}")
    faults = dict(faults or {})
    unknown = sorted(rank for rank in faults if not (isinstance(rank, int) and 0 <= rank < peers))
    if unknown:
        raise ConfigError(f"faults name ranks {unknown}, but the run has ranks 0 to {peers - 1}")
    models = [copy.deepcopy(model) for _ in range(peers)]
    genesis_time_ms = clock() if clock is not None else int(time.time() * 1000)

    def one(transport: Transport) -> PeerOutcome:
        return run_peer(
            transport, data=data, model=models[transport.rank], settings=settings, config=config, run_dir=run_dir,
            fault=faults.get(transport.rank), attack=attack, trusted=trusted, genesis_time_ms=genesis_time_ms,
            clock=clock, on_round=on_round if transport.rank == 0 else None, resume=resume,
        )

    return run_peers(peers, one, timeout=timeout)
