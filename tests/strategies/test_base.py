"""The Strategy contract: input checks, setup, pre-aggregation, trust, records, user subclasses."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor

import torchchain.strategies as strategies
from torchchain.errors import ConfigError
from torchchain.strategies import (
    PRE_AGGREGATORS,
    STRATEGIES,
    Aggregate,
    Bucketing,
    FedAvg,
    Krum,
    Median,
    NearestNeighborMixing,
    PreAggregator,
    Strategy,
)
from torchchain.strategies.base import MAX_COUNT, MAX_PRE_STEPS
from torchchain.strategies.kernels import weighted_mean


def t(rows) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def ones(n: int) -> Tensor:
    return torch.ones(n, dtype=torch.float64)


class FirstRow(Strategy):
    """A user's rule: trust the first row (stands in for a custom strategy in a user package)."""

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        trust = torch.zeros(updates.shape[0], dtype=torch.float64)
        trust[0] = 1.0
        return Aggregate(update=updates[0].clone(), trust=trust)


class HalfMean(Strategy):
    """A user's rule with an argument and state: the mean scaled by ``scale``, counting calls."""

    name = "half_mean"

    def __init__(self, *, scale: float = 0.5, f: int | None = None, pre=()) -> None:
        super().__init__(f=f, pre=pre)
        self.scale = scale
        self.calls = 0

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        self.calls += 1
        n = updates.shape[0]
        return Aggregate(update=self.scale * weighted_mean(updates, ones(n)), trust=ones(n) / n)

    def hyperparameters(self):
        return {"scale": self.scale}


# -- registry -------------------------------------------------------------------------------


def test_registries_map_config_names_to_classes():
    assert sorted(STRATEGIES) == [
        "bulyan", "centered_clipping", "fedavg", "fltrust", "geomed",
        "krum", "lnearest", "median", "multikrum", "trimmed_mean",
    ]  # fmt: skip
    assert sorted(PRE_AGGREGATORS) == ["bucketing", "clipping", "nnm"]
    for name, cls in {**STRATEGIES, **PRE_AGGREGATORS}.items():
        assert cls.name == name


def test_all_is_sorted_and_complete():
    assert strategies.__all__ == sorted(strategies.__all__)
    for name in strategies.__all__:
        assert hasattr(strategies, name)
    for cls in [*STRATEGIES.values(), *PRE_AGGREGATORS.values()]:
        assert cls.__name__ in strategies.__all__


def test_only_fltrust_requires_a_reference():
    assert Strategy.requires_reference is False
    assert [name for name, cls in STRATEGIES.items() if cls.requires_reference] == ["fltrust"]


