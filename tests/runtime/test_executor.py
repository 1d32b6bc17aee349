"""runtime.executor: the batched (torch.func) and processes executors give the sequential executor's answers."""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import warnings

import pytest
import torch
from torch import nn

from torchchain.chain.ledger import Ledger
from torchchain.data import DataSplit, load_diabetes, load_digits
from torchchain.errors import ConfigError, SerializationError
from torchchain.experiment import run
from torchchain.models import CNN, MLP, LinearRegression
from torchchain.runtime.client import LocalTraining, train_local
from torchchain.runtime.executor import (
    AUTO_PROCESSES_MIN_PARAMETERS,
    LocalExecutor,
    batching_unsupported,
    train_batched,
)
from torchchain.runtime.simulation import derive_generator
from torchchain.runtime.worker_pool import TensorSpec, WorkerError, _frame, _read_reply, usable_cores
from torchchain.updates.delta import compute_delta
from torchchain.updates.serialize import update_from_bytes

from composing import FAST, compose_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _ragged(split: DataSplit, sizes: list[int]) -> list[DataSplit]:
    """Clients with different sample counts (so different batch counts and ragged last batches)."""
    out, start = [], 0
    for size in sizes:
        out.append(split.subset(torch.arange(start, start + size)))
        start += size
    return out


def _sequential(model, state, datas, settings, rnd, buffers, device=CPU):
    deltas = []
    for i, data in enumerate(datas):
        model.load_state_dict(state)
        train_local(
            model, data, settings, device=device, generator=derive_generator(0, "train", rnd, i),
            momentum_buffers=buffers[i],
        )
        deltas.append(compute_delta(model.state_dict(), state))
    return deltas


def _batched(model, state, datas, settings, rnd, buffers, device=CPU, batch_clients=64):
    return train_batched(
        model, state, datas, settings, device=device,
        generators=[derive_generator(0, "train", rnd, i) for i in range(len(datas))],
        momentum_buffers=buffers, batch_clients=batch_clients,
    )


def _assert_close(first, second, atol=1e-5):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert set(a) == set(b)
        for key in a:
            torch.testing.assert_close(a[key].cpu(), b[key].cpu(), atol=atol, rtol=0)


@pytest.mark.parametrize(
    "settings",
    [
        LocalTraining(epochs=2, batch_size=32, lr=0.3),
        LocalTraining(epochs=1, batch_size=16, lr=0.05, momentum=0.9),
        LocalTraining(epochs=1, steps=7, batch_size=32, lr=0.05, momentum=0.5),  # steps cross epochs
    ],
    ids=["sgd-2-epochs", "momentum", "steps"],
)
def test_batched_matches_sequential_with_ragged_clients_over_rounds(digits, settings):
    """Clients of 200, 37, 90, 5 and 150 samples, trained in chunks of 2 for two rounds, with
    momentum carried across rounds (one client keeps no buffers): same deltas and buffers."""
    torch.manual_seed(0)
    model = MLP(input_shape=digits.input_shape, num_outputs=digits.num_outputs)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    datas = _ragged(digits.train, [200, 37, 90, 5, 150])
    seq_buffers = [{}, {}, None, {}, {}]
    bat_buffers = [{}, {}, None, {}, {}]
    for rnd in (1, 2):
        seq = _sequential(model, state, datas, settings, rnd, seq_buffers)
        bat = _batched(model, state, datas, settings, rnd, bat_buffers, batch_clients=2)
        _assert_close(seq, bat)
        _assert_close(seq_buffers, bat_buffers)
        state = {k: v + seq[0][k] for k, v in state.items()}
    if settings.momentum:
        assert all(set(b) == set(state) for b in bat_buffers if b is not None)
    else:
        assert bat_buffers == [{}, {}, None, {}, {}]


