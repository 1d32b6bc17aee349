"""The worker processes of ``runtime.executor=processes`` (:mod:`torchchain.runtime.executor`).

A pool of spawned, single-threaded workers, each building the model from a picklable factory
and memory-mapping every client's data from one safetensors file written at the start. Each
round the parent deals the clients to the workers; a worker trains each of its clients as
:func:`~torchchain.runtime.client.train_sequential` does and replies once per client.

Transport, both ways: one ``Connection.send_bytes`` message per task or reply, framed as a
4-byte little-endian header length, a JSON header (ints and strings) and safetensors bytes.
Nothing is pickled after a worker starts, and the parent parses a worker's replies as untrusted
bytes (bounded read, strict JSON, strict safetensors, names, dtypes and shapes checked).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import struct
import tempfile
import time
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file, save_file
from torch import nn

from torchchain.chain.encoding import parse_json_object
from torchchain.data import DataSplit
from torchchain.errors import ConfigError, SerializationError, TorchchainError
from torchchain.runtime.client import LocalTraining, train_sequential, trainable_names
from torchchain.updates.serialize import MAX_HEADER_BYTES, update_from_bytes, update_to_bytes

__all__ = ["TensorSpec", "TrainingPool", "WorkerError", "usable_cores"]


class WorkerError(TorchchainError):
    """A training worker process died, hung, or broke the protocol; the message names the
    worker and the client it was training."""


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_FRAME_HEADER = struct.Struct("<I")

#: Seconds a worker may take to start (import torch, build the model), at least.
_START_TIMEOUT = 300.0

#: A frame's JSON header is refused above this size.
_MAX_HEADER_BYTES = 1 << 20

#: Most characters of a worker's error message that are quoted.
_MAX_ERROR_CHARS = 2000


def _frame(header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor] | None = None) -> bytes:
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return _FRAME_HEADER.pack(len(head)) + head + update_to_bytes(tensors or {})


def _split_frame(frame: bytes, *, what: str) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the safetensors bytes of ``frame``, the header parsed strictly."""
    if len(frame) < _FRAME_HEADER.size:
        raise SerializationError(f"{what}: {len(frame)} bytes is shorter than a frame header")
    (length,) = _FRAME_HEADER.unpack_from(frame)
    if length > min(_MAX_HEADER_BYTES, len(frame) - _FRAME_HEADER.size):
        raise SerializationError(f"{what}: header length {length} is out of bounds")
    start = _FRAME_HEADER.size + length
    header = parse_json_object(frame[_FRAME_HEADER.size : start], what=what, max_bytes=_MAX_HEADER_BYTES, max_depth=4)
    return header, frame[start:]


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSpec:
    """What a worker's model and replies must look like: ``(name, dtype, shape)`` entries."""

    state: tuple[tuple[str, str, tuple[int, ...]], ...]  # the global model, all of it
    trained: tuple[tuple[str, str, tuple[int, ...]], ...]  # parameters that train (momentum buffers)
    frozen: tuple[str, ...]  # parameters with requires_grad=False

    @classmethod
    def of(cls, model: nn.Module, global_state: Mapping[str, torch.Tensor]) -> TensorSpec:
        trained, frozen = trainable_names(model)
        params = dict(model.named_parameters())
        return cls(
            state=tuple((k, _dtype_name(v), tuple(v.shape)) for k, v in sorted(global_state.items())),
            trained=tuple((n, _dtype_name(params[n]), tuple(params[n].shape)) for n in sorted(trained)),
            frozen=tuple(sorted(frozen)),
        )

    @property
    def deltas(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The delta's entries: the state's floating-point tensors, as :func:`compute_delta` keeps them."""
        return {n: (d, s) for n, d, s in self.state if getattr(torch, d).is_floating_point}

    def reply_bytes(self, momentum: bool) -> int:
        """A bound on one client's reply: frame and safetensors headers, delta, momentum buffers."""
        size = sum(math.prod(s) * getattr(torch, d).itemsize for d, s in self.deltas.values())
        if momentum:
            size += sum(math.prod(s) * getattr(torch, d).itemsize for _, d, s in self.trained)
        return _FRAME_HEADER.size + _MAX_HEADER_BYTES + 8 + MAX_HEADER_BYTES + size


def _check_tensors(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[str, tuple[int, ...]]], *, what: str, exact: bool
) -> None:
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors)) if exact else []
    if unknown or missing:
        raise SerializationError(f"{what}: unexpected tensors {unknown[:3]} / missing tensors {missing[:3]}")
    for name, tensor in tensors.items():
        dtype, shape = expected[name]
        if _dtype_name(tensor) != dtype or tuple(tensor.shape) != shape:
            raise SerializationError(
                f"{what}: {name} is {_dtype_name(tensor)} {tuple(tensor.shape)}, the model's is {dtype} {shape}"
            )


