"""Model-poisoning attacks against their formulas on small hand-made updates."""

from __future__ import annotations

import math

import pytest
import torch

from torchchain.attacks import ALIE, IPM, Backdoor, Gaussian, Mimic, MinMax, MinSum, NoAttack, SignFlip
from torchchain.attacks.kernels import min_max_satisfied, min_sum_satisfied
from torchchain.errors import ConfigError


def f64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


OWN = f64([1.0, -2.0, 0.5])
HONEST = torch.tensor([[1.0, 2.0, 0.0], [3.0, -4.0, 2.0]], dtype=torch.float64)


def test_no_attack_returns_the_update_unchanged() -> None:
    assert torch.equal(NoAttack().poison_update(OWN, honest=None, generator=seeded()), OWN)


def test_signflip_reverses_and_scales() -> None:
    out = SignFlip(scale=2.0).poison_update(OWN, honest=None, generator=seeded())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, f64([-2.0, 4.0, -1.0]))


def test_gaussian_is_scaled_standard_normal_from_the_generator() -> None:
    out = Gaussian(std=2.0).poison_update(OWN, honest=None, generator=seeded(7))
    expected = 2.0 * torch.randn(3, generator=seeded(7), dtype=torch.float64)
    assert out.shape == (3,) and out.dtype == torch.float64
    torch.testing.assert_close(out, expected)
    assert torch.equal(out, Gaussian(std=2.0).poison_update(OWN, honest=None, generator=seeded(7)))
    assert not torch.equal(out, Gaussian(std=2.0).poison_update(OWN, honest=None, generator=seeded(8)))
    silent = Gaussian(std=0.0).poison_update(OWN, honest=None, generator=seeded())
    assert torch.equal(silent, torch.zeros(3, dtype=torch.float64))


def test_ipm_sends_minus_epsilon_times_the_honest_mean() -> None:
    # mean of HONEST = (2, -1, 1)
    out = IPM(epsilon=0.5).poison_update(OWN, honest=HONEST, generator=seeded())
    torch.testing.assert_close(out, f64([-1.0, 0.5, -0.5]))


def test_alie_with_explicit_z_uses_population_std() -> None:
    # mean (2, -1, 1), population std (1, 3, 1)
    out = ALIE(z=1.5).poison_update(OWN, honest=HONEST, generator=seeded())
    torch.testing.assert_close(out, f64([3.5, 3.5, 2.5]))


def test_alie_default_z_is_z_max_from_setup() -> None:
    attack = ALIE()
    attack.setup(num_clients=10, num_byzantine=2)
    assert attack.z_used == pytest.approx(0.2533471031, abs=1e-9)
    out = attack.poison_update(OWN, honest=HONEST, generator=seeded())
    z = 0.2533471031357998
    torch.testing.assert_close(out, f64([2.0 + z, -1.0 + 3 * z, 1.0 + z]))
    assert attack.describe() == {"name": "alie", "z": None, "z_used": attack.z_used}


def test_alie_without_setup_or_z_refuses() -> None:
    with pytest.raises(RuntimeError, match="call setup"):
        ALIE().poison_update(OWN, honest=HONEST, generator=seeded())


def test_mimic_copies_one_honest_row() -> None:
    torch.testing.assert_close(Mimic().poison_update(OWN, honest=HONEST, generator=seeded()), HONEST[0])
    out = Mimic(target=1).poison_update(OWN, honest=HONEST, generator=seeded())
    torch.testing.assert_close(out, HONEST[1])
    out[0] = 99.0
    assert HONEST[1, 0] == 3.0, "the copy must not alias the honest update"
    with pytest.raises(ValueError, match="only 2 honest updates"):
        Mimic(target=2).poison_update(OWN, honest=HONEST, generator=seeded())


def test_omniscient_attacks_refuse_a_missing_or_mismatched_honest_matrix() -> None:
    for attack in (IPM(), ALIE(z=1.0), Mimic(), MinMax(), MinSum()):
        assert attack.omniscient
        with pytest.raises(ValueError, match="omniscient"):
            attack.poison_update(OWN, honest=None, generator=seeded())
        with pytest.raises(ValueError, match="coordinates"):
            attack.poison_update(OWN, honest=HONEST[:, :2], generator=seeded())
    for attack in (NoAttack(), SignFlip(), Gaussian(), Backdoor()):
        assert not attack.omniscient


# The gamma search stops within 2 * tau = 2e-5 of the boundary; outputs move by that times |p_j|.
SEARCH_ATOL = 1e-4

# Honest (2, 0) and (0, 2): by hand, Min-Max's gamma is sqrt(6) and Min-Sum's sqrt(2) along -(1, 1)/sqrt(2).
SQUARE = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
OWN2 = f64([5.0, 5.0])