def test_batched_cnn_and_regression_match_sequential(digits):
    torch.manual_seed(0)
    settings = LocalTraining(epochs=1, batch_size=32, lr=0.05, momentum=0.9)
    cnn = CNN(input_shape=digits.input_shape, num_outputs=digits.num_outputs, channels=(4, 8), hidden=16)
    state = {k: v.detach().clone() for k, v in cnn.state_dict().items()}
    datas = _ragged(digits.train, [70, 33, 64])
    _assert_close(
        _sequential(cnn, state, datas, settings, 1, [{}, {}, {}]), _batched(cnn, state, datas, settings, 1, [{}, {}, {}])
    )

    diabetes = load_diabetes()
    reg = LocalTraining(epochs=2, batch_size=16, lr=0.05, task="regression")
    linear = LinearRegression(input_shape=diabetes.input_shape, num_outputs=diabetes.num_outputs)
    state = {k: v.detach().clone() for k, v in linear.state_dict().items()}
    datas = _ragged(diabetes.train, [50, 21, 80])
    _assert_close(
        _sequential(linear, state, datas, reg, 1, [{}, {}, {}]), _batched(linear, state, datas, reg, 1, [{}, {}, {}])
    )


def test_frozen_parameters_do_not_move(digits):
    torch.manual_seed(0)
    model = MLP(input_shape=digits.input_shape, num_outputs=digits.num_outputs)
    model.layers[1].weight.requires_grad_(False)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    settings = LocalTraining(epochs=1, batch_size=32, lr=0.1, momentum=0.9)
    datas = _ragged(digits.train, [60, 40])
    bat_buffers = [{}, {}]
    bat = _batched(model, state, datas, settings, 1, bat_buffers)
    _assert_close(_sequential(model, state, datas, settings, 1, [{}, {}]), bat)
    assert all(torch.count_nonzero(d["layers.1.weight"]) == 0 for d in bat)
    assert all("layers.1.weight" not in b for b in bat_buffers)


def test_batched_is_deterministic_on_cpu(digits):
    torch.manual_seed(0)
    model = MLP(input_shape=digits.input_shape, num_outputs=digits.num_outputs)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    settings = LocalTraining(epochs=1, batch_size=32, lr=0.05, momentum=0.9)
    datas = _ragged(digits.train, [120, 45, 77, 90])
    first = _batched(model, state, datas, settings, 1, [{} for _ in datas], batch_clients=3)
    again = _batched(model, state, datas, settings, 1, [{} for _ in datas], batch_clients=3)
    for a, b in zip(first, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # The model module itself is not changed: the batched executor only borrows its structure.
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_on_cuda_matches_sequential_on_cpu(digits):
    torch.manual_seed(0)
    model = MLP(input_shape=digits.input_shape, num_outputs=digits.num_outputs)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    settings = LocalTraining(epochs=1, batch_size=32, lr=0.05, momentum=0.9)
    datas = _ragged(digits.train, [120, 45, 77])
    seq = _sequential(model, state, datas, settings, 1, [{}, {}, {}])
    buffers = [{}, {}, {}]
    bat = _batched(model.cuda(), state, datas, settings, 1, buffers, device=torch.device("cuda"))
    _assert_close(seq, bat, atol=1e-4)
    assert all(d[k].device.type == "cpu" for d in bat for k in d)
    assert all(b[k].device.type == "cpu" for b in buffers for k in b)


class _WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.norm = nn.BatchNorm1d(10)

    def forward(self, x):
        return self.norm(self.linear(x.flatten(1)))


class _WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.linear(x.flatten(1)))


class _WithUnusedParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.spare = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x.flatten(1))


#: The verdict needs no GPU: only the device's type is read.
CUDA = torch.device("cuda")


def test_unsupported_models_fall_back_once_or_are_refused(digits):
    datas = _ragged(digits.train, [10, 10])
    assert batching_unsupported(MLP(input_shape=(1, 8, 8), num_outputs=10), datas[0]) is None
    assert "buffers" in batching_unsupported(_WithBatchNorm(), datas[0])
    assert "torch.func" in batching_unsupported(_WithDropout(), datas[0])  # random ops under vmap
    assert "spare.weight" in batching_unsupported(_WithUnusedParameter(), datas[0])
    for model in (_WithBatchNorm(), _WithDropout(), _WithUnusedParameter()):
        auto = LocalExecutor("auto")
        with pytest.warns(RuntimeWarning, match="sequentially"):
            assert not auto.use_batched(model, datas, task="classification", device=CUDA)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the warning is given once
            assert not auto.use_batched(model, datas, task="classification", device=CUDA)
        with pytest.raises(ConfigError, match="runtime.executor=batched"):
            LocalExecutor("batched").use_batched(model, datas, task="classification")


