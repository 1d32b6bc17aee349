"""How a round's local training runs: one client after another, all at once, or on worker processes.

``runtime.executor`` (a local setting: it is not recorded in the genesis block and may change
on resume) picks one of:

``sequential``
    Each sampled client loads the global model into the shared module and trains it with
    :func:`~torchchain.runtime.client.train_local`, one after another.
``batched``
    The round's clients train together with :mod:`torch.func`: every client's copy of the
    parameters is stacked along a new leading dimension and one ``vmap(grad(loss))`` over
    ``functional_call`` computes all their gradients per step. Each client still steps over
    its own mini-batches, in the order ``_batches(len(data), settings, generator)`` yields
    with its own generator, so it sees exactly the data the sequential executor shows it.
    Ragged batches (an epoch's last batch, clients with fewer samples) are padded to the
    longest batch with a mask, and the loss is each client's mean over its real samples;
    a client that has no step ``t`` (it has fewer batches) sits step ``t`` out: neither its
    parameters nor its momentum buffer move. SGD with momentum is as in ``train_local``,
    with the buffers carried in ``client.momentum_buffers`` across rounds.
``processes``
    The round's clients are dealt to ``runtime.workers`` worker processes (default: one per
    usable core, :func:`usable_cores`; never more than there are clients), heaviest clients
    first, each to the least loaded worker. Each worker runs one torch thread and trains its
    clients exactly as ``sequential`` does: ``train_local`` from the global model, with the
    client's own generator (its state is sent) and momentum buffers; it returns each client's
    delta and buffers, on CPU, in client order. CPU only. The pool starts at the first round
    that uses it (workers are spawned, import torch and build the model: about 1.5 s) and is
    reused by every later round; the simulation and each peer stop it when the run ends or
    fails (:meth:`LocalExecutor.close`), and a worker also stops when its parent goes away.
    Each worker builds the model from a picklable factory (``SimulationSettings.model_factory``:
    ``hydra.utils.instantiate`` of the ``model`` config) and memory-maps every client's data
    from one safetensors file written at the start and deleted once all workers hold it, so
    the data cross once and the page cache keeps one copy. A worker that dies, or sends
    nothing for ``timeout`` seconds (30 minutes by default) while training a client, ends the
    round with a :class:`WorkerError` naming the worker and the client, and every worker is
    stopped. As with any spawned process, a script that starts a run must guard it with
    ``if __name__ == "__main__":`` (``train.py`` does): each worker imports the script's module.
``auto`` (default)
    ``batched`` on a GPU when the round has at least two clients and the model is supported;
    on a CPU ``processes`` when it would use at least two workers, the model has at least
    :data:`AUTO_PROCESSES_MIN_PARAMETERS` parameters and a model factory is given (logged
    once); else ``sequential``.

Supported models are those whose whole state is parameters (no buffers such as BatchNorm
running statistics) and whose forward and backward ``torch.func`` can vmap (checked once by a
probe on one sample). With ``auto`` an unsupported model falls back to ``sequential`` with a
one-time warning; with ``batched`` it is refused with a :class:`~torchchain.errors.ConfigError`
at the first round (the executor is local, so ``resume=<run> runtime.executor=sequential``
continues the run). ``processes`` trains any model the sequential executor trains; one that
draws from torch's global random stream (dropout) draws, per client, from a stream seeded by
the client's generator, so its updates differ from the sequential executor's but do not depend
on the worker count.

Transport of the ``processes`` executor: parent and worker exchange one
``Connection.send_bytes`` message per task and per client reply, each a small JSON header
(ints and strings) followed by safetensors bytes; nothing is pickled after a worker starts.
The parent reads a reply within a bound computed from the model's size and parses it as
untrusted input (strict JSON, :func:`~torchchain.updates.serialize.update_from_bytes`), then
checks its tensors' names, dtypes and shapes against the model; a reply that does not match is
a :class:`WorkerError`. Whether the values are finite is checked later, as for every update.

Memory: a chunk of ``C`` clients holds ``C`` copies of the parameters, their gradients and,
with momentum, their buffers, plus ``C`` mini-batches of activations. Clients are therefore
trained in chunks of at most ``runtime.batch_clients`` (default 64): for the default CNN
(0.42 M parameters) a chunk of 64 holds about 0.1 GB per copy (about 0.35 GB with momentum),
plus the activations of 64 batches. Lower it for big models, raise it on a large GPU. A
``processes`` worker holds one model, its gradients and one client's buffers and batch.

Speed: the batched executor cuts per-step overhead (one vmapped step for all clients instead
of one small step per client), which is what an accelerator rewards; on a CPU the work is
compute-bound and batched runs about as fast as sequential (``benchmarks/executor.py``). On a
CPU the processes executor gives each core whole clients instead of splitting every small
step across threads that wait for each other at every step. ``benchmarks/executor.py
--clients 10 --threads 2`` on 2 cores, default CNN: 0.58 s a round against 0.60 s for two
threads with one other busy process on the machine, 1.9-2.1 s against 8-12 s with several
(threads stall whenever one of them loses its core; a single-threaded worker only slows down);
an MLP of 50,890 parameters: 0.03-0.11 s against 0.04-0.79 s. Starting the pool costs about
1.3 s, once. Hence ``auto`` picks it for models of :data:`AUTO_PROCESSES_MIN_PARAMETERS`
parameters or more, whose runs are long beside that start; smaller ones (the default MLP on
digits: 4,810 parameters, a few ms a client) stay sequential.

Results are not bit-identical to ``sequential`` (batched kernels sum in another order; a
single-threaded worker's kernels may sum in another order than several threads do) but agree
to float32 rounding, and are deterministic on CPU for a given executor and ``batch_clients``
(``processes``: whatever the worker count). The deltas are returned on CPU, so aggregation is
untouched. Momentum buffers the batched and processes executors write are kept on CPU between
rounds (the sequential executor leaves them on the training device); every executor takes them
from wherever they are.
"""

