"""Each aggregation rule on small inputs whose results are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from torchchain.errors import ConfigError
from torchchain.strategies import (
    Bulyan,
    CenteredClipping,
    FedAvg,
    FLTrust,
    GeoMed,
    Krum,
    LNearest,
    Median,
    MultiKrum,
    TrimmedMean,
)
from torchchain.strategies.kernels import iterated_krum_selection, krum_scores, pairwise_sq_distances


def t(rows) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def ones(n: int) -> Tensor:
    return torch.ones(n, dtype=torch.float64)


def ready(strategy, n: int, f: int):
    strategy.setup(num_clients=n, num_byzantine=f)
    return strategy


#: Four honest rows near the origin and one far outlier. Squared distances from row 3 (0.4, 0.4):
#: 0.32 to row 0, 0.52 to rows 1 and 2; row 0: 1 to rows 1, 2; rows 1, 2: 2 to each other.
CLUSTER = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.4, 0.4], [50.0, 50.0]]


# -- FedAvg and Median ----------------------------------------------------------------------


def test_fedavg_is_the_sample_weighted_mean():
    result = FedAvg()(t([[1.0, 2.0], [3.0, 6.0]]), t([1.0, 3.0]))
    assert result.update.tolist() == [2.5, 5.0]
    assert result.trust.tolist() == [0.25, 0.75]


def test_median_with_even_n_averages_the_two_middle_rows():
    # sorted: 1 (row 0), 2 (row 2), 4 (row 1), 10 (row 3) -> (2 + 4) / 2; rows 2 and 1 share the trust
    result = Median()(t([[1.0], [4.0], [2.0], [10.0]]), t([100.0, 1.0, 1.0, 1.0]))
    assert result.update.tolist() == [3.0]
    assert result.trust.tolist() == [0.0, 0.5, 0.5, 0.0]


def test_median_trust_is_the_share_of_coordinates_a_row_supplied():
    # column 0 median: row 1 (value 2); column 1 median: row 0 (value 5)
    result = Median()(t([[1.0, 5.0], [2.0, 9.0], [3.0, 1.0]]), ones(3))
    assert result.update.tolist() == [2.0, 5.0]
    assert result.trust.tolist() == [0.5, 0.5, 0.0]


# -- TrimmedMean ----------------------------------------------------------------------------


def test_trimmed_mean_ignores_f_extreme_values_per_coordinate():
    updates = t([[1.0, 7.0], [2.0, -100.0], [3.0, 6.0], [100.0, 5.0]])
    result = ready(TrimmedMean(), 4, 1)(updates, ones(4))
    # column 0 keeps 2, 3; column 1 keeps 5, 6; whatever the extremes, the result is the same
    assert result.update.tolist() == [2.5, 5.5]
    assert result.trust.tolist() == [0.0, 0.25, 0.5, 0.25]
    wilder = updates.clone()
    wilder[3, 0], wilder[1, 1] = 1e12, -1e12
    assert ready(TrimmedMean(), 4, 1)(wilder, ones(4)).update.tolist() == [2.5, 5.5]


def test_trimmed_mean_accepts_a_count_or_a_fraction():
    updates = t([[0.0], [1.0], [2.0], [3.0], [100.0]])
    assert ready(TrimmedMean(trim=2), 5, 0)(updates, ones(5)).update.tolist() == [2.0]
    assert ready(TrimmedMean(trim=0.2), 5, 0)(updates, ones(5)).update.tolist() == [2.0]  # floor(0.2 * 5) = 1


def test_trimmed_mean_requirement_names_n_and_f():
    with pytest.raises(ConfigError, match=r"n > 2\*trim clients, got n=4, f=2, trim=2"):
        TrimmedMean().setup(num_clients=4, num_byzantine=2)
    with pytest.raises(ConfigError, match="fraction"):
        TrimmedMean(trim=0.5)


# -- Krum and MultiKrum ---------------------------------------------------------------------


def test_krum_returns_one_input_row_and_ignores_a_far_outlier():
    # n = 5, f = 1: scores sum the 2 nearest squared distances:
    # row 0: 0.32 + 1 = 1.32, rows 1 and 2: 0.52 + 1 = 1.52, row 3: 0.32 + 0.52 = 0.84.
    updates = t(CLUSTER)
    result = ready(Krum(), 5, 1)(updates, ones(5))
    assert torch.equal(result.update, updates[3])
    assert result.trust.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]


def test_krum_breaks_equal_scores_by_row_index_not_by_content():
    # The corners of a unit square all score 2. Row 0, (1, 1), wins although its first coordinate
    # is the larger one: ties go to the client whose key sorts first, never to the row content.
    square = t([[1.0, 1.0], [0.0, 1.0], [50.0, 50.0], [1.0, 0.0], [0.0, 0.0]])
    result = ready(Krum(), 5, 1)(square, ones(5))
    assert result.update.tolist() == [1.0, 1.0]
    assert result.trust.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    # The same rows in another key order: the corner now at index 0 wins.
    order = [4, 3, 2, 1, 0]
    assert ready(Krum(), 5, 1)(square[order], ones(5)).update.tolist() == [0.0, 0.0]


def test_krum_with_two_equal_scores_takes_the_lower_index():
    # Rows 0 and 1 mirror each other across the axis through rows 2 and 3, so their scores are
    # exactly equal (9.05) and the lowest; row 0's first coordinate is the larger, and it wins on
    # its index.
    updates = t([[0.1, 0.0], [-0.1, 0.0], [0.0, 3.0], [0.0, -3.0], [40.0, 40.0]])
    scores = krum_scores(updates, 1)
    assert scores[0] == scores[1] and float(scores[0]) < float(scores[2:].min())
    result = ready(Krum(), 5, 1)(updates, ones(5))
    assert result.update.tolist() == [0.1, 0.0]
    assert result.trust.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_multikrum_breaks_equal_scores_by_row_index():
    # all four corners score 2; m = 2 takes rows 0 and 1, the first two keys
    square = t([[1.0, 1.0], [0.0, 1.0], [50.0, 50.0], [1.0, 0.0], [0.0, 0.0]])
    result = ready(MultiKrum(m=2), 5, 1)(square, ones(5))
    assert result.update.tolist() == [0.5, 1.0]
    assert result.trust.tolist() == [0.5, 0.5, 0.0, 0.0, 0.0]


def test_krum_requirement_names_n_and_f():
    with pytest.raises(ConfigError, match=r"krum needs n >= 2f\+3 clients, got n=5, f=2"):
        Krum().setup(num_clients=5, num_byzantine=2)
    with pytest.raises(ConfigError, match=r"multikrum needs n >= 2f\+3 clients, got n=6, f=2"):
        MultiKrum().setup(num_clients=6, num_byzantine=2)


def test_multikrum_averages_the_m_best_scored_rows():
    updates = t(CLUSTER)
    # m = n - f = 4: rows 3, 0, 1, 2 -> mean of the honest rows
    result = ready(MultiKrum(), 5, 1)(updates, ones(5))
    assert torch.allclose(result.update, t([0.35, 0.35]), rtol=0, atol=1e-15)
    assert result.trust.tolist() == [0.25, 0.25, 0.25, 0.25, 0.0]
    # m = 2: rows 3 and 0
    result = ready(MultiKrum(m=2), 5, 1)(updates, ones(5))
    assert result.update.tolist() == [0.2, 0.2]
    assert result.trust.tolist() == [0.5, 0.0, 0.0, 0.5, 0.0]
    with pytest.raises(ConfigError, match="m <= n"):
        MultiKrum(m=6).setup(num_clients=5, num_byzantine=1)


# -- Bulyan ---------------------------------------------------------------------------------


def test_bulyan_by_hand():
    # n = 7, f = 1: theta = 5 rows by iterated Krum, then beta = 3 values nearest the median.
    # Selection (scores over max(r - f - 2, 2) neighbours; ties to the lower index): row 2 (10,
    # tie with row 3), row 3 (9), row 1 (10, tie with row 4), row 4 (17), then row 5: of 0, 5 and
    # 100 it is the closest to the other two (Krum's r - f - 2 = 0 neighbours would tie all three
    # and take row 0). Values 1..5: median 3, nearest three 2, 3, 4 -> 3.
    updates = t([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]])
    result = ready(Bulyan(), 7, 1)(updates, ones(7))
    assert result.update.tolist() == [3.0]
    assert result.trust.tolist() == [0.0, 0.0, 1 / 3, 1 / 3, 1 / 3, 0.0, 0.0]


def test_bulyan_last_pick_with_f_1_uses_the_rows_not_their_order():
    # n = 8, f = 1: theta = 6 picks. The last one sees 3 rows: 0 (-30, the lowest index), 5 (9.5)
    # and 6 (12). Krum's r - f - 2 = 0 neighbours would score all three 0 and take row 0; summed
    # distances to the other two take row 5, the one closest to the others.
    updates = t([[-30.0], [10.0], [10.25], [9.75], [10.5], [9.5], [12.0], [11.0]])
    picks = iterated_krum_selection(pairwise_sq_distances(updates), 1, 6).tolist()
    assert picks == [2, 1, 4, 3, 7, 5]
    result = ready(Bulyan(), 8, 1)(updates, ones(8))
    # selected 9.5, 9.75, 10, 10.25, 10.5, 11: median 10.125, the 4 nearest 9.75 .. 10.5
    assert result.update.tolist() == [10.125]
    assert result.trust.tolist() == [0.0, 0.25, 0.25, 0.25, 0.25, 0.0, 0.0, 0.0]


def test_bulyan_requirement_names_n_and_f():
    with pytest.raises(ConfigError, match=r"bulyan needs n >= 4f\+3 clients, got n=10, f=2"):
        Bulyan().setup(num_clients=10, num_byzantine=2)
    ready(Bulyan(), 11, 2)


# -- LNearest -------------------------------------------------------------------------------


def test_lnearest_excludes_a_sign_flipped_row():
    # median of 1, 2, 3, -4 is 1.5; distances 0.5, 0.5, 1.5, 5.5; l = n - f = 3 -> rows 0, 1, 2
    result = ready(LNearest(), 4, 1)(t([[1.0], [2.0], [3.0], [-4.0]]), ones(4))
    assert result.update.tolist() == [2.0]
    assert result.trust.tolist() == [1 / 3, 1 / 3, 1 / 3, 0.0]
    # an explicit l wins: the two nearest, rows 0 and 1 (tie by index)
    assert ready(LNearest(l=2), 4, 1)(t([[1.0], [2.0], [3.0], [-4.0]]), ones(4)).update.tolist() == [1.5]
    with pytest.raises(ConfigError, match="l <= n"):
        LNearest(l=5).setup(num_clients=4, num_byzantine=1)


def test_lnearest_breaks_equal_distances_by_row_index_not_by_content():
    # median 0; rows 0 (1) and 1 (-1) are equally far; l = 2 takes row 2 and then row 0, the lower
    # index, although -1 is the smaller value
    result = ready(LNearest(l=2), 3, 0)(t([[1.0], [-1.0], [0.0]]), ones(3))
    assert result.update.tolist() == [0.5]
    assert result.trust.tolist() == [0.5, 0.0, 0.5]


# -- GeoMed ---------------------------------------------------------------------------------


def test_geomed_is_within_tolerance_of_the_minimiser_of_summed_distances():
    updates = t([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [1.0, 1.0], [30.0, -20.0]])
    weights = t([2.0, 1.0, 1.0, 3.0, 1.0])
    result = GeoMed(nu=1e-9, max_iter=500, tol=1e-12, weights="samples")(updates, weights)

    def objective(z: Tensor) -> float:
        return float((weights * (updates - z).norm(dim=1)).sum())

    best = objective(result.update)
    for direction in ([1.0, 0.0], [0.0, 1.0], [-0.6, 0.8], [0.8, 0.6], [-1.0, -1.0]):
        assert best <= objective(result.update + 1e-3 * t(direction)) + 1e-9
    # trust holds the coefficients of the last Weiszfeld step, whose weighted mean is the result
    assert torch.allclose(result.update, (result.trust[:, None] * updates).sum(0), rtol=0, atol=1e-12)


def test_geomed_at_its_defaults_finds_the_median_despite_a_far_row():
    # Used to give 30.08: the mean start and the objective-based stop let the far row win.
    for far in (1e10, 3.4028235e38):
        updates = t([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [far]])
        result = GeoMed()(updates, ones(7))
        assert abs(result.update.item() - 3.0) < 1e-9
        assert result.trust[6].item() < 1e-15


def test_geomed_by_default_ignores_a_claim_of_2_63_samples():
    updates = t([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 1.0], [1e6, -1e6]])
    claims = ones(5)
    claims[4] = float(2**63 - 1)
    honest = GeoMed()(updates, ones(5))
    claimed = GeoMed()(updates, claims)
    assert torch.equal(claimed.update, honest.update) and torch.equal(claimed.trust, honest.trust)
    assert float(claimed.update.abs().max()) < 2.0
    # weighting by the claimed counts hands the result to the claimant
    owned = GeoMed(weights="samples")(updates, claims).update
    assert torch.allclose(owned, updates[4], rtol=1e-9, atol=0)


def test_fedavg_weights_by_samples_by_default_and_equally_when_asked():
    updates, claims = t([[1.0, 2.0], [3.0, 6.0]]), t([1.0, 3.0])
    assert FedAvg()(updates, claims).update.tolist() == [2.5, 5.0]
    equal = FedAvg(weights="equal")(updates, claims)
    assert equal.update.tolist() == [2.0, 4.0] and equal.trust.tolist() == [0.5, 0.5]


@pytest.mark.parametrize("cls", [FedAvg, GeoMed])
def test_weighting_is_validated_and_recorded(cls):
    for bad in ("uniform", "", "Samples", None, 1, True):
        with pytest.raises(ConfigError, match=rf"{cls.name}: weights must be 'samples' or 'equal', got {bad!r}"):
            cls(weights=bad)
    default = "samples" if cls is FedAvg else "equal"
    assert cls().weights == default
    assert cls().hyperparameters()["weights"] == default
    other = "equal" if default == "samples" else "samples"
    assert cls(weights=other).describe()["weights"] == other


@pytest.mark.parametrize("kwargs", [{"nu": 0.0}, {"max_iter": 0}, {"tol": -1.0}])
def test_geomed_rejects_bad_parameters(kwargs):
    with pytest.raises(ConfigError, match="geomed"):
        GeoMed(**kwargs)


# -- CenteredClipping -----------------------------------------------------------------------

ROUND_1 = [[3.0, 4.0], [0.3, 0.4]]
ROUND_2 = [[0.45, 2.6], [0.45, 0.6]]


def test_centered_clipping_by_hand():
    strategy = CenteredClipping(tau=1.0)
    # round 1 from zero: factors 1/5 and 1 -> clipped (0.6, 0.8) and (0.3, 0.4) -> mean (0.45, 0.6)
    first = strategy(t(ROUND_1), ones(2))
    assert torch.allclose(first.update, t([0.45, 0.6]), rtol=0, atol=1e-15)
    assert torch.allclose(first.trust, t([0.2 / 1.2, 1 / 1.2]), rtol=0, atol=1e-15)
    # round 2 from (0.45, 0.6): differences (0, 2) and (0, 0) -> factors 0.5, 1 -> step (0, 0.5)
    second = strategy(t(ROUND_2), ones(2))
    assert torch.allclose(second.update, t([0.45, 1.1]), rtol=0, atol=1e-15)
    assert torch.allclose(second.trust, t([0.5 / 1.5, 1 / 1.5]), rtol=0, atol=1e-15)


def test_centered_clipping_iterations_move_the_centre_further():
    # from 0 with tau = 1 towards the single row (0, 3): steps of 1 each time
    result = CenteredClipping(tau=1.0, iterations=2)(t([[0.0, 3.0]]), ones(1))
    assert result.update.tolist() == [0.0, 2.0]


def test_centered_clipping_state_round_trip_reproduces_the_next_round():
    carried = CenteredClipping(tau=1.0)
    carried(t(ROUND_1), ones(2))
    state = carried.state_dict()
    expected = carried(t(ROUND_2), ones(2)).update

    restored = CenteredClipping(tau=1.0)
    restored.load_state_dict(state)
    assert torch.equal(restored(t(ROUND_2), ones(2)).update, expected)
    # without the state, the second round starts from zero and lands elsewhere
    assert not torch.allclose(CenteredClipping(tau=1.0)(t(ROUND_2), ones(2)).update, expected)


def test_centered_clipping_state_is_empty_before_the_first_round_and_validated():
    strategy = CenteredClipping()
    assert strategy.state_dict() == {}
    strategy(t([[0.5, 0.5]]), ones(1))
    assert strategy.state_dict()["center"].tolist() == [0.5, 0.5]
    strategy.load_state_dict({})
    assert strategy.state_dict() == {}
    with pytest.raises(ValueError, match="unexpected keys"):
        strategy.load_state_dict({"centre": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(ValueError, match="1-D float64"):
        strategy.load_state_dict({"center": torch.zeros(2, dtype=torch.float32)})
    with pytest.raises(ValueError, match="finite"):
        strategy.load_state_dict({"center": t([float("nan"), 0.0])})
    strategy.load_state_dict({"center": t([1.0, 2.0, 3.0])})
    with pytest.raises(ValueError, match="3 coordinates"):
        strategy(t([[0.5, 0.5]]), ones(1))


# -- FLTrust --------------------------------------------------------------------------------


def test_fltrust_by_hand():
    # reference (1, 0): cosines 1, 0, -1, 1/sqrt(2) -> scores 1, 0, 0, s with s = 1/sqrt(2).
    # Rescaled to norm 1: (1, 0) and (s, s); weighted mean ((1 + s*s), s*s) / (1 + s).
    strategy = FLTrust()
    strategy.set_reference(t([1.0, 0.0]))
    result = strategy(t([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]]), ones(4))
    s = 1 / math.sqrt(2)
    assert torch.allclose(result.update, t([1.5 / (1 + s), 0.5 / (1 + s)]), rtol=0, atol=1e-15)
    assert torch.allclose(result.trust, t([1 / (1 + s), 0.0, 0.0, s / (1 + s)]), rtol=0, atol=1e-15)


def test_fltrust_needs_a_fresh_reference_every_round():
    strategy = FLTrust(root_samples=50)
    with pytest.raises(RuntimeError, match=r"set_reference\(update\).*50 samples"):
        strategy(t([[1.0, 0.0]]), ones(1))
    strategy.set_reference(t([1.0, 0.0]))
    strategy(t([[1.0, 0.0]]), ones(1))
    with pytest.raises(RuntimeError, match="set_reference"):
        strategy(t([[1.0, 0.0]]), ones(1))


def test_fltrust_returns_zero_when_no_update_agrees_with_the_reference():
    strategy = FLTrust()
    strategy.set_reference(t([1.0, 0.0]))
    result = strategy(t([[-1.0, 0.0], [0.0, 2.0]]), ones(2))
    assert result.update.tolist() == [0.0, 0.0] and result.trust.tolist() == [0.0, 0.0]


def test_fltrust_rejects_a_malformed_reference():
    strategy = FLTrust()
    with pytest.raises(TypeError, match="float64"):
        strategy.set_reference(torch.ones(2))
    with pytest.raises(ValueError, match="1-D"):
        strategy.set_reference(t([[1.0, 0.0]]))
    strategy.set_reference(t([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="3 coordinates"):
        strategy(t([[1.0, 0.0]]), ones(1))
