"""The contract every aggregation rule keeps.

A :class:`Strategy` turns one round's client updates into one aggregated update. The runtime
flattens each client's delta into a float64 row, stacks the rows sorted by client key, and calls
the strategy; every node of the ledger does the same and must get the same bits, so strategies
compute on the CPU in float64, in a fixed order, with randomness only from the generator passed
in. :class:`PreAggregator` steps (bucketing, nearest-neighbour mixing, clipping) transform the
rows before any strategy sees them.

Writing a strategy takes one method::

    class TrimmedAverage(Strategy):
        def aggregate(self, updates, weights):
            ...
            return Aggregate(update=..., trust=...)

and it is selected with ``python train.py strategy._target_=my_pkg.TrimmedAverage``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from torchchain.errors import ConfigError
from torchchain.strategies.kernels import sequential_sum

__all__ = [
    "MAX_COUNT",
    "MAX_ITERATIONS",
    "MAX_NORM",
    "MAX_PRE_STEPS",
    "WEIGHTINGS",
    "Aggregate",
    "PreAggregator",
    "Strategy",
    "require_choice",
    "require_int",
    "require_number",
]

# A strategy's config may come from a ledger written by someone else, so every argument of a
# built-in rule is bounded: a count or an iteration budget cannot make a replaying node spin or
# allocate without end, and a real-valued argument is a finite number in a stated range.

#: The largest count a config may give (``f``, clients, bucket size ``s``, ``l``, ``m``, ``trim``,
#: ``root_samples``).
MAX_COUNT = 10**6
#: The most iterations a rule may run per aggregation (CenteredClipping ``iterations``, GeoMed
#: ``max_iter``).
MAX_ITERATIONS = 1000
#: The largest norm or distance a config may give (CenteredClipping ``tau``, Clipping ``c``,
#: GeoMed ``nu``).
MAX_NORM = 1e9
#: The most pre-aggregation steps a strategy may run.
MAX_PRE_STEPS = 8
#: How a rule that averages may weight the rows: ``"samples"`` by the client-claimed sample
#: counts, ``"equal"`` all alike (the counts passed in are ignored).
WEIGHTINGS = ("samples", "equal")


@dataclass(frozen=True)
class Aggregate:
    """The result of aggregating one round.

    Attributes:
        update: ``(d,)`` float64, the update to add to the global model.
        trust: ``(n,)`` float64, non-negative: the weight each input row received in ``update``
            ("who the aggregate relied on"). It sums to 1, except where a strategy documents
            that it may be all zero (FLTrust when no update agrees with the reference). What the
            weight means depends on the rule: ``1/k`` for each of ``k`` selected rows, the
            normalised weights of an average, or the share of coordinates a row supplied for
            coordinate-wise rules; each strategy's docstring says which.
    """

    update: Tensor
    trust: Tensor


class PreAggregator(ABC):
    """A step that transforms the rows before a strategy aggregates them.

    A step maps ``n`` rows to ``m`` rows and reports a ``(m, n)`` mixing matrix saying how much
    of each input row went into each output row (``new_updates ≈ mixing @ updates``). The
    strategy uses it to carry trust back to the clients. Pre-aggregators compose with any
    strategy through ``Strategy(pre=[...])``.

    Subclasses set :attr:`name` and implement :meth:`__call__`; they override
    :meth:`output_rows` when they change the number of rows, :meth:`check` when they have
    requirements on ``n`` and ``f``, and :meth:`hyperparameters` to record their arguments.
    """

    #: The name used in configs (``pre: [bucketing]``) and in :meth:`describe`.
    name: ClassVar[str] = ""

    @abstractmethod
    def __call__(
        self, updates: Tensor, weights: Tensor, *, f: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Transform the rows.

        Args:
            updates: ``(n, d)`` float64 rows.
            weights: ``(n,)`` float64 sample counts.
            f: The number of Byzantine rows the strategy assumes (may exceed what ``n`` allows
                when clients were rejected; clamp it).
            generator: The only permitted source of randomness.

        Returns:
            ``(updates_m, weights_m, mixing)`` of shapes ``(m, d)``, ``(m,)`` and ``(m, n)``.
        """

    def output_rows(self, n: int) -> int:
        """How many rows the step returns for ``n`` input rows (default: ``n``)."""
        return n

    def check(self, n: int, f: int) -> None:
        """Raise :class:`~torchchain.errors.ConfigError` if the step cannot run on ``n`` rows with ``f`` Byzantine."""

    def hyperparameters(self) -> dict[str, Any]:
        """The step's arguments, JSON-able, for :meth:`describe` (default: none)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the step: ``{"name": ..., **hyperparameters}``."""
        return {"name": self.name or _qualified_name(type(self)), **self.hyperparameters()}