def _read_reply(
    frame: bytes, spec: TensorSpec, *, client: int, momentum: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """One client's delta and momentum buffers from a worker's reply for round slot ``client``.

    Raises:
        SerializationError: The reply is not a frame, names another slot, holds tensors of other
            names, dtypes or shapes than the model's, or lacks a delta tensor.
        WorkerError: The reply is the worker's report of an error.
    """
    header, payload = _split_frame(frame, what="worker reply")
    if "error" in header:
        raise WorkerError(str(header["error"])[:_MAX_ERROR_CHARS])
    if header != {"client": client}:
        raise SerializationError(f"worker reply: expected the header {{'client': {client}}}, got {str(header)[:200]}")
    tensors = update_from_bytes(payload, max_bytes=len(payload))
    deltas = {n[len("delta/") :]: t for n, t in tensors.items() if n.startswith("delta/")}
    buffers = {n[len("momentum/") :]: t for n, t in tensors.items() if n.startswith("momentum/")}
    if len(deltas) + len(buffers) != len(tensors) or (buffers and not momentum):
        raise SerializationError(f"worker reply: unexpected tensors {sorted(tensors)[:3]}")
    _check_tensors(deltas, spec.deltas, what="worker reply delta", exact=True)
    _check_tensors(buffers, {n: (d, s) for n, d, s in spec.trained}, what="worker reply momentum buffers", exact=False)
    return deltas, buffers if momentum else None


def _deal(weights: Sequence[int], workers: int) -> list[list[int]]:
    """Clients (by position) dealt to ``workers``: heaviest first, each to the least loaded worker."""
    loads = [0] * workers
    dealt: list[list[int]] = [[] for _ in range(workers)]
    for k in sorted(range(len(weights)), key=lambda k: (-weights[k], k)):
        w = min(range(workers), key=lambda w: (loads[w], w))
        dealt[w].append(k)
        loads[w] += weights[k]
    return [sorted(slots) for slots in dealt]


def _work(data: DataSplit, settings: LocalTraining) -> int:
    """Samples a client's training visits: what its share of a round's time goes by."""
    if settings.steps is not None:
        return settings.steps * min(settings.batch_size, len(data))
    return settings.epochs * len(data)


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _stop(processes: Sequence[BaseProcess], connections: Sequence[Connection], folder: str | None) -> None:
    """Ask every worker to stop, then terminate and kill what still runs; remove ``folder``.

    Also the pool's finalizer, so it holds no reference to the pool.
    """
    for conn in connections:
        try:
            conn.send_bytes(_frame({"op": "stop"}))
        except (OSError, ValueError):
            pass  # already gone
    deadline = time.monotonic() + 5.0
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0.0))
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(2.0)
        if process.is_alive():
            process.kill()
            process.join(2.0)
    for conn in connections:
        conn.close()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