def test_auto_batches_only_rounds_of_two_or_more_on_a_gpu(digits):
    model = MLP(input_shape=(1, 8, 8), num_outputs=10)
    datas = _ragged(digits.train, [10, 10])
    assert LocalExecutor("auto").use_batched(model, datas, task="classification", device=CUDA)
    assert not LocalExecutor("auto").use_batched(model, datas[:1], task="classification", device=CUDA)
    # On CPU threads auto keeps the sequential executor (no faster there, and it keeps the bits).
    assert not LocalExecutor("auto").use_batched(model, datas, task="classification", device=torch.device("cpu"))
    assert LocalExecutor("batched").use_batched(model, datas[:1], task="classification")
    assert not LocalExecutor("sequential").use_batched(model, datas, task="classification")
    with pytest.raises(ConfigError, match="runtime.executor"):
        LocalExecutor("parallel")
    with pytest.raises(ConfigError, match="runtime.batch_clients"):
        LocalExecutor("auto", batch_clients=0)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("runtime.executor=parallel", "runtime.executor"),
        ("runtime.batch_clients=0", "runtime.batch_clients"),
        ("runtime.workers=0", "runtime.workers"),
        ("runtime.workers=-2", "runtime.workers"),
        ("runtime.workers=true", "runtime.workers"),
        ("runtime.workers=1.5", "runtime.workers"),
        ("runtime.workers=two", "runtime.workers"),
    ],
)
def test_bad_executor_settings_are_config_errors(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        run(compose_config([*FAST, override]), tmp_path)


def _round_one_updates(summary) -> dict[str, dict[str, torch.Tensor]]:
    ledger = Ledger.open(summary["ledger"])
    return {
        tx.client: update_from_bytes(ledger.get_blob(tx.update_hash), max_bytes=1 << 30)
        for tx in ledger.block(1).transactions
    }


def test_runs_with_any_executor_give_the_same_answers(tmp_path):
    """Digits, MLP, 5 clients with momentum, 4 rounds, seed 0: the round-1 updates in the
    ledgers agree per client, the final accuracies within 0.005; the executor is not recorded."""
    common = [*FAST, "clients=5", "rounds=4", "seed=0", "momentum=0.5", "lr=0.1"]
    seq = run(compose_config([*common, "runtime.executor=sequential"]), tmp_path / "sequential")
    for name, options in (("batched", ["runtime.batch_clients=3"]), ("processes", ["runtime.workers=2"])):
        other = run(compose_config([*common, f"runtime.executor={name}", *options]), tmp_path / name)
        assert abs(seq["final_accuracy"] - other["final_accuracy"]) <= 0.005
        first, second = _round_one_updates(seq), _round_one_updates(other)
        assert set(first) == set(second) and len(first) == 5
        for client, update in first.items():
            for key, value in update.items():
                torch.testing.assert_close(value, second[client][key], atol=1e-5, rtol=0)
        ledger = Ledger.open(other["ledger"])
        assert "runtime" not in ledger.config
        assert ledger.config == Ledger.open(seq["ledger"]).config
    assert not _trainers()  # the run stopped its workers


# -- the processes executor ---------------------------------------------------------------------


def _trainers() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("torchchain-trainer-")]


def _mlp_factory(data):
    return functools.partial(MLP, input_shape=data.input_shape, num_outputs=data.num_outputs)


def _processes(executor, model, state, datas, settings, rnd, buffers, clients):
    return executor.train(
        model, state, datas, settings, device=CPU,
        generators=[derive_generator(0, "train", rnd, i) for i in range(len(datas))],
        momentum_buffers=buffers, clients=clients,
    )


