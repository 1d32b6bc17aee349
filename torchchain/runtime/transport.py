"""How the peers of a federated run exchange bytes: transactions, updates, blocks, attestations.

Every peer holds its own key and ledger and talks to the others only through a
:class:`Transport`. A transport moves opaque ``bytes`` and nothing else; what they mean
(signatures, hashes, the ledger) is checked above it. Three rules make it safe to run next to
peers that may be malicious:

* **Bytes only.** Messages travel as ``uint8`` tensors (their lengths as ``int64`` tensors).
  No ``*_object`` collective of :mod:`torch.distributed` and no pickle is used anywhere, so a
  peer cannot make another run code by what it sends.
* **A bound before every allocation.** Each call names ``max_bytes``. A peer first announces
  how many bytes it is about to send; the announcement is checked (not negative, at most
  ``max_bytes``) before any buffer for the payload exists. A peer announcing 100 GB gets a
  :class:`TransportError` with ``code="oversize"`` naming it, and nothing that size is ever
  allocated. An all-gather allocates at most ``world_size * max_bytes``.
* **Missing peers are named.** Every step waits at most ``timeout`` seconds. A peer that died
  or stalled raises :class:`TransportError` with ``code="timeout"`` and ``rank``/``ranks``
  naming the peers that did not answer.

The wire protocol
-----------------
Every collective call (:meth:`~Transport.all_gather_bytes`, :meth:`~Transport.broadcast_bytes`,
:meth:`~Transport.barrier`) starts with a *roll call*: each rank sends an ``int64`` header
``(magic, operation, sequence number, src, length)`` to every other rank and waits for every
other rank's header, each on its own point-to-point receive. So every rank learns, by
name, which peers are absent, and that all the others are in the same call (same operation,
same sequence number, same ``src``; otherwise ``code="malformed"`` names the peers out of step).
Every rank checks every announced length against its own ``max_bytes``; since all ranks see
the same headers and must pass the same ``max_bytes`` (it is part of the protocol), an
oversize announcement makes every rank, the announcer included, raise the same error, and
the transport stays usable. Only then do the payloads move: an all-gather pads every
contribution to the longest announced length (at most ``max_bytes``), gathers and slices; a
broadcast sends exactly the announced length.

Point-to-point messages (:meth:`~Transport.send_bytes`, :meth:`~Transport.recv_bytes`) carry
the same kind of header with a per-pair sequence number, then the payload. They are a channel
of their own: a message sent before a collective may be received after it. Sending returns at
once (the message is queued, and its buffer is held until the receiver has taken it), so
every rank may send to every other before anyone receives; a peer may therefore send
different bytes to different peers (equivocation is expressible, and detecting it is the
protocol's job, not the transport's). After a malformed or oversize message from a peer, the
receiver refuses every later message from that peer (``code="closed"`` naming it): the
channel is out of step. :meth:`~Transport.close` waits (at most ``timeout``) for queued
messages to be taken; a run ends with a :meth:`~Transport.barrier` before closing.

Failures
--------
A ``timeout`` or ``malformed`` error in a collective, and a ``timeout`` in point-to-point,
leave the transport unusable: every later call raises ``code="closed"`` (with gloo, a timed-out
wait closes every connection of the process group anyway). An ``oversize`` error in a
collective does not. After :meth:`~Transport.close`, every call raises ``code="closed"``.

Traffic
-------
Every transport counts what it exchanges with the other ranks in :attr:`~Transport.bytes_sent`
and :attr:`~Transport.bytes_received`, as the wire protocol moves it: 48 bytes per header (one to
and one from every other rank in each collective, one per point-to-point message) plus the
payloads; an all-gather moves every contribution padded to the longest one (gloo's ring moves
``world_size - 1`` such blocks per rank, as sending each peer one would), a broadcast moves the
payload from its source to every other rank. Calls that fail count nothing; what TCP, gloo or
NCCL add around these bytes is not counted. The in-process backend counts the same volume, so
its figures are what a network would carry.

Backends
--------
:class:`DistributedTransport` runs over :mod:`torch.distributed`:

* **gloo** (CPU): headers and payloads are CPU tensors. A peer whose process died is noticed
  at once (its TCP connections close) and one that stalls when the timeout runs out; both
  are named, because each header is a receive from one known rank. If a peer dies *during* a
  payload transfer (after its header arrived), gloo's collective fails without saying which
  peer broke it: that error has ``rank=None``.
* **NCCL** (GPU): headers and point-to-point messages travel over a gloo process group created
  beside the NCCL one, so missing peers are named exactly as with gloo. The all-gather and
  broadcast payloads are copied to ``cuda:LOCAL_RANK``, moved by NCCL, and copied back to CPU
  bytes. NCCL cannot tell which rank failed to join a collective; a payload transfer that
  does not finish within the timeout raises ``code="timeout"`` with ``rank=None``, the NCCL
  communicator is then unusable, and NCCL's watchdog may end the process once the process
  group's own timeout expires (``TORCH_NCCL_ASYNC_ERROR_HANDLING``).

What no backend can do: ``torch.distributed`` trusts its ranks at the level of its own wire
protocol. A rank running modified code can break a collective it takes part in (for example
by sending a gloo receiver more bytes than it posted, which aborts that process inside gloo).
The transport bounds what honest ranks allocate, runs no code from peers and names peers
that fall silent; it cannot keep a tampered process from crashing a gloo collective.

:class:`InProcessNetwork` gives ``N`` peers in one process, one thread each, with the same
protocol, bounds and timeouts over thread-safe mailboxes; a peer whose thread leaves the
network (:meth:`~Transport.close`, or its function in :func:`run_peers` returning) is noticed
at once, as a closed connection is with gloo. It is meant for ``runtime=simulation peers=N``
and for cheap tests of Byzantine peers.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

from torchchain.errors import ConfigError, TorchchainError

__all__ = [
    "DistributedTransport",
    "InProcessNetwork",
    "InProcessTransport",
    "Transport",
    "TransportError",
    "run_peers",
]

T = TypeVar("T")

ErrorCode = Literal["oversize", "malformed", "timeout", "closed"]

# Header words: (magic, operation, sequence number, argument, length). The argument is the
# source of a broadcast and the destination of a point-to-point message. On the wire,
# DistributedTransport appends a sixth word, an acknowledgment (see _InFlight).
_MAGIC = 0x746368_61696E  # "tchain"
_OP_ALL_GATHER = 1
_OP_BROADCAST = 2
_OP_BARRIER = 3
_OP_MESSAGE = 4
_OP_NAMES = {
    _OP_ALL_GATHER: "all_gather_bytes",
    _OP_BROADCAST: "broadcast_bytes",
    _OP_BARRIER: "barrier",
    _OP_MESSAGE: "send_bytes",
}
_WIRE_WORDS = 6
_HEADER_BYTES = 8 * _WIRE_WORDS

# Channels (gloo point-to-point tags): collective headers, message headers, message payloads.
_COLLECTIVE = 0x7C01
_MESSAGE = 0x7C02
_PAYLOAD = 0x7C03

Header = tuple[int, int, int, int, int]


class TransportError(TorchchainError):
    """Bytes could not be exchanged with one or more peers.

    Attributes:
        code: ``"oversize"`` (a peer announced more than ``max_bytes``), ``"malformed"`` (a
            peer sent a header that is not the one expected: a negative length, another
            operation, a sequence number out of step), ``"timeout"`` (peers did not answer
            within the timeout: their process died, stalled or left the network) or
            ``"closed"`` (this transport, or the channel from that peer, no longer carries
            messages).
        rank: The offending peer: the first of ``ranks``, or ``None`` when the backend cannot
            say which peer failed.
        ranks: Every peer the error is about, in rank order (empty when unknown).
        reason: The reason alone, without the code.
    """

    def __init__(
        self, code: ErrorCode, reason: str, *, rank: int | None = None, ranks: Iterable[int] | None = None
    ) -> None:
        self.code = code
        self.reason = reason
        self.ranks = tuple(sorted(ranks)) if ranks is not None else (() if rank is None else (rank,))
        self.rank = rank if rank is not None else (self.ranks[0] if self.ranks else None)
        super().__init__(f"{code}: {reason}")


class Transport(ABC):
    """How one peer exchanges bytes with the others of its run.

    Calls are collective where the name says so: every rank must make the same collective
    calls in the same order with the same ``max_bytes``. A transport is used by one thread.

    Attributes:
        rank: This peer's rank, ``0 <= rank < world_size``.
        world_size: Number of peers.
        timeout: Seconds each step waits for the other peers before naming them.
        bytes_sent: Bytes this rank has sent to other ranks so far: headers and payloads of
            every completed call (see "Traffic" in the module docstring).
        bytes_received: Bytes this rank has received from other ranks so far, likewise.
    """

    rank: int
    world_size: int
    timeout: float
    bytes_sent: int = 0
    bytes_received: int = 0

    @abstractmethod
    def all_gather_bytes(self, data: bytes, *, max_bytes: int) -> list[bytes]:
        """Every rank contributes one message; every rank gets all of them in rank order."""

    @abstractmethod
    def broadcast_bytes(self, data: bytes | None, *, src: int, max_bytes: int) -> bytes:
        """Rank ``src`` sends ``data`` to every rank (the others' ``data`` is ignored)."""

    @abstractmethod
    def send_bytes(self, data: bytes, *, dst: int) -> None:
        """Queue one message for rank ``dst``; returns without waiting for it to be received."""

    @abstractmethod
    def recv_bytes(self, *, src: int, max_bytes: int) -> bytes:
        """The next message rank ``src`` sent to this rank."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait until every rank has reached its barrier (a roll call: absent ranks are named)."""

    @abstractmethod
    def close(self) -> None:
        """Stop using the transport; later calls raise ``code="closed"``. Idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Exchange(Transport):
    """The protocol shared by every backend; subclasses move headers and payloads."""

    def __init__(self, rank: int, world_size: int, timeout: float) -> None:
        self.rank = rank
        self.world_size = world_size
        self.timeout = timeout
        self._sequence = 0
        self._sent = [0] * world_size
        self._received = [0] * world_size
        self._refused: dict[int, str] = {}
        self._failure: TransportError | None = None
        self._closed = False
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- what a backend provides ----------------------------------------------------------

    @abstractmethod
    def _roll_call(self, header: Header, payload: bytes | None, what: str) -> dict[int, Header]:
        """Send ``header`` (and, in process, ``payload``) to every peer; every peer's header."""

    @abstractmethod
    def _gather_payloads(self, payload: bytes, lengths: list[int]) -> list[bytes]:
        """Move the all-gather payloads once the lengths are known and checked."""

    @abstractmethod
    def _broadcast_payload(self, payload: bytes | None, src: int, length: int) -> bytes:
        """Move the broadcast payload once its length is known and checked."""

    @abstractmethod
    def _post_message(self, dst: int, header: Header, payload: bytes) -> None:
        """Queue a point-to-point message without waiting for the receiver."""

    @abstractmethod
    def _receive_header(self, src: int) -> Header:
        """The header of the next message from ``src``."""

    @abstractmethod
    def _receive_payload(self, src: int, length: int) -> bytes:
        """The payload of the message whose header was just received (``length`` checked)."""

    # -- the API ----------------------------------------------------------------------------

    def all_gather_bytes(self, data: bytes, *, max_bytes: int) -> list[bytes]:
        payload = _as_bytes(data)
        bound = _bound(max_bytes)
        self._usable()
        lengths = self._collective(_OP_ALL_GATHER, 0, len(payload), payload)
        _check_lengths(dict(enumerate(lengths)), bound)
        if self.world_size == 1:
            return [payload]
        gathered = self._gather_payloads(payload, lengths)
        peers = self.world_size - 1
        width = max(lengths)  # every contribution moves padded to the longest
        self._count(sent=peers * (_HEADER_BYTES + width), received=peers * (_HEADER_BYTES + width))
        return gathered

    def broadcast_bytes(self, data: bytes | None, *, src: int, max_bytes: int) -> bytes:
        bound = _bound(max_bytes)
        self._check_rank(src, "src")
        if self.rank == src:
            if data is None:
                raise ValueError(f"rank {src} is the broadcast source and must pass bytes, not None")
            payload: bytes | None = _as_bytes(data)
        else:
            payload = None
        self._usable()
        length = len(payload) if payload is not None else 0
        lengths = self._collective(_OP_BROADCAST, src, length, payload)
        _check_lengths({src: lengths[src]}, bound)
        if self.world_size == 1:
            return payload if payload is not None else b""
        result = b"" if lengths[src] == 0 else self._broadcast_payload(payload, src, lengths[src])
        peers = self.world_size - 1
        if self.rank == src:
            self._count(sent=peers * (_HEADER_BYTES + lengths[src]), received=peers * _HEADER_BYTES)
        else:
            self._count(sent=peers * _HEADER_BYTES, received=peers * _HEADER_BYTES + lengths[src])
        return result

    def barrier(self) -> None:
        self._usable()
        self._collective(_OP_BARRIER, 0, 0, None)
        peers = self.world_size - 1
        self._count(sent=peers * _HEADER_BYTES, received=peers * _HEADER_BYTES)

    def send_bytes(self, data: bytes, *, dst: int) -> None:
        payload = _as_bytes(data)
        self._check_peer(dst, "dst")
        self._usable()
        self._sent[dst] += 1
        self._post_message(dst, (_MAGIC, _OP_MESSAGE, self._sent[dst], dst, len(payload)), payload)
        self._count(sent=_HEADER_BYTES + len(payload), received=0)

    def recv_bytes(self, *, src: int, max_bytes: int) -> bytes:
        bound = _bound(max_bytes)
        self._check_peer(src, "src")
        self._usable()
        if src in self._refused:
            raise TransportError(
                "closed", f"messages from rank {src} are refused since: {self._refused[src]}", rank=src
            )
        header = self._receive_header(src)
        expected = (_MAGIC, _OP_MESSAGE, self._received[src] + 1, self.rank)
        try:
            if tuple(header[:4]) != expected:
                raise TransportError(
                    "malformed",
                    f"rank {src} sent {_describe_header(header)} where {_describe_header(expected)} "
                    "was due",
                    rank=src,
                )
            _check_lengths({src: header[4]}, bound)
        except TransportError as error:
            self._refused[src] = error.reason
            raise
        self._received[src] += 1
        payload = self._receive_payload(src, header[4])
        self._count(sent=0, received=_HEADER_BYTES + len(payload))
        return payload

    # -- shared steps -----------------------------------------------------------------------

    def _count(self, *, sent: int, received: int) -> None:
        """The one place traffic is counted (:attr:`bytes_sent`, :attr:`bytes_received`)."""
        self.bytes_sent += sent
        self.bytes_received += received

    def _collective(self, op: int, arg: int, length: int, payload: bytes | None) -> list[int]:
        """The roll call of a collective: checks every header, returns the lengths by rank."""
        self._sequence += 1
        mine: Header = (_MAGIC, op, self._sequence, arg, length)
        if self.world_size == 1:
            return [length]
        headers = self._roll_call(mine, payload, _OP_NAMES[op])
        headers[self.rank] = mine
        expected = mine[:4]
        out_of_step = sorted(peer for peer, header in headers.items() if tuple(header[:4]) != expected)
        if out_of_step:
            details = "; ".join(f"rank {peer} sent {_describe_header(headers[peer])}" for peer in out_of_step)
            raise self._fail(
                TransportError(
                    "malformed",
                    f"expected {_describe_header(mine)} from every rank, but {details}",
                    ranks=out_of_step,
                )
            )
        return [headers[rank][4] for rank in range(self.world_size)]

    def _usable(self) -> None:
        if self._closed:
            raise TransportError("closed", f"the transport of rank {self.rank} is closed")
        if self._failure is not None:
            raise TransportError(
                "closed",
                f"the transport of rank {self.rank} is unusable after an earlier error "
                f"({self._failure})",
                ranks=self._failure.ranks,
            )

    def _fail(self, error: TransportError) -> TransportError:
        """Mark the transport unusable because of ``error``; returns it to be raised."""
        if self._failure is None:
            self._failure = error
        return error

    def _missing(self, failures: Mapping[int, str], what: str) -> TransportError:
        ranks = sorted(failures)
        names = ", ".join(str(rank) for rank in ranks)
        details = "; ".join(f"rank {rank}: {failures[rank]}" for rank in ranks)
        plural = "s" if len(ranks) > 1 else ""
        return self._fail(
            TransportError(
                "timeout",
                f"rank{plural} {names} did not answer {what} within {self.timeout:g} s ({details})",
                ranks=ranks,
            )
        )

    def _check_rank(self, rank: int, name: str) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise ValueError(f"{name}={rank!r} is not a rank of this run (0 to {self.world_size - 1})")

    def _check_peer(self, rank: int, name: str) -> None:
        self._check_rank(rank, name)
        if rank == self.rank:
            raise ValueError(f"{name}={rank} is this peer's own rank; messages go to other peers")

    def _peers(self) -> list[int]:
        return [rank for rank in range(self.world_size) if rank != self.rank]


# ---------------------------------------------------------------------------------------------
# torch.distributed


class DistributedTransport(_Exchange):
    """A :class:`Transport` over :mod:`torch.distributed` (gloo on CPU, NCCL on GPU).

    Uses the default process group when one is initialized; otherwise creates it from the
    variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``,
    ``LOCAL_RANK``) with ``init_process_group(backend, timeout=timeout)`` and destroys it on
    :meth:`close`. With NCCL it also creates a gloo group of all ranks for the headers and the
    point-to-point messages (a collective call: every rank constructs its transport).

    Args:
        timeout: Seconds each step waits (``runtime.timeout``).
        backend: ``"gloo"`` or ``"nccl"``; default: the initialized group's, else NCCL when
            CUDA is available and gloo otherwise.
        device: With NCCL, where payloads are staged (default ``cuda:LOCAL_RANK``, else the
            current CUDA device).
    """

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        backend: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        timeout = _check_timeout(timeout)
        if not dist.is_available():
            raise ConfigError("torch.distributed is not available in this build of PyTorch")
        if backend is not None and backend not in ("gloo", "nccl"):
            raise ConfigError(f"backend={backend!r} is not supported; use 'gloo' or 'nccl'")
        self._owns_group = False
        if not dist.is_initialized():
            needed = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
            missing = [name for name in needed if name not in os.environ]
            if missing:
                raise ConfigError(
                    "no torch.distributed process group is initialized and the environment lacks "
                    f"{', '.join(missing)}: start the run with torchrun, or initialize the group first"
                )
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if backend == "nccl":
                torch.cuda.set_device(_cuda_device(device))
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
            self._owns_group = True
        actual = str(dist.get_backend()).lower()
        if actual not in ("gloo", "nccl") or (backend is not None and actual != backend):
            self._release_group()
            raise ConfigError(
                f"the process group's backend is {actual!r}; this transport needs "
                f"{backend or 'gloo or nccl'!r}"
            )
        self.backend = actual
        super().__init__(dist.get_rank(), dist.get_world_size(), timeout)
        self._device = _cuda_device(device) if actual == "nccl" else torch.device("cpu")
        self._control: Any = None  # the default group carries the headers with gloo
        if actual == "nccl":
            self._control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))
        self._in_flight: list[_InFlight] = []

    def close(self) -> None:
        """Wait (up to ``timeout``) for queued messages to be taken, then release the groups."""
        if self._closed:
            return
        self._closed = True
        if self._failure is None:
            deadline = time.monotonic() + self.timeout
            for send in self._in_flight:
                if _wait(send.work, deadline) is not None:
                    break
        self._in_flight.clear()
        if self._control is not None and dist.is_initialized():
            dist.destroy_process_group(self._control)
            self._control = None
        self._release_group()

    def _release_group(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    # -- headers over gloo ------------------------------------------------------------------

    def _roll_call(self, header: Header, payload: bytes | None, what: str) -> dict[int, Header]:
        sequence = header[2]
        deadline = time.monotonic() + self.timeout
        failures: dict[int, str] = {}
        receives: dict[int, tuple[Any, torch.Tensor]] = {}
        for peer in self._peers():
            try:
                self._send(peer, _COLLECTIVE, sequence, self._wire(header, peer))
                buffer = torch.zeros(_WIRE_WORDS, dtype=torch.int64)
                receives[peer] = (dist.irecv(buffer, src=peer, group=self._control, tag=_COLLECTIVE), buffer)
            except RuntimeError as exc:
                failures[peer] = _describe_failure(exc)
        headers: dict[int, Header] = {}
        for peer, (work, buffer) in receives.items():
            error = _wait(work, deadline)
            if error is not None:
                failures[peer] = error
            else:
                headers[peer] = self._unwire(buffer, peer)
        if failures:
            raise self._missing(failures, what)
        # Every peer has sent its header for this call, so it took ours for the previous one.
        self._in_flight = [s for s in self._in_flight if not (s.channel == _COLLECTIVE and s.sequence < sequence)]
        return headers

    def _post_message(self, dst: int, header: Header, payload: bytes) -> None:
        try:
            self._send(dst, _MESSAGE, header[2], self._wire(header, dst))
            if payload:
                self._send(dst, _PAYLOAD, header[2], _tensor_of(payload, torch.device("cpu")))
        except RuntimeError as exc:
            raise self._missing({dst: _describe_failure(exc)}, "send_bytes") from exc

    def _receive_header(self, src: int) -> Header:
        buffer = torch.zeros(_WIRE_WORDS, dtype=torch.int64)
        self._receive(buffer, src, _MESSAGE, "recv_bytes")
        return self._unwire(buffer, src)

    def _receive_payload(self, src: int, length: int) -> bytes:
        if length == 0:
            return b""
        buffer = torch.zeros(length, dtype=torch.uint8)  # allocated only after the bound check
        self._receive(buffer, src, _PAYLOAD, "recv_bytes")
        return _bytes_of(buffer)

    def _receive(self, buffer: torch.Tensor, src: int, tag: int, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            work = dist.irecv(buffer, src=src, group=self._control, tag=tag)
        except RuntimeError as exc:
            raise self._missing({src: _describe_failure(exc)}, what) from exc
        error = _wait(work, deadline)
        if error is not None:
            raise self._missing({src: error}, what)

    def _send(self, dst: int, channel: int, sequence: int, tensor: torch.Tensor) -> None:
        work = dist.isend(tensor, dst=dst, group=self._control, tag=channel)
        self._in_flight.append(_InFlight(dst, channel, sequence, work, tensor))

    def _wire(self, header: Header, dst: int) -> torch.Tensor:
        """The header for ``dst``, with how many of its messages this rank has received."""
        return torch.tensor((*header, self._received[dst]), dtype=torch.int64)

    def _unwire(self, buffer: torch.Tensor, src: int) -> Header:
        """The header ``src`` sent; its acknowledgment releases the messages it has taken."""
        words = buffer.tolist()
        acknowledged = words[5]
        if 0 < acknowledged <= self._sent[src]:
            self._in_flight = [
                s
                for s in self._in_flight
                if not (s.dst == src and s.channel != _COLLECTIVE and s.sequence <= acknowledged)
            ]
        return tuple(words[:5])  # type: ignore[return-value]

    # -- payloads over the backend ------------------------------------------------------------

    def _gather_payloads(self, payload: bytes, lengths: list[int]) -> list[bytes]:
        width = max(lengths)  # every length was checked against max_bytes
        if width == 0:
            return [b""] * self.world_size
        mine = torch.zeros(width, dtype=torch.uint8, device=self._device)
        if payload:
            mine[: len(payload)] = _tensor_of(payload, self._device)
        gathered = [torch.empty(width, dtype=torch.uint8, device=self._device) for _ in range(self.world_size)]
        self._transfer(lambda: dist.all_gather(gathered, mine, async_op=True), "all_gather_bytes")
        return [
            payload if rank == self.rank else _bytes_of(gathered[rank][: lengths[rank]])
            for rank in range(self.world_size)
        ]

    def _broadcast_payload(self, payload: bytes | None, src: int, length: int) -> bytes:
        if payload is not None:
            buffer = _tensor_of(payload, self._device)
        else:
            buffer = torch.empty(length, dtype=torch.uint8, device=self._device)
        self._transfer(lambda: dist.broadcast(buffer, src=src, async_op=True), "broadcast_bytes")
        return payload if payload is not None else _bytes_of(buffer)

    def _transfer(self, start: Callable[[], Any], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            error = _wait(start(), deadline)
        except RuntimeError as exc:
            error = _describe_failure(exc)
        if error is not None:
            raise self._fail(
                TransportError(
                    "timeout",
                    f"the payloads of {what} did not move within {self.timeout:g} s ({error}); every "
                    f"rank had announced itself, so one stopped during the transfer, and "
                    f"{self.backend} does not say which",
                )
            )


class _InFlight:
    """A send gloo has not confirmed, kept (with its tensor) until the receiver has taken it.

    gloo sends wait for the receiver to post its receive, and gloo does not report a finished
    send without a (closing) timed wait, so completion is learned from the protocol: a peer's
    roll-call header for collective ``k`` shows it took this rank's header for ``k - 1``, and
    every header carries how many of this rank's messages the peer has received. A peer that
    lies in that count only stalls this rank's later traffic to that peer.
    """

    __slots__ = ("channel", "dst", "sequence", "tensor", "work")

    def __init__(self, dst: int, channel: int, sequence: int, work: Any, tensor: torch.Tensor) -> None:
        self.dst = dst
        self.channel = channel
        self.sequence = sequence
        self.work = work
        self.tensor = tensor


def _cuda_device(device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device("cuda", torch.cuda.current_device())


def _wait(work: Any, deadline: float) -> str | None:
    """Wait for ``work`` until ``deadline``; ``None`` when it completed, else what went wrong."""
    remaining = max(deadline - time.monotonic(), 0.001)  # a zero timedelta would wait forever
    try:
        if work.wait(timeout=datetime.timedelta(seconds=remaining)) is False:
            return "no answer before the deadline"
    except RuntimeError as exc:  # DistBackendError and gloo's errors derive from RuntimeError
        return _describe_failure(exc)
    return None


def _describe_failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[") and "] " in text:  # drop gloo's "[path/to/file.cc:123] " prefix
        text = text.split("] ", 1)[1]
    lowered = text.lower()
    if "connection closed" in lowered or "connection reset" in lowered or "socket closed" in lowered:
        return f"its connection closed, its process probably died ({text[:160]})"
    if "timed out" in lowered or "timeout" in lowered:
        return f"no answer before the deadline ({text[:160]})"
    return text[:200]


def _tensor_of(payload: bytes, device: torch.device) -> torch.Tensor:
    if not payload:
        return torch.empty(0, dtype=torch.uint8, device=device)
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)


def _bytes_of(tensor: torch.Tensor) -> bytes:
    return tensor.cpu().numpy().tobytes()


# ---------------------------------------------------------------------------------------------
# In process


class InProcessNetwork:
    """``world_size`` peers in one process, each meant to run on its own thread.

    Peers exchange frames through mailboxes guarded by one condition variable. A frame holds
    a header and immutable ``bytes`` (a ``bytearray`` or ``memoryview`` is copied when sent),
    so no peer shares a mutable buffer with another. The protocol, bounds and timeouts are
    those of :class:`DistributedTransport`. A peer that has closed its transport has *left*:
    the others notice at once instead of waiting for the timeout, as gloo peers notice a
    closed connection; frames it posted before leaving can still be received.

    Args:
        world_size: Number of peers.
        timeout: Seconds each step waits for the other peers.
    """

    def __init__(self, world_size: int, *, timeout: float = 60.0) -> None:
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ConfigError(f"world_size={world_size!r} must be a positive integer")
        self.world_size = world_size
        self.timeout = _check_timeout(timeout)
        self._condition = threading.Condition()
        self._mailboxes: dict[tuple[int, int, int], deque[tuple[Header, bytes | None]]] = {}
        self._left: set[int] = set()
        self._transports = [InProcessTransport(self, rank) for rank in range(world_size)]

    def transport(self, rank: int) -> InProcessTransport:
        """The transport of peer ``rank`` (the same object on every call)."""
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise ValueError(f"rank={rank!r} is not a rank of this network (0 to {self.world_size - 1})")
        return self._transports[rank]

    @property
    def transports(self) -> list[InProcessTransport]:
        """Every peer's transport, in rank order."""
        return list(self._transports)

    def _post(self, src: int, dst: int, channel: int, header: Header, payload: bytes | None) -> bool:
        """Queue a frame for ``dst``; ``False`` when ``dst`` has left the network."""
        with self._condition:
            if dst in self._left:
                return False
            self._mailboxes.setdefault((src, dst, channel), deque()).append((header, payload))
            self._condition.notify_all()
            return True

    def _take(
        self, dst: int, sources: Sequence[int], channel: int, deadline: float
    ) -> tuple[dict[int, tuple[Header, bytes | None]], dict[int, str]]:
        """The next frame from each source; also what kept the others (left, or the deadline)."""
        frames: dict[int, tuple[Header, bytes | None]] = {}
        with self._condition:
            while True:
                for src in sources:
                    box = self._mailboxes.get((src, dst, channel))
                    if src not in frames and box:
                        frames[src] = box.popleft()
                waiting = [src for src in sources if src not in frames]
                remaining = deadline - time.monotonic()
                if not waiting or remaining <= 0 or all(src in self._left for src in waiting):
                    break
                self._condition.wait(remaining)
        failures = {
            src: "it left the network" if src in self._left else "no answer before the deadline"
            for src in waiting
        }
        return frames, failures

    def _leave(self, rank: int) -> None:
        with self._condition:
            self._left.add(rank)
            self._condition.notify_all()


class InProcessTransport(_Exchange):
    """One peer of an :class:`InProcessNetwork` (get it with :meth:`InProcessNetwork.transport`)."""

    def __init__(self, network: InProcessNetwork, rank: int) -> None:
        super().__init__(rank, network.world_size, network.timeout)
        self._network = network
        self._payloads: dict[int, bytes | None] = {}
        self._message: tuple[Header, bytes | None] | None = None

    def close(self) -> None:
        """Leave the network: peers waiting on this one stop waiting and name it."""
        if not self._closed:
            self._closed = True
            self._network._leave(self.rank)

    def _roll_call(self, header: Header, payload: bytes | None, what: str) -> dict[int, Header]:
        peers = self._peers()
        for peer in peers:
            self._network._post(self.rank, peer, _COLLECTIVE, header, payload)
        frames, failures = self._network._take(self.rank, peers, _COLLECTIVE, time.monotonic() + self.timeout)
        if failures:
            raise self._missing(failures, what)
        self._payloads = {peer: frame[1] for peer, frame in frames.items()}
        self._payloads[self.rank] = payload
        return {peer: frame[0] for peer, frame in frames.items()}

    def _gather_payloads(self, payload: bytes, lengths: list[int]) -> list[bytes]:
        return [self._payload(rank, lengths[rank]) for rank in range(self.world_size)]

    def _broadcast_payload(self, payload: bytes | None, src: int, length: int) -> bytes:
        return self._payload(src, length)

    def _payload(self, rank: int, length: int) -> bytes:
        payload = self._payloads.pop(rank, None)
        if length == 0 and payload is None:
            return b""
        if payload is None or len(payload) != length:
            got = "none" if payload is None else f"{len(payload)} bytes"
            raise self._fail(
                TransportError("malformed", f"rank {rank} announced {length} bytes but sent {got}", rank=rank)
            )
        return payload

    def _post_message(self, dst: int, header: Header, payload: bytes) -> None:
        if not self._network._post(self.rank, dst, _MESSAGE, header, payload):
            raise self._missing({dst: "it left the network"}, "send_bytes")

    def _receive_header(self, src: int) -> Header:
        frames, failures = self._network._take(self.rank, [src], _MESSAGE, time.monotonic() + self.timeout)
        if failures:
            raise self._missing(failures, "recv_bytes")
        self._message = frames[src]
        return self._message[0]

    def _receive_payload(self, src: int, length: int) -> bytes:
        assert self._message is not None
        payload = self._message[1]
        self._message = None
        if (payload is None and length != 0) or (payload is not None and len(payload) != length):
            reason = f"rank {src} announced {length} bytes but sent {0 if payload is None else len(payload)}"
            self._refused[src] = reason
            raise TransportError("malformed", reason, rank=src)
        return payload or b""


def run_peers(world_size: int, fn: Callable[[Transport], T], *, timeout: float) -> list[T]:
    """Run ``fn`` on every peer of a new :class:`InProcessNetwork`, each on its own thread.

    Each peer's transport is closed when its ``fn`` returns or raises, so the others notice a
    peer that stopped early. Returns the results in rank order. If any peer raised, the
    exception that came first in time is re-raised, with a note naming its rank (and the
    other failed ranks); its ``peer_rank`` attribute is that rank.

    Args:
        world_size: Number of peers.
        fn: What each peer runs, given its transport.
        timeout: Seconds each transport step waits for the other peers.
    """
    network = InProcessNetwork(world_size, timeout=timeout)
    results: list[Any] = [None] * world_size
    errors: list[tuple[int, BaseException]] = []
    lock = threading.Lock()

    def peer(rank: int) -> None:
        transport = network.transport(rank)
        try:
            results[rank] = fn(transport)
        except BaseException as exc:  # re-raised in the caller's thread below
            with lock:
                errors.append((rank, exc))
        finally:
            transport.close()

    threads = [
        threading.Thread(target=peer, args=(rank,), name=f"torchchain-peer-{rank}", daemon=True)
        for rank in range(world_size)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        rank, exc = errors[0]
        others = ", ".join(f"rank {r}: {type(e).__name__}" for r, e in errors[1:])
        note = f"raised by peer rank {rank}" + (f" (then also {others})" if others else "")
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        try:
            exc.peer_rank = rank  # type: ignore[attr-defined]
        except AttributeError:
            pass
        raise exc
    return results


# ---------------------------------------------------------------------------------------------
# Checks shared by both backends


def _as_bytes(data: object) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        raise TypeError("the transport carries bytes, not str: encode the text first")
    try:
        return memoryview(data).tobytes()  # type: ignore[arg-type]  # copies bytearray and views
    except TypeError:
        raise TypeError(f"the transport carries bytes, not {type(data).__name__}") from None


def _bound(max_bytes: object) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ConfigError(f"max_bytes={max_bytes!r} must be a non-negative integer")
    return max_bytes


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"timeout={timeout!r} must be a positive number of seconds")
    return float(timeout)


def _check_lengths(lengths: Mapping[int, int], bound: int) -> None:
    """Raise when a peer announced a negative length or more than ``bound`` bytes."""
    negative = sorted(rank for rank, length in lengths.items() if length < 0)
    if negative:
        raise TransportError(
            "malformed",
            "; ".join(f"rank {rank} announced a negative length ({lengths[rank]})" for rank in negative),
            ranks=negative,
        )
    oversize = sorted(rank for rank, length in lengths.items() if length > bound)
    if oversize:
        raise TransportError(
            "oversize",
            "; ".join(f"rank {rank} announced {lengths[rank]} bytes" for rank in oversize)
            + f", more than max_bytes={bound}",
            ranks=oversize,
        )


def _describe_header(header: Sequence[int]) -> str:
    magic, op, sequence, arg = header[:4]
    if magic != _MAGIC or op not in _OP_NAMES:
        return "a header that is not this transport's"
    if op == _OP_MESSAGE:
        return f"message #{sequence} to rank {arg}"
    name = f"{_OP_NAMES[op]} #{sequence}"
    return f"{name} from rank {arg}" if op == _OP_BROADCAST else name