class TrainingPool:
    """``size`` single-threaded worker processes, each holding the model and every client's data.

    The clients' data are written once to a safetensors file that every worker memory-maps (the
    file is removed as soon as all workers have it open, so nothing is left on disk).
    """

    def __init__(
        self,
        *,
        size: int,
        model_factory: Callable[[], nn.Module],
        spec: TensorSpec,
        client_data: Mapping[int, DataSplit],
        timeout: float,
    ) -> None:
        self.spec = spec
        self.size = size
        self.timeout = timeout
        self._shared = dict(client_data)
        try:
            ForkingPickler.dumps(model_factory)  # what starting a worker does with it
        except Exception as exc:  # noqa: BLE001 - whatever pickle raises, the factory is the cause
            raise ConfigError(
                f"the model factory cannot be sent to a worker process ({type(exc).__name__}: {exc}); "
                "give a picklable one, e.g. functools.partial of an importable class"
            ) from None
        context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._connections: list[Connection] = []
        folder = tempfile.mkdtemp(prefix="torchchain-clients-")
        self._finalizer = weakref.finalize(self, _stop, self._processes, self._connections, folder)
        try:
            path = os.path.join(folder, "clients.safetensors")
            save_file(_shared_tensors(self._shared), path)
            for index in range(size):
                parent, child = context.Pipe(duplex=True)
                process = context.Process(
                    target=_worker_main, args=(child, index, model_factory, path),
                    name=f"torchchain-trainer-{index}", daemon=True,
                )
                self._connections.append(parent)
                try:
                    process.start()
                finally:
                    child.close()
                self._processes.append(process)
            self._await_ready()
        except BaseException:
            self.close(at_once=True)
            raise
        shutil.rmtree(folder, ignore_errors=True)  # every worker has mapped the file

    def close(self, *, at_once: bool = False) -> None:
        """Stop every worker (idempotent): ask them to, or with ``at_once`` terminate them."""
        if at_once:
            for process in self._processes:
                if process.is_alive():
                    process.terminate()
        self._finalizer()

    def _await_ready(self) -> None:
        """Wait for every worker's model; refuse a factory that builds another architecture."""
        expected = {n: [d, list(s)] for n, d, s in self.spec.state}
        pending = set(range(self.size))
        deadline = time.monotonic() + max(self.timeout, _START_TIMEOUT)
        while pending:
            w, frame = self._receive(pending, {w: deadline for w in pending}, doing=lambda w: "starting")
            header, _ = _split_frame(frame, what=f"worker {w}'s first message")
            if "error" in header:
                raise WorkerError(
                    f"training worker {w} could not start: {str(header['error'])[:_MAX_ERROR_CHARS]}"
                )
            if header.get("ready") is not True:
                raise WorkerError(f"training worker {w} sent {str(header)[:200]} instead of its model")
            if header.get("state") != expected:
                raise ConfigError(
                    "runtime.executor=processes: the model factory builds another architecture than the run's model "
                    "(state_dict names, dtypes or shapes differ); give a factory that builds the run's model"
                )
            pending.discard(w)

    def _receive(
        self,
        pending: set[int],
        deadlines: Mapping[int, float],
        *,
        doing: Callable[[int], str],
        limits: Mapping[int, int] | None = None,
    ) -> tuple[int, bytes]:
        """The next message of any worker in ``pending``, read within ``limits`` bytes.

        Raises:
            WorkerError: A pending worker died, passed its deadline, or sent a longer message.
        """
        limit = _FRAME_HEADER.size + _MAX_HEADER_BYTES
        while True:
            now = time.monotonic()
            late = [w for w in pending if deadlines[w] <= now]
            if late:
                w = late[0]
                raise WorkerError(
                    f"training worker {w} (pid {self._processes[w].pid}) sent nothing in time while {doing(w)} "
                    f"(it may take {self.timeout:g} s per client); it is taken as hung and every worker was stopped"
                )
            conns = {self._connections[w]: w for w in pending}
            sentinels = {self._processes[w].sentinel: w for w in pending}
            ready = wait(list(conns) + list(sentinels), timeout=max(min(deadlines[w] for w in pending) - now, 0.0))
            for conn in [r for r in ready if r in conns]:
                w = conns[conn]
                try:
                    return w, conn.recv_bytes(maxlength=limit if limits is None else limits[w])
                except EOFError:
                    raise self._died(w, doing(w)) from None
                except OSError as exc:  # "bad message length": longer than any honest reply
                    raise WorkerError(
                        f"training worker {w} sent a message over the limit of its reply while {doing(w)} ({exc}); "
                        "every worker was stopped"
                    ) from None
            for sentinel in [r for r in ready if r in sentinels]:
                w = sentinels[sentinel]
                if not self._connections[w].poll():  # else: read what it sent before it ended
                    raise self._died(w, doing(w))

    def _died(self, w: int, doing: str) -> WorkerError:
        process = self._processes[w]
        process.join(1.0)
        if process.exitcode is None:
            return WorkerError(f"training worker {w} (pid {process.pid}) closed its connection while {doing}")
        hint = ""
        if process.exitcode == -signal.SIGKILL:
            hint = (
                " A worker killed by SIGKILL is often out of memory: lower runtime.workers, or use "
                "runtime.executor=sequential."
            )
        elif doing == "starting":
            hint = (
                " Its traceback is above. A worker imports the main script, so a script that starts a run must do it "
                'under if __name__ == "__main__": (train.py does).'
            )
        return WorkerError(
            f"training worker {w} (pid {process.pid}) {_exit_reason(process.exitcode)} while {doing}; every worker "
            f"was stopped.{hint}"
        )

    def train(
        self,
        global_state: Mapping[str, torch.Tensor],
        datas: Sequence[DataSplit],
        settings: LocalTraining,
        *,
        generators: Sequence[torch.Generator],
        momentum_buffers: Sequence[dict[str, torch.Tensor] | None],
        clients: Sequence[int] | None,
    ) -> list[dict[str, torch.Tensor]]:
        """One round: deal the clients to the workers, send each its task, gather the replies."""
        if clients is not None:
            names = [f"client {c}" for c in clients]
        else:
            names = [f"the round's client #{k}" for k in range(len(datas))]
        momentum = bool(settings.momentum)
        dealt = [slots for slots in _deal([_work(d, settings) for d in datas], min(self.size, len(datas))) if slots]
        common = {f"global/{k}": v for k, v in global_state.items()}
        for w, slots in enumerate(dealt):
            tasks, tensors = [], dict(common)
            for k in slots:
                key = None if clients is None else clients[k]
                shared = key is not None and self._shared.get(key) is datas[k]
                tasks.append({"slot": k, "data": key if shared else None, "momentum": momentum and momentum_buffers[k] is not None})
                tensors[f"generator/{k}"] = generators[k].get_state()
                if not shared:
                    tensors[f"features/{k}"] = datas[k].features
                    tensors[f"targets/{k}"] = datas[k].targets
                if tasks[-1]["momentum"]:
                    tensors.update({f"momentum/{k}/{n}": b for n, b in momentum_buffers[k].items()})
            header = {"op": "train", "settings": dataclasses.asdict(settings), "frozen": list(self.spec.frozen), "clients": tasks}
            try:
                self._connections[w].send_bytes(_frame(header, tensors))
            except OSError:
                raise self._died(w, f"being sent {names[slots[0]]}") from None

        deltas: list[dict[str, torch.Tensor] | None] = [None] * len(datas)
        queues = {w: list(slots) for w, slots in enumerate(dealt)}
        deadlines = {w: time.monotonic() + self.timeout for w in queues}
        limits = {w: self.spec.reply_bytes(momentum) for w in queues}
        while queues:
            w, frame = self._receive(
                set(queues), deadlines, limits=limits, doing=lambda w: f"training {names[queues[w][0]]}"
            )
            k = queues[w][0]
            try:
                delta, buffers = _read_reply(frame, self.spec, client=k, momentum=momentum and momentum_buffers[k] is not None)
            except (SerializationError, WorkerError) as exc:
                raise WorkerError(f"training worker {w} failed on {names[k]}: {exc}") from None
            deltas[k] = delta
            if buffers is not None:
                momentum_buffers[k].update(buffers)
            queues[w].pop(0)
            if not queues[w]:
                del queues[w]
            else:
                deadlines[w] = time.monotonic() + self.timeout
        return deltas  # type: ignore[return-value]  # every slot filled