from __future__ import annotations

import logging
import multiprocessing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from torchchain.data import DataSplit
from torchchain.errors import ConfigError
from torchchain.runtime.client import LocalTraining, _batches, _loss, train_sequential, trainable_names
from torchchain.runtime.worker_pool import TensorSpec, TrainingPool, WorkerError, usable_cores
from torchchain.updates.delta import compute_delta

__all__ = [
    "AUTO_PROCESSES_MIN_PARAMETERS",
    "DEFAULT_BATCH_CLIENTS",
    "DEFAULT_WORKER_TIMEOUT",
    "EXECUTORS",
    "LocalExecutor",
    "WorkerError",
    "batching_unsupported",
    "train_batched",
    "train_sequential",
    "usable_cores",
]

_log = logging.getLogger(__name__)

#: The values of ``runtime.executor``.
EXECUTORS = ("auto", "sequential", "batched", "processes")

#: Default ``runtime.batch_clients``: most clients trained in one vmapped chunk.
DEFAULT_BATCH_CLIENTS = 64

#: ``auto`` on CPU trains in worker processes from this many model parameters on.
AUTO_PROCESSES_MIN_PARAMETERS = 50_000

#: Seconds a worker may go without reporting a client before it is taken as hung.
DEFAULT_WORKER_TIMEOUT = 1800.0

#: Mini-batch index tables are built for this many steps at a time (bounded host memory).
_STEPS_PER_BLOCK = 256


def _make_grad_fn(model: nn.Module, task: str, frozen: Mapping[str, torch.Tensor]):
    """``vmap(grad(loss))``: per-client gradients of the masked mean loss, clients on dim 0."""

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (params, dict(frozen)), (x,))
        if task == "regression":
            per = F.mse_loss(out, y, reduction="none").reshape(out.shape[0], -1).mean(dim=1)
        else:
            per = F.cross_entropy(out, y, reduction="none")
        return (per * mask).sum() / mask.sum()

    return vmap(grad(loss))


