"""Every config option composes and builds; bad values stop before training with a clear message."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from torchchain.attacks.base import Attack
from torchchain.chain.ledger import Ledger
from torchchain.data import TaskData
from torchchain.errors import ConfigError
from torchchain.experiment import _check_config, resolve_byzantine, resolve_device, run
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


#: Dataset options whose data ship with scikit-learn, so the test can load them offline.
_BUNDLED_DATASETS = {"digits": "classification", "diabetes": "regression"}


@pytest.mark.parametrize("name", _options("dataset"))
def test_every_dataset_option_names_a_loader_that_takes_its_arguments(name):
    cfg = compose_config([f"dataset={name}"])
    node = OmegaConf.to_container(cfg.dataset, resolve=True)
    loader = get_method(node.pop("_target_"))
    assert loader.__module__.startswith("torchchain.data")
    inspect.signature(loader).bind(**node)  # raises TypeError on a key the loader does not take
    if name in _BUNDLED_DATASETS:
        data = instantiate(cfg.dataset, _convert_="all")
        assert isinstance(data, TaskData)
        assert data.name == name and data.task == _BUNDLED_DATASETS[name]
        assert len(data.train) > len(data.test) > 0


@pytest.mark.parametrize("name", _options("experiment"))
def test_every_experiment_applies_its_values_and_they_are_valid(name):
    preset = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    cfg = compose_config([f"experiment={name}"])
    assert cfg != compose_config(), "the preset changes nothing"
    for entry in preset.get("defaults", []):
        if isinstance(entry, str):  # _self_
            continue
        for override, option in entry.items():  # e.g. "override /dataset": "diabetes"
            group = override.removeprefix("override").strip(" /")
            chosen = OmegaConf.load(CONF / group / f"{option}.yaml")
            assert cfg[group]._target_ == chosen._target_, f"{name}: {group} is not {option}"
    for key, value in preset.items():
        if key != "defaults":
            assert cfg[key] == value, f"{name}: {key} is {cfg[key]!r}, the preset says {value!r}"
    _check_config(cfg)  # the preset's values pass the checks a run makes


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
        (["lr=-1"], "lr must be a finite number > 0"),
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


_LIMIT = {"local_epochs": "1,000", "local_steps": "1,000,000", "batch_size": "1,000,000", "clients": "100,000",
          "rounds": "1,000,000", "runtime.eval_every": "1,000,000", "partition.shards_per_client": "100,000"}
_SEED_RANGE = r"integer in \[0, 2\*\*32 - 1"


def _bad(override: str, key: str, advice: str):
    return pytest.param([override], key, advice, id=override)


@pytest.mark.parametrize(
    ("overrides", "key", "advice"),
    [
        # lr: a finite number > 0
        *[_bad(f"lr={v}", "lr", "finite number > 0") for v in ("inf", "-inf", "nan", "-0.5", "0", "true", "fast")],
        # chain.max_update_mb: 0 used to reject every update and end "successfully" at chance accuracy
        *[_bad(f"chain.max_update_mb={v}", "chain.max_update_mb", r"finite number > 0 and <= 4096")
          for v in ("nan", "inf", "0", "-1", "5000", "true")],
        # seed: an integer numpy, scikit-learn and torch all accept
        *[_bad(f"seed={v}", "seed", _SEED_RANGE)
          for v in ("1e400", "true", "-1", "1.5", "4294967296", str(2**63), str(2**64), "abc")],
        # sizes: positive integers below a bound that no real run comes near
        *[_bad(f"{k}={v}", k, rf"\[1, {_LIMIT[k]}\]") for k, v in [
            ("local_epochs", "1e9"), ("local_epochs", "1001"), ("local_epochs", "0"), ("local_epochs", "2.5"),
            ("local_steps", "0"), ("local_steps", "1000001"), ("local_steps", "true"),
            ("batch_size", "0"), ("batch_size", "1000001"), ("batch_size", "1e12"),
            ("clients", "100001"), ("clients", "-3"),
            ("rounds", "1000001"), ("rounds", "1e9"), ("rounds", "false"),
            ("runtime.eval_every", "0"), ("runtime.eval_every", "1000001"), ("runtime.eval_every", "1.5"),
            ("partition.shards_per_client", "0"), ("partition.shards_per_client", "1.5"),
            ("partition.shards_per_client", "100001"),
        ]],
        # momentum: a number in [0, 1)
        *[_bad(f"momentum={v}", "momentum", r"number in \[0, 1\)") for v in ("true", "nan", "heavy", "1", "-0.1", "inf")],
        # partition.alpha: a finite number > 0 (checked whatever partition.kind is)
        *[_bad(f"partition.alpha={v}", "partition.alpha", "finite number > 0") for v in ("0", "-1", "nan", "inf", "true")],
        _bad("partition.kind=zipf", "partition.kind", "iid, dirichlet, shards"),
        _bad("runtime.progress=maybe", "runtime.progress", "true or false"),
        *[_bad(f"chain.difficulty={v}", "chain.difficulty", r"integer in \[0, 40\]") for v in ("41", "-1", "true", "8.5")],
    ],
)
def test_bad_value_is_refused_naming_its_key_before_a_ledger_exists(tmp_path, overrides, key, advice):
    with pytest.raises(ConfigError) as err:
        run(compose_config([*FAST, *overrides]), tmp_path / "run")
    message = str(err.value)
    assert re.search(rf"(^|[^\w.]){re.escape(key)}\b", message), f"the message does not name {key}: {message}"
    assert re.search(advice, message), f"the message does not say what to give: {message}"
    assert not (tmp_path / "run" / "ledger").exists()
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize(
    "override",
    [
        "local_epochs=1000", "local_steps=1000000", "batch_size=1000000", "clients=100000", "rounds=1000000",
        "runtime.eval_every=1000000", "partition.shards_per_client=100000", "seed=0", "seed=4294967295",
        "chain.max_update_mb=4096", "chain.max_update_mb=0.25", "lr=1e-6", "lr=5", "momentum=0", "momentum=0.99",
        "partition.alpha=1e-3", "partition.alpha=1e6", "chain.difficulty=0", "chain.difficulty=40",
    ],
)
def test_values_at_the_limits_are_accepted(override):
    key, value = override.split("=")
    checked = _check_config(compose_config([override]))
    assert checked[key] == float(value)


def test_an_unusual_but_valid_config_runs_to_the_end(tmp_path):
    """The largest seed, a fractional update limit and momentum: accepted, and every update gets in."""
    overrides = ["seed=4294967295", "chain.max_update_mb=0.5", "momentum=0.5", "rounds=2", "local_steps=3"]
    summary = run(compose_config([*FAST, *overrides]), tmp_path / "run")
    assert summary["rejected"] == 0
    ledger = Ledger.open(summary["ledger"])
    assert ledger.height == 2 and ledger.config["seed"] == 4294967295
    assert all(len(block.transactions) == 5 for block in ledger.blocks()[1:])


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


@pytest.mark.parametrize(
    ("override", "message"),
    [("clients=0", "clients must be a positive integer"), ("chain.max_update_mb=0", "chain.max_update_mb must be")],
)
def test_train_py_reports_a_bad_value_and_exits_2(tmp_path, override, message):
    proc = _train([override], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "ledger").exists()


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