class Strategy(ABC):
    """Base class of every aggregation rule; users subclass it and implement :meth:`aggregate`.

    Calling a strategy validates the inputs, runs the pre-aggregation steps, calls
    :meth:`aggregate` and maps the trust back to the original rows. The constructor is
    keyword-only.

    At aggregation time fewer rows may arrive than ``num_clients`` (the miner rejected some). A
    rule must still return a result: built-in rules use ``effective_f(n) = min(f, max_f(n))``,
    the largest ``f`` they tolerate for the rows present, and a single row comes back as is
    (except for rules anchored to something other than the rows, which say so).

    The sample counts passed in are claimed by the clients, so a client can claim any count.
    The built-in rules that weight rows (:class:`~torchchain.strategies.FedAvg`,
    :class:`~torchchain.strategies.GeoMed`) take ``weights="samples"`` or ``weights="equal"``
    (one of :data:`WEIGHTINGS`); only FedAvg, the plain average, defaults to ``"samples"``. The
    other built-in rules ignore the counts.

    Every argument of a built-in rule or step is checked at construction against a stated range
    (:data:`MAX_COUNT`, :data:`MAX_ITERATIONS`, :data:`MAX_NORM`), since a config may come from
    someone else's ledger; :func:`require_int`, :func:`require_number` and
    :func:`require_choice` do the same for user rules.

    Args:
        f: The number of Byzantine clients the rule assumes, an int in ``[0, MAX_COUNT]``.
            ``None`` (default) takes the run's configured byzantine count in :meth:`setup`; an
            explicit value wins.
        pre: Pre-aggregation steps applied in order before :meth:`aggregate`: instances of
            :class:`PreAggregator`, or the names ``"bucketing"``, ``"nnm"`` and ``"clipping"`` for
            the default-parameter steps; at most :data:`MAX_PRE_STEPS`. Default: none. Steps
            receive ``f``, so a strategy with steps needs ``f`` (given here or set by
            :meth:`setup`) even if the rule ignores it.

    Attributes:
        f: The resolved Byzantine count (``None`` until given or set up).
        pre: The pre-aggregation steps, as instances.
        num_clients: The client count passed to :meth:`setup` (``None`` before).

    Raises:
        ConfigError: If ``f`` is not an int in ``[0, MAX_COUNT]``, ``pre`` is not a list of at
            most ``MAX_PRE_STEPS`` steps, or a step is unknown.
    """

    #: The name used in configs and recorded in the ledger; user subclasses may leave it empty,
    #: and are then recorded by their import path.
    name: ClassVar[str] = ""
    #: Whether the runtime must call ``set_reference(update)`` before every aggregation.
    requires_reference: ClassVar[bool] = False

    def __init__(self, *, f: int | None = None, pre: Sequence[PreAggregator | str] = ()) -> None:
        if f is not None:
            require_int(self._label(), "f", f, minimum=0, maximum=MAX_COUNT)
        self._configured_f = f
        self.f: int | None = f
        self.pre: tuple[PreAggregator, ...] = _resolve_pre_steps(self._label(), pre)
        self.num_clients: int | None = None

    # -- configuration ------------------------------------------------------------------

    def setup(self, *, num_clients: int, num_byzantine: int) -> None:
        """Fix ``f`` for the run and check the rule can run with these many clients.

        Args:
            num_clients: Clients in the run, an int in ``[1, MAX_COUNT]``.
            num_byzantine: The run's configured Byzantine count, in ``[0, MAX_COUNT]``; used as
                ``f`` unless ``f`` was given to the constructor.

        Raises:
            ConfigError: If a count is out of range, or, with what to change, if the rule (after
                its pre-aggregation steps) cannot tolerate ``f`` Byzantine clients among
                ``num_clients``.
        """
        require_int(self._label(), "num_clients", num_clients, minimum=1, maximum=MAX_COUNT)
        require_int(self._label(), "num_byzantine", num_byzantine, minimum=0, maximum=MAX_COUNT)
        f = self._configured_f if self._configured_f is not None else num_byzantine
        rows = num_clients
        for step in self.pre:
            step.check(rows, f)
            rows = step.output_rows(rows)
        try:
            self.check(rows, f)
        except ConfigError as error:
            if rows == num_clients:
                raise
            steps = ", ".join(step.describe()["name"] for step in self.pre)
            raise ConfigError(
                f"{error} (the pre-aggregation steps [{steps}] turn {num_clients} clients into {rows} rows)"
            ) from error
        self.f = f
        self.num_clients = num_clients

    def check(self, n: int, f: int) -> None:
        """Raise :class:`~torchchain.errors.ConfigError` if the rule cannot run on ``n`` rows with ``f`` Byzantine.

        The base rule needs ``0 <= f < n``; subclasses call ``super().check(n, f)`` and add theirs.
        """
        if not 0 <= f < n:
            raise ConfigError(
                f"{self._label()} needs fewer Byzantine clients than clients (0 <= f < n), "
                f"got n={n}, f={f}: lower byzantine or raise clients"
            )

    def max_f(self, n: int) -> int:
        """The largest Byzantine count the rule tolerates among ``n`` rows (base: ``n - 1``)."""
        return n - 1

    def effective_f(self, n: int) -> int:
        """``min(f, max_f(n))``, never below 0: the ``f`` to use when only ``n`` rows arrived.

        Raises:
            RuntimeError: If ``f`` is still unknown (neither given nor set up).
        """
        return max(0, min(self._require_f(), self.max_f(n)))

    # -- aggregation --------------------------------------------------------------------

    def __call__(self, updates: Tensor, weights: Tensor, *, generator: torch.Generator | None = None) -> Aggregate:
        """Aggregate one round.

        Args:
            updates: ``(n, d)`` float64 CPU tensor, one row per client, rows sorted by client key.
            weights: ``(n,)`` float64 CPU tensor, each client's sample count (non-negative, with a
                positive sum).
            generator: A CPU generator; the only randomness a rule or step may use. Seed it the
                same way on every node.

        Returns:
            The aggregate, with trust over the ``n`` input rows (renormalised to sum 1 unless it is
            all zero).

        Raises:
            TypeError: If an input is not a float64 tensor (or the generator not a generator).
            ValueError: If shapes disagree, a value is not finite, or the weights are invalid.
        """
        updates, weights = _validated_inputs(updates, weights)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU generator, got one on {generator.device}")
        d = updates.shape[1]
        rows, row_weights = updates, weights
        mixings: list[Tensor] = []
        for step in self.pre:
            previous = rows.shape[0]
            rows, row_weights, mixing = step(rows, row_weights, f=self._require_f(), generator=generator)
            _check_step_output(step, rows, row_weights, mixing, previous=previous, d=d)
            rows, row_weights = rows.contiguous() + 0.0, row_weights.contiguous() + 0.0
            mixings.append(mixing)
        result = self.aggregate(rows, row_weights)
        _check_result(self._label(), result, rows=rows.shape[0], d=d)
        trust = result.trust
        for mixing in reversed(mixings):
            trust = sequential_sum(trust[:, None] * mixing, dim=0)
        total = sequential_sum(trust)
        if total > 0:
            trust = trust / total
        # "+ 0.0" turns a -0.0 into +0.0 so the model bytes do not depend on the sign of a zero.
        return Aggregate(update=result.update + 0.0, trust=trust)

    @abstractmethod
    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        """Aggregate validated rows; called by :meth:`__call__` after the pre-aggregation steps.

        Args:
            updates: ``(m, d)`` float64, contiguous, finite, without ``-0.0``.
            weights: ``(m,)`` float64, non-negative, positive sum.

        Returns:
            An :class:`Aggregate` with ``update`` of shape ``(d,)`` and ``trust`` of shape ``(m,)``.
        """

    # -- records and state ----------------------------------------------------------------

    def hyperparameters(self) -> dict[str, Any]:
        """The rule's own arguments, JSON-able, for :meth:`describe` (default: none)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-able record for the ledger: ``{"name", "f", **hyperparameters, "pre": [...]}``."""
        return {
            "name": self._label(),
            "f": self.f,
            **self.hyperparameters(),
            "pre": [step.describe() for step in self.pre],
        }

    def state_dict(self) -> dict[str, Any]:
        """State carried between rounds (default: none). Stateful rules override both methods."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            ValueError: If ``state`` holds anything; a stateless rule accepts only ``{}``.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"{self._label()} state must be a mapping, got {type(state).__name__}")
        if len(state) > 0:
            raise ValueError(f"{self._label()} has no state to load, got keys {sorted(map(str, state))}")

    def _label(self) -> str:
        return self.name or _qualified_name(type(self))

    def _require_f(self) -> int:
        if self.f is None:
            raise RuntimeError(
                f"{self._label()} does not know how many clients are Byzantine: pass f=... to its "
                "constructor or call setup(num_clients=..., num_byzantine=...) first"
            )
        return self.f


# -- helpers --------------------------------------------------------------------------------


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def require_int(owner: str, key: str, value: Any, *, minimum: int, maximum: int) -> int:
    """Check a count from a config: an ``int`` (not a ``bool``) in ``[minimum, maximum]``.

    Args:
        owner: The rule or step, for the message (``"krum"``).
        key: The argument, for the message (``"f"``).
        value: The value to check.
        minimum: The smallest value allowed.
        maximum: The largest value allowed.

    Returns:
        ``value``.

    Raises:
        ConfigError: Naming ``key`` and the allowed range, if ``value`` is not such an int.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"{owner}: {key} must be an int in [{minimum}, {maximum}], got {_shown(value)}")
    return value


