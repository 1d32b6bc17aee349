"""The pure functions behind the omniscient attacks, on hand-checked inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchchain.attacks.kernels import (
    alie_z_max,
    coordinate_std,
    min_max_gamma,
    min_max_satisfied,
    min_sum_gamma,
    min_sum_satisfied,
    pairwise_squared_distances,
    perturbation_direction,
    search_gamma,
)
from torchchain.errors import ConfigError

TAU = 1e-5


def f64(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# Two honest updates (2, 0) and (0, 2): mean (1, 1), squared diameter 8.
TWO = f64([[2.0, 0.0], [0.0, 2.0]])


def test_alie_z_max_matches_the_paper_formula_by_hand() -> None:
    # n=10, f=2: s = floor(6) - 2 = 4, Phi^-1((10 - 4) / 10) = Phi^-1(0.6) = 0.253347 (z-table).
    assert alie_z_max(10, 2) == pytest.approx(0.2533471031, abs=1e-9)
    # n=25, f=5: s = floor(13.5) - 5 = 8, Phi^-1(17 / 25) = Phi^-1(0.68) = 0.467699.
    assert alie_z_max(25, 5) == pytest.approx(0.4676987991, abs=1e-9)


def test_alie_z_max_is_undefined_when_attackers_are_a_majority() -> None:
    # n=4, f=3: s = 3 - 3 = 0, (n - s)/n = 1 and Phi^-1(1) is infinite.
    with pytest.raises(ConfigError, match="set attack.z explicitly"):
        alie_z_max(4, 3)


def test_coordinate_std_population_and_sample() -> None:
    honest = f64([[1.0, 0.0], [3.0, 4.0]])
    torch.testing.assert_close(coordinate_std(honest, unbiased=False), f64([[1.0, 2.0]])[0])
    torch.testing.assert_close(coordinate_std(honest, unbiased=True), f64([[math.sqrt(2), math.sqrt(8)]])[0])
    # A single update has no spread; the sample std is returned as zeros rather than NaN.
    torch.testing.assert_close(coordinate_std(honest[:1], unbiased=True), torch.zeros(2, dtype=torch.float64))


def test_perturbation_directions() -> None:
    root_half = 1 / math.sqrt(2)
    torch.testing.assert_close(perturbation_direction(TWO, "unit_vec"), f64([[-root_half, -root_half]])[0])
    torch.testing.assert_close(perturbation_direction(TWO, "sign"), f64([[-1.0, -1.0]])[0])
    torch.testing.assert_close(perturbation_direction(TWO, "std"), f64([[-math.sqrt(2), -math.sqrt(2)]])[0])
    zero_mean = f64([[1.0, -1.0], [-1.0, 1.0]])
    torch.testing.assert_close(perturbation_direction(zero_mean, "unit_vec"), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ConfigError, match="perturbation must be one of"):
        perturbation_direction(TWO, "random")


def test_pairwise_squared_distances() -> None:
    honest = f64([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    expected = f64([[0.0, 25.0, 1.0], [25.0, 0.0, 18.0], [1.0, 18.0, 0.0]])
    torch.testing.assert_close(pairwise_squared_distances(honest), expected)


def test_search_gamma_finds_the_boundary_of_an_interval() -> None:
    found = search_gamma(lambda gamma: gamma <= 3.3, gamma_init=10.0, tau=TAU)
    assert 3.3 - 2 * TAU <= found <= 3.3
    assert search_gamma(lambda gamma: False, gamma_init=10.0, tau=TAU) == 0.0
    # Everything accepted: the search climbs towards its upper limit 2 * gamma_init.
    assert 20.0 - 2 * TAU <= search_gamma(lambda gamma: True, gamma_init=10.0, tau=TAU) < 20.0


def test_min_max_gamma_by_hand() -> None:
    # m = (1 - a, 1 - a) with a = gamma / sqrt(2); ||m - (2, 0)||^2 = 2 + 2 a^2 <= 8 gives gamma <= sqrt(6).
    direction = perturbation_direction(TWO, "unit_vec")
    gamma = min_max_gamma(TWO, direction, gamma_init=10.0, tau=TAU)
    assert math.sqrt(6) - 2 * TAU <= gamma <= math.sqrt(6)


def test_min_sum_gamma_by_hand() -> None:
    # sum_i ||m - x_i||^2 = 4 + 4 a^2 <= max_i sum_j ||x_i - x_j||^2 = 8 gives gamma <= sqrt(2).
    direction = perturbation_direction(TWO, "unit_vec")
    gamma = min_sum_gamma(TWO, direction, gamma_init=10.0, tau=TAU)
    assert math.sqrt(2) - 2 * TAU <= gamma <= math.sqrt(2)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    k=st.integers(min_value=2, max_value=6),
    d=st.integers(min_value=1, max_value=8),
    kind=st.sampled_from(["unit_vec", "std", "sign"]),
)
def test_found_gamma_satisfies_the_constraint_and_twice_it_does_not(seed: int, k: int, d: int, kind: str) -> None:
    generator = torch.Generator().manual_seed(seed)
    honest = torch.randn(k, d, generator=generator, dtype=torch.float64) + 0.5
    mean = honest.mean(dim=0)
    direction = perturbation_direction(honest, kind)
    for find, satisfied in ((min_max_gamma, min_max_satisfied), (min_sum_gamma, min_sum_satisfied)):
        gamma = find(honest, direction, gamma_init=10.0, tau=TAU)
        assert satisfied(honest, mean + gamma * direction)
        at_limit = gamma >= 20.0 - 2 * TAU
        if not at_limit and gamma > 1e-3:
            assert not satisfied(honest, mean + 2 * gamma * direction)