def _shared_tensors(client_data: Mapping[int, DataSplit]) -> dict[str, torch.Tensor]:
    """Every client's data under ``features/<index>`` and ``targets/<index>``, as standalone tensors."""
    seen: set[int] = set()

    def standalone(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().cpu().contiguous()
        # safetensors refuses tensors that share storage: copy views and repeats.
        whole = t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
        if not whole or t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        return t

    out = {}
    for index, data in client_data.items():
        out[f"features/{index}"] = standalone(data.features)
        out[f"targets/{index}"] = standalone(data.targets)
    return out


def _worker_main(conn: Connection, index: int, model_factory: Callable[[], nn.Module], data_path: str) -> None:
    """The body of training worker ``index``: build the model, map the clients' data, then train
    the clients of each task it is sent until told to stop or the parent goes away."""
    try:
        torch.set_num_threads(1)
        model = model_factory()
        if not isinstance(model, nn.Module):
            raise TypeError(f"the model factory returned a {type(model).__name__}, not a torch.nn.Module")
        shared = load_file(data_path)  # memory-mapped: the page cache holds one copy for all workers
        state = {k: [_dtype_name(v), list(v.shape)] for k, v in sorted(model.state_dict().items())}
        conn.send_bytes(_frame({"ready": True, "state": state}))
        while True:
            try:
                frame = conn.recv_bytes()
            except EOFError:
                return  # the parent is gone
            header, payload = _split_frame(frame, what="task")
            if header.get("op") == "stop":
                return
            _train_task(conn, model, shared, header, safetensors_load(payload))
    except (KeyboardInterrupt, ConnectionError):
        return  # interrupted with the parent, or the parent is gone
    except BaseException as exc:  # reported to the parent, which names the worker and client
        traceback.print_exc()
        try:
            conn.send_bytes(_frame({"error": f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]}))
        except OSError:
            pass


