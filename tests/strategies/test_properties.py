"""Properties every strategy keeps: determinism, trust vectors, few rows, robustness."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from torchchain.strategies import STRATEGIES, Strategy

#: Rules whose result is anchored to something other than the rows (a centre, a reference).
ANCHORED = {"centered_clipping", "fltrust"}


def ones(n: int) -> Tensor:
    return torch.ones(n, dtype=torch.float64)


def build(name: str, *, n: int, f: int, pre=()) -> Strategy:
    strategy = STRATEGIES[name](pre=pre)
    strategy.setup(num_clients=n, num_byzantine=f)
    return strategy


def run(strategy: Strategy, updates: Tensor, weights: Tensor, reference: Tensor | None = None, **kwargs):
    if strategy.requires_reference:
        strategy.set_reference(updates.mean(dim=0) if reference is None else reference)
    return strategy(updates, weights, **kwargs)


def sample(n: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=generator, dtype=torch.float64) + 1.0
    weights = torch.randint(1, 50, (n,), generator=generator).to(torch.float64)
    return updates, weights


# -- determinism ----------------------------------------------------------------------------


#: Rules whose result is built from order statistics and selections only: their sums run over
#: sorted values or over rows in score order, so any order of the rows gives the same bits. The
#: other rules add the rows in the order given (client-key order on a ledger).
ORDER_FREE = {"median", "trimmed_mean", "krum", "multikrum", "bulyan", "lnearest"}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("d", [5, 2500])
def test_permuting_the_rows_moves_the_update_by_rounding_at_most(name, d):
    updates, weights = sample(11, d, seed=d)
    reference = updates[:3].mean(dim=0)
    expected = run(build(name, n=11, f=2), updates, weights, reference)
    assert torch.equal(run(build(name, n=11, f=2), updates, weights, reference).update, expected.update)
    for seed in (1, 2, 3):
        perm = torch.randperm(11, generator=torch.Generator().manual_seed(seed))
        result = run(build(name, n=11, f=2), updates[perm], weights[perm], reference)
        if name in ORDER_FREE:
            assert torch.equal(result.update, expected.update)
        else:
            assert torch.allclose(result.update, expected.update, rtol=1e-12, atol=1e-14)
        assert torch.allclose(result.trust, expected.trust[perm], rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(7))), st.sampled_from(sorted(ORDER_FREE)))
def test_order_statistic_rules_give_the_same_bits_for_any_permutation(perm, name):
    updates, weights = sample(7, 4, seed=11)
    expected = run(build(name, n=7, f=1), updates, weights)
    assert torch.equal(run(build(name, n=7, f=1), updates[perm], weights[perm]).update, expected.update)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_update_is_bit_identical_for_any_thread_count(name):
    updates, weights = sample(7, 40_000, seed=5)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(run(build(name, n=7, f=1), updates, weights).update)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


# -- trust ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("pre", [(), ("nnm",), ("bucketing", "clipping")])
def test_trust_has_one_non_negative_entry_per_row_summing_to_one(name, pre):
    updates, weights = sample(15, 6, seed=7)
    result = run(build(name, n=15, f=1, pre=pre), updates, weights, generator=torch.Generator().manual_seed(0))
    assert result.update.shape == (6,) and result.update.dtype == torch.float64
    assert result.trust.shape == (15,) and result.trust.dtype == torch.float64
    assert bool((result.trust >= 0).all())
    assert abs(float(result.trust.sum()) - 1.0) < 1e-12


# -- fewer rows than clients ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_rejected_clients_leave_fewer_rows_and_the_rule_still_answers(name, n):
    # set up for 15 clients with 3 Byzantine, but only n updates survived validation
    updates, weights = sample(n, 3, seed=n)
    result = run(build(name, n=15, f=3), updates, weights)
    assert result.update.shape == (3,) and bool(torch.isfinite(result.update).all())
    assert result.trust.shape == (n,)
    if n == 1 and name not in ANCHORED:
        assert torch.equal(result.update, updates[0])
        assert result.trust.tolist() == [1.0]


# -- robustness -----------------------------------------------------------------------------

HONEST = [[1.0, 1.1, 0.9], [1.1, 0.9, 1.0], [0.9, 1.0, 1.1], [1.0, 1.0, 1.0]]
SIGN_FLIPPED = [[-4.0, -4.0, -4.0]]


def test_fedavg_is_pulled_off_by_a_sign_flipped_update():
    updates = torch.tensor(HONEST + SIGN_FLIPPED, dtype=torch.float64)
    update = build("fedavg", n=5, f=1)(updates, ones(5)).update
    assert torch.allclose(update, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)  # (4 - 4) / 5


@pytest.mark.parametrize("name", ["median", "krum", "geomed", "centered_clipping", "lnearest"])
def test_robust_rules_stay_near_the_honest_updates(name):
    updates = torch.tensor(HONEST + SIGN_FLIPPED, dtype=torch.float64)
    strategy = build(name, n=5, f=1)
    if name == "centered_clipping":
        # Centered clipping starts from the previous round's aggregate, here the honest mean.
        strategy.load_state_dict({"center": torch.ones(3, dtype=torch.float64)})
    result = strategy(updates, ones(5))
    assert float((result.update - 1.0).abs().max()) < 0.15
    assert float(result.trust[4]) < 0.1