def batching_unsupported(model: nn.Module, sample: DataSplit | None = None, *, task: str = "classification") -> str | None:
    """Why ``model`` cannot train batched, or ``None`` when it can.

    A model with buffers (BatchNorm running statistics and the like) is refused outright; with
    ``sample`` (a split holding at least one sample) a two-client ``vmap(grad(loss))`` probe on
    one sample also catches layers ``torch.func`` cannot transform (random ops such as dropout,
    in-place updates of module state, data-dependent control flow), and parameters the forward
    pass does not use (``train_local`` skips them; ``torch.func`` would give them zero gradients).
    """
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return f"the model has buffers ({', '.join(buffers[:3])}{', ...' if len(buffers) > 3 else ''}), e.g. BatchNorm running statistics"
    trained, frozen_names = trainable_names(model)
    if not trained:
        return "the model has no trainable parameters"
    if sample is None or len(sample) == 0:
        return None
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    frozen = {n: params[n].detach() for n in frozen_names}
    stacked = {n: params[n].detach().unsqueeze(0).expand(2, *params[n].shape).clone() for n in trained}
    x = sample.features[:1].to(device).unsqueeze(0).expand(2, *sample.features[:1].shape)
    y = sample.targets[:1].to(device).unsqueeze(0).expand(2, *sample.targets[:1].shape)
    mask = torch.ones(2, 1, device=device, dtype=stacked[trained[0]].dtype)
    was_training = model.training
    model.train()
    try:
        grads = _make_grad_fn(model, task, frozen)(stacked, x, y, mask)
        if set(grads) != set(trained):
            return "torch.func returned gradients for other parameters than the model's"
        # A parameter the forward pass does not use has no gradient in train_local, which then
        # skips it (no step, no momentum decay); torch.func would give it zeros instead.
        saved = {n: params[n].grad for n in trained}
        try:
            for n in trained:
                params[n].grad = None
            with torch.enable_grad():
                _loss(task, model(sample.features[:1].to(device)), sample.targets[:1].to(device)).backward()
            unused = [n for n in trained if params[n].grad is None]
        finally:
            for n in trained:
                params[n].grad = saved[n]
        if unused:
            return f"parameters unused by the forward pass ({', '.join(unused[:3])}) would move under momentum"
    except Exception as exc:  # noqa: BLE001 - any failure means: train this model sequentially
        return f"torch.func cannot vmap its training step ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    finally:
        model.train(was_training)
    return None


