"""Privacy accounting: an ``(ε, δ)`` guarantee for a sequence of Gaussian-mechanism releases.

A :class:`PrivacyHistory` is the list of mechanisms a party has run, each entry
``(noise_multiplier σ, sample_rate q, steps)`` meaning "``steps`` independent runs of the
sampled Gaussian mechanism with noise multiplier ``σ`` on a Poisson sample of rate ``q``".
Consecutive entries with equal ``(σ, q)`` are merged by summing their steps, as the history of
Opacus' accountants is. ``ε`` is computed by Opacus' RDP accountant
(:class:`opacus.accountants.RDPAccountant`: Rényi DP of the sampled Gaussian mechanism, Mironov
2017 and Mironov, Talwar, Zhang 2019, converted to ``(ε, δ)`` with Balle et al. 2020); nothing
here re-derives those formulas.

What to record, per round:

- **Record-level DP-SGD** (:func:`torchchain.privacy.dpsgd.train_local_dpsgd`; the unit of
  privacy is one training example of the client): one entry per round with ``σ`` = the DP-SGD
  noise multiplier, ``q = batch_size / len(local data)`` (the Poisson sampling rate of each
  step) and ``steps`` = the local optimizer steps taken that round
  (:class:`~torchchain.privacy.dpsgd.DPSGDReport` carries all three). The amplification by
  ``q < 1`` holds only because the client's Poisson samples are drawn from its private
  generator; nobody outside sees which examples a step used.
- **Client-level DP** (:func:`torchchain.privacy.client_dp.clip_and_noise`; the unit is a
  client's whole data set): ``σ`` = the noise multiplier and ``steps = 1`` per round. In
  DP-FedAvg (McMahan et al. 2018) ``q = clients_per_round / clients`` (``1.0`` when every
  client takes part); that amplification assumes each client is selected by a secret Poisson
  draw and only the noisy aggregate is released. On this ledger neither holds: a round's sample
  is derived from the config hash and the round, so anyone can compute it, and each client's noised
  update is published under its signature. For a guarantee towards ledger readers, record
  ``q = 1.0`` and one step for each round the client actually took part in.

The history has a canonical byte form (:meth:`PrivacyHistory.to_bytes`) so it can be hashed,
signed or stored beside a checkpoint; :meth:`PrivacyHistory.from_bytes` accepts exactly the
bytes ``to_bytes`` writes and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torchchain.chain.encoding import canonical_json, parse_json_object
from torchchain.errors import ConfigError, SerializationError

__all__ = [
    "FORMAT_VERSION",
    "MAX_ENTRIES",
    "MAX_HISTORY_BYTES",
    "MAX_NOISE_MULTIPLIER",
    "MAX_STEPS",
    "PrivacyEntry",
    "PrivacyHistory",
    "plan_epsilon",
    "rounds_within_budget",
]

#: Version written into (and required from) the canonical bytes and the state dict.
FORMAT_VERSION = 1
#: Bounds on one entry, enforced on every history (built, stepped or parsed).
MAX_NOISE_MULTIPLIER = 1e6
MAX_STEPS = 10**9
MAX_ENTRIES = 10_000
#: Default ``max_bytes`` of :meth:`PrivacyHistory.from_bytes`. The longest canonical entry is 102
#: bytes (two 23-character floats, a 10-digit step count, keys and separators), so a full history
#: of ``MAX_ENTRIES`` entries (about 1.02 MB) always fits in 1 MiB.
MAX_HISTORY_BYTES = 1 << 20

_KEYS = frozenset({"entries", "version"})
_ENTRY_KEYS = frozenset({"noise_multiplier", "sample_rate", "steps"})


class PrivacyEntry(NamedTuple):
    """``steps`` runs of the sampled Gaussian mechanism with noise multiplier ``σ`` and sample rate ``q``."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _check_sigma(value: object, error: type[Exception] = ConfigError) -> float:
    if not (_is_number(value) and 0 < value <= MAX_NOISE_MULTIPLIER):
        raise error(f"noise_multiplier must be a number in (0, {MAX_NOISE_MULTIPLIER:g}], got {value!r}")
    return float(value)


def _check_rate(value: object, error: type[Exception] = ConfigError) -> float:
    if not (_is_number(value) and 0 < value <= 1):
        raise error(f"sample_rate must be a number in (0, 1], got {value!r}")
    return float(value)


def _check_count(value: object, key: str, low: int, high: int | None, error: type[Exception] = ConfigError) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise error(f"{key} must be an integer {bound}, got {value!r}")
    return int(value)


def _check_delta(delta: object) -> float:
    if not (_is_number(delta) and 0 < delta < 1):
        raise ConfigError(f"delta must be a number in (0, 1), got {delta!r}")
    return float(delta)


