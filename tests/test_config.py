"""Every config option composes and builds; bad values stop before training with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from torchchain.attacks.base import Attack
from torchchain.errors import ConfigError
from torchchain.experiment import resolve_byzantine, resolve_device, run
from torchchain.strategies.base import Strategy

from composing import CONF, FAST, ROOT, compose_config


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", _options("strategy"))
def test_every_strategy_option_builds(name):
    cfg = compose_config([f"strategy={name}"])
    strategy = instantiate(cfg.strategy, _convert_="all")
    assert isinstance(strategy, Strategy)


@pytest.mark.parametrize("name", _options("attack"))
def test_every_attack_option_builds(name):
    cfg = compose_config([f"attack={name}"])
    assert isinstance(instantiate(cfg.attack, _convert_="all"), Attack)


@pytest.mark.parametrize("name", _options("model"))
def test_every_model_option_builds_for_digits(name):
    cfg = compose_config([f"model={name}"])
    model = instantiate(cfg.model, input_shape=[1, 8, 8], num_outputs=10, _convert_="all")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", _options("dataset"))
def test_every_dataset_option_composes(name):
    cfg = compose_config([f"dataset={name}"])
    assert cfg.dataset._target_.startswith("torchchain.data.")


@pytest.mark.parametrize("name", _options("experiment"))
def test_every_experiment_composes(name):
    compose_config([f"experiment={name}"])


def test_byzantine_defaults_to_a_fifth_when_an_attack_is_set():
    assert resolve_byzantine(None, 5, attack_set=True) == 1
    assert resolve_byzantine(None, 10, attack_set=True) == 2
    assert resolve_byzantine(None, 3, attack_set=True) == 1
    assert resolve_byzantine(None, 5, attack_set=False) == 0
    assert resolve_byzantine(0.4, 10, attack_set=True) == 4
    assert resolve_byzantine(2, 10, attack_set=True) == 2


@pytest.mark.parametrize("value", [5, 7, -1, 1.5, 0.0, True])
def test_bad_byzantine_values_are_refused(value):
    with pytest.raises(ConfigError, match="byzantine"):
        resolve_byzantine(value, 5, attack_set=True)


def test_unknown_device_is_refused():
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["clients=0"], "clients must be a positive integer"),
        (["rounds=0"], "rounds must be a positive integer"),
        (["clients=5", "byzantine=5", "attack=signflip"], "at least one client must be honest"),
        (["lr=-1"], "lr must be a positive number"),
        (["chain.difficulty=99"], "chain.difficulty"),
        (["partition.kind=zipf"], "partition.kind"),
        (["strategy.f=5"], "f"),
        (["strategy._target_=torch.nn.Linear"], "strategy"),
        (["dataset=mnist", "dataset.root=/nonexistent", "dataset.download=false"], "MNIST"),
    ],
)
def test_bad_config_stops_before_training(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(compose_config([*FAST, *overrides]), tmp_path / "run")
    assert not (tmp_path / "run" / "ledger").exists()


def test_unknown_attack_names_the_available_options():
    with pytest.raises(MissingConfigException, match="signflip"):
        compose_config(["attack=nosuchattack"])


def _train(args: list[str], cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={cwd / 'out'}", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_train_py_reports_a_bad_value_and_exits_2(tmp_path):
    proc = _train(["clients=0"], tmp_path)
    assert proc.returncode == 2
    assert "clients must be a positive integer" in proc.stderr


def test_user_strategy_from_outside_the_package(tmp_path):
    """A user's own Strategy subclass, in a module of their own, selected with strategy._target_."""
    (tmp_path / "my_strategies.py").write_text(textwrap.dedent(
        '''
        import torch
        from torchchain.strategies import Aggregate, Strategy

        class FirstClientOnly(Strategy):
            """Trusts only the first update (by client key): easy to recognise in the ledger."""

            def aggregate(self, updates, weights):
                trust = torch.zeros(len(updates), dtype=torch.float64)
                trust[0] = 1.0
                return Aggregate(update=updates[0].clone(), trust=trust)
        '''
    ))
    proc = _train(["strategy._target_=my_strategies.FirstClientOnly", "rounds=2", *FAST], tmp_path, extra_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import json
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    from torchchain.chain.ledger import Ledger
    ledger = Ledger.open(summary["ledger"])
    assert ledger.config["strategy"]["_target_"] == "my_strategies.FirstClientOnly"
    trust = ledger.head.meta["trust"]
    assert sorted(trust.values()) == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert trust[min(trust)] == 1.0