class LocalExecutor:
    """Picks, round by round, how the round's clients train, and trains them (:meth:`train`).

    Args:
        kind: ``"auto"``, ``"sequential"``, ``"batched"`` or ``"processes"`` (see the module
            docstring).
        batch_clients: Most clients trained in one vmapped chunk.
        workers: Worker processes of the ``processes`` executor; ``None``: one per usable core
            (:func:`usable_cores`). The pool never holds more workers than the clients it may
            train (``client_data``, else the first round's), and a round uses at most one per
            client.
        model_factory: Builds the model's architecture in a worker process (picklable, e.g.
            ``functools.partial(hydra.utils.instantiate, model_config)``); its weights are not
            used. The ``processes`` executor needs it.
        client_data: Every client's data by client index, written once to a memory-mapped file
            that all workers share; a client passed to :meth:`train` under another index (or
            not at all) sends its data with every task instead.
        timeout: Seconds a worker may go without reporting a client before it counts as hung.

    Raises:
        ConfigError: for an unknown ``kind``, a ``batch_clients`` below 1 or a ``workers``
            that is not a positive integer.

    The ``processes`` executor holds worker processes from its first round on: call
    :meth:`close` (or use the executor as a context manager) when the run ends.
    """

    def __init__(
        self,
        kind: str = "auto",
        *,
        batch_clients: int = DEFAULT_BATCH_CLIENTS,
        workers: int | None = None,
        model_factory: Callable[[], nn.Module] | None = None,
        client_data: Mapping[int, DataSplit] | None = None,
        timeout: float = DEFAULT_WORKER_TIMEOUT,
    ) -> None:
        if kind not in EXECUTORS:
            raise ConfigError(f"runtime.executor must be one of {', '.join(EXECUTORS)}; got {kind!r}")
        if isinstance(batch_clients, bool) or not isinstance(batch_clients, int) or batch_clients < 1:
            raise ConfigError(f"runtime.batch_clients must be a positive integer, got {batch_clients!r}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigError(
                f"runtime.workers must be a positive integer (worker processes of runtime.executor=processes) "
                f"or null for one per usable core, got {workers!r}"
            )
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.kind = kind
        self.batch_clients = batch_clients
        self.workers = workers
        self.model_factory = model_factory
        self.client_data = dict(client_data or {})
        self.timeout = float(timeout)
        self._verdicts: dict[int, str | None] = {}  # id(model) -> reason it cannot batch, or None
        self._warned = False
        self._announced = False
        self._pool: TrainingPool | None = None
        self._pool_refused: str | None = None  # auto: why the pool could not start, once it could not

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes, if any run (idempotent); a later round starts new ones."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _abort(self) -> None:
        """Stop the workers at once: after a failed round some may still be training."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(at_once=True)

    def use_batched(
        self, model: nn.Module, datas: Sequence[DataSplit], *, task: str, device: torch.device | None = None
    ) -> bool:
        """Whether this round's clients (their data ``datas``) train batched.

        ``auto`` batches only on a GPU: on CPU threads batching was measured no faster (grouped
        convolutions cost more than plain ones) and it changes the last bits of the updates, so
        a CPU run keeps the sequential executor's results unless ``batched`` is asked for.

        Raises:
            ConfigError: ``kind="batched"`` and the model cannot train batched.
        """
        if self.kind in ("sequential", "processes"):
            return False
        if self.kind == "auto" and (len(datas) < 2 or device is None or device.type != "cuda"):
            return False
        key = id(model)
        if key not in self._verdicts:
            sample = next((d for d in datas if len(d) > 0), None)
            self._verdicts[key] = batching_unsupported(model, sample, task=task)
        reason = self._verdicts[key]
        if reason is None:
            return True
        if self.kind == "batched":
            raise ConfigError(
                f"runtime.executor=batched cannot train this model: {reason}. Use runtime.executor=auto or "
                f"sequential (a local setting: resume=<run folder> runtime.executor=sequential continues this run)"
            )
        if not self._warned:
            self._warned = True
            warnings.warn(f"runtime.executor=auto: training clients sequentially because {reason}", RuntimeWarning, stacklevel=2)
        return False

    def choose(
        self, model: nn.Module, datas: Sequence[DataSplit], *, task: str, device: torch.device | None = None
    ) -> str:
        """The executor this round's clients train with: ``"sequential"``, ``"batched"`` or ``"processes"``.

        Raises:
            ConfigError: ``kind="batched"`` and the model cannot train batched, or
                ``kind="processes"`` on a GPU, without a model factory, or in a daemonic process.
        """
        if self.kind == "processes":
            reason = self._processes_unavailable(device)
            if reason is not None:
                raise ConfigError(f"runtime.executor=processes cannot train here: {reason}")
            return "processes"
        if self.use_batched(model, datas, task=task, device=device):
            return "batched"
        if self.kind == "auto" and self._processes_pay(model, datas, device):
            return "processes"
        return "sequential"

    def _processes_unavailable(self, device: torch.device | None) -> str | None:
        if device is not None and device.type != "cpu":
            return (
                f"its workers train on CPU cores, and this run trains on {device}; use runtime.executor=auto or batched"
            )
        if self.model_factory is None:
            return "no model factory to build the model in a worker process (LocalExecutor(model_factory=...))"
        if multiprocessing.current_process().daemon:
            return "this is a daemonic process, which may not start worker processes"
        return None

    def _processes_pay(self, model: nn.Module, datas: Sequence[DataSplit], device: torch.device | None) -> bool:
        """``auto`` on CPU: whether worker processes beat threads for this round (measured in
        ``benchmarks/executor.py``: see the module docstring)."""
        if self._pool_refused is not None or device is None or self._processes_unavailable(device) is not None:
            return False
        workers = min(self.workers or usable_cores(), len(datas))
        parameters = sum(p.numel() for p in model.parameters())
        if workers < 2 or parameters < AUTO_PROCESSES_MIN_PARAMETERS:
            return False
        if not self._announced:
            self._announced = True
            _log.info(
                "runtime.executor=auto: training clients on %d worker processes, one core each "
                "(CPU run, %d usable cores, model of %s parameters >= %s)",
                workers, usable_cores(), f"{parameters:,}", f"{AUTO_PROCESSES_MIN_PARAMETERS:,}",
            )
        return True

    def train(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        datas: Sequence[DataSplit],
        settings: LocalTraining,
        *,
        device: torch.device,
        generators: Sequence[torch.Generator],
        momentum_buffers: Sequence[dict[str, torch.Tensor] | None],
        clients: Sequence[int] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Train one copy of ``global_state`` per client with the executor :meth:`choose` picks.

        Args:
            model: A module of the run's architecture on ``device`` (the sequential executor
                trains it in place; the others only read its structure).
            global_state: The global model every client starts from (on CPU).
            datas: Each client's private data (on CPU).
            settings: Epochs or steps, batch size, learning rate, momentum, loss.
            device: Where to train (the ``processes`` executor trains on CPU only).
            generators: Each client's shuffling generator, as :func:`train_local` takes it.
            momentum_buffers: Each client's momentum buffers by parameter name, updated in
                place, or ``None`` for a client that keeps none.
            clients: Each client's index (as in ``client_data``), for the shared data and for
                error messages; ``None``: positions in the round.

        Returns:
            Each client's ``θ_local − θ_global`` on CPU, in the order of ``datas``.

        Raises:
            ConfigError: The executor asked for cannot train this model or on this device.
            WorkerError: A worker process died, hung, or sent a malformed reply; every worker
                is stopped before it is raised.
        """
        same = len(datas) == len(generators) == len(momentum_buffers)
        if not same or (clients is not None and len(clients) != len(datas)):
            raise ValueError("datas, generators, momentum_buffers and clients must have one entry per client")
        if not datas:
            return []
        kind = self.choose(model, datas, task=settings.task, device=device)
        if kind == "batched":
            return train_batched(
                model, global_state, datas, settings, device=device, generators=generators,
                momentum_buffers=momentum_buffers, batch_clients=self.batch_clients,
            )
        if kind == "processes":
            pool = self._pool_for(model, global_state, datas, clients)
            if pool is not None:
                try:
                    return pool.train(
                        global_state, datas, settings, generators=generators, momentum_buffers=momentum_buffers,
                        clients=clients,
                    )
                except BaseException:
                    self._abort()  # no worker outlives a failed round
                    raise
        return train_sequential(
            model, global_state, datas, settings, device=device, generators=generators,
            momentum_buffers=momentum_buffers,
        )

    def _pool_for(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        datas: Sequence[DataSplit],
        clients: Sequence[int] | None,
    ) -> TrainingPool | None:
        """The running pool, started at the first round that needs it; ``None`` when ``auto``
        could not start one (it then trains sequentially, after one warning)."""
        spec = TensorSpec.of(model, global_state)
        if self._pool is not None and self._pool.spec != spec:
            self.close()  # another architecture than the workers hold
        if self._pool is None:
            shared = self.client_data or ({} if clients is None else dict(zip(clients, datas)))
            size = min(self.workers or usable_cores(), max(len(shared), len(datas)))
            assert self.model_factory is not None  # choose() checked it
            try:
                self._pool = TrainingPool(
                    size=size, model_factory=self.model_factory, spec=spec, client_data=shared, timeout=self.timeout
                )
            except (ConfigError, WorkerError) as exc:
                if self.kind == "processes":
                    raise
                self._pool_refused = str(exc)
                warnings.warn(
                    f"runtime.executor=auto: training clients sequentially because {exc}", RuntimeWarning, stacklevel=3
                )
                return None
        return self._pool