def _append(entries: list[PrivacyEntry], sigma: float, rate: float, steps: int) -> None:
    """Append in place, merging with the last entry when ``(σ, q)`` are equal (Opacus' rule)."""
    if entries and entries[-1].noise_multiplier == sigma and entries[-1].sample_rate == rate:
        last = entries.pop()
        steps += last.steps
    entries.append(PrivacyEntry(sigma, rate, steps))


def _epsilon(entries: Sequence[PrivacyEntry], delta: float) -> float:
    """ε of ``entries`` at ``delta`` by Opacus' RDP accountant (no bounds on steps)."""
    if not entries:
        return 0.0
    from opacus.accountants import RDPAccountant  # imported on use: opacus takes seconds to import

    accountant = RDPAccountant()
    accountant.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in entries]
    return float(accountant.get_epsilon(delta=delta))


@dataclass(frozen=True)
class PrivacyHistory:
    """An immutable, ordered list of :class:`PrivacyEntry`, merged and bounded.

    Build one with ``PrivacyHistory()`` and extend it with :meth:`step`, which returns a new
    history. Bounds on every entry: ``0 < σ ≤ 1e6``, ``0 < q ≤ 1``, ``1 ≤ steps ≤ 10⁹``; at
    most ``10_000`` entries.

    Attributes:
        entries: The entries, oldest first, no two consecutive ones with equal ``(σ, q)``.

    Raises:
        ConfigError: If an entry is out of range, a merged entry exceeds ``10⁹`` steps, or there
            are more than ``10_000`` entries.
    """

    entries: tuple[PrivacyEntry, ...] = ()

    def __post_init__(self) -> None:
        merged: list[PrivacyEntry] = []
        for entry in self.entries:
            if not isinstance(entry, Sequence) or isinstance(entry, (str, bytes)) or len(entry) != 3:
                raise ConfigError(f"a privacy history entry is (noise_multiplier, sample_rate, steps), got {entry!r}")
            sigma, rate, steps = entry
            _append(merged, _check_sigma(sigma), _check_rate(rate), _check_count(steps, "steps", 1, MAX_STEPS))
        _check_bounds(merged, ConfigError)
        object.__setattr__(self, "entries", tuple(merged))

    # -- accounting ---------------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        """Steps over all entries."""
        return sum(e.steps for e in self.entries)

    def epsilon(self, delta: float) -> float:
        """``ε`` of the whole history at ``delta``, by Opacus' RDP accountant (``0.0`` when empty).

        Raises:
            ConfigError: If ``delta`` is not in ``(0, 1)``.
        """
        return _epsilon(self.entries, _check_delta(delta))

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> PrivacyHistory:
        """A new history with ``steps`` more runs at ``(noise_multiplier, sample_rate)`` appended.

        Raises:
            ConfigError: If a value is out of range or the result would break a bound.
        """
        merged = list(self.entries)
        _append(
            merged,
            _check_sigma(noise_multiplier),
            _check_rate(sample_rate),
            _check_count(steps, "steps", 1, MAX_STEPS),
        )
        return PrivacyHistory(tuple(merged))

    # -- canonical bytes and state ------------------------------------------------------------

    def _as_object(self) -> dict[str, Any]:
        return {
            "entries": [
                {"noise_multiplier": e.noise_multiplier, "sample_rate": e.sample_rate, "steps": e.steps}
                for e in self.entries
            ],
            "version": FORMAT_VERSION,
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, no whitespace, ASCII, floats as Python's round-tripping
        ``repr``; e.g. ``{"entries":[{"noise_multiplier":1.1,"sample_rate":0.01,"steps":50}],"version":1}``.
        Equal histories give equal bytes."""
        return canonical_json(self._as_object())

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_HISTORY_BYTES) -> PrivacyHistory:
        """Parse :meth:`to_bytes` output; anything else is refused.

        Refused: input longer than ``max_bytes``, non-ASCII or invalid JSON, duplicate or unknown
        keys, missing keys, another version, wrong types (a float must be written as a float,
        a step count as an integer), non-finite or out-of-range values, more than ``10_000``
        entries, consecutive entries with equal ``(σ, q)``, and any byte-level deviation from
        the canonical form (whitespace, key order, number spelling).

        Raises:
            SerializationError: On every refusal above.
            TypeError: If ``data`` is not bytes-like.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"a privacy history is read from bytes, got {type(data).__name__}")
        max_bytes = _check_count(max_bytes, "max_bytes", 0, None)
        data = bytes(data)
        obj = parse_json_object(data, what="privacy history", max_bytes=max_bytes)
        history = cls._from_object(obj, SerializationError)
        if history.to_bytes() != data:
            raise SerializationError("privacy history bytes are not in canonical form")
        return history

    def state_dict(self) -> dict[str, Any]:
        """``{"entries": [{"noise_multiplier", "sample_rate", "steps"}, ...], "version": 1}``, JSON-able."""
        return self._as_object()

    @classmethod
    def load_state_dict(cls, state: Mapping[str, Any]) -> PrivacyHistory:
        """The history :meth:`state_dict` describes. A history is immutable, so this returns a new
        one rather than changing an instance: ``history = PrivacyHistory.load_state_dict(state)``.

        Raises:
            ConfigError: If ``state`` is not exactly what :meth:`state_dict` writes.
        """
        return cls._from_object(state, ConfigError)

    @classmethod
    def _from_object(cls, obj: object, error: type[Exception]) -> PrivacyHistory:
        if not isinstance(obj, Mapping):
            raise error(f"privacy history must be an object, got {type(obj).__name__}")
        if set(obj) != _KEYS:
            raise error(f"privacy history keys must be {sorted(_KEYS)}, got {sorted(map(str, obj))}")
        version = obj["version"]
        if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
            raise error(f"privacy history version must be {FORMAT_VERSION}, got {version!r}")
        raw = obj["entries"]
        if not isinstance(raw, list):
            raise error(f"privacy history entries must be a list, got {type(raw).__name__}")
        if len(raw) > MAX_ENTRIES:
            raise error(f"privacy history holds {len(raw)} entries, more than {MAX_ENTRIES}")
        entries: list[PrivacyEntry] = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or set(item) != _ENTRY_KEYS:
                keys = sorted(map(str, item)) if isinstance(item, Mapping) else type(item).__name__
                raise error(f"privacy history entry {i} must have exactly the keys {sorted(_ENTRY_KEYS)}, got {keys}")
            sigma, rate, steps = item["noise_multiplier"], item["sample_rate"], item["steps"]
            if type(sigma) is not float or type(rate) is not float:
                raise error(f"privacy history entry {i}: noise_multiplier and sample_rate must be floats")
            entry = PrivacyEntry(
                _check_sigma(sigma, error), _check_rate(rate, error), _check_count(steps, "steps", 1, MAX_STEPS, error)
            )
            if entries and entries[-1][:2] == entry[:2]:
                raise error(
                    f"privacy history entries {i - 1} and {i} have equal (noise_multiplier, sample_rate); "
                    "they must be merged"
                )
            entries.append(entry)
        return cls(tuple(entries))


