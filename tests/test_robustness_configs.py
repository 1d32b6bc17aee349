"""The strategy and attack library as a user selects it: one config file per option, checked
requirements, composition with pre-aggregation steps, and robustness end to end."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

import torchchain.strategies
from torchchain.attacks.base import Attack
from torchchain.errors import ConfigError
from torchchain.experiment import run
from torchchain.strategies import STRATEGIES, NearestNeighborMixing
from torchchain.strategies.base import Strategy

from composing import CONF, FAST, compose_config


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _target_class(node) -> type:
    module, _, name = node._target_.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_default_strategy_is_centered_clipping_with_the_adaptive_radius():
    from torchchain.strategies import CenteredClipping

    node = compose_config([]).strategy
    assert _target_class(node) is CenteredClipping
    assert OmegaConf.to_container(node) == {"_target_": "torchchain.strategies.CenteredClipping", "f": None, "pre": []}
    strategy = instantiate(node, _convert_="all")
    assert (strategy.tau, strategy.iterations, strategy.momentum, strategy.pre) == ("auto", 1, 0.0, ())


def test_every_registered_strategy_has_a_config_file():
    assert set(STRATEGIES) <= set(_options("strategy"))


@pytest.mark.parametrize("name", _options("strategy"))
def test_strategy_config_builds_the_named_class_with_every_default(name):
    node = compose_config([f"strategy={name}"]).strategy
    cls = _target_class(node)
    assert issubclass(cls, Strategy)
    if name in STRATEGIES:
        assert cls is STRATEGIES[name]
    # The file lists every keyword argument at its default, so a user sees all there is to set;
    # the default lists only what every strategy takes, so that strategy._target_=my_pkg.Cls works.
    params = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    params["pre"] = []
    if name == "default":
        params = {"f": None, "pre": []}
    assert OmegaConf.to_container(node) == {"_target_": node._target_, **params}
    strategy = instantiate(node, _convert_="all")
    assert isinstance(strategy, cls)
    assert strategy.pre == ()


@pytest.mark.parametrize("name", _options("attack"))
def test_attack_config_builds_the_named_class_with_every_default(name):
    node = compose_config([f"attack={name}"]).attack
    cls = _target_class(node)
    assert issubclass(cls, Attack) and cls.name == name
    params = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    assert OmegaConf.to_container(node) == {"_target_": node._target_, **params}
    assert isinstance(instantiate(node, _convert_="all"), cls)


def test_pre_steps_are_chosen_by_name_on_the_command_line():
    cfg = compose_config(["strategy=krum", "strategy.pre=[nnm]"])
    strategy = instantiate(cfg.strategy, _convert_="all")
    assert type(strategy) is torchchain.strategies.Krum
    assert [type(step) for step in strategy.pre] == [NearestNeighborMixing]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy=krum", "clients=5", "byzantine=2"], r"n >= 2f\+3"),
        (["strategy=multikrum", "clients=6", "byzantine=2"], r"n >= 2f\+3"),
        (["strategy=bulyan", "clients=10", "byzantine=2"], r"bulyan needs n >= 4f\+3 clients, got n=10, f=2"),
        (["strategy=trimmed_mean", "clients=4", "byzantine=2"], r"n > 2\*trim"),
        (["strategy=multikrum", "strategy.m=11", "clients=10"], "m <= n"),
        # Buckets of 2 turn 10 clients into 5 rows, too few for Krum with f=2.
        (["strategy=krum", "strategy.pre=[bucketing]", "clients=10", "byzantine=2"], "turn 10 clients into 5 rows"),
        (["strategy=median", "strategy.pre=[sharding]"], "pre-aggregation step 'sharding' is unknown"),
        (["strategy=centered_clipping", "strategy.tau=0"], "tau must be a positive number"),
        (["attack=mimic", "attack.target=8", "clients=10", "byzantine=2"], "only 8 honest clients"),
        (["attack=minmax", "attack.perturbation=random"], "perturbation must be one of"),
    ],
)
def test_requirement_violations_stop_before_training(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(compose_config([*FAST, *overrides]), tmp_path / "run")
    assert not (tmp_path / "run" / "ledger").exists()


def _final_accuracy(strategy: str, tmp_path) -> float:
    # Five local epochs make a round long enough that an unattacked run is past 0.9 in six rounds.
    overrides = [
        *FAST,
        f"strategy={strategy}",
        "attack=signflip",
        "attack.scale=5",
        "clients=10",
        "byzantine=2",
        "rounds=6",
        "local_epochs=5",
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run(compose_config(overrides), tmp_path / strategy)
    return summary["final_accuracy"]


def test_scaled_sign_flipping_breaks_fedavg_but_not_the_robust_rules(tmp_path):
    assert _final_accuracy("fedavg", tmp_path) < 0.5
    for strategy in ("median", "krum", "geomed", "centered_clipping"):
        assert _final_accuracy(strategy, tmp_path) >= 0.85, strategy
