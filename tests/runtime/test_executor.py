"""runtime.executor: the batched (torch.func) executor gives the sequential executor's answers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from torchchain.chain.ledger import Ledger
from torchchain.data import DataSplit, load_diabetes, load_digits
from torchchain.errors import ConfigError
from torchchain.experiment import run
from torchchain.models import CNN, MLP, LinearRegression
from torchchain.runtime.client import LocalTraining, train_local
from torchchain.runtime.executor import LocalExecutor, batching_unsupported, train_batched
from torchchain.runtime.simulation import derive_generator
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
    ("override", "key"), [("runtime.executor=parallel", "runtime.executor"), ("runtime.batch_clients=0", "runtime.batch_clients")]
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


def test_runs_with_either_executor_give_the_same_answers(tmp_path):
    """Digits, MLP, 5 clients with momentum, 4 rounds, seed 0: the round-1 updates in the two
    ledgers agree per client, the final accuracies within 0.005; the executor is not recorded."""
    common = [*FAST, "clients=5", "rounds=4", "seed=0", "momentum=0.5", "lr=0.1"]
    seq = run(compose_config([*common, "runtime.executor=sequential"]), tmp_path / "sequential")
    bat = run(compose_config([*common, "runtime.executor=batched", "runtime.batch_clients=3"]), tmp_path / "batched")
    assert abs(seq["final_accuracy"] - bat["final_accuracy"]) <= 0.005
    first, second = _round_one_updates(seq), _round_one_updates(bat)
    assert set(first) == set(second) and len(first) == 5
    for client, update in first.items():
        for key, value in update.items():
            torch.testing.assert_close(value, second[client][key], atol=1e-5, rtol=0)
    ledger = Ledger.open(bat["ledger"])
    assert "runtime" not in ledger.config
    assert ledger.config == Ledger.open(seq["ledger"]).config
