"""Label flipping and the backdoor trigger on small hand-made data sets."""

from __future__ import annotations

import pytest
import torch

from torchchain.attacks import Backdoor, LabelFlip
from torchchain.attacks.backdoor import stamp_trigger
from torchchain.errors import ConfigError


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_labelflip_on_ten_classes() -> None:
    features = torch.randn(10, 4, generator=seeded())
    targets = torch.arange(10)
    out_features, out_targets = LabelFlip().poison_data(features, targets, num_classes=10, generator=seeded())
    assert torch.equal(out_targets, torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]))
    assert torch.equal(out_features, features)
    assert torch.equal(targets, torch.arange(10)), "the caller's targets must not change"


def test_labelflip_refuses_regression_and_bad_labels() -> None:
    features = torch.zeros(3, 2)
    with pytest.raises(ConfigError, match="regression"):
        LabelFlip().poison_data(features, torch.zeros(3), num_classes=None, generator=seeded())
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        LabelFlip().poison_data(features, torch.tensor([0, 10, 2]), num_classes=10, generator=seeded())
    with pytest.raises(ValueError, match="integer class indices"):
        LabelFlip().poison_data(features, torch.tensor([0.0, 1.0, 2.0]), num_classes=10, generator=seeded())


def images() -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.zeros(10, 2, 5, 5)
    features[0, 0, 0, 0] = 0.7  # the brightest pixel, far from the trigger corner
    return features, torch.arange(1, 11) % 10


def test_backdoor_stamps_the_bottom_right_square_on_the_chosen_fraction() -> None:
    features, targets = images()
    attack = Backdoor(target_label=0, poison_fraction=0.5, trigger_size=3)
    out_features, out_targets = attack.poison_data(features, targets, num_classes=10, generator=seeded(5))

    changed = (out_features != features).flatten(1).any(dim=1)
    assert int(changed.sum()) == 5  # floor(0.5 * 10)
    corner = torch.zeros(5, 5, dtype=torch.bool)
    corner[2:, 2:] = True
    for i in range(10):
        if changed[i]:
            # every channel of the 3x3 corner holds the data maximum, nothing else moved
            assert torch.all(out_features[i][:, corner] == 0.7)
            assert torch.equal(out_features[i][:, ~corner], features[i][:, ~corner])
            assert out_targets[i] == 0
        else:
            assert out_targets[i] == targets[i]
    assert torch.equal(features, images()[0]), "the caller's features must not change"


def test_backdoor_choice_is_deterministic_given_the_generator() -> None:
    features, targets = images()
    attack = Backdoor(poison_fraction=0.3)
    first = attack.poison_data(features, targets, num_classes=10, generator=seeded(11))
    second = attack.poison_data(features, targets, num_classes=10, generator=seeded(11))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_backdoor_flat_features_get_the_last_square_features() -> None:
    features = torch.zeros(4, 6)
    attack = Backdoor(poison_fraction=1.0, trigger_size=2, trigger_value=9.0, target_label=3)
    targets = torch.zeros(4, dtype=torch.long)
    out_features, out_targets = attack.poison_data(features, targets, num_classes=5, generator=seeded())
    assert torch.equal(out_features, torch.tensor([[0.0, 0.0, 9.0, 9.0, 9.0, 9.0]] * 4))
    assert torch.equal(out_targets, torch.full((4,), 3))


def test_apply_trigger_stamps_every_sample() -> None:
    features, _ = images()
    stamped = Backdoor(trigger_size=2).apply_trigger(features)
    assert torch.all(stamped[:, :, 3:, 3:] == 0.7)
    assert torch.equal(stamped[:, :, :3, :], features[:, :, :3, :])
    assert torch.equal(stamped[:, :, :, :3], features[:, :, :, :3])
    assert torch.equal(stamp_trigger(torch.zeros(1, 3, 3), size=3, value=1.0), torch.ones(1, 3, 3))


def test_backdoor_refuses_what_it_cannot_poison() -> None:
    features, targets = images()
    with pytest.raises(ConfigError, match="regression"):
        Backdoor().poison_data(features, targets, num_classes=None, generator=seeded())
    with pytest.raises(ConfigError, match="target_label=10 is not a class"):
        Backdoor(target_label=10).poison_data(features, targets, num_classes=10, generator=seeded())
    with pytest.raises(ValueError, match="cannot hold a 6x6 trigger"):
        Backdoor(trigger_size=6).apply_trigger(features)
    with pytest.raises(ValueError, match="fewer than the 9"):
        Backdoor().apply_trigger(torch.zeros(2, 8))
    for kwargs in ({"poison_fraction": 1.5}, {"trigger_size": 0}, {"target_label": -1}, {"boost": 0.0}):
        with pytest.raises(ConfigError):
            Backdoor(**kwargs)