def _train_task(
    conn: Connection, model: nn.Module, shared: Mapping[str, torch.Tensor], header: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
) -> None:
    """Train each client of one task as :func:`train_sequential` does; reply once per client."""
    settings = LocalTraining(**header["settings"])
    frozen = set(header["frozen"])
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    global_state = {n[len("global/") :]: t for n, t in tensors.items() if n.startswith("global/")}
    cpu = torch.device("cpu")
    for task in header["clients"]:
        slot, key = task["slot"], task["data"]
        if key is None:
            data = DataSplit(features=tensors[f"features/{slot}"], targets=tensors[f"targets/{slot}"])
        else:
            data = DataSplit(features=shared[f"features/{key}"], targets=shared[f"targets/{key}"])
        state = tensors[f"generator/{slot}"]
        generator = torch.Generator().set_state(state)
        # Layers that draw from torch's global stream (dropout) get one per client, fixed by its
        # generator, so the result does not depend on which worker trains the client.
        torch.manual_seed(int.from_bytes(hashlib.sha256(state.numpy().tobytes()).digest()[:8], "big") >> 1)
        prefix = f"momentum/{slot}/"
        buffers = {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)} if task["momentum"] else None
        (delta,) = train_sequential(
            model, global_state, [data], settings, device=cpu, generators=[generator], momentum_buffers=[buffers]
        )
        out = {f"delta/{n}": t for n, t in delta.items()}
        out.update({f"momentum/{n}": t for n, t in (buffers or {}).items()})
        conn.send_bytes(_frame({"client": slot}, out))
