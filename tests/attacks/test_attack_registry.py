"""What every attack shares: the registry, setup validation, descriptions and state."""

from __future__ import annotations

import json

import pytest
import torch

import torchchain.attacks as attacks
from torchchain.attacks import ALIE, Attack, Mimic, SignFlip
from torchchain.errors import ConfigError

from composing import config_classes

#: conf/attack/<name>.yaml -> the class it names
ATTACKS = config_classes("attack")

CONFIG_NAMES = [
    "alie", "backdoor", "gaussian", "ipm", "labelflip", "malformed", "mimic", "minmax", "minsum", "none",
    "optimal_alie", "optimal_ipm", "replay", "rop", "signflip", "sybil",
]


def test_every_attack_config_names_an_attack_class_of_that_name() -> None:
    assert sorted(ATTACKS) == CONFIG_NAMES
    for name, cls in ATTACKS.items():
        assert issubclass(cls, Attack) and cls.name == name
    assert attacks.__all__ == sorted(attacks.__all__)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_describe_is_json_and_names_the_attack(name: str) -> None:
    attack = ATTACKS[name]()
    attack.setup(num_clients=10, num_byzantine=2)
    record = attack.describe()
    assert record["name"] == name
    assert json.loads(json.dumps(record)) == record


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_state_dict_round_trip_and_validation(name: str) -> None:
    attack = ATTACKS[name]()
    state = attack.state_dict()
    restored = ATTACKS[name]()
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    with pytest.raises(ConfigError, match="keeps no state|unexpected keys"):
        restored.load_state_dict({"gamma": 1.0})
    with pytest.raises(ConfigError, match="must be a mapping"):
        restored.load_state_dict([("gamma", 1.0)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("num_clients", "num_byzantine", "match"),
    [
        (0, 0, "clients must be at least 1"),
        (5, 6, "byzantine must be between 0 and clients=5"),
        (5, -1, "byzantine must be between 0 and clients=5"),
        (5.0, 1, "num_clients must be an integer"),
        (5, True, "num_byzantine must be an integer"),
    ],
)
def test_setup_rejects_bad_counts(num_clients, num_byzantine, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SignFlip().setup(num_clients=num_clients, num_byzantine=num_byzantine)


def test_setup_records_counts() -> None:
    attack = SignFlip()
    with pytest.raises(RuntimeError, match="call setup"):
        _ = attack.num_clients
    attack.setup(num_clients=7, num_byzantine=7)  # not omniscient: all-malicious is allowed
    assert (attack.num_clients, attack.num_byzantine) == (7, 7)


def test_omniscient_attacks_need_an_honest_client() -> None:
    for cls in ATTACKS.values():
        if cls.omniscient:
            with pytest.raises(ConfigError, match="at least one honest client"):
                cls().setup(num_clients=4, num_byzantine=4)


def test_attack_specific_setup_checks() -> None:
    with pytest.raises(ConfigError, match="z_max is undefined"):
        ALIE().setup(num_clients=4, num_byzantine=3)
    ALIE(z=1.0).setup(num_clients=4, num_byzantine=3)  # an explicit z needs no z_max
    with pytest.raises(ConfigError, match="only 3 honest clients"):
        Mimic(target=3).setup(num_clients=5, num_byzantine=2)
    Mimic(target=2).setup(num_clients=5, num_byzantine=2)


def test_default_hooks_leave_data_and_updates_alone() -> None:
    features, targets = torch.ones(2, 3), torch.tensor([0, 1])
    update = torch.ones(3, dtype=torch.float64)
    attack = ATTACKS["none"]()
    out_features, out_targets = attack.poison_data(features, targets, num_classes=2, generator=torch.Generator())
    assert out_features is features and out_targets is targets
    assert attack.poison_update(update, honest=None, generator=torch.Generator()) is update
