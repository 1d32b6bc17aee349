"""Every numeric argument of every built-in rule and step is bounded at construction.

A strategy's config may come from a ledger someone else wrote, so a replaying node must refuse
arguments that would make it spin (``iterations=10**12``), overflow or compute with NaN.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from torchchain.errors import ConfigError
from torchchain.strategies import (
    PRE_AGGREGATORS,
    STRATEGIES,
    Bucketing,
    CenteredClipping,
    Clipping,
    FLTrust,
    GeoMed,
    LNearest,
    MultiKrum,
    TrimmedMean,
)
from torchchain.strategies.base import MAX_COUNT, MAX_ITERATIONS, MAX_NORM
from torchchain.strategies.centered_clipping import MAX_MOMENTUM

#: (class, argument, smallest allowed, largest allowed, allowed range as the message shows it).
NUMERIC_ARGUMENTS: list[tuple[type, str, Any, Any, str]] = [
    *[(cls, "f", 0, MAX_COUNT, f"[0, {MAX_COUNT}]") for _, cls in sorted(STRATEGIES.items())],
    (CenteredClipping, "tau", 1e-300, MAX_NORM, "(0, 1e+09]"),
    (CenteredClipping, "iterations", 1, MAX_ITERATIONS, f"[1, {MAX_ITERATIONS}]"),
    (CenteredClipping, "momentum", 0.0, MAX_MOMENTUM, f"[0, {MAX_MOMENTUM:g}]"),
    (GeoMed, "nu", 1e-300, MAX_NORM, "(0, 1e+09]"),
    (GeoMed, "max_iter", 1, MAX_ITERATIONS, f"[1, {MAX_ITERATIONS}]"),
    (GeoMed, "tol", 0.0, 1.0, "[0, 1]"),
    (LNearest, "l", 1, MAX_COUNT, f"[1, {MAX_COUNT}]"),
    (MultiKrum, "m", 1, MAX_COUNT, f"[1, {MAX_COUNT}]"),
    (TrimmedMean, "trim", 0, MAX_COUNT, f"[0, {MAX_COUNT}]"),
    (FLTrust, "root_samples", 1, MAX_COUNT, f"[1, {MAX_COUNT}]"),
    (Bucketing, "s", 1, MAX_COUNT, f"[1, {MAX_COUNT}]"),
    (Clipping, "c", 1e-300, MAX_NORM, "(0, 1e+09]"),
]

BAD_VALUES = [
    pytest.param(float("inf"), id="inf"),
    pytest.param(float("-inf"), id="-inf"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(-1, id="-1"),
    pytest.param(True, id="True"),
    pytest.param(False, id="False"),
    pytest.param("1", id="str"),
    pytest.param(10**12, id="10**12"),
    pytest.param(1e12, id="1e12"),
    pytest.param(10**400, id="huge-int"),
    pytest.param([1], id="list"),
]


def _ids(row: tuple) -> str:
    return f"{row[0].__name__}.{row[1]}"


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("row", NUMERIC_ARGUMENTS, ids=[_ids(row) for row in NUMERIC_ARGUMENTS])
def test_every_numeric_argument_refuses_out_of_range_values(row, value):
    cls, key, _, _, _ = row
    with pytest.raises(ConfigError, match=cls.name):
        cls(**{key: value})


@pytest.mark.parametrize("row", NUMERIC_ARGUMENTS, ids=[_ids(row) for row in NUMERIC_ARGUMENTS])
def test_the_bounds_are_inclusive_and_the_message_names_the_argument_and_range(row):
    cls, key, low, high, shown = row
    cls(**{key: low})
    cls(**{key: high})
    beyond = high + 1 if isinstance(high, int) else high * 2
    with pytest.raises(ConfigError) as error:
        cls(**{key: beyond})
    message = str(error.value)
    if key != "trim":
        assert key in message and shown in message, message
    else:
        assert "trim" in message and f"{MAX_COUNT}" in message


def test_the_table_covers_every_numeric_argument_of_every_built_in():
    covered = {(cls, key) for cls, key, *_ in NUMERIC_ARGUMENTS}
    # ``pre`` is a list of steps and ``weights`` a choice of two strings; both tested elsewhere.
    not_numeric = {"pre", "weights"}
    for cls in [*STRATEGIES.values(), *PRE_AGGREGATORS.values()]:
        for parameter in inspect.signature(cls.__init__).parameters.values():
            if parameter.kind is parameter.KEYWORD_ONLY and parameter.name not in not_numeric:
                assert (cls, parameter.name) in covered, f"{cls.__name__}({parameter.name}=...) is not bounds-tested"


def test_constructors_are_keyword_only():
    for cls in [*STRATEGIES.values(), *PRE_AGGREGATORS.values()]:
        for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            assert parameter.kind in (parameter.KEYWORD_ONLY, parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)


def test_a_hostile_iteration_count_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match=rf"centered_clipping: iterations must be an int in \[1, {MAX_ITERATIONS}\]"):
        CenteredClipping(iterations=10**12)
    with pytest.raises(ConfigError, match=rf"geomed: max_iter must be an int in \[1, {MAX_ITERATIONS}\]"):
        GeoMed(max_iter=10**12)


def test_a_huge_value_is_not_echoed_in_full():
    with pytest.raises(ConfigError) as error:
        Bucketing(s=10**5000)
    assert len(str(error.value)) < 200 and "bits" in str(error.value)


@pytest.mark.parametrize("value", [0.5, 1.5, float("nan"), -0.1, float("inf")])
def test_a_fractional_trim_must_lie_in_zero_to_a_half(value):
    with pytest.raises(ConfigError, match="fraction"):
        TrimmedMean(trim=value)
    TrimmedMean(trim=0.0)
    TrimmedMean(trim=0.49)
