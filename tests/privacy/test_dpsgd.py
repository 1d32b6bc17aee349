"""Record-level DP-SGD in a client's local training, with Opacus."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from torchchain.data import DataSplit
from torchchain.errors import ConfigError
from torchchain.privacy.accountant import PrivacyEntry, PrivacyHistory
from torchchain.privacy.dpsgd import DPSGD, DPSGDReport, train_local_dpsgd
from torchchain.runtime.client import LocalTraining

CPU = torch.device("cpu")
DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _mlp(seed: int = 0, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, out))


def _data(n: int = 64, task: str = "classification") -> DataSplit:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 4, generator=g)
    if task == "regression":
        return DataSplit(features=x, targets=x[:, :1] * 2.0 - x[:, 1:2])
    return DataSplit(features=x, targets=(x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _count_forwards(model: nn.Module) -> list[int]:
    calls = [0]

    def hook(_module, _inputs):
        calls[0] += 1

    model.register_forward_pre_hook(hook)
    return calls


def _opacus_leftovers(model: nn.Module) -> list[str]:
    left = [f"{name}.{attr}" for name, p in model.named_parameters()
            for attr in ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample") if hasattr(p, attr)]
    left += [f"{name} hooks" for name, m in model.named_modules() if m._backward_hooks or m._forward_hooks]
    return left


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_trains_in_place_keeps_names_and_respects_steps(device):
    model = _mlp().to(device)
    names = list(model.state_dict())
    params_before = {n: p for n, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = _count_forwards(model)
    settings = LocalTraining(epochs=1, batch_size=16, lr=0.5, steps=7)
    dp = DPSGD(max_grad_norm=1.0, noise_multiplier=0.5)
    report = train_local_dpsgd(model, _data(), settings, dp, device=device, generator=_gen(1))
    seen = report.examples_seen
    assert report == DPSGDReport(steps=7, sample_rate=0.25, noise_multiplier=0.5, max_grad_norm=1.0, examples_seen=seen)
    assert calls[0] == 7  # one forward pass per optimizer step
    assert 0 < report.examples_seen < 7 * 64
    assert list(model.state_dict()) == names and not any(n.startswith("_module") for n in names)
    assert all(p is params_before[n] for n, p in model.named_parameters())  # the caller's own parameters
    assert all(not torch.equal(model.state_dict()[k], before[k]) for k in names)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert all(p.device.type == device.type for p in model.parameters())
    assert _opacus_leftovers(model) == []
    assert all(p.grad is None for p in model.parameters())


def test_epoch_mode_step_count_and_history():
    model = _mlp()
    calls = _count_forwards(model)
    settings = LocalTraining(epochs=2, batch_size=10, lr=0.1)
    report = train_local_dpsgd(model, _data(64), settings, DPSGD(1.0, 1.0), device=CPU, generator=_gen(0))
    assert report.steps == calls[0] == 2 * math.ceil(64 / 10)
    assert report.sample_rate == 10 / 64
    history = report.extend(report.extend(PrivacyHistory()))
    assert history.entries == (PrivacyEntry(1.0, 10 / 64, 28),)


def test_batch_larger_than_data_samples_everything():
    model = _mlp()
    report = train_local_dpsgd(model, _data(8), LocalTraining(1, 32, 0.1, steps=2), DPSGD(1.0, 1.0), device=CPU, generator=_gen(0))
    assert report.sample_rate == 1.0 and report.examples_seen == 16


def test_per_example_clipping_bounds_each_step():
    # q = 1, one step, negligible noise: the step is lr × (mean of clipped gradients), so its norm
    # is at most lr × max_grad_norm; plain SGD on the same batch moves the weights far more.
    data = _data(32)
    clip, lr = 1e-3, 1.0
    model = _mlp()
    start = [p.detach().clone() for p in model.parameters()]
    train_local_dpsgd(model, data, LocalTraining(1, 32, lr, steps=1), DPSGD(clip, 1e-9), device=CPU, generator=_gen(0))
    step = math.sqrt(sum(float((p.detach() - s).square().sum()) for p, s in zip(model.parameters(), start)))
    assert 0 < step <= lr * clip * (1 + 1e-4)
    plain = _mlp()
    nn.functional.cross_entropy(plain(data.features), data.targets).backward()
    assert lr * math.sqrt(sum(float(p.grad.square().sum()) for p in plain.parameters())) > 100 * step


def test_noise_is_added_with_the_configured_scale():
    # q = 1 and one step: the step is -lr (Σ clipped + N(0, (σC)²)) / N per coordinate; a huge σ
    # makes the noise dominate, so the step's std per coordinate is ≈ lr σ C / N.
    n, lr, clip, sigma = 32, 1.0, 1.0, 1000.0
    model = _mlp()
    start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train_local_dpsgd(model, _data(n), LocalTraining(1, n, lr, steps=1), DPSGD(clip, sigma), device=CPU, generator=_gen(3))
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - start
    expected = lr * sigma * clip / n
    assert abs(float(moved.std()) / expected - 1) < 0.25  # 67 coordinates


def test_runs_are_reproducible_with_the_same_generator():
    settings = LocalTraining(epochs=1, batch_size=8, lr=0.2, momentum=0.9, steps=5)
    dp = DPSGD(max_grad_norm=0.5, noise_multiplier=1.0)
    runs = []
    for seed in (11, 11, 12):
        model = _mlp()
        report = train_local_dpsgd(model, _data(), settings, dp, device=CPU, generator=_gen(seed))
        runs.append((report, model.state_dict()))
    (r1, s1), (r2, s2), (_, s3) = runs
    assert r1 == r2 and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert all(not torch.equal(s1[k], s3[k]) for k in s1)


def test_regression_task_trains():
    model = _mlp(out=1)
    data = _data(48, task="regression")
    before = copy.deepcopy(model.state_dict())
    settings = LocalTraining(1, 12, 0.05, task="regression")
    report = train_local_dpsgd(model, data, settings, DPSGD(1.0, 0.8), device=CPU, generator=_gen(2))
    assert report.steps == 4
    assert any(not torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_batchnorm_is_refused_with_opacus_message():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="BatchNorm") as info:
        train_local_dpsgd(model, _data(), LocalTraining(1, 16, 0.1), DPSGD(1.0, 1.0), device=CPU, generator=_gen(0))
    assert "ModuleValidator.fix" in str(info.value)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert _opacus_leftovers(model) == []


@pytest.mark.parametrize(
    ("norm", "sigma"),
    [(0.0, 1.0), (-1.0, 1.0), (float("inf"), 1.0), (float("nan"), 1.0), (1.0, 0.0), (1.0, -1.0), (1.0, 2e6), (1.0, float("nan"))],
)
def test_dpsgd_config_ranges(norm, sigma):
    with pytest.raises(ConfigError):
        DPSGD(max_grad_norm=norm, noise_multiplier=sigma)


@pytest.mark.parametrize(
    "settings",
    [LocalTraining(1, 0, 0.1), LocalTraining(1, 8, 0.0), LocalTraining(1, 8, 0.1, momentum=1.0),
     LocalTraining(1, 8, 0.1, steps=0), LocalTraining(0, 8, 0.1), LocalTraining(1, 8, 0.1, task="ranking")],
)
def test_settings_are_checked(settings):
    with pytest.raises(ConfigError):
        train_local_dpsgd(_mlp(), _data(), settings, DPSGD(1.0, 1.0), device=CPU, generator=_gen(0))


def test_empty_data_and_bad_generator_are_refused():
    empty = DataSplit(features=torch.zeros(0, 4), targets=torch.zeros(0, dtype=torch.long))
    with pytest.raises(ConfigError, match="no"):
        train_local_dpsgd(_mlp(), empty, LocalTraining(1, 8, 0.1), DPSGD(1.0, 1.0), device=CPU, generator=_gen(0))
    with pytest.raises(TypeError):
        train_local_dpsgd(_mlp(), _data(), LocalTraining(1, 8, 0.1), DPSGD(1.0, 1.0), device=CPU, generator=None)
