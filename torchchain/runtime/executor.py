"""How a round's local training runs: one client after another, or all clients at once.

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
``auto`` (default)
    ``batched`` when the round has at least two clients and the model is supported, else
    ``sequential``.

Supported models are those whose whole state is parameters (no buffers such as BatchNorm
running statistics) and whose forward and backward ``torch.func`` can vmap (checked once by a
probe on one sample). With ``auto`` an unsupported model falls back to ``sequential`` with a
one-time warning; with ``batched`` it is refused with a :class:`~torchchain.errors.ConfigError`
at the first round (the executor is local, so ``resume=<run> runtime.executor=sequential``
continues the run).

Memory: a chunk of ``C`` clients holds ``C`` copies of the parameters, their gradients and,
with momentum, their buffers, plus ``C`` mini-batches of activations. Clients are therefore
trained in chunks of at most ``runtime.batch_clients`` (default 64): for the default CNN
(0.42 M parameters) a chunk of 64 holds about 0.1 GB per copy (about 0.35 GB with momentum),
plus the activations of 64 batches. Lower it for big models, raise it on a large GPU.

Speed: the batched executor cuts per-step overhead (one vmapped step for all clients instead
of one small step per client), which is what an accelerator rewards; on a CPU the work is
compute-bound and batched runs about as fast as sequential (``benchmarks/executor.py``).

Results are not bit-identical to ``sequential`` (batched kernels sum in another order) but
agree to float32 rounding, and are deterministic on CPU for a given executor and
``batch_clients``. The deltas are returned on CPU, so aggregation is untouched. Momentum
buffers the batched executor writes are kept on CPU between rounds (the sequential executor
leaves them on the training device); either executor takes them from wherever they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from torchchain.data import DataSplit
from torchchain.errors import ConfigError
from torchchain.runtime.client import LocalTraining, _batches, _loss
from torchchain.updates.delta import compute_delta

__all__ = ["DEFAULT_BATCH_CLIENTS", "EXECUTORS", "LocalExecutor", "batching_unsupported", "train_batched"]

#: The values of ``runtime.executor``.
EXECUTORS = ("auto", "sequential", "batched")

#: Default ``runtime.batch_clients``: most clients trained in one vmapped chunk.
DEFAULT_BATCH_CLIENTS = 64

#: Mini-batch index tables are built for this many steps at a time (bounded host memory).
_STEPS_PER_BLOCK = 256


def _trainable(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters that train, and of those that do not (``requires_grad=False``)."""
    trained, frozen = [], []
    for name, p in model.named_parameters():
        (trained if p.requires_grad else frozen).append(name)
    return trained, frozen


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
    trained, frozen_names = _trainable(model)
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
    """Decides, round by round, whether the round's clients train sequentially or batched.

    Args:
        kind: ``"auto"``, ``"sequential"`` or ``"batched"`` (see the module docstring).
        batch_clients: Most clients trained in one vmapped chunk.

    Raises:
        ConfigError: for an unknown ``kind`` or a ``batch_clients`` below 1.
    """

    def __init__(self, kind: str = "auto", *, batch_clients: int = DEFAULT_BATCH_CLIENTS) -> None:
        if kind not in EXECUTORS:
            raise ConfigError(f"runtime.executor must be one of {', '.join(EXECUTORS)}; got {kind!r}")
        if isinstance(batch_clients, bool) or not isinstance(batch_clients, int) or batch_clients < 1:
            raise ConfigError(f"runtime.batch_clients must be a positive integer, got {batch_clients!r}")
        self.kind = kind
        self.batch_clients = batch_clients
        self._verdicts: dict[int, str | None] = {}  # id(model) -> reason it cannot batch, or None
        self._warned = False

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
        if self.kind == "sequential":
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
    trained, frozen_names = _trainable(model)
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
