"""ROP, optimal ALIE and optimal IPM: their geometry, their search against ByzFL's, and the runtime hooks."""

from __future__ import annotations

import copy
import math

import byzfl
import numpy as np
import pytest
import torch

from torchchain.attacks import ALIE, IPM, ROP, OptimalALIE, OptimalIPM
from torchchain.attacks.base import Attack
from torchchain.attacks.kernels import expand_contract_search, rop_z_max, rotated_orthogonal_direction
from torchchain.chain.ledger import Ledger
from torchchain.chain.verify import verify_ledger
from torchchain.errors import ConfigError
from torchchain.experiment import run
from torchchain.protocol.privacy import split_state
from torchchain.runtime.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from torchchain.runtime.simulation import Simulation
from torchchain.strategies import CenteredClipping, Median, TrimmedMean
from torchchain.strategies.base import Strategy
from torchchain.updates.delta import compute_delta, flatten
from torchchain.updates.serialize import update_from_bytes

from composing import FAST, compose_config, run_stopped_before


def f64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


#: Seven honest updates of dimension 5 around 0.5, and two malicious clients (n = 9).
HONEST = torch.randn(7, 5, generator=seeded(3), dtype=torch.float64) + 0.5
F = 2


def oracle(strategy: Strategy):
    """What the runtime lends an attack: the update of a fresh copy of the rule, with equal weights."""

    def aggregate(rows: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        rule = copy.deepcopy(strategy)
        return rule(rows, torch.ones(rows.shape[0], dtype=torch.float64), generator=generator).update

    return aggregate


def damage(aggregate, malicious: torch.Tensor) -> float:
    """How far ``F`` copies of ``malicious`` move the aggregate away from the honest mean."""
    rows = torch.cat([HONEST, malicious.expand(F, -1)])
    return float(torch.linalg.vector_norm(aggregate(rows) - HONEST.mean(dim=0)))


def ready(attack: Attack, strategy: Strategy | None = None) -> Attack:
    attack.setup(num_clients=HONEST.shape[0] + F, num_byzantine=F)
    if strategy is not None:
        attack.observe_defence(oracle(strategy))
    return attack


def angle_between(a: torch.Tensor, b: torch.Tensor) -> float:
    cosine = float(a @ b / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)))
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


# -- ROP -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pi", "lam"), [(1.0, 0.9), (0.5, 0.3), (0.0, 1.0)])
def test_rop_is_relocated_and_orthogonal_to_its_reference(pi: float, lam: float) -> None:
    previous = f64([0.3, -0.2, 0.1, 0.4, -0.5])
    attack = ready(ROP(z=2.5, pi=pi, lam=lam))
    attack.observe_aggregate(previous)
    out = attack.poison_update(HONEST[0], honest=HONEST, generator=seeded())
    mean = HONEST.mean(dim=0)
    location = pi * previous + (1 - pi) * mean
    reference = lam * previous + (1 - lam) * mean
    perturbation = out - location
    assert out.dtype == torch.float64 and out.shape == (5,)
    assert abs(float(perturbation @ reference)) < 1e-12
    assert float(torch.linalg.vector_norm(perturbation)) == pytest.approx(2.5, abs=1e-12)
    # Among the directions orthogonal to the reference, ROP takes the part of -1 (ones on gradients).
    seed = -torch.ones(5, dtype=torch.float64)
    expected = seed - (seed @ reference) / (reference @ reference) * reference
    torch.testing.assert_close(perturbation, 2.5 * expected / torch.linalg.vector_norm(expected))


def test_rop_on_a_hand_worked_example() -> None:
    # Honest mean (1, 0), previous aggregate (1, 0): the reference is (1, 0), the part of (-1, -1)
    # orthogonal to it is (0, -1), and the attack sits on the aggregate (pi = 1).
    attack = ready(ROP(z=3.0))
    attack.observe_aggregate(f64([1.0, 0.0]))
    honest = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    out = attack.poison_update(f64([0.0, 0.0]), honest=honest, generator=seeded())
    torch.testing.assert_close(out, f64([1.0, -3.0]))


def test_rop_before_any_aggregate_perturbs_around_zero_orthogonally_to_the_honest_mean() -> None:
    attack = ready(ROP(z=1.5))
    out = attack.poison_update(HONEST[0], honest=HONEST, generator=seeded())
    # The first round's centre is zero (centered clipping's too); the reference is the honest mean.
    assert abs(float(out @ HONEST.mean(dim=0))) < 1e-12
    assert float(torch.linalg.vector_norm(out)) == pytest.approx(1.5)


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0, 180.0])
def test_rop_perturbation_makes_the_configured_angle_with_the_reference(angle: float) -> None:
    previous = f64([0.3, -0.2, 0.1, 0.4, -0.5])
    attack = ready(ROP(z=1.0, angle=angle))
    attack.observe_aggregate(previous)
    out = attack.poison_update(HONEST[0], honest=HONEST, generator=seeded())
    reference = 0.9 * previous + 0.1 * HONEST.mean(dim=0)
    assert angle_between(out - previous, reference) == pytest.approx(angle, abs=1e-6)
    assert float(torch.linalg.vector_norm(out - previous)) == pytest.approx(1.0)