def test_processes_match_sequential_over_rounds_with_momentum(digits):
    """Clients of 200, 37, 90, 5 and 150 samples on 2 workers for two rounds, momentum carried
    across rounds (one client keeps no buffers, one client's data is not shared at the start and
    travels with its task): the same deltas and buffers as the sequential executor."""
    torch.manual_seed(0)
    factory = _mlp_factory(digits)
    model = factory()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    datas = _ragged(digits.train, [200, 37, 90, 5, 150])
    settings = LocalTraining(epochs=1, batch_size=16, lr=0.05, momentum=0.9)
    seq_buffers = [{}, {}, None, {}, {}]
    pro_buffers = [{}, {}, None, {}, {}]
    shared = {i: data for i, data in enumerate(datas[:4])}
    with LocalExecutor("processes", workers=2, model_factory=factory, client_data=shared) as executor:
        for rnd in (1, 2):
            seq = _sequential(model, state, datas, settings, rnd, seq_buffers)
            pro = _processes(executor, model, state, datas, settings, rnd, pro_buffers, [0, 1, 2, 3, 4])
            _assert_close(seq, pro)
            _assert_close(seq_buffers, pro_buffers)
            assert all(d[k].device.type == "cpu" for d in pro for k in d)
            state = {k: v + seq[0][k] for k, v in state.items()}
        assert len(_trainers()) == 2  # one pool, reused across rounds
    assert all(set(b) == set(state) for b in pro_buffers if b is not None)
    assert not _trainers()


def test_a_killed_worker_is_a_clear_error_and_no_worker_is_left(digits):
    torch.manual_seed(0)
    factory = _mlp_factory(digits)
    model = factory()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    datas = _ragged(digits.train, [100, 100])
    executor = LocalExecutor("processes", workers=2, model_factory=factory, client_data=dict(enumerate(datas)))
    quick = LocalTraining(epochs=1, batch_size=32, lr=0.05)
    _processes(executor, model, state, datas, quick, 1, [None, None], [0, 1])  # starts the pool
    workers = sorted(_trainers(), key=lambda p: p.name)
    victim = next(p for p in workers if p.name == "torchchain-trainer-0")
    # A round of some seconds, and worker 0 (which trains client 0) killed half a second in.
    long = LocalTraining(epochs=1, steps=50_000, batch_size=32, lr=0.05)
    killer = threading.Timer(0.5, os.kill, (victim.pid, signal.SIGKILL))
    killer.start()
    try:
        with pytest.raises(WorkerError, match=r"training worker 0 \(pid \d+\) was killed by SIGKILL while .*client 0"):
            _processes(executor, model, state, datas, long, 2, [None, None], [0, 1])
    finally:
        killer.cancel()
    assert not _trainers()
    for process in workers:
        assert process.exitcode is not None
        with pytest.raises(ProcessLookupError):
            os.kill(process.pid, 0)
    executor.close()


def test_a_factory_of_another_architecture_is_refused(digits):
    model = MLP(input_shape=digits.input_shape, num_outputs=digits.num_outputs)
    state = model.state_dict()
    other = functools.partial(MLP, input_shape=digits.input_shape, num_outputs=digits.num_outputs, hidden=[32])
    datas = _ragged(digits.train, [20, 20])
    executor = LocalExecutor("processes", workers=1, model_factory=other)
    with pytest.raises(ConfigError, match="another architecture"):
        _processes(executor, model, state, datas, LocalTraining(epochs=1, batch_size=8, lr=0.1), 1, [None, None], None)
    assert not _trainers()


def test_a_reply_with_other_tensors_is_refused():
    """What the parent accepts from a worker: exactly the model's delta (names, dtypes, shapes),
    and momentum buffers of trained parameters only when it asked for them."""
    model = nn.Linear(3, 2)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    spec = TensorSpec.of(model, state)
    delta = {f"delta/{k}": torch.zeros_like(v) for k, v in state.items()}
    momentum = {f"momentum/{k}": torch.ones_like(v) for k, v in state.items()}

    deltas, buffers = _read_reply(_frame({"client": 4}, {**delta, **momentum}), spec, client=4, momentum=True)
    assert set(deltas) == {"weight", "bias"} and set(buffers) == {"weight", "bias"}
    refused = {
        "another name": (_frame({"client": 4}, {**delta, "delta/spare": torch.zeros(2)}), "unexpected"),
        "a missing tensor": (_frame({"client": 4}, {"delta/weight": torch.zeros(2, 3)}), "missing"),
        "another shape": (_frame({"client": 4}, {**delta, "delta/bias": torch.zeros(3)}), r"bias is float32 \(3,\)"),
        "another dtype": (_frame({"client": 4}, {**delta, "delta/bias": torch.zeros(2).double()}), "float64"),
        "a buffer of no parameter": (_frame({"client": 4}, {**delta, "momentum/spare": torch.zeros(2)}), "unexpected"),
        "another client": (_frame({"client": 3}, delta), "expected the header"),
        "no frame": (b"\x80\x04\x95", "shorter than a frame header"),
        "a header past the frame": (b"\xff\xff\x00\x00{}", "out of bounds"),
        "pickled bytes": (_frame({"client": 4}) [:-16] + b"\x80\x04\x95\x00cos\nsystem\n", "safetensors"),
    }
    for what, (frame, message) in refused.items():
        with pytest.raises(SerializationError, match=message):
            _read_reply(frame, spec, client=4, momentum=True)
            pytest.fail(f"a reply with {what} was accepted")
    with pytest.raises(SerializationError, match="unexpected"):  # buffers it did not ask for
        _read_reply(_frame({"client": 4}, {**delta, **momentum}), spec, client=4, momentum=False)
    with pytest.raises(WorkerError, match="out of memory"):
        _read_reply(_frame({"error": "RuntimeError: out of memory"}), spec, client=4, momentum=False)


