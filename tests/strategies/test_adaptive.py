"""Centered clipping without tuning: the radius from the round's own distances, and server momentum."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from torchchain.errors import ConfigError
from torchchain.protocol.registry import build_strategy
from torchchain.protocol.state import decode_state, encode_state
from torchchain.strategies import STRATEGIES, CenteredClipping
from torchchain.strategies.centered_clipping import AUTO, MAX_MOMENTUM
from torchchain.strategies.kernels import clip_factors, median_clip_factors, row_norms

from composing import FAST, compose_config


def t(rows) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def ones(n: int) -> Tensor:
    return torch.ones(n, dtype=torch.float64)


def rows(n: int, d: int, seed: int, *, mean: float = 1.0, spread: float = 0.1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return mean + spread * torch.randn(n, d, generator=generator, dtype=torch.float64)


def with_center(center: Tensor | None = None, **kwargs) -> CenteredClipping:
    strategy = CenteredClipping(**kwargs)
    if center is not None:
        strategy.load_state_dict({"center": center})
    return strategy


# -- the kernel -----------------------------------------------------------------------------


def test_median_clip_factors_by_hand():
    # norms 5, 1, 2, 10, 3 -> median 3 -> factors 3/5, 1, 1, 3/10, 1
    factors, radius = median_clip_factors(t([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0], [6.0, 8.0], [0.0, -3.0]]))
    assert radius.item() == 3.0 and radius.dtype == torch.float64 and radius.ndim == 0
    assert factors.tolist() == [0.6, 1.0, 1.0, 0.3, 1.0]
    # even n: norms 1, 2, 3, 10 -> the mean of the two middle ones, 2.5
    factors, radius = median_clip_factors(t([[1.0], [-2.0], [3.0], [10.0]]))
    assert radius.item() == 2.5
    assert factors.tolist() == [1.0, 1.0, 2.5 / 3.0, 0.25]


def test_median_clip_factors_with_a_zero_radius_keep_only_the_zero_rows():
    factors, radius = median_clip_factors(t([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))
    assert radius.item() == 0.0
    assert factors.tolist() == [1.0, 1.0, 0.0]


def test_median_clip_factors_equal_clip_factors_at_the_median_norm():
    vectors = rows(9, 6000, seed=1, spread=1.0)  # long rows: the blocked row sums
    factors, radius = median_clip_factors(vectors)
    assert radius.item() == torch.median(row_norms(vectors)).item()  # odd n: the middle norm
    norms = row_norms(vectors)
    assert torch.equal(factors, torch.where(norms > radius, radius / norms, torch.ones_like(norms)))
    # clip_factors divides by multiplying with the reciprocal: the same up to rounding.
    assert torch.allclose(factors, clip_factors(vectors, radius.item()), rtol=1e-15, atol=0)
    assert int((factors < 1).sum()) == 4  # the four rows beyond the middle one


def test_median_clip_factors_follow_a_permutation_and_scale_exactly_by_powers_of_two():
    vectors = rows(8, 50, seed=2, spread=2.0)
    factors, radius = median_clip_factors(vectors)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    permuted, permuted_radius = median_clip_factors(vectors[perm])
    assert torch.equal(permuted, factors[perm]) and torch.equal(permuted_radius, radius)
    scaled, scaled_radius = median_clip_factors(vectors * 1024.0)
    assert torch.equal(scaled, factors) and torch.equal(scaled_radius, radius * 1024.0)


# -- the adaptive radius ----------------------------------------------------------------------

BY_HAND = [[3.0, 4.0], [0.0, 1.0], [0.0, 2.0], [6.0, 8.0], [0.0, -3.0]]


def test_auto_radius_is_the_median_distance_to_the_centre_by_hand():
    strategy = CenteredClipping(tau="auto")
    result = strategy(t(BY_HAND), ones(5))
    # from zero: distances 5, 1, 2, 10, 3 -> tau 3; clipped rows (1.8, 2.4), (0, 1), (0, 2),
    # (1.8, 2.4), (0, -3) -> mean (0.72, 0.96)
    assert strategy.radii == (3.0,)
    assert torch.allclose(result.update, t([0.72, 0.96]), rtol=0, atol=1e-15)
    assert torch.allclose(result.trust, t([0.6, 1.0, 1.0, 0.3, 1.0]) / 3.9, rtol=0, atol=1e-15)
    # The same rows around the centre (1, 1): the radius follows the centre.
    shifted = with_center(t([1.0, 1.0]), tau="auto")
    moved = shifted(t(BY_HAND) + 1.0, ones(5))
    assert shifted.radii == (3.0,)
    assert torch.allclose(moved.update, t([1.72, 1.96]), rtol=0, atol=1e-15)


def test_auto_radius_is_recomputed_in_every_iteration():
    strategy = CenteredClipping(tau="auto", iterations=2)
    strategy(t(BY_HAND), ones(5))
    first = t([0.72, 0.96])
    second = torch.median(row_norms(t(BY_HAND) - first)).item()
    assert strategy.radii[0] == 3.0
    assert strategy.radii[1] == pytest.approx(second, rel=1e-15, abs=0)
    assert second != 3.0


def test_a_fixed_tau_is_unchanged_and_recorded_as_the_radius():
    # round 1 of the hand-worked fixed-tau example in test_rules, bit for bit
    strategy = CenteredClipping(tau=1.0, iterations=3)
    expected = CenteredClipping(tau=1.0, iterations=3)(t([[3.0, 4.0], [0.3, 0.4]]), ones(2))
    result = strategy(t([[3.0, 4.0], [0.3, 0.4]]), ones(2))
    assert torch.equal(result.update, expected.update)
    assert strategy.radii == (1.0, 1.0, 1.0)


def test_the_centre_stays_when_more_than_half_the_rows_sit_on_it():
    strategy = with_center(t([1.0, 2.0]), tau="auto")
    result = strategy(t([[1.0, 2.0], [1.0, 2.0], [50.0, -7.0]]), ones(3))
    assert strategy.radii == (0.0,)
    assert result.update.tolist() == [1.0, 2.0]
    assert result.trust.tolist() == [0.5, 0.5, 0.0]


HONEST = rows(9, 5, seed=0)
DIRECTION = t([-1.0, 0.0, 0.0, 0.0, 0.0])


def _with_outlier(scale: float) -> Tensor:
    return torch.cat([HONEST, scale * DIRECTION[None]])


@pytest.mark.parametrize("scale", [1e3, 1e6, 1e12])
def test_one_huge_outlier_moves_the_aggregate_by_at_most_tau_over_n(scale):
    strategy = CenteredClipping(tau="auto")
    result = strategy(_with_outlier(scale), ones(10))
    (tau,) = strategy.radii
    # The radius is an honest distance however far the outlier is.
    assert tau <= float(row_norms(HONEST).max())
    # Without the outlier's own term, the step is the honest rows' clipped mean (by hand):
    norms = HONEST.norm(dim=1)
    honest_part = (HONEST * torch.clamp(tau / norms, max=1.0)[:, None]).sum(dim=0) / 10
    assert float((result.update - honest_part).norm()) <= tau / 10 * (1 + 1e-12)
    assert float(result.trust[-1]) < 1e-2


def test_how_far_the_outlier_goes_changes_nothing_with_the_auto_radius():
    # Only the outlier's direction as seen from the centre counts, which settles as it goes further.
    results = [CenteredClipping(tau="auto", iterations=5)(_with_outlier(s), ones(10)).update for s in (1e6, 1e12)]
    assert torch.allclose(results[0], results[1], rtol=0, atol=1e-6)
    plain = [CenteredClipping(tau=1e9, iterations=5)(_with_outlier(s), ones(10)).update for s in (1e6, 1e12)]
    assert not torch.allclose(plain[0], plain[1], rtol=0, atol=1.0)


def test_auto_radius_finds_the_honest_rows_where_a_fixed_tau_stalls_or_does_not_clip():
    updates, honest_mean = _with_outlier(1e6), HONEST.mean(dim=0)
    errors = {}
    for tau in ("auto", 1e-6, 1e9):
        update = CenteredClipping(tau=tau, iterations=5)(updates, ones(10)).update
        errors[tau] = float((update - honest_mean).norm())
        if tau == 1e-6:  # five steps of at most tau each: stuck at the starting centre (zero)
            assert float(update.norm()) <= 5e-6
    assert errors["auto"] < 0.05
    assert errors[1e-6] > 2.0  # |honest mean| is about 2.2
    assert errors[1e9] > 1e4  # the plain mean: the outlier's 1e6 / 10, unclipped


@pytest.mark.parametrize("factor", [4.0, 2.0**-20, 1e-3, 7.0, 1e3])
def test_scaling_every_update_and_the_centre_scales_the_result(factor):
    updates, center = rows(11, 30, seed=3, spread=1.0), rows(1, 30, seed=4)[0]
    kwargs = {"tau": "auto", "iterations": 3}
    base = with_center(center, **kwargs)(updates, ones(11))
    scaled = with_center(center * factor, **kwargs)(updates * factor, ones(11))
    if math.frexp(factor)[0] == 0.5:  # a power of two: every operation scales exactly
        assert torch.equal(scaled.update, base.update * factor)
        assert torch.equal(scaled.trust, base.trust)
    else:
        assert torch.allclose(scaled.update, base.update * factor, rtol=1e-12, atol=0)
        assert torch.allclose(scaled.trust, base.trust, rtol=1e-12, atol=0)
    # A fixed radius cannot follow the scale.
    fixed = {"tau": 0.5, "iterations": 3}
    fixed_base = with_center(center, **fixed)(updates, ones(11)).update
    fixed_scaled = with_center(center * factor, **fixed)(updates * factor, ones(11)).update
    assert not torch.allclose(fixed_scaled, fixed_base * factor, rtol=1e-3, atol=0)


def test_auto_radius_needs_no_f():
    strategy = CenteredClipping(tau="auto", iterations=2)  # neither f nor setup
    assert strategy.f is None
    assert torch.isfinite(strategy(_with_outlier(1e6), ones(10)).update).all()


def test_auto_radius_composes_with_bucketing():
    strategy = CenteredClipping(tau="auto", iterations=3, pre=["bucketing"])
    strategy.setup(num_clients=10, num_byzantine=2)
    result = strategy(_with_outlier(1e6), ones(10), generator=torch.Generator().manual_seed(0))
    assert len(strategy.radii) == 3
    assert float((result.update - HONEST.mean(dim=0)).norm()) < 0.5
    assert abs(float(result.trust.sum()) - 1.0) < 1e-12


# -- bit-identical results --------------------------------------------------------------------

DETERMINISM = [
    pytest.param({"tau": "auto"}, id="auto"),
    pytest.param({"tau": "auto", "iterations": 4}, id="auto-4-iterations"),
    pytest.param({"tau": "auto", "iterations": 2, "momentum": 0.9}, id="auto-momentum"),
    pytest.param({"tau": 0.5, "momentum": 0.5}, id="fixed-momentum"),
]


def _two_rounds(
    kwargs: dict, first: Tensor, second: Tensor, perm: Tensor | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    """The updates and the state after each of two rounds, and the trust (in the original row order)."""
    strategy = CenteredClipping(**kwargs)
    bits, trust = [], []
    for updates in (first, second):
        result = strategy(updates if perm is None else updates[perm], ones(updates.shape[0]))
        bits += [result.update, *strategy.state_dict().values()]
        trust.append(result.trust if perm is None else result.trust[torch.argsort(perm)])
    return bits, trust


@pytest.mark.parametrize("kwargs", DETERMINISM)
def test_repeated_calls_give_the_same_bits_and_row_permutations_only_rounding(kwargs):
    first, second = rows(12, 3000, seed=5, spread=1.0), rows(12, 3000, seed=6, spread=1.0)
    expected, expected_trust = _two_rounds(kwargs, first, second)
    again, again_trust = _two_rounds(kwargs, first, second)
    assert all(torch.equal(a, b) for a, b in zip(again + again_trust, expected + expected_trust))
    for seed in (1, 2, 3):
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(seed))
        permuted, permuted_trust = _two_rounds(kwargs, first, second, perm)
        assert len(permuted) == len(expected)
        # Sums over clients add the rows in the order given (client-key order on a ledger), so
        # another order may move the last bits, and no more.
        assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-15) for a, b in zip(permuted, expected))
        assert all(torch.allclose(a, b, rtol=0, atol=1e-15) for a, b in zip(permuted_trust, expected_trust))


@pytest.mark.parametrize("kwargs", DETERMINISM)
def test_the_result_does_not_depend_on_the_thread_count(kwargs):
    first, second = rows(7, 40_000, seed=7, spread=1.0), rows(7, 40_000, seed=8, spread=1.0)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            bits, trust = _two_rounds(kwargs, first, second)
            results.append(bits + trust)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


# -- server momentum --------------------------------------------------------------------------

ROUND_1 = [[3.0, 4.0], [0.3, 0.4]]
ROUND_2 = [[0.45, 2.6], [0.45, 0.6]]


def test_server_momentum_by_hand():
    # Without momentum (test_rules): robust aggregates v1 = (0.45, 0.6), v2 = (0.45, 1.1).
    strategy = CenteredClipping(tau=1.0, momentum=0.5)
    first = strategy(t(ROUND_1), ones(2))
    assert torch.allclose(first.update, t([0.45, 0.6]), rtol=0, atol=1e-15)  # m1 = v1
    second = strategy(t(ROUND_2), ones(2))
    # The centre of round 2 is v1, not m1, so v2 is as without momentum; m2 = (m1 + v2) / 2.
    assert torch.allclose(second.update, t([0.45, 0.85]), rtol=0, atol=1e-15)
    assert torch.allclose(second.trust, t([0.5 / 1.5, 1 / 1.5]), rtol=0, atol=1e-15)
    state = strategy.state_dict()
    assert sorted(state) == ["center", "momentum"]
    assert torch.allclose(state["center"], t([0.45, 1.1]), rtol=0, atol=1e-15)
    assert torch.equal(state["momentum"], second.update)


def test_without_momentum_the_update_is_the_centre_and_the_state_holds_only_it():
    # So chains written before the momentum existed replay with the same state bytes.
    strategy = CenteredClipping(tau=1.0, momentum=0.0)
    for updates in (ROUND_1, ROUND_2):
        result = strategy(t(updates), ones(2))
        assert list(strategy.state_dict()) == ["center"]
        assert encode_state(strategy.state_dict()) == encode_state({"center": result.update})
    assert torch.allclose(result.update, t([0.45, 1.1]), rtol=0, atol=1e-15)  # v2 of test_rules


def test_momentum_smooths_a_round_that_jumps():
    steady, jump = rows(6, 4, seed=9), rows(6, 4, seed=10, mean=-3.0)
    plain, smooth = CenteredClipping(tau="auto", iterations=5), CenteredClipping(tau="auto", iterations=5, momentum=0.9)
    for _ in range(3):
        plain(steady, ones(6)), smooth(steady, ones(6))
    jumped, smoothed = plain(jump, ones(6)).update, smooth(jump, ones(6)).update
    assert float(smoothed.norm()) < 0.5 * float(jumped.norm())


@pytest.mark.parametrize("through_bytes", [False, True], ids=["state_dict", "chain-bytes"])
def test_momentum_state_round_trips_and_reproduces_the_next_rounds(through_bytes):
    rounds = [rows(5, 8, seed=s, spread=1.0) for s in (11, 12, 13)]
    carried = CenteredClipping(tau="auto", iterations=2, momentum=0.8)
    carried(rounds[0], ones(5))
    state = carried.state_dict()
    if through_bytes:
        blob = encode_state(state)
        assert isinstance(blob, bytes)
        state = decode_state(blob)
        assert sorted(state) == ["center", "momentum"]
    expected = [carried(r, ones(5)).update for r in rounds[1:]]

    restored = CenteredClipping(tau="auto", iterations=2, momentum=0.8)
    restored.load_state_dict(state)
    assert all(torch.equal(restored(r, ones(5)).update, e) for r, e in zip(rounds[1:], expected))
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), carried.state_dict().values()))
    # Without the state the next round starts afresh and lands elsewhere.
    fresh = CenteredClipping(tau="auto", iterations=2, momentum=0.8)
    assert not torch.allclose(fresh(rounds[1], ones(5)).update, expected[0])
    # The empty state resets both.
    restored.load_state_dict({})
    assert restored.state_dict() == {}


def test_momentum_state_is_validated():
    strategy = CenteredClipping(momentum=0.5)
    two = t([1.0, 2.0])
    with pytest.raises(ValueError, match="both 'center' and 'momentum' or neither"):
        strategy.load_state_dict({"center": two})
    with pytest.raises(ValueError, match="both 'center' and 'momentum' or neither"):
        strategy.load_state_dict({"momentum": two})
    with pytest.raises(ValueError, match="unexpected keys"):
        strategy.load_state_dict({"center": two, "momentum": two, "velocity": two})
    with pytest.raises(ValueError, match="'momentum' must be a 1-D float64"):
        strategy.load_state_dict({"center": two, "momentum": two.float()})
    with pytest.raises(ValueError, match="'momentum' must be finite"):
        strategy.load_state_dict({"center": two, "momentum": t([math.inf, 0.0])})
    with pytest.raises(ValueError, match="same length, got 2 and 3"):
        strategy.load_state_dict({"center": two, "momentum": t([1.0, 2.0, 3.0])})
    with pytest.raises(ValueError, match="must be a mapping"):
        strategy.load_state_dict([("center", two)])  # type: ignore[arg-type]
    # A refused state leaves the strategy as it was.
    strategy.load_state_dict({"center": two, "momentum": two * 2})
    with pytest.raises(ValueError):
        strategy.load_state_dict({"center": t([0.0, 0.0]), "momentum": t([math.nan, 0.0])})
    assert strategy.state_dict()["momentum"].tolist() == [2.0, 4.0]
    # A rule without momentum refuses a momentum state (it came from another config).
    with pytest.raises(ValueError, match="needs momentum > 0"):
        CenteredClipping().load_state_dict({"center": two, "momentum": two})
    # A stored momentum of another length is refused at aggregation.
    strategy.load_state_dict({"center": t([0.0, 0.0, 0.0]), "momentum": t([0.0, 0.0, 0.0])})
    with pytest.raises(ValueError, match="3 coordinates"):
        strategy(t([[0.5, 0.5]]), ones(1))


# -- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", ["Auto", "AUTO", " auto", "median", "", None, True, 0, -1.0, math.nan, math.inf, 1e10])
def test_a_bad_tau_is_refused_and_the_message_offers_auto(tau):
    with pytest.raises(ConfigError, match=r"centered_clipping: tau must be .*or tau='auto'"):
        CenteredClipping(tau=tau)


@pytest.mark.parametrize("momentum", [1.0, MAX_MOMENTUM * 1.001, -0.1, math.nan, math.inf, True, "0.9", None, 10**400])
def test_a_bad_momentum_is_refused(momentum):
    with pytest.raises(ConfigError, match=r"centered_clipping: momentum must be"):
        CenteredClipping(momentum=momentum)


def test_the_new_arguments_are_recorded():
    strategy = CenteredClipping(tau="auto", momentum=0.9, iterations=2)
    assert strategy.hyperparameters() == {"tau": AUTO, "iterations": 2, "momentum": 0.9}
    assert CenteredClipping(tau=2).hyperparameters() == {"tau": 2.0, "iterations": 1, "momentum": 0.0}


def test_the_registry_builds_the_new_options_from_plain_values_only():
    node = {"_target_": "torchchain.strategies.CenteredClipping", "tau": "auto", "momentum": 0.9, "pre": ["bucketing"]}
    strategy = build_strategy(node, num_clients=10, num_byzantine=2)
    assert isinstance(strategy, CenteredClipping) and strategy.tau == AUTO and strategy.momentum == 0.9
    assert STRATEGIES["centered_clipping"] is CenteredClipping
    for bad, message in (({"tau": "${oc.env:HOME}"}, "interpolation"), ({"tau": "mean"}, "tau='auto'"),
                         ({"momentum": 1.0}, "momentum"), ({"tau": {"auto": True}}, "tau")):
        with pytest.raises(ConfigError, match=message):
            build_strategy({"_target_": "torchchain.strategies.CenteredClipping", **bad}, num_clients=4, num_byzantine=1)


def test_the_shipped_config_documents_the_options():
    cfg = compose_config(["strategy=centered_clipping", "strategy.tau=auto", "strategy.momentum=0.9"])
    assert cfg.strategy.tau == "auto" and cfg.strategy.momentum == 0.9
    assert compose_config(["strategy=centered_clipping"]).strategy.momentum == 0.0


# -- the chain replays it ---------------------------------------------------------------------


def test_a_run_with_the_auto_radius_and_momentum_replays_in_the_audit(tmp_path):
    from torchchain.chain.ledger import Ledger
    from torchchain.experiment import run
    from torchchain.protocol.audit import audit_ledger

    overrides = [
        *FAST, "clients=4", "rounds=2", "local_steps=2", "attack=signflip",
        "strategy=centered_clipping", "strategy.tau=auto", "strategy.momentum=0.5", "strategy.iterations=2",
    ]  # fmt: skip
    summary = run(compose_config(overrides), tmp_path)
    report = audit_ledger(summary["ledger"], expect_head=summary["head"])
    assert [(r.round, r.matches) for r in report.rounds] == [(1, True), (2, True)]
    assert report.rounds[-1].replayed_model_hash == summary["model_hash"]
    # The momentum is round state in the chain: each block's state blob holds it.
    ledger = Ledger.open(summary["ledger"])
    for block in ledger.blocks()[1:]:
        state = decode_state(ledger.get_blob(block.meta["state"]))
        assert sorted(state) == ["center", "momentum"]
    assert ledger.config["strategy"]["tau"] == "auto"
    # Replaying from block 2 needs only block 1's model and state blob.
    assert [(r.round, r.matches) for r in audit_ledger(summary["ledger"], start=2).rounds] == [(2, True)]