def test_rop_direction_is_defined_in_degenerate_cases() -> None:
    # Zero reference: no projection to remove, the normalised seed remains.
    zero = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(rotated_orthogonal_direction(zero, 90.0), torch.full((4,), -0.5, dtype=torch.float64))
    # A reference parallel to the seed: the alternating vector seeds instead.
    direction = rotated_orthogonal_direction(torch.ones(4, dtype=torch.float64), 90.0)
    torch.testing.assert_close(direction, f64([-0.5, 0.5, -0.5, 0.5]))
    # One coordinate: nothing is orthogonal, so only the cosine part is left.
    torch.testing.assert_close(rotated_orthogonal_direction(f64([2.0]), 90.0), f64([0.0]), atol=1e-15, rtol=0)
    torch.testing.assert_close(rotated_orthogonal_direction(f64([2.0]), 180.0), f64([-1.0]))


def test_rop_automatic_z_is_the_authors_rule() -> None:
    assert rop_z_max(25, 5) == pytest.approx(0.2533, abs=1e-4)
    assert rop_z_max(5, 1) == 0.0  # small federations: quantile 1/2
    attack = ROP(z=None)
    with pytest.raises(RuntimeError, match="call setup"):
        _ = attack.z_used
    attack.setup(num_clients=25, num_byzantine=5)
    assert attack.z_used == pytest.approx(0.2533, abs=1e-4)
    assert attack.describe()["z_used"] == attack.z_used
    with pytest.raises(ConfigError, match="automatic z is undefined"):
        ROP(z=None).setup(num_clients=4, num_byzantine=3)
    ROP(z=1.0).setup(num_clients=4, num_byzantine=3)  # an explicit z needs no rule


def test_rop_state_round_trips_through_a_checkpoint(tmp_path) -> None:
    previous = f64([0.3, -0.2, 0.1, 0.4, -0.5])
    attack = ready(ROP())
    assert attack.state_dict() == {}
    attack.observe_aggregate(previous)
    previous[0] = 99.0  # the attack keeps its own copy
    assert attack.state_dict()["previous"][0] == 0.3
    expected = attack.poison_update(HONEST[0], honest=HONEST, generator=seeded())

    save_checkpoint(tmp_path, "a" * 64, parent="b" * 64, attack_state=attack.state_dict())
    state = load_checkpoint(checkpoint_path(tmp_path, "a" * 64))["attack"]
    restored = ready(ROP())
    restored.load_state_dict(state)
    assert torch.equal(restored.state_dict()["previous"], attack.state_dict()["previous"])
    assert torch.equal(restored.poison_update(HONEST[0], honest=HONEST, generator=seeded()), expected)
    restored.load_state_dict({})
    assert restored.previous is None


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"gamma": 1.0}, "unexpected keys"),
        ({"previous": [1.0, 2.0]}, "1-D floating tensor"),
        ({"previous": torch.ones(2, 2, dtype=torch.float64)}, "1-D floating tensor"),
        ({"previous": f64([1.0, math.inf])}, "finite"),
        ([("previous", 1.0)], "must be a mapping"),
    ],
)
def test_rop_rejects_a_malformed_state(state, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ROP().load_state_dict(state)


def test_rop_refuses_an_aggregate_of_another_length() -> None:
    attack = ready(ROP())
    attack.observe_aggregate(f64([1.0, 2.0]))
    with pytest.raises(ValueError, match="stored aggregate has 2 coordinates"):
        attack.poison_update(HONEST[0], honest=HONEST, generator=seeded())


# -- optimal ALIE and IPM ----------------------------------------------------------------------

#: ByzFL's defaults, a search downwards from 0.5, and a short one with small steps.
SEARCHES = [
    {},
    {"evals": 30, "start": 0.5, "delta": -3.0, "ratio": 0.7},
    {"evals": 8, "start": 0.0, "delta": 0.25, "ratio": 0.9},
]


@pytest.mark.parametrize("settings", SEARCHES)
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(OptimalALIE, byzfl.Optimal_ALittleIsEnough), (OptimalIPM, byzfl.Optimal_InnerProductManipulation)],
)
@pytest.mark.parametrize(
    ("strategy", "aggregator"),
    [(Median(f=F), byzfl.Median()), (TrimmedMean(f=F), byzfl.TrMean(f=F))],
    ids=["median", "trimmed_mean"],
)
def test_optimal_attacks_match_byzfl(settings, ours, theirs, strategy, aggregator) -> None:
    attack = ready(ours(**settings), strategy)
    out = attack.poison_update(HONEST[0], honest=HONEST, generator=seeded())
    reference = theirs(agg=aggregator, pre_agg_list=[], f=F, **settings)(HONEST.numpy())
    np.testing.assert_allclose(out.numpy(), reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "strategy",
    [Median(f=F), TrimmedMean(f=F), CenteredClipping(tau=1.0, f=F), CenteredClipping(tau=0.3, iterations=3, f=F)],
)
@pytest.mark.parametrize(("optimal", "plain"), [(OptimalALIE, ALIE), (OptimalIPM, IPM)])
def test_the_search_does_at_least_as_much_damage_as_the_plain_attack(strategy, optimal, plain) -> None:
    aggregate = oracle(strategy)
    searched = ready(optimal(), strategy).poison_update(HONEST[0], honest=HONEST, generator=seeded())
    default = ready(plain()).poison_update(HONEST[0], honest=HONEST, generator=seeded())
    assert damage(aggregate, searched) >= damage(aggregate, default)


