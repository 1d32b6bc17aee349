"""The :class:`Attack` base class every Byzantine behaviour subclasses.

An attack is what the malicious clients do differently from honest ones. It can act at two
points of a round:

* :meth:`Attack.poison_data` runs once on a malicious client's local training data, before
  training (data poisoning: label flipping, backdoor triggers);
* :meth:`Attack.poison_update` runs on the flat update the malicious client computed honestly,
  just before it is signed (model poisoning). Attacks whose class sets ``omniscient = True``
  also see the honest clients' updates of the same round, the strongest threat model used in
  the literature.

More hooks let an attack own behaviour the runtime only wires:

* :meth:`Attack.forge` (attacks with ``forges_transactions = True``): the submissions the
  malicious clients send instead of their own, made through a :class:`Forger` the runtime lends
  (resend a genuine earlier submission, sign with a fresh identity);
* :meth:`Attack.tamper_payload`: the bytes a malicious client signs instead of its encoded
  update (a malformed encoding);
* :meth:`Attack.evaluation_metrics`: extra metrics on the global model (a backdoor's success rate);
* :meth:`Attack.observe_aggregate`: the round's public aggregate, once per round (attacks that
  learn from history keep it as state);
* :meth:`Attack.observe_defence` (attacks with ``needs_defence = True``): a function that runs
  the aggregation rule in use on a candidate set of submissions, so the attack can tune itself
  against the defence.

Attacks know nothing of the ledger or of configuration files: they take and return tensors, and
the submissions a :class:`Forger` makes are opaque to them. Every random choice is drawn from the
``torch.Generator`` the caller passes, so one seed gives the same attack.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from torchchain.errors import ConfigError

__all__ = ["Attack", "DefenceOracle", "Forger"]


class Forger(Protocol):
    """What the runtime lends an attack on the chain itself. Submissions are opaque objects that
    the attack only passes back; it never sees a key, a transaction or the ledger."""

    def earlier_submissions(self) -> Sequence[object]:
        """The genuine, signed submissions accepted in the previous block (empty in round 1)."""

    def submit_as(self, identity: str, update: Mapping[str, Tensor]) -> object:
        """``update`` signed for this round by a fresh key named ``identity``, which no genesis
        block lists (a Sybil identity); the same name always gives the same key."""


class DefenceOracle(Protocol):
    """What the runtime lends an attack with ``needs_defence``: the round's aggregation rule.

    Called as ``aggregate(submissions)`` or ``aggregate(submissions, generator=g)``: it returns
    the ``(d,)`` float64 update the aggregation rule in use makes of the ``(m, d)`` float64
    ``submissions`` (typically the round's honest updates followed by the malicious candidates).
    It runs on a copy of the rule holding the round state the real round starts from (centered
    clipping's centre, for one), so calling it changes nothing. ``generator`` is the only
    randomness the rule uses (bucketing's shuffle); the attack passes one drawn from its own
    generator. The simulation runtime weighs every row alike (no sample counts), and for a rule
    that needs the node's reference update (FLTrust), which no client sees, the mean of the
    round's honest updates stands in for it.
    """

    def __call__(self, submissions: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The rule's aggregate of ``submissions``."""


class Attack(ABC):
    """Model- or data-poisoning behaviour of the malicious clients.

    Subclasses take keyword-only constructor arguments, validate them there (raising
    :class:`~torchchain.errors.ConfigError`), override :meth:`poison_data` and/or
    :meth:`poison_update`, and implement :meth:`describe`.

    The runtime calls :meth:`setup` once with the size of the federation before any round; an
    attack that depends on ``n`` or ``f`` reads them from :attr:`num_clients` and
    :attr:`num_byzantine`.

    Attributes:
        name: The name a configuration uses to select the attack (``attack=signflip``).
        omniscient: ``True`` when :meth:`poison_update` needs the round's honest updates; the
            runtime then passes them as ``honest``, otherwise ``honest`` is ``None``.
        forges_transactions: ``True`` when the attack targets the ledger (forged, replayed or
            Sybil transactions) rather than the tensors.
        needs_defence: ``True`` when the attack tunes itself against the aggregation rule; the
            runtime then calls :meth:`observe_defence` every round before :meth:`poison_update`.
    """

    name: ClassVar[str] = "attack"
    omniscient: ClassVar[bool] = False
    #: ``True`` for attacks on the chain itself (replay, Sybil): the runtime then builds the
    #: malicious clients' transactions itself and never calls :meth:`poison_update`.
    forges_transactions: ClassVar[bool] = False
    #: ``True`` for attacks that search their parameters against the defence in use: the runtime
    #: then lends them the aggregation rule through :meth:`observe_defence` every round.
    needs_defence: ClassVar[bool] = False

    def __init__(self) -> None:
        self._num_clients: int | None = None
        self._num_byzantine: int | None = None

    # ------------------------------------------------------------------ setup

    def setup(self, *, num_clients: int, num_byzantine: int) -> None:
        """Record the size of the federation; call once before the first round.

        Args:
            num_clients: ``n``, the number of clients taking part in a round, malicious included.
            num_byzantine: ``f``, how many of them are malicious (``0 <= f <= n``; an omniscient
                attack needs ``f < n`` so that there are honest updates to look at).

        Raises:
            ConfigError: If the counts are not integers in range, or the attack cannot work
                with them; the message names the setting to change.
        """
        for key, value in (("num_clients", num_clients), ("num_byzantine", num_byzantine)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{self.name} attack: {key} must be an integer, got {value!r}")
        if num_clients < 1:
            raise ConfigError(f"{self.name} attack: clients must be at least 1, got {num_clients}")
        if not 0 <= num_byzantine <= num_clients:
            raise ConfigError(
                f"{self.name} attack: byzantine must be between 0 and clients={num_clients}, "
                f"got {num_byzantine}"
            )
        if self.omniscient and num_byzantine == num_clients:
            raise ConfigError(
                f"{self.name} attack needs at least one honest client to observe, but all "
                f"{num_clients} clients are byzantine; lower byzantine or pick a non-omniscient attack"
            )
        self._num_clients = num_clients
        self._num_byzantine = num_byzantine

    @property
    def num_clients(self) -> int:
        """``n`` as given to :meth:`setup`; raises ``RuntimeError`` before setup."""
        if self._num_clients is None:
            raise RuntimeError(f"{self.name} attack: call setup(num_clients=..., num_byzantine=...) first")
        return self._num_clients

    @property
    def num_byzantine(self) -> int:
        """``f`` as given to :meth:`setup`; raises ``RuntimeError`` before setup."""
        if self._num_byzantine is None:
            raise RuntimeError(f"{self.name} attack: call setup(num_clients=..., num_byzantine=...) first")
        return self._num_byzantine

    # ------------------------------------------------------------------ hooks

    def poison_data(
        self,
        features: Tensor,
        targets: Tensor,
        *,
        num_classes: int | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """Return the training data a malicious client trains on instead of its own.

        Called once on each malicious client's local data before training. The default returns
        the inputs unchanged. Implementations never modify their inputs in place.

        Args:
            features: The client's samples, first dimension the sample index.
            targets: Class indices of shape ``(N,)`` for classification, or regression targets.
            num_classes: The number of classes, or ``None`` for a regression task.
            generator: The source of every random choice the attack makes.
        """
        return features, targets

    def poison_update(self, update: Tensor, *, honest: Tensor | None, generator: torch.Generator) -> Tensor:
        """Return the update a malicious client sends instead of ``update``.

        The default returns ``update`` itself, unchanged.

        Args:
            update: Shape ``(d,)``, float64: this malicious client's own honestly-trained delta.
            honest: Shape ``(k, d)``, float64: the honest clients' deltas of this round, one row
                per client in a fixed order; passed only when :attr:`omniscient`, else ``None``.
            generator: The source of every random choice the attack makes; the result is a
                deterministic function of the inputs and the generator's state.

        Returns:
            A float64 tensor of shape ``(d,)``.
        """
        return update

    def forge(self, *, malicious: Sequence[tuple[int, Mapping[str, Tensor]]], forger: Forger) -> list[object]:
        """The submissions the malicious clients send instead of their own (attacks on the chain).

        Called each round instead of :meth:`poison_update` when :attr:`forges_transactions` is
        set. The default forges nothing.

        Args:
            malicious: ``(client index, honestly trained update)`` of each malicious client.
            forger: Makes or fetches submissions for the attack.
        """
        return []

    def tamper_payload(self, payload: bytes, *, generator: torch.Generator) -> bytes:
        """The bytes a malicious client signs and sends instead of its encoded ``payload``
        (attacks on the encoding itself); the default sends ``payload`` unchanged."""
        return payload

    def evaluation_metrics(
        self, evaluate: Callable[[Tensor, Tensor], Mapping[str, float]], features: Tensor, targets: Tensor
    ) -> dict[str, float]:
        """Extra metrics on the global model, logged as ``eval/<name>`` (default: none).

        Args:
            evaluate: Evaluates the global model on ``(features, targets)`` and returns its
                metrics (``accuracy``, ``loss``, ...).
            features: The held-out test samples.
            targets: Their labels.
        """
        return {}

    def observe_aggregate(self, update: Tensor) -> None:
        """Take note of a round's public aggregate (default: ignore it).

        The runtime calls it once per round, after the round's block is mined and before its
        checkpoint is written and the block appended, so the :meth:`state_dict` saved with a block
        includes that block's aggregate. ``update`` is what the block adds to the global model,
        ``new model - previous model`` over the floating-point tensors, flattened as
        :func:`~torchchain.updates.delta.flatten` does: anyone holding the ledger can compute it
        (it is zero when the round kept its parent's model). Attacks that keep it store a copy.

        Args:
            update: Shape ``(d,)``, float64.
        """

    def observe_defence(self, aggregate: DefenceOracle) -> None:
        """Take the function that runs the round's aggregation rule (default: ignore it).

        The runtime calls it every round, before :meth:`poison_update`, for attacks that set
        :attr:`needs_defence`; ``aggregate`` is valid for that round only (it holds the round
        state the round starts from). See :class:`DefenceOracle`.
        """

    # ------------------------------------------------------------------ records

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Return a JSON-able record ``{"name": ..., <constructor arguments>...}`` for logs."""

    def state_dict(self) -> dict[str, Any]:
        """Return the attack's mutable state (empty: the built-in attacks keep none across rounds)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ConfigError: If ``state`` is not a mapping or holds keys this attack does not keep.
        """
        if not isinstance(state, Mapping):
            raise ConfigError(f"{self.name} attack: state must be a mapping, got {type(state).__name__}")
        if state:
            raise ConfigError(
                f"{self.name} attack keeps no state but the checkpoint holds {sorted(state)}; "
                "resume with the attack the checkpoint was written with"
            )


def check_update(update: Tensor) -> Tensor:
    """Return ``update`` as float64 after checking it is a 1-D floating tensor."""
    if not isinstance(update, Tensor) or update.ndim != 1 or not update.is_floating_point():
        raise ValueError(f"update must be a 1-D floating tensor, got {_shape_of(update)}")
    return update.to(torch.float64)


def check_honest(attack: Attack, update: Tensor, honest: Tensor | None) -> Tensor:
    """Return ``honest`` as float64 after checking it is a non-empty ``(k, d)`` matrix matching ``update``."""
    if honest is None:
        raise ValueError(f"{attack.name} attack is omniscient: poison_update needs honest=(k, d) updates")
    if not isinstance(honest, Tensor) or honest.ndim != 2 or not honest.is_floating_point():
        raise ValueError(f"{attack.name} attack: honest must be a 2-D floating tensor, got {_shape_of(honest)}")
    if honest.shape[0] == 0:
        raise ValueError(f"{attack.name} attack: honest holds no update; it needs at least one honest client")
    if honest.shape[1] != update.shape[0]:
        raise ValueError(
            f"{attack.name} attack: honest updates have {honest.shape[1]} coordinates, "
            f"the malicious update has {update.shape[0]}"
        )
    return honest.to(torch.float64)


def check_positive(attack_name: str, key: str, value: float) -> float:
    """Return ``value`` as a float after checking it is finite and strictly positive."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{attack_name} attack: {key} must be a finite number > 0, got {value!r}")
    return float(value)


def _shape_of(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