# -- input validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("updates", "weights", "error", "match"),
    [
        ([[1.0]], ones(1), TypeError, "updates must be a torch.Tensor"),
        (torch.ones(2, 3, dtype=torch.float32), ones(2), TypeError, "float64"),
        (t([[1.0], [2.0]]), torch.ones(2, dtype=torch.float32), TypeError, "weights must be float64"),
        (t([1.0, 2.0]), ones(2), ValueError, r"shape \(n, d\)"),
        (torch.zeros(0, 3, dtype=torch.float64), ones(0), ValueError, r"shape \(n, d\)"),
        (t([[1.0], [2.0]]), ones(3), ValueError, r"weights must have shape \(2,\)"),
        (t([[1.0], [float("nan")], [float("inf")]]), ones(3), ValueError, r"rows \[1, 2\]"),
        (t([[1.0], [2.0]]), t([1.0, -1.0]), ValueError, "non-negative"),
        (t([[1.0], [2.0]]), t([0.0, 0.0]), ValueError, "positive sum"),
    ],
)
def test_bad_inputs_raise_a_typed_error_that_names_the_problem(updates, weights, error, match):
    with pytest.raises(error, match=match):
        FedAvg()(updates, weights)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_non_finite_entry_among_many_is_named_by_its_row(bad):
    updates = torch.randn(4, 10_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    updates[2, 7_777] = bad
    with pytest.raises(ValueError, match=r"rows \[2\] hold NaN or inf"):
        FedAvg()(updates, ones(4))


def test_rows_whose_sum_overflows_are_finite_and_accepted():
    # The finiteness screen sums each row; a sum that overflows must not reject finite rows.
    big = t([[1e308, 1e308, -1e308], [1e308, 1e308, 1e308], [0.0, 0.0, 0.0]])
    assert torch.isinf(big.sum(dim=1)[:2]).all()
    assert torch.equal(Median()(big, ones(3)).update, t([1e308, 1e308, 0.0]))


def test_a_generator_must_be_a_cpu_torch_generator():
    with pytest.raises(TypeError, match="generator"):
        FedAvg()(t([[1.0]]), ones(1), generator=42)


def test_the_callers_tensors_are_left_untouched():
    updates, weights = t([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]), t([1.0, 2.0, 3.0])
    before = (updates.clone(), weights.clone())
    Krum(f=0, pre=["clipping"])(updates, weights)
    assert torch.equal(updates, before[0]) and torch.equal(weights, before[1])


def test_negative_zero_never_reaches_the_model_bytes():
    # The median of {-0.0, -0.0, +0.0} could come back as either zero; the result is always +0.0.
    for order in ([0, 1, 2], [2, 0, 1]):
        update = Median()(t([[-0.0], [-0.0], [0.0]])[order], ones(3)).update
        assert update.tolist() == [0.0] and not torch.signbit(update).any()


# -- setup and f ------------------------------------------------------------------------------


def test_setup_takes_the_runs_byzantine_count_unless_f_was_given():
    implicit, explicit = Krum(), Krum(f=1)
    implicit.setup(num_clients=9, num_byzantine=3)
    explicit.setup(num_clients=9, num_byzantine=3)
    assert (implicit.f, explicit.f, implicit.num_clients) == (3, 1, 9)


def test_base_check_names_n_and_f():
    with pytest.raises(ConfigError, match=r"n=3, f=3"):
        FedAvg().setup(num_clients=3, num_byzantine=3)


@pytest.mark.parametrize("f", [-1, 1.5, True, "2"])
def test_f_must_be_a_non_negative_int(f):
    with pytest.raises(ConfigError, match="f must be an int"):
        Krum(f=f)


@pytest.mark.parametrize(("clients", "byzantine"), [(0, 0), (5, -1), (5.0, 1)])
def test_setup_rejects_bad_counts(clients, byzantine):
    with pytest.raises(ConfigError, match="must be an int"):
        FedAvg().setup(num_clients=clients, num_byzantine=byzantine)


def test_a_rule_that_needs_f_says_how_to_provide_it():
    with pytest.raises(RuntimeError, match=r"setup\(num_clients=\.\.\., num_byzantine=\.\.\.\)"):
        Krum()(t([[1.0], [2.0], [3.0]]), ones(3))
    # Rules that do not use f work without setup, unless a pre-aggregation step needs f.
    assert FedAvg()(t([[1.0], [3.0]]), ones(2)).update.tolist() == [2.0]
    with pytest.raises(RuntimeError, match="fedavg does not know how many clients are Byzantine"):
        FedAvg(pre=["nnm"])(t([[1.0], [3.0]]), ones(2))


def test_setup_checks_the_rule_against_the_rows_left_after_pre_aggregation():
    # 10 clients in buckets of 2 leave 5 rows; Krum with f=2 needs 7.
    strategy = Krum(pre=[Bucketing(s=2)])
    with pytest.raises(ConfigError, match=r"n=5, f=2.*\[bucketing\] turn 10 clients into 5 rows"):
        strategy.setup(num_clients=10, num_byzantine=2)
    strategy.setup(num_clients=14, num_byzantine=2)
    assert strategy.f == 2


# -- pre-aggregation steps ------------------------------------------------------------------


def test_pre_steps_accept_names_instances_and_a_single_name():
    assert isinstance(Krum(pre=["nnm"]).pre[0], NearestNeighborMixing)
    bucketing = Bucketing(s=3)
    assert Krum(pre=[bucketing, "clipping"]).pre[0] is bucketing
    assert isinstance(Median(pre="bucketing").pre[0], Bucketing)


def test_pre_lists_are_bounded():
    Krum(pre=["clipping"] * MAX_PRE_STEPS)
    with pytest.raises(ConfigError, match=rf"krum: pre may list at most {MAX_PRE_STEPS} pre-aggregation steps, got 9"):
        Krum(pre=["clipping"] * (MAX_PRE_STEPS + 1))
    for bad in ({"nnm": 1}, 3, None):
        with pytest.raises(ConfigError, match="pre must be a list"):
            Krum(pre=bad)


@pytest.mark.parametrize(("clients", "byzantine"), [(MAX_COUNT + 1, 0), (10, MAX_COUNT + 1), (10**400, 1)])
def test_setup_bounds_the_counts(clients, byzantine):
    with pytest.raises(ConfigError, match=rf"must be an int in \[\d, {MAX_COUNT}\]"):
        FedAvg().setup(num_clients=clients, num_byzantine=byzantine)


def test_an_unknown_pre_step_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"'nmm' is unknown.*\['bucketing', 'clipping', 'nnm'\]"):
        Krum(pre=["nmm"])


