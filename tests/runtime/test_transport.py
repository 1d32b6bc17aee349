"""Peers exchange exact bytes, refuse oversize announcements before allocating, and name the
peer that died or stalled: in process (threads) and over real gloo processes on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from spawning import free_port, run_ranks
from torchchain.errors import ConfigError, TorchchainError
from torchchain.runtime import transport as transport_module
from torchchain.runtime.transport import (
    DistributedTransport,
    InProcessNetwork,
    Transport,
    TransportError,
    run_peers,
)

MIB = 1 << 20
HUGE = 100 << 30  # 100 GiB: announced, never allocated


def _blob(seed: int, size: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (size,), dtype=torch.uint8, generator=generator).numpy().tobytes()


def _catch(call):
    """Run ``call``; the TransportError it raised, or fail."""
    try:
        call()
    except TransportError as error:
        return error
    raise AssertionError("no TransportError was raised")


# ---------------------------------------------------------------------------------------------
# In process


def test_in_process_round_trip_is_exact():
    world = 4
    contributions = [b"zero", b"", _blob(2, MIB), bytes(range(256))]
    big = _blob(7, MIB)

    def peer(t: Transport):
        gathered = t.all_gather_bytes(contributions[t.rank], max_bytes=MIB)
        from_three = t.broadcast_bytes(big if t.rank == 3 else None, src=3, max_bytes=MIB)
        empty = t.broadcast_bytes(b"" if t.rank == 0 else None, src=0, max_bytes=0)
        # Point to point, different bytes to each peer (equivocation is expressible); every
        # peer sends before anyone receives.
        for dst in range(world):
            if dst != t.rank:
                t.send_bytes(f"{t.rank}->{dst}".encode(), dst=dst)
                t.send_bytes(b"" if dst % 2 else big, dst=dst)
        received = {}
        for src in range(world):
            if src != t.rank:
                received[src] = (t.recv_bytes(src=src, max_bytes=MIB), t.recv_bytes(src=src, max_bytes=MIB))
        t.barrier()
        return gathered, from_three, empty, received

    results = run_peers(world, peer, timeout=10)
    for rank, (gathered, from_three, empty, received) in enumerate(results):
        assert gathered == contributions
        assert from_three == big and empty == b""
        for src, (text, body) in received.items():
            assert text == f"{src}->{rank}".encode()
            assert body == (b"" if rank % 2 else big)


def _expected_traffic(rank: int, world: int = 3) -> list[int]:
    """``[bytes_sent, bytes_received]`` of ``rank`` after the exchange both backends run below:
    48 bytes a header, all-gathers padded to the longest contribution."""
    header, others = 48, world - 1
    sent = received = others * (header + MIB)  # all_gather of b"zero", b"", 1 MiB
    sent += others * (header + (MIB if rank == 1 else 0))  # broadcast of 1 MiB from rank 1
    received += others * header + (0 if rank == 1 else MIB)
    sent += others * header  # empty broadcast from rank 0
    received += others * header
    for peer in range(world):  # "<src>-><dst>", then nothing to rank 0 and 512 KiB to the others
        if peer != rank:
            sent += 2 * header + 4 + (0 if peer == 0 else MIB // 2)
            received += 2 * header + 4 + (0 if rank == 0 else MIB // 2)
    sent += others * header  # barrier
    received += others * header
    return [sent, received]


def test_in_process_traffic_is_counted_as_the_wire_protocol_moves_it():
    world = 3

    def peer(t: Transport):
        assert (t.bytes_sent, t.bytes_received) == (0, 0)
        t.all_gather_bytes([b"zero", b"", _blob(2, MIB)][t.rank], max_bytes=2 * MIB)
        t.broadcast_bytes(_blob(9, MIB) if t.rank == 1 else None, src=1, max_bytes=MIB)
        t.broadcast_bytes(b"" if t.rank == 0 else None, src=0, max_bytes=0)
        for dst in range(world):
            if dst != t.rank:
                t.send_bytes(f"{t.rank}->{dst}".encode(), dst=dst)
                t.send_bytes(b"" if dst == 0 else _blob(t.rank, MIB // 2), dst=dst)
        for src in range(world):
            if src != t.rank:
                t.recv_bytes(src=src, max_bytes=MIB)
                t.recv_bytes(src=src, max_bytes=MIB)
        t.barrier()
        counted = [t.bytes_sent, t.bytes_received]
        _catch(lambda: t.all_gather_bytes(b"x" * (65 if t.rank == 2 else 1), max_bytes=64))
        return counted, [t.bytes_sent, t.bytes_received]

    for rank, (counted, after_refusal) in enumerate(run_peers(world, peer, timeout=10)):
        assert counted == after_refusal == _expected_traffic(rank)  # a refused call counts nothing


def test_in_process_messages_are_copies():
    def peer(t: Transport):
        if t.rank == 0:
            buffer = bytearray(b"original")
            t.send_bytes(buffer, dst=1)
            gathered = t.all_gather_bytes(buffer, max_bytes=64)
            buffer[:] = b"tampered"  # the sender changes its buffer after sending
            t.barrier()
            return gathered
        gathered = t.all_gather_bytes(b"other", max_bytes=64)
        t.barrier()
        return gathered, t.recv_bytes(src=0, max_bytes=64)  # read after the sender's change

    by_sender, (by_receiver, message) = run_peers(2, peer, timeout=10)
    assert by_sender == [b"original", b"other"] and by_receiver == [b"original", b"other"]
    assert message == b"original"
    assert all(type(part) is bytes for part in [*by_sender, *by_receiver, message])


def test_in_process_oversize_is_refused_by_every_peer_and_transport_stays_usable():
    def peer(t: Transport):
        data = b"x" * (65 if t.rank == 2 else 10)
        error = _catch(lambda: t.all_gather_bytes(data, max_bytes=64))
        again = t.all_gather_bytes(bytes([t.rank]), max_bytes=64)
        source = _catch(lambda: t.broadcast_bytes(b"y" * 65 if t.rank == 1 else None, src=1, max_bytes=64))
        return error, again, source

    for error, again, source in run_peers(3, peer, timeout=10):
        assert (error.code, error.rank, error.ranks) == ("oversize", 2, (2,))
        assert "rank 2 announced 65 bytes" in str(error) and isinstance(error, TorchchainError)
        assert again == [b"\x00", b"\x01", b"\x02"]
        assert (source.code, source.rank) == ("oversize", 1)


def test_in_process_huge_announcement_allocates_nothing():
    network = InProcessNetwork(2, timeout=5)
    honest, liar = network.transport(0), network.transport(1)
    # A modified peer announces 100 GiB and sends nothing.
    forged = (transport_module._MAGIC, transport_module._OP_MESSAGE, 1, 0, HUGE)
    network._post(1, 0, transport_module._MESSAGE, forged, None)
    tracemalloc.start()
    try:
        error = _catch(lambda: honest.recv_bytes(src=1, max_bytes=MIB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (error.code, error.rank) == ("oversize", 1)
    assert f"{HUGE} bytes" in str(error)
    assert peak < MIB
    # The channel from the liar is refused from then on; the honest peer can still send to it.
    liar.send_bytes(b"late", dst=0)
    refused = _catch(lambda: honest.recv_bytes(src=1, max_bytes=MIB))
    assert (refused.code, refused.rank) == ("closed", 1)
    honest.send_bytes(b"fine", dst=1)
    assert liar.recv_bytes(src=0, max_bytes=8) == b"fine"


def test_in_process_negative_or_lying_lengths_are_malformed():
    network = InProcessNetwork(2, timeout=5)
    honest = network.transport(0)
    magic, message = transport_module._MAGIC, transport_module._OP_MESSAGE
    network._post(1, 0, transport_module._MESSAGE, (magic, message, 1, 0, -5), None)
    error = _catch(lambda: honest.recv_bytes(src=1, max_bytes=MIB))
    assert (error.code, error.rank) == ("malformed", 1) and "negative" in str(error)

    network = InProcessNetwork(2, timeout=5)
    honest = network.transport(0)
    network._post(1, 0, transport_module._MESSAGE, (magic, message, 1, 0, 3), b"longer than announced")
    error = _catch(lambda: honest.recv_bytes(src=1, max_bytes=MIB))
    assert (error.code, error.rank) == ("malformed", 1)


def test_in_process_stalled_peer_is_named_within_the_timeout():
    timeout = 0.6
    gave_up = threading.Semaphore(0)

    def peer(t: Transport):
        if t.rank == 3:  # alive, but never joins the collective: waits for the others to give up
            for _ in range(3):
                gave_up.acquire(timeout=30)
            return None
        start = time.monotonic()
        error = _catch(lambda: t.all_gather_bytes(b"hello", max_bytes=64))
        gave_up.release()
        return error, time.monotonic() - start

    results = run_peers(4, peer, timeout=timeout)
    for error, elapsed in results[:3]:
        assert (error.code, error.rank, error.ranks) == ("timeout", 3, (3,))
        assert "rank 3 did not answer all_gather_bytes within 0.6 s" in str(error)
        assert "no answer before the deadline" in str(error)
        assert timeout - 0.05 <= elapsed < timeout + 2


def test_in_process_peer_that_leaves_is_named_at_once():
    def peer(t: Transport):
        t.barrier()
        if t.rank == 1:
            return None  # returns early: its transport closes, as a dead process's connections do
        start = time.monotonic()
        error = _catch(lambda: t.all_gather_bytes(b"hello", max_bytes=64))
        late = _catch(lambda: t.barrier())
        return error, time.monotonic() - start, late

    for rank, result in enumerate(run_peers(3, peer, timeout=20)):
        if rank == 1:
            continue
        error, elapsed, late = result
        assert (error.code, error.ranks) == ("timeout", (1,)) and "left the network" in str(error)
        assert elapsed < 5  # far below the 20 s timeout
        assert (late.code, late.ranks) == ("closed", (1,))


def test_in_process_recv_from_silent_peer_times_out_naming_it():
    network = InProcessNetwork(3, timeout=0.3)
    start = time.monotonic()
    error = _catch(lambda: network.transport(0).recv_bytes(src=2, max_bytes=64))
    assert (error.code, error.rank) == ("timeout", 2) and 0.25 <= time.monotonic() - start < 2
    after = _catch(lambda: network.transport(0).send_bytes(b"x", dst=1))
    assert after.code == "closed"


def test_in_process_peers_out_of_step_are_malformed():
    def peer(t: Transport):
        if t.rank == 2:
            return _catch(lambda: t.broadcast_bytes(b"z", src=2, max_bytes=64))
        return _catch(lambda: t.all_gather_bytes(b"a", max_bytes=64))

    errors = run_peers(3, peer, timeout=5)
    assert (errors[0].code, errors[0].ranks) == ("malformed", (2,))
    assert "rank 2 sent broadcast_bytes #1 from rank 2" in str(errors[0])
    assert (errors[2].code, errors[2].ranks) == ("malformed", (0, 1))


def test_closed_transport_refuses_calls():
    network = InProcessNetwork(2, timeout=1)
    with network.transport(0) as t:
        pass
    for call in (
        lambda: t.all_gather_bytes(b"", max_bytes=1),
        lambda: t.broadcast_bytes(b"", src=0, max_bytes=1),
        lambda: t.send_bytes(b"", dst=1),
        lambda: t.recv_bytes(src=1, max_bytes=1),
        t.barrier,
    ):
        assert _catch(call).code == "closed"
    t.close()  # idempotent


def test_bad_arguments_are_refused_before_anything_is_sent():
    network = InProcessNetwork(2, timeout=1)
    t = network.transport(0)
    with pytest.raises(ConfigError):
        t.all_gather_bytes(b"", max_bytes=-1)
    with pytest.raises(ConfigError):
        t.recv_bytes(src=1, max_bytes=1.5)
    with pytest.raises(ValueError):
        t.send_bytes(b"x", dst=0)  # itself
    with pytest.raises(ValueError):
        t.recv_bytes(src=2, max_bytes=1)
    with pytest.raises(TypeError):
        t.send_bytes("text", dst=1)
    with pytest.raises(TypeError):
        t.send_bytes(5, dst=1)
    with pytest.raises(ValueError):
        t.broadcast_bytes(None, src=0, max_bytes=1)
    with pytest.raises(ConfigError):
        InProcessNetwork(0)
    with pytest.raises(ConfigError):
        InProcessNetwork(2, timeout=0)
    assert t._sequence == 0 and t._failure is None and t._sent == [0, 0]  # nothing was sent


def test_single_peer_needs_no_one():
    def alone(t: Transport):
        return t.all_gather_bytes(b"a", max_bytes=1), t.broadcast_bytes(b"b", src=0, max_bytes=1), t.barrier()

    assert run_peers(1, alone, timeout=1) == [([b"a"], b"b", None)]


def test_run_peers_reraises_the_first_failure_naming_its_rank():
    class Boom(RuntimeError):
        pass

    def peer(t: Transport):
        if t.rank == 1:
            raise Boom("rank 1 broke")
        t.barrier()  # the others notice rank 1 left

    with pytest.raises(Boom) as info:
        run_peers(3, peer, timeout=20)
    assert info.value.peer_rank == 1
    assert any("raised by peer rank 1" in note for note in getattr(info.value, "__notes__", []))


def test_run_peers_threads_are_named_and_results_in_rank_order():
    assert run_peers(5, lambda t: (t.rank, threading.current_thread().name), timeout=1) == [
        (rank, f"torchchain-peer-{rank}") for rank in range(5)
    ]


def test_distributed_transport_needs_a_group_or_torchrun_variables(monkeypatch):
    assert not torch.distributed.is_initialized()
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        DistributedTransport(timeout=1, backend="gloo")
    with pytest.raises(ConfigError, match="mpi"):
        DistributedTransport(timeout=1, backend="mpi")
    with pytest.raises(ConfigError, match="timeout"):
        DistributedTransport(timeout=0)


def test_source_uses_no_object_collectives_and_no_pickle():
    source = Path(transport_module.__file__).read_text()
    assert not re.search(r"_object\s*\(", source)
    assert not re.search(r"^\s*(import|from)\s+[\w.]*pickle", source, re.MULTILINE)
    assert "pickle." not in source and "torch.load" not in source


# ---------------------------------------------------------------------------------------------
# Real torch.distributed (gloo) processes on loopback

WORLD = 3


def _error(error: TransportError, start: float) -> dict:
    return {
        "code": error.code,
        "rank": error.rank,
        "ranks": list(error.ranks),
        "elapsed": time.monotonic() - start,
        "text": str(error),
    }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _scenario_exchange(t: DistributedTransport, record: dict, out_dir: Path) -> None:
    rank = t.rank
    contributions = [b"zero", b"", _blob(2, MIB)]
    record["gather"] = [_sha(b) for b in t.all_gather_bytes(contributions[rank], max_bytes=2 * MIB)]
    record["broadcast"] = _sha(t.broadcast_bytes(_blob(9, MIB) if rank == 1 else None, src=1, max_bytes=MIB))
    record["empty_broadcast"] = t.broadcast_bytes(b"" if rank == 0 else None, src=0, max_bytes=0).hex()
    for dst in range(WORLD):  # different bytes to each peer, all sent before anything is received
        if dst != rank:
            t.send_bytes(f"{rank}->{dst}".encode(), dst=dst)
            t.send_bytes(b"" if dst == 0 else _blob(rank, MIB // 2), dst=dst)
    record["p2p"] = {}
    for src in range(WORLD):
        if src != rank:
            text = t.recv_bytes(src=src, max_bytes=MIB).decode()
            record["p2p"][str(src)] = [text, _sha(t.recv_bytes(src=src, max_bytes=MIB))]
    t.barrier()
    record["traffic"] = [t.bytes_sent, t.bytes_received]

    # An honest but oversize contribution: every rank, rank 2 included, refuses it.
    start = time.monotonic()
    data = b"x" * (65 if rank == 2 else 1)
    record["oversize"] = _error(_catch(lambda: t.all_gather_bytes(data, max_bytes=64)), start)
    # A modified rank 2 announces 100 GiB in a collective, then in a message to rank 0.
    if rank == 2:
        t._collective(transport_module._OP_ALL_GATHER, 0, HUGE, None)
        t._sent[0] += 1
        t._post_message(0, (transport_module._MAGIC, transport_module._OP_MESSAGE, t._sent[0], 0, HUGE), b"")
    else:
        start = time.monotonic()
        record["huge_gather"] = _error(_catch(lambda: t.all_gather_bytes(b"ok", max_bytes=MIB)), start)
    if rank == 0:
        start = time.monotonic()
        record["huge_message"] = _error(_catch(lambda: t.recv_bytes(src=2, max_bytes=MIB)), start)
        record["refused"] = _error(_catch(lambda: t.recv_bytes(src=2, max_bytes=MIB)), start)
    # The transport is still usable after the refusals.
    record["after"] = [b.decode() for b in t.all_gather_bytes(f"after {rank}".encode(), max_bytes=64)]
    t.barrier()
    # Sends the peers have acknowledged are released: only the last barrier's headers (and
    # the forged message rank 0 refused) are still held.
    record["in_flight"] = len(t._in_flight)
    import resource  # POSIX only, like these tests

    record["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scenario_dead(t: DistributedTransport, record: dict, out_dir: Path) -> None:
    t.barrier()
    if t.rank == 1:
        time.sleep(0.5)
        os._exit(0)  # dies without closing anything
    start = time.monotonic()
    record["error"] = _error(_catch(lambda: t.all_gather_bytes(b"hello", max_bytes=64)), start)
    record["after"] = _error(_catch(t.barrier), start)


def _scenario_stall(t: DistributedTransport, record: dict, out_dir: Path) -> None:
    t.barrier()
    if t.rank == 1:  # alive, but never joins the all-gather: waits for the others to give up
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all((out_dir / f"stall-{r}.json").exists() for r in (0, 2)):
            time.sleep(0.05)
        return
    start = time.monotonic()
    record["error"] = _error(_catch(lambda: t.all_gather_bytes(b"hello", max_bytes=64)), start)


_SCENARIOS = {"exchange": _scenario_exchange, "dead": _scenario_dead, "stall": _scenario_stall}


def _worker(rank: int, port: int, scenario: str, out_dir: str, timeout: float) -> None:
    """One rank, in its own spawned process: writes what it saw to ``out_dir``."""
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    record: dict = {"rank": rank}
    t = DistributedTransport(timeout=timeout, backend="gloo")
    try:
        _SCENARIOS[scenario](t, record, Path(out_dir))
    finally:
        t.close()
    Path(out_dir, f"{scenario}-{rank}.json").write_text(json.dumps(record))


def _spawn(tmp_path: Path, scenario: str, *, timeout: float, limit: float = 120.0) -> dict[int, dict]:
    """Run ``scenario`` on WORLD gloo processes; their records by rank. Fails, never hangs."""
    run_ranks(
        _worker, (free_port(), scenario, str(tmp_path), timeout), nprocs=WORLD, limit=limit,
        preload="torchchain.runtime.transport", what=f"scenario {scenario!r}",
    )
    records = {}
    for rank in range(WORLD):
        path = tmp_path / f"{scenario}-{rank}.json"
        if path.exists():
            records[rank] = json.loads(path.read_text())
    return records


@pytest.mark.distributed
def test_gloo_processes_exchange_identical_bytes_and_refuse_oversize(tmp_path):
    records = _spawn(tmp_path, "exchange", timeout=10)
    assert sorted(records) == [0, 1, 2]
    contributions = [b"zero", b"", _blob(2, MIB)]
    for rank, record in records.items():
        assert record["gather"] == [_sha(b) for b in contributions]
        assert record["broadcast"] == _sha(_blob(9, MIB))
        assert record["empty_broadcast"] == ""
        for src, (text, body) in record["p2p"].items():
            assert text == f"{src}->{rank}"
            assert body == _sha(b"" if rank == 0 else _blob(int(src), MIB // 2))
        oversize = record["oversize"]
        assert (oversize["code"], oversize["rank"], oversize["ranks"]) == ("oversize", 2, [2])
        assert record["after"] == [f"after {r}" for r in range(WORLD)]
        assert record["maxrss_mib"] < 2048  # nothing near 100 GiB was ever allocated
        assert record["in_flight"] == WORLD - 1 + (rank == 2)
        assert record["traffic"] == _expected_traffic(rank)
    for rank in (0, 1):
        huge = records[rank]["huge_gather"]
        assert (huge["code"], huge["rank"]) == ("oversize", 2) and str(HUGE) in huge["text"]
    assert (records[0]["huge_message"]["code"], records[0]["huge_message"]["rank"]) == ("oversize", 2)
    assert (records[0]["refused"]["code"], records[0]["refused"]["rank"]) == ("closed", 2)


@pytest.mark.distributed
def test_gloo_dead_process_is_named_by_the_survivors(tmp_path):
    timeout = 8
    records = _spawn(tmp_path, "dead", timeout=timeout)
    assert sorted(records) == [0, 2]  # rank 1 died without writing anything
    for record in records.values():
        error = record["error"]
        assert (error["code"], error["rank"], error["ranks"]) == ("timeout", 1, [1])
        assert "rank 1 did not answer all_gather_bytes" in error["text"]
        assert error["elapsed"] < timeout  # a closed connection is noticed before the timeout
        assert record["after"]["code"] == "closed"


@pytest.mark.distributed
def test_gloo_stalled_process_is_named_within_the_timeout(tmp_path):
    timeout = 2.0
    records = _spawn(tmp_path, "stall", timeout=timeout)
    assert sorted(records) == [0, 1, 2]
    for rank in (0, 2):
        error = records[rank]["error"]
        assert (error["code"], error["rank"], error["ranks"]) == ("timeout", 1, [1])
        assert timeout - 0.1 <= error["elapsed"] < timeout + 3
