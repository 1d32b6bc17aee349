"""Privacy accounting: ε from Opacus' RDP accountant, merging, canonical bytes, budget planning."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import RDPAccountant

from torchchain.errors import ConfigError, SerializationError
from torchchain.privacy.accountant import (
    MAX_ENTRIES,
    MAX_HISTORY_BYTES,
    PrivacyEntry,
    PrivacyHistory,
    plan_epsilon,
    rounds_within_budget,
)

DELTA = 1e-5
SCHEDULE = [(1.1, 0.01, 30), (0.9, 0.05, 20), (1.1, 0.01, 10), (1.1, 0.01, 5), (2.0, 1.0, 3)]


def _history(schedule=SCHEDULE) -> PrivacyHistory:
    h = PrivacyHistory()
    for sigma, q, steps in schedule:
        h = h.step(sigma, q, steps)
    return h


def test_epsilon_equals_opacus_stepped_one_step_at_a_time():
    accountant = RDPAccountant()
    for sigma, q, steps in SCHEDULE:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    h = _history()
    assert [tuple(e) for e in h.entries] == [tuple(e) for e in accountant.history]  # same merging rule
    for delta in (1e-5, 1e-3):
        assert abs(h.epsilon(delta) - accountant.get_epsilon(delta)) <= 1e-9
    assert h.epsilon(DELTA) > 0


def test_merging_of_consecutive_equal_entries():
    h = PrivacyHistory().step(1.0, 0.1, 3).step(1.0, 0.1, 2)
    assert h.entries == (PrivacyEntry(1.0, 0.1, 5),)
    h = h.step(1.0, 0.2).step(1.0, 0.1, 4)
    assert h.entries == (PrivacyEntry(1.0, 0.1, 5), PrivacyEntry(1.0, 0.2, 1), PrivacyEntry(1.0, 0.1, 4))
    assert h.total_steps == 10
    built = PrivacyHistory(((1.0, 0.1, 3), (1.0, 0.1, 2), (1.0, 0.2, 1), (1.0, 0.1, 4)))
    assert built == h and built.to_bytes() == h.to_bytes()


def test_step_returns_a_new_history():
    h = PrivacyHistory().step(1.0, 0.5, 2)
    h2 = h.step(1.0, 0.5, 3)
    assert h.entries == (PrivacyEntry(1.0, 0.5, 2),) and h2.entries == (PrivacyEntry(1.0, 0.5, 5),)
    with pytest.raises(AttributeError):
        h.entries = ()  # type: ignore[misc]
    assert h2.epsilon(DELTA) > h.epsilon(DELTA)


def test_empty_history_and_delta_range():
    assert PrivacyHistory().epsilon(DELTA) == 0.0
    for delta in (0.0, 1.0, -1e-5, float("nan"), True, "1e-5"):
        with pytest.raises(ConfigError, match="delta"):
            _history().epsilon(delta)


@pytest.mark.parametrize(
    ("sigma", "q", "steps"),
    [(0.0, 0.1, 1), (-1.0, 0.1, 1), (1e6 * 1.0001, 0.1, 1), (float("nan"), 0.1, 1), (float("inf"), 0.1, 1),
     (1.0, 0.0, 1), (1.0, 1.5, 1), (1.0, float("nan"), 1), (1.0, 0.1, 0), (1.0, 0.1, 10**9 + 1),
     (1.0, 0.1, 1.0), (1.0, 0.1, True), (True, 0.1, 1)],
)
def test_step_refuses_out_of_range_values(sigma, q, steps):
    with pytest.raises(ConfigError):
        PrivacyHistory().step(sigma, q, steps)


def test_bounds_on_merged_steps_and_entry_count():
    h = PrivacyHistory().step(1.0, 0.1, 10**9)
    with pytest.raises(ConfigError, match="steps"):
        h.step(1.0, 0.1, 1)
    full = PrivacyHistory(tuple((1.0 + (i % 2), 0.1, 1) for i in range(MAX_ENTRIES)))
    assert len(full.entries) == MAX_ENTRIES
    with pytest.raises(ConfigError, match="entries"):
        full.step(5.0, 0.1)
    assert len(full.step(1.0 + ((MAX_ENTRIES - 1) % 2), 0.1).entries) == MAX_ENTRIES  # merges, still fits


def test_bytes_are_canonical_and_round_trip():
    h = PrivacyHistory().step(1.1, 0.01, 50)
    assert h.to_bytes() == b'{"entries":[{"noise_multiplier":1.1,"sample_rate":0.01,"steps":50}],"version":1}'
    awkward = _history([(0.1 + 0.2, 1 / 3, 7), (5e-324 + 1.0, 5e-324, 10**9), (1e6, 1.0, 1)])
    for h in (PrivacyHistory(), _history(), awkward):
        data = h.to_bytes()
        back = PrivacyHistory.from_bytes(data)
        assert back == h and back.to_bytes() == data
        assert [type(x) for e in back.entries for x in e] == [float, float, int] * len(h.entries)
    assert PrivacyHistory.from_bytes(bytearray(_history().to_bytes())) == _history()


def test_state_dict_round_trip_and_refusals():
    h = _history()
    state = h.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert PrivacyHistory.load_state_dict(state) == h
    for bad in ({}, {"entries": [], "version": 2}, {"entries": [], "version": 1, "x": 0}, [],
                {"entries": [{"noise_multiplier": 1.0, "sample_rate": 0.1}], "version": 1}):
        with pytest.raises(ConfigError):
            PrivacyHistory.load_state_dict(bad)


GOOD = _history([(1.1, 0.01, 50), (0.9, 0.5, 2)]).to_bytes()


def _edit(old: str, new: str) -> bytes:
    assert old.encode() in GOOD
    return GOOD.replace(old.encode(), new.encode(), 1)


MALFORMED = {
    "whitespace": GOOD.replace(b",", b", ", 1),
    "trailing_newline": GOOD + b"\n",
    "key_order": _edit('"noise_multiplier":1.1,"sample_rate":0.01', '"sample_rate":0.01,"noise_multiplier":1.1'),
    "float_spelling": _edit('"sample_rate":0.01', '"sample_rate":1e-2'),
    "int_for_float": _edit('"noise_multiplier":1.1', '"noise_multiplier":1'),
    "string_for_float": _edit('"noise_multiplier":1.1', '"noise_multiplier":"1.1"'),
    "float_for_int": _edit('"steps":50', '"steps":50.0'),
    "bool_steps": _edit('"steps":50', '"steps":true'),
    "nan": _edit('"noise_multiplier":1.1', '"noise_multiplier":NaN'),
    "infinity": _edit('"noise_multiplier":1.1', '"noise_multiplier":Infinity'),
    "overflow_float": _edit('"noise_multiplier":1.1', '"noise_multiplier":1e999'),
    "zero_sigma": _edit('"noise_multiplier":1.1', '"noise_multiplier":0.0'),
    "negative_sigma": _edit('"noise_multiplier":1.1', '"noise_multiplier":-1.1'),
    "huge_sigma": _edit('"noise_multiplier":1.1', '"noise_multiplier":1000000.1'),
    "zero_rate": _edit('"sample_rate":0.01', '"sample_rate":0.0'),
    "rate_above_one": _edit('"sample_rate":0.01', '"sample_rate":1.01'),
    "zero_steps": _edit('"steps":50', '"steps":0'),
    "negative_steps": _edit('"steps":50', '"steps":-50'),
    "too_many_steps": _edit('"steps":50', '"steps":1000000001'),
    "unknown_entry_key": _edit('"steps":50', '"steps":50,"t":1'),
    "missing_entry_key": _edit(',"steps":50', ""),
    "unknown_top_key": GOOD.replace(b'"version":1}', b'"version":1,"z":0}'),
    "missing_version": GOOD.replace(b',"version":1', b""),
    "other_version": GOOD.replace(b'"version":1}', b'"version":2}'),
    "string_version": GOOD.replace(b'"version":1}', b'"version":"1"}'),
    "bool_version": GOOD.replace(b'"version":1}', b'"version":true}'),
    "duplicate_key": _edit('"steps":50', '"steps":50,"steps":50'),
    "unmerged_entries": _history([(1.1, 0.01, 1), (2.0, 0.01, 1)]).to_bytes().replace(b"2.0", b"1.1"),
    "entry_not_object": GOOD.replace(b'{"noise_multiplier":0.9,"sample_rate":0.5,"steps":2}', b"[0.9,0.5,2]"),
    "entries_not_list": b'{"entries":{},"version":1}',
    "top_level_list": b"[]",
    "truncated": GOOD[:-1],
    "empty": b"",
    "not_json": b"privacy",
    "non_ascii": GOOD.replace(b'"version"', b'"v\xc3\xa9rsion"'),
    "invalid_utf8": GOOD + b"\xff",
    "deep_nesting": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_parser_refuses_malformed_or_edited_bytes(name):
    data = MALFORMED[name]
    assert data != GOOD
    with pytest.raises(SerializationError):
        PrivacyHistory.from_bytes(data, max_bytes=len(data) + 10)


def test_parser_refuses_too_many_entries():
    entries = [f'{{"noise_multiplier":{1.0 + (i % 2)!r},"sample_rate":0.5,"steps":1}}' for i in range(MAX_ENTRIES + 1)]
    data = f'{{"entries":[{",".join(entries)}],"version":1}}'.encode()
    assert len(data) <= MAX_HISTORY_BYTES
    with pytest.raises(SerializationError, match="entries"):
        PrivacyHistory.from_bytes(data)
    data_ok = f'{{"entries":[{",".join(entries[:-1])}],"version":1}}'.encode()
    assert len(PrivacyHistory.from_bytes(data_ok).entries) == MAX_ENTRIES


def test_parser_refuses_oversized_input():
    with pytest.raises(SerializationError, match="over the limit"):
        PrivacyHistory.from_bytes(GOOD, max_bytes=len(GOOD) - 1)
    assert PrivacyHistory.from_bytes(GOOD, max_bytes=len(GOOD)).to_bytes() == GOOD
    with pytest.raises(SerializationError, match="over the limit"):
        PrivacyHistory.from_bytes(b" " * (MAX_HISTORY_BYTES + 1))
    with pytest.raises(TypeError):
        PrivacyHistory.from_bytes(GOOD.decode())  # type: ignore[arg-type]


def test_plan_epsilon_matches_a_history():
    assert plan_epsilon(1.0, 0.02, 10, 0, DELTA) == 0.0
    expected = PrivacyHistory().step(1.0, 0.02, 10 * 7).epsilon(DELTA)
    assert plan_epsilon(1.0, 0.02, 10, 7, DELTA) == expected
    assert plan_epsilon(1.0, 0.02, 10, 8, DELTA) > expected
    with pytest.raises(ConfigError):
        plan_epsilon(1.0, 0.02, 0, 7, DELTA)
    with pytest.raises(ConfigError):
        plan_epsilon(1.0, 0.02, 10, -1, DELTA)


@pytest.mark.parametrize(
    ("schedule", "sigma", "q", "per_round", "target"),
    [
        ([], 1.0, 0.05, 20, 3.0),  # record-level DP-SGD rounds from scratch
        ([(1.1, 0.01, 30), (1.0, 0.05, 40)], 1.0, 0.05, 20, 4.0),  # last entry merges with new rounds
        ([(0.8, 1.0, 2)], 5.0, 1.0, 1, 20.0),  # client-level, q = 1, one step a round
    ],
)
def test_rounds_within_budget_is_the_last_round_within_budget(schedule, sigma, q, per_round, target):
    history = _history(schedule)
    r = rounds_within_budget(history, sigma, q, per_round, target, DELTA, 10_000)
    assert 0 < r < 10_000

    def eps(rounds: int) -> float:
        return history.step(sigma, q, per_round * rounds).epsilon(DELTA) if rounds else history.epsilon(DELTA)

    assert eps(r) <= target < eps(r + 1)


def test_rounds_within_budget_edges():
    history = _history([(1.0, 0.05, 20)])
    spent = history.epsilon(DELTA)
    assert rounds_within_budget(history, 1.0, 0.05, 20, spent / 2, DELTA, 100) == 0  # already over budget
    assert rounds_within_budget(history, 1.0, 0.05, 20, 1e6, DELTA, 12) == 12  # capped by max_rounds
    assert rounds_within_budget(history, 1.0, 0.05, 20, 1e6, DELTA, 0) == 0
    with pytest.raises(ConfigError, match="target_epsilon"):
        rounds_within_budget(history, 1.0, 0.05, 20, 0.0, DELTA, 10)
    with pytest.raises(ConfigError, match="max_rounds"):
        rounds_within_budget(history, 1.0, 0.05, 20, 1.0, DELTA, -1)