def test_trust_is_carried_back_through_every_pre_step():
    # Buckets of 2 without a generator: (rows 0, 1), (rows 2, 3), (row 4). FirstRow trusts bucket 0,
    # so the clients behind it share the trust equally.
    result = FirstRow(f=0, pre=["bucketing"])(t([[1.0], [3.0], [5.0], [7.0], [9.0]]), ones(5))
    assert result.update.tolist() == [2.0]
    assert result.trust.tolist() == [0.5, 0.5, 0.0, 0.0, 0.0]


class Duplicate(PreAggregator):
    """A user's step: every row twice (m = 2n)."""

    name = "duplicate"

    def __call__(self, updates, weights, *, f, generator=None):
        n = updates.shape[0]
        mixing = torch.cat([torch.eye(n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)])
        return torch.cat([updates, updates]), torch.cat([weights, weights]), mixing

    def output_rows(self, n):
        return 2 * n


class Broken(PreAggregator):
    def __call__(self, updates, weights, *, f, generator=None):
        return updates, weights, torch.eye(updates.shape[0] + 1, dtype=torch.float64)


def test_a_user_pre_step_composes_and_a_broken_one_is_named():
    result = FedAvg(f=0, pre=[Duplicate()])(t([[1.0], [3.0]]), t([1.0, 3.0]))
    assert result.update.tolist() == [2.5] and result.trust.tolist() == [0.25, 0.75]
    with pytest.raises(RuntimeError, match=r"Broken returned shapes"):
        FedAvg(pre=[Broken()], f=0)(t([[1.0], [3.0]]), ones(2))


# -- user subclasses ------------------------------------------------------------------------


def test_a_user_strategy_works_through_call():
    strategy = HalfMean(scale=2.0, pre=["clipping"])
    strategy.setup(num_clients=3, num_byzantine=1)
    # clipping to norm 1: [3] -> [1]; mean of [0.5], [-0.5], [1] is 1/3; times 2.
    result = strategy(t([[0.5], [-0.5], [3.0]]), ones(3))
    assert torch.allclose(result.update, t([2 / 3]), rtol=0, atol=1e-15)
    assert torch.allclose(result.trust, ones(3) / 3, rtol=0, atol=1e-15)
    assert strategy.calls == 1
    assert strategy.describe() == {"name": "half_mean", "f": 1, "scale": 2.0, "pre": [{"name": "clipping", "c": 1.0}]}


def test_a_user_strategy_without_a_name_is_recorded_by_its_import_path():
    assert FirstRow().describe()["name"] == f"{__name__}.FirstRow"


def test_a_user_strategy_returning_the_wrong_shape_is_named():
    class Wrong(Strategy):
        def aggregate(self, updates, weights):
            return Aggregate(update=updates, trust=weights)

    with pytest.raises(RuntimeError, match=r"Wrong\.aggregate must return a float64 update of shape \(1,\)"):
        Wrong()(t([[1.0], [2.0]]), ones(2))


# -- records and state ----------------------------------------------------------------------


def test_every_strategy_describes_itself_in_json():
    for name, cls in STRATEGIES.items():
        strategy = cls(pre=["nnm", Bucketing(s=3), "clipping"])
        strategy.setup(num_clients=50, num_byzantine=1)
        record = json.loads(json.dumps(strategy.describe()))
        assert record["name"] == name and record["f"] == 1
        assert record["pre"] == [{"name": "nnm"}, {"name": "bucketing", "s": 3}, {"name": "clipping", "c": 1.0}]


def test_stateless_strategies_load_only_empty_state():
    strategy = Krum()
    assert strategy.state_dict() == {}
    strategy.load_state_dict({})
    with pytest.raises(ValueError, match=r"no state to load, got keys \['center'\]"):
        strategy.load_state_dict({"center": torch.zeros(2)})