def _check_bounds(entries: Sequence[PrivacyEntry], error: type[Exception]) -> None:
    if len(entries) > MAX_ENTRIES:
        raise error(f"a privacy history holds at most {MAX_ENTRIES} entries, this one would hold {len(entries)}")
    for e in entries:
        if e.steps > MAX_STEPS:
            raise error(f"a privacy history entry holds at most {MAX_STEPS} steps, this one would hold {e.steps}")


def plan_epsilon(noise_multiplier: float, sample_rate: float, steps_per_round: int, rounds: int, delta: float) -> float:
    """``ε`` after ``rounds`` rounds of ``steps_per_round`` steps at ``(σ, q)``, from an empty history.

    The same as ``PrivacyHistory().step(σ, q, steps_per_round * rounds).epsilon(delta)``, without
    the ``10⁹``-step bound of a stored history.

    Raises:
        ConfigError: If a value is out of range.
    """
    sigma, rate = _check_sigma(noise_multiplier), _check_rate(sample_rate)
    per_round = _check_count(steps_per_round, "steps_per_round", 1, None)
    rounds = _check_count(rounds, "rounds", 0, None)
    delta = _check_delta(delta)
    return _epsilon([PrivacyEntry(sigma, rate, per_round * rounds)] if rounds else [], delta)


def rounds_within_budget(
    history: PrivacyHistory,
    noise_multiplier: float,
    sample_rate: float,
    steps_per_round: int,
    target_epsilon: float,
    delta: float,
    max_rounds: int,
) -> int:
    """The largest ``r ≤ max_rounds`` such that ``history`` plus ``r`` more rounds stays within ``target_epsilon``.

    A round is ``steps_per_round`` steps at ``(σ, q)``, appended as :meth:`PrivacyHistory.step`
    would. ``ε`` grows monotonically with the number of steps, so ``r`` is found by bisection
    (about ``log2(max_rounds)`` calls to the accountant). Returns ``0`` when the history alone
    already exceeds the target.

    Raises:
        ConfigError: If a value is out of range.
    """
    if not isinstance(history, PrivacyHistory):
        raise TypeError(f"history must be a PrivacyHistory, got {type(history).__name__}")
    sigma, rate = _check_sigma(noise_multiplier), _check_rate(sample_rate)
    per_round = _check_count(steps_per_round, "steps_per_round", 1, None)
    max_rounds = _check_count(max_rounds, "max_rounds", 0, None)
    delta = _check_delta(delta)
    if not (_is_number(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")

    def within(rounds: int) -> bool:
        entries = list(history.entries)
        if rounds:
            _append(entries, sigma, rate, per_round * rounds)
        return _epsilon(entries, delta) <= target_epsilon

    if not within(0):
        return 0
    if within(max_rounds):
        return max_rounds
    low, high = 0, max_rounds  # within(low) and not within(high)
    while high - low > 1:
        mid = (low + high) // 2
        if within(mid):
            low = mid
        else:
            high = mid
    return low