def test_processes_are_refused_where_they_cannot_run(digits, tmp_path):
    model = MLP(input_shape=digits.input_shape, num_outputs=digits.num_outputs)
    datas = _ragged(digits.train, [10, 10])
    with pytest.raises(ConfigError, match="no model factory"):
        LocalExecutor("processes").choose(model, datas, task="classification", device=CPU)
    with pytest.raises(ConfigError, match="CPU cores"):
        LocalExecutor("processes", model_factory=_mlp_factory(digits)).choose(
            model, datas, task="classification", device=CUDA
        )
    with pytest.raises(ConfigError, match="runtime.workers"):
        LocalExecutor("processes", workers=0)
    with pytest.raises(ConfigError, match="picklable"):
        unpicklable = LocalExecutor("processes", model_factory=lambda: MLP(input_shape=(1, 8, 8), num_outputs=10))
        tiny = LocalTraining(epochs=1, batch_size=8, lr=0.1)
        _processes(unpicklable, model, model.state_dict(), datas, tiny, 1, [None, None], None)
    assert not _trainers()
    with pytest.raises(ConfigError, match="runtime.executor=processes"):
        run(compose_config([*FAST, "privacy=dpsgd", "runtime.executor=processes"]), tmp_path)


def test_auto_picks_processes_for_big_models_on_cpu_cores(digits, caplog):
    datas = _ragged(digits.train, [10, 10])
    small = MLP(input_shape=digits.input_shape, num_outputs=digits.num_outputs)
    big_factory = functools.partial(MLP, input_shape=digits.input_shape, num_outputs=digits.num_outputs, hidden=[1024])
    big = big_factory()
    assert sum(p.numel() for p in small.parameters()) < AUTO_PROCESSES_MIN_PARAMETERS
    assert sum(p.numel() for p in big.parameters()) >= AUTO_PROCESSES_MIN_PARAMETERS
    auto = LocalExecutor("auto", workers=2, model_factory=big_factory)
    with caplog.at_level("INFO", logger="torchchain.runtime.executor"):
        assert auto.choose(big, datas, task="classification", device=CPU) == "processes"
        assert auto.choose(big, datas, task="classification", device=CPU) == "processes"
    assert [r.getMessage() for r in caplog.records] == [
        "runtime.executor=auto: training clients on 2 worker processes, one core each (CPU run, "
        f"{usable_cores()} usable cores, "
        "model of 76,810 parameters >= 50,000)"
    ]  # logged once
    assert auto.choose(small, datas, task="classification", device=CPU) == "sequential"
    assert auto.choose(big, datas[:1], task="classification", device=CPU) == "sequential"  # one worker
    assert auto.choose(big, datas, task="classification", device=CUDA) == "batched"
    def choice(executor, model, datas):
        return executor.choose(model, datas, task="classification", device=CPU)

    assert choice(LocalExecutor("auto", workers=1, model_factory=big_factory), big, datas) == "sequential"
    assert choice(LocalExecutor("auto", workers=2), big, datas) == "sequential"  # no factory
    assert choice(LocalExecutor("sequential", model_factory=big_factory), big, datas) == "sequential"
    assert choice(LocalExecutor("processes", model_factory=big_factory), small, datas[:1]) == "processes"
    assert not _trainers()  # choosing starts nothing