@pytest.mark.parametrize("cls", [OptimalALIE, OptimalIPM])
def test_optimal_attacks_search_once_per_round_and_are_deterministic(cls) -> None:
    calls = []
    median = oracle(Median(f=F, pre=["bucketing"]))

    def counting(rows, *, generator=None):
        calls.append(generator.initial_seed())
        return median(rows, generator=generator)

    attack = ready(cls(evals=12))
    attack.observe_defence(counting)
    first = attack.poison_update(HONEST[0], honest=HONEST, generator=seeded(1))
    # Every evaluation sees the same bucketing draws: one seed, taken from the attack's generator.
    assert len(calls) == 12 and len(set(calls)) == 1
    # The round's other malicious clients send the same vector without searching again.
    assert torch.equal(attack.poison_update(HONEST[1], honest=HONEST, generator=seeded(2)), first)
    assert len(calls) == 12
    # A fresh round searches again; same inputs and generator, same result.
    attack.observe_defence(counting)
    assert torch.equal(attack.poison_update(HONEST[0], honest=HONEST, generator=seeded(1)), first)
    assert len(calls) == 24
    again = ready(cls(evals=12), Median(f=F, pre=["bucketing"]))
    assert torch.equal(again.poison_update(HONEST[0], honest=HONEST, generator=seeded(1)), first)


@pytest.mark.parametrize("cls", [OptimalALIE, OptimalIPM])
def test_optimal_attacks_need_the_defence(cls) -> None:
    assert cls.needs_defence and cls.omniscient
    assert not ROP.needs_defence and not ALIE.needs_defence
    with pytest.raises(ValueError, match="call observe_defence"):
        ready(cls()).poison_update(HONEST[0], honest=HONEST, generator=seeded())