def train_batched(
    model: nn.Module,
    global_state: Mapping[str, torch.Tensor],
    datas: Sequence[DataSplit],
    settings: LocalTraining,
    *,
    device: torch.device,
    generators: Sequence[torch.Generator],
    momentum_buffers: Sequence[dict[str, torch.Tensor] | None],
    batch_clients: int = DEFAULT_BATCH_CLIENTS,
) -> list[dict[str, torch.Tensor]]:
    """Train one copy of ``global_state`` per client, all together; return each client's delta.

    Args:
        model: The architecture (its own weights are not used and not changed); it must pass
            :func:`batching_unsupported`, and live on ``device``.
        global_state: The global model every client starts from (on CPU).
        datas: Each client's private data (on CPU; moved to ``device`` once, chunk by chunk).
        settings: Epochs or steps, batch size, learning rate, momentum, loss.
        device: Where to train.
        generators: Each client's shuffling generator, as :func:`train_local` would take it.
        momentum_buffers: Each client's momentum buffers by parameter name (updated in place,
            left on CPU), or ``None`` for a client that keeps none.
        batch_clients: Most clients trained in one chunk.

    Returns:
        Each client's ``θ_local − θ_global`` on CPU, as :func:`compute_delta` computes it, in
        the order of ``datas``.
    """
    if not len(datas) == len(generators) == len(momentum_buffers):
        raise ValueError("datas, generators and momentum_buffers must have one entry per client")
    deltas: list[dict[str, torch.Tensor]] = []
    was_training = model.training
    model.train()
    try:
        for start in range(0, len(datas), batch_clients):
            stop = start + batch_clients
            deltas += _train_chunk(
                model, global_state, datas[start:stop], settings, device=device,
                generators=generators[start:stop], momentum_buffers=momentum_buffers[start:stop],
            )
    finally:
        model.train(was_training)
    return deltas