def require_number(
    owner: str, key: str, value: Any, *, minimum: float, maximum: float, include_minimum: bool = True
) -> float:
    """Check a real-valued argument from a config: a finite ``int`` or ``float`` in range.

    ``bool`` and strings are refused, as are NaN and the infinities; ints of any size are
    compared exactly before they are converted, so a huge int is refused rather than overflowing.

    Args:
        owner: The rule or step, for the message.
        key: The argument, for the message.
        value: The value to check.
        minimum: The lower bound.
        maximum: The upper bound (inclusive).
        include_minimum: Whether ``minimum`` itself is allowed; ``False`` for "positive".

    Returns:
        ``value`` as a ``float``.

    Raises:
        ConfigError: Naming ``key`` and the allowed range, if ``value`` is out of it.
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and isinstance(value, float):
        ok = math.isfinite(value)
    if ok:
        ok = (minimum <= value if include_minimum else minimum < value) and value <= maximum
    if not ok:
        low = "[" if include_minimum else "("
        kind = "a positive number" if (minimum == 0 and not include_minimum) else "a finite number"
        raise ConfigError(f"{owner}: {key} must be {kind} in {low}{minimum:g}, {maximum:g}], got {_shown(value)}")
    return float(value)


def require_choice(owner: str, key: str, value: Any, choices: Sequence[str]) -> str:
    """Check a string argument from a config against its allowed values.

    Returns:
        ``value``.

    Raises:
        ConfigError: Naming ``key``, the value given and the allowed values.
    """
    if not isinstance(value, str) or value not in choices:
        allowed = " or ".join(repr(choice) for choice in choices)
        raise ConfigError(f"{owner}: {key} must be {allowed}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: a hostile config's value may be a huge int or a long string."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an int of {value.bit_length()} bits"
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _resolve_pre_steps(
    owner: str, pre: Sequence[PreAggregator | str] | PreAggregator | str
) -> tuple[PreAggregator, ...]:
    # The registry lives in the package __init__, which imports this module first; importing it
    # here, at call time, avoids the cycle.
    from torchchain.strategies import PRE_AGGREGATORS

    if isinstance(pre, (str, PreAggregator)):
        pre = [pre]
    if not isinstance(pre, Sequence):
        raise ConfigError(f"{owner}: pre must be a list of pre-aggregation steps, got {_shown(pre)}")
    if len(pre) > MAX_PRE_STEPS:
        raise ConfigError(f"{owner}: pre may list at most {MAX_PRE_STEPS} pre-aggregation steps, got {len(pre)}")
    steps = []
    for step in pre:
        if isinstance(step, PreAggregator):
            steps.append(step)
        elif isinstance(step, str) and step in PRE_AGGREGATORS:
            steps.append(PRE_AGGREGATORS[step]())
        else:
            raise ConfigError(
                f"{owner}: pre-aggregation step {_shown(step)} is unknown: use a PreAggregator instance "
                f"or one of {sorted(PRE_AGGREGATORS)}"
            )
    return tuple(steps)


def _validated_inputs(updates: Any, weights: Any) -> tuple[Tensor, Tensor]:
    for key, value in (("updates", updates), ("weights", weights)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{key} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype != torch.float64:
            raise TypeError(f"{key} must be float64 so that every node computes the same bits, got {value.dtype}")
        if value.device.type != "cpu":
            raise ValueError(
                f"{key} must be on the CPU (aggregation must be bit-identical on every node), got {value.device}"
            )
    if updates.ndim != 2 or updates.shape[0] == 0 or updates.shape[1] == 0:
        raise ValueError(f"updates must have shape (n, d) with n, d >= 1, got {tuple(updates.shape)}")
    if weights.shape != (updates.shape[0],):
        raise ValueError(f"weights must have shape ({updates.shape[0]},), one per update, got {tuple(weights.shape)}")
    # A NaN or an infinity makes any sum that holds it NaN or infinite, so a row with a finite
    # sum is finite: one fast pass, no (n, d) temporary. Only rows whose sum is not finite (a
    # non-finite entry, or finite entries whose sum overflows) are checked entry by entry, by
    # their smallest and largest entries (both propagate NaN).
    suspect = (~torch.isfinite(updates.sum(dim=1))).nonzero().flatten()
    bad_rows = []
    if suspect.numel():
        lowest, highest = torch.aminmax(updates[suspect], dim=1)
        bad_rows = suspect[~(torch.isfinite(lowest) & torch.isfinite(highest))].tolist()
    if bad_rows:
        raise ValueError(f"updates must be finite; rows {bad_rows} hold NaN or inf")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"weights must be finite and non-negative, got {weights.tolist()}")
    if not bool(weights.sum() > 0):
        raise ValueError("weights must have a positive sum")
    # Adding +0.0 copies the inputs (the caller's tensors stay untouched) and turns every -0.0
    # into +0.0, so equal values have equal bits and order-based rules cannot depend on row order.
    return updates.contiguous() + 0.0, weights.contiguous() + 0.0


def _check_step_output(step: PreAggregator, rows: Any, weights: Any, mixing: Any, *, previous: int, d: int) -> None:
    label = step.describe()["name"]
    for key, value in (("updates", rows), ("weights", weights), ("mixing", mixing)):
        if not isinstance(value, Tensor) or value.dtype != torch.float64:
            raise RuntimeError(f"pre-aggregation step {label} must return float64 tensors; its {key} is not one")
    m = rows.shape[0] if rows.ndim == 2 else -1
    if m < 1 or rows.shape != (m, d) or weights.shape != (m,) or mixing.shape != (m, previous):
        raise RuntimeError(
            f"pre-aggregation step {label} returned shapes {tuple(rows.shape)}, {tuple(weights.shape)}, "
            f"{tuple(mixing.shape)}; expected (m, {d}), (m,), (m, {previous}) with m >= 1"
        )


def _check_result(label: str, result: Any, *, rows: int, d: int) -> None:
    if not isinstance(result, Aggregate):
        raise RuntimeError(f"{label}.aggregate must return an Aggregate, got {type(result).__name__}")
    for key, value, shape in (("update", result.update, (d,)), ("trust", result.trust, (rows,))):
        if not isinstance(value, Tensor) or value.dtype != torch.float64 or value.shape != shape:
            raise RuntimeError(f"{label}.aggregate must return a float64 {key} of shape {shape}")