def test_expand_contract_search_follows_byzfl_steps() -> None:
    tried = []

    def objective(x: float) -> float:
        tried.append(x)
        return -((x - 7.0) ** 2)

    # Expansion 0, 1, 3, 7, 15 (worse: the step becomes 8 * 0.8); contraction 7 + 6.4.
    assert expand_contract_search(objective, start=0.0, delta=1.0, ratio=0.8, evals=6) == 7.0
    assert tried == pytest.approx([0.0, 1.0, 3.0, 7.0, 15.0, 13.4])
    assert expand_contract_search(lambda x: math.nan, start=2.0, delta=1.0, ratio=0.8, evals=5) == 2.0


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ROP(z=-1.0), "z must be a finite number >= 0"),
        (lambda: ROP(z=math.inf), "z must be a finite number >= 0"),
        (lambda: ROP(z=True), "z must be a finite number >= 0"),
        (lambda: ROP(angle=400.0), r"angle must be a number in \[0, 360\]"),
        (lambda: ROP(lam=1.5), r"lam must be a number in \[0, 1\]"),
        (lambda: ROP(pi=-0.1), r"pi must be a number in \[0, 1\]"),
        (lambda: ROP(pi="1"), r"pi must be a number"),
        (lambda: OptimalALIE(evals=0), r"evals must be an int in \[1, 1000\]"),
        (lambda: OptimalALIE(evals=2.0), "evals must be an int"),
        (lambda: OptimalIPM(evals=10**6), "evals must be an int"),
        (lambda: OptimalALIE(start=math.nan), "start must be a finite number"),
        (lambda: OptimalIPM(delta=0.0), "delta must be a finite non-zero number"),
        (lambda: OptimalIPM(ratio=0.5), r"ratio must be a number in \(0.5, 1\)"),
        (lambda: OptimalALIE(ratio=1.0), r"ratio must be a number in \(0.5, 1\)"),
    ],
)
def test_bad_arguments_are_config_errors(factory, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        factory()


# -- in a run ----------------------------------------------------------------------------------

BASE = [*FAST, "clients=6", "byzantine=2"]


@pytest.mark.parametrize("strategy", ["centered_clipping", "median"])
@pytest.mark.parametrize("attack", ["rop", "optimal_alie", "optimal_ipm"])
def test_new_attacks_run_end_to_end(tmp_path, attack: str, strategy: str) -> None:
    summary = run(compose_config([*BASE, "rounds=2", f"attack={attack}", f"strategy={strategy}"]), tmp_path)
    assert verify_ledger(summary["ledger"]).height == 2
    assert math.isfinite(summary["final_loss"])
    ledger = Ledger.open(summary["ledger"])
    # Every malicious update went in: the attacks stay within what the ledger accepts.
    assert summary["rejected"] == 0 and all(len(b.transactions) == 6 for b in ledger.blocks()[1:])
    if attack == "rop":
        # The attack kept the head block's public aggregate, and its checkpoint holds it.
        head, parent = ledger.head, ledger.block(1)
        new, old = (ledger.get_blob(b.header.model_hash) for b in (head, parent))
        new, old = update_from_bytes(new, max_bytes=len(new)), update_from_bytes(old, max_bytes=len(old))
        saved = load_checkpoint(checkpoint_path(tmp_path / "checkpoints", head.hash))["attack"]["previous"]
        assert torch.equal(saved, flatten(compute_delta(new, old)))


def test_observe_defence_never_advances_the_strategy(tmp_path, monkeypatch) -> None:
    lent, checked = [], []
    observe, poison = OptimalIPM.observe_defence, Simulation._poison

    def spy(self, aggregate):
        lent.append(aggregate)
        observe(self, aggregate)

    def checked_poison(self, round, deltas, seconds):
        rule_before = {k: v.clone() for k, v in self.rules.strategy.state_dict().items()}
        round_state = {k: v.clone() for k, v in self.node.round_state.items()}
        poison(self, round, deltas, seconds)
        # The lent rule starts from the round's state on every call (centered clipping's centre,
        # zero in round 1) and touches neither the node's rule nor its round state.
        d = flatten(next(iter(deltas.values()))).shape[0]
        rows = torch.randn(6, d, generator=seeded(round), dtype=torch.float64)
        first, second = lent[-1](rows, generator=seeded()), lent[-1](rows, generator=seeded())
        assert torch.equal(first, second)
        expected = copy.deepcopy(self.rules.strategy)
        expected.load_state_dict(split_state(round_state)[0])
        assert torch.equal(first, expected(rows, torch.ones(6, dtype=torch.float64)).update)
        for before, after in ((rule_before, self.rules.strategy.state_dict()), (round_state, self.node.round_state)):
            assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        checked.append((round, bool(round_state)))

    monkeypatch.setattr(OptimalIPM, "observe_defence", spy)
    monkeypatch.setattr(Simulation, "_poison", checked_poison)
    run(compose_config([*BASE, "rounds=2", "attack=optimal_ipm", "strategy=centered_clipping"]), tmp_path)
    assert checked == [(1, False), (2, True)] and len(lent) == 2


def test_a_resumed_rop_run_ends_where_an_unstopped_one_does(tmp_path, monkeypatch) -> None:
    settings = [*BASE, "rounds=2", "attack=rop", "strategy=centered_clipping"]
    reference = run(compose_config(settings), tmp_path / "unstopped")
    run_stopped_before(2, settings, tmp_path / "stopped", monkeypatch)
    resumed = run(compose_config([*FAST, f"resume={tmp_path / 'stopped'}"]), tmp_path / "unused")
    assert resumed["model_hash"] == reference["model_hash"]


def test_a_searched_attack_that_blows_up_fedavg_leaves_a_run_that_finishes(tmp_path) -> None:
    # Against the plain average the search grows the scale until the model overflows; the next
    # rounds' honest updates are then not finite. The attack must hide among the updates the
    # node will accept (not crash simulating the defence on NaN rows), the node rejects the
    # overflowed ones, and logging copes with infinite norms.
    settings = [
        *FAST, "dataset=digits", "clients=10", "byzantine=2", "partition.kind=shards", "rounds=6",
        "attack=optimal_ipm", "strategy=fedavg",
    ]
    summary = run(compose_config(settings), tmp_path)
    assert verify_ledger(summary["ledger"]).height == 6
    assert summary["rejected"] > 0