def test_minmax_by_hand() -> None:
    out = MinMax().poison_update(OWN2, honest=SQUARE, generator=seeded())
    # mu + sqrt(6) * (-(1, 1) / sqrt(2)) = (1 - sqrt(3), 1 - sqrt(3))
    torch.testing.assert_close(out, f64([1 - math.sqrt(3)] * 2), atol=SEARCH_ATOL, rtol=0)
    assert min_max_satisfied(SQUARE, out)
    mean = SQUARE.mean(dim=0)
    assert not min_max_satisfied(SQUARE, mean + 2 * (out - mean))


@pytest.mark.parametrize("cls", [MinMax, MinSum])
def test_min_max_and_min_sum_search_once_per_round_and_answer_every_client_alike(cls, monkeypatch) -> None:
    attack, searches = cls(), []
    original = attack.search_gamma
    monkeypatch.setattr(attack, "search_gamma", lambda *a: searches.append(1) or original(*a))
    first = attack.poison_update(OWN2, honest=SQUARE, generator=seeded(1))
    second = attack.poison_update(-OWN2, honest=SQUARE.clone(), generator=seeded(2))
    assert torch.equal(first, second) and first is not second and len(searches) == 1
    moved = SQUARE + 1.0  # the next round's honest updates: a new search
    torch.testing.assert_close(attack.poison_update(OWN2, honest=moved, generator=seeded()), first + 1.0, atol=SEARCH_ATOL, rtol=0)
    assert len(searches) == 2


def test_minsum_by_hand() -> None:
    out = MinSum().poison_update(OWN2, honest=SQUARE, generator=seeded())
    # mu + sqrt(2) * (-(1, 1) / sqrt(2)) = (0, 0)
    torch.testing.assert_close(out, f64([0.0, 0.0]), atol=SEARCH_ATOL, rtol=0)
    assert min_sum_satisfied(SQUARE, out)
    mean = SQUARE.mean(dim=0)
    assert not min_sum_satisfied(SQUARE, mean + 2 * (out - mean))


def test_minmax_sign_and_std_perturbations_by_hand() -> None:
    # sign: p = (-1, -1), 2 + 2 gamma^2 <= 8 -> gamma = sqrt(3); std: p = -(sqrt 2, sqrt 2) -> gamma = sqrt(1.5).
    for perturbation in ("sign", "std"):
        out = MinMax(perturbation=perturbation).poison_update(OWN2, honest=SQUARE, generator=seeded())
        torch.testing.assert_close(out, f64([1 - math.sqrt(3)] * 2), atol=SEARCH_ATOL, rtol=0)


def test_minmax_and_minsum_reach_the_search_limit_without_a_direction() -> None:
    # Identical honest updates have zero spread, so p = -sigma = 0 and every gamma passes:
    # the search climbs to 2 * gamma_init and the update stays at the mean.
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    for attack in (MinMax(perturbation="std"), MinSum(perturbation="std")):
        torch.testing.assert_close(attack.poison_update(OWN2, honest=same, generator=seeded()), f64([1.0, 2.0]))


def test_minmax_and_minsum_are_deterministic() -> None:
    honest = torch.randn(5, 16, generator=seeded(3), dtype=torch.float64)
    own = torch.randn(16, generator=seeded(4), dtype=torch.float64)
    for attack in (MinMax(), MinSum()):
        first = attack.poison_update(own, honest=honest, generator=seeded(1))
        second = attack.poison_update(own, honest=honest.clone(), generator=seeded(2))
        assert torch.equal(first, second)


def test_backdoor_boost_defaults_to_model_replacement() -> None:
    attack = Backdoor()
    attack.setup(num_clients=10, num_byzantine=2)
    torch.testing.assert_close(attack.poison_update(OWN, honest=None, generator=seeded()), 5.0 * OWN)
    torch.testing.assert_close(Backdoor(boost=3.0).poison_update(OWN, honest=None, generator=seeded()), 3.0 * OWN)
    with pytest.raises(RuntimeError, match="call setup"):
        Backdoor().poison_update(OWN, honest=None, generator=seeded())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SignFlip(scale=0.0), "scale must be a finite number > 0"),
        (lambda: Gaussian(std=-1.0), "std must be a finite number >= 0"),
        (lambda: IPM(epsilon=float("nan")), "epsilon must be a finite number > 0"),
        (lambda: ALIE(z=float("inf")), "z must be a finite number"),
        (lambda: MinMax(perturbation="unit"), "perturbation must be one of"),
        (lambda: MinSum(tau=0.0), "tau must be a finite number > 0"),
        (lambda: Mimic(target=-1), "target must be an integer >= 0"),
    ],
)
def test_constructors_reject_bad_arguments(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()