def _step_blocks(
    datas: Sequence[DataSplit], settings: LocalTraining, generators: Sequence[torch.Generator], offsets: Sequence[int]
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]]:
    """Yield blocks of steps; each step is ``(index (A, B), mask (A, B), active)`` on CPU.

    ``index`` holds, per active client, its batch as rows of the concatenated data (padded with
    the client's first row), ``mask`` marks the real samples, ``active`` lists the active
    clients (``None`` when all are). Each client's batches come from its own ``_batches``
    iterator, drawn lazily, so the order equals the sequential executor's.
    """
    sources: list[Iterator[torch.Tensor] | None] = [
        _batches(len(d), settings, g) if len(d) > 0 else None for d, g in zip(datas, generators)
    ]
    width = max(min(settings.batch_size, len(d)) for d in datas)
    clients = len(datas)
    while any(s is not None for s in sources):
        block = []
        for _ in range(_STEPS_PER_BLOCK):
            batches: list[torch.Tensor | None] = []
            for c, source in enumerate(sources):
                batch = None
                if source is not None:
                    batch = next(source, None)
                    if batch is None:
                        sources[c] = None
                batches.append(batch)
            rows = [c for c, b in enumerate(batches) if b is not None]
            if not rows:
                break
            index = torch.empty(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width)
            for r, c in enumerate(rows):
                batch = batches[c]
                index[r].fill_(offsets[c])
                index[r, : len(batch)] = batch + offsets[c]
                mask[r, : len(batch)] = 1.0
            block.append((index, mask, None if len(rows) == clients else torch.tensor(rows)))
        if block:
            yield block


def _train_chunk(
    model: nn.Module,
    global_state: Mapping[str, torch.Tensor],
    datas: Sequence[DataSplit],
    settings: LocalTraining,
    *,
    device: torch.device,
    generators: Sequence[torch.Generator],
    momentum_buffers: Sequence[dict[str, torch.Tensor] | None],
) -> list[dict[str, torch.Tensor]]:
    clients = len(datas)
    trained, frozen_names = trainable_names(model)
    frozen = {n: global_state[n].to(device) for n in frozen_names}
    params = {
        n: global_state[n].to(device).unsqueeze(0).expand(clients, *global_state[n].shape).clone() for n in trained
    }
    # Momentum: buf <- buf * factor + grad, with factor = momentum for clients that keep
    # buffers and 0 for those that do not (their step is the plain gradient). A client without a
    # buffer yet starts from zeros, and 0 * momentum + grad is exactly the sequential grad.clone().
    use_momentum = bool(settings.momentum) and any(b is not None for b in momentum_buffers)
    buffers: dict[str, torch.Tensor] = {}
    factor_all = None
    if use_momentum:
        for n in trained:
            rows = []
            for b in momentum_buffers:
                held = None if b is None else b.get(n)
                rows.append(torch.zeros_like(params[n][0]) if held is None else held.to(device, params[n].dtype))
            buffers[n] = torch.stack(rows)
        dtype = params[trained[0]].dtype
        factor_all = torch.tensor(
            [settings.momentum if b is not None else 0.0 for b in momentum_buffers], dtype=dtype, device=device
        )
    stepped = [False] * clients

    lengths = [len(d) for d in datas]
    offsets = [0]
    for length in lengths[:-1]:
        offsets.append(offsets[-1] + length)
    features = torch.cat([d.features for d in datas]).to(device)
    targets = torch.cat([d.targets for d in datas]).to(device)
    grad_fn = _make_grad_fn(model, settings.task, frozen)
    lr = settings.lr

    for block in _step_blocks(datas, settings, generators, offsets):
        for index, mask, active in block:
            if active is None:
                for c in range(clients):
                    stepped[c] = True
            else:
                for c in active.tolist():
                    stepped[c] = True
            index = index.to(device, non_blocking=True)
            mask = mask.to(device, params[trained[0]].dtype, non_blocking=True)
            x, y = features[index], targets[index]
            if active is None:
                grads = grad_fn(params, x, y, mask)
                with torch.no_grad():
                    for n in trained:
                        step = grads[n]
                        if use_momentum:
                            shape = (clients,) + (1,) * (step.dim() - 1)
                            step = buffers[n].mul_(factor_all.view(shape)).add_(step)
                        params[n].add_(step, alpha=-lr)
            else:
                rows = active.to(device, non_blocking=True)
                sub = {n: params[n].index_select(0, rows) for n in trained}
                grads = grad_fn(sub, x, y, mask)
                with torch.no_grad():
                    for n in trained:
                        step = grads[n]
                        if use_momentum:
                            shape = (len(active),) + (1,) * (step.dim() - 1)
                            step = buffers[n].index_select(0, rows).mul_(factor_all[rows].view(shape)).add_(step)
                            buffers[n].index_copy_(0, rows, step)
                        params[n].index_copy_(0, rows, sub[n].add_(step, alpha=-lr))

    if use_momentum:
        host = {n: buffers[n].cpu() for n in trained}
        for c, held in enumerate(momentum_buffers):
            if held is None:
                continue
            for n in trained:
                if stepped[c] or n in held:
                    held[n] = host[n][c].clone()
    local = {n: p.detach().cpu() for n, p in params.items()}
    deltas = []
    for c in range(clients):
        state = {n: local[n][c] for n in trained}
        state.update({n: global_state[n] for n in frozen_names})
        deltas.append(compute_delta(state, global_state))
    return deltas
