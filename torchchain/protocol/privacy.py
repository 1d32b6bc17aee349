"""The privacy rules of a chain: what each accepted update spends, and the ε every block records.

A chain whose genesis config sets ``privacy.kind`` to ``client_dp`` or ``dpsgd`` keeps a privacy
ledger as part of its round state (two tensors next to the strategy's state, one entry per
member in client-key order):

``privacy.steps`` (int64)
    How many runs of the Gaussian mechanism each member has released on the chain.
``privacy.sample_rate`` (float64)
    The largest sampling rate ``q`` any of them ran at (``0`` before the first).

Each accepted transaction of a round adds to its client's entry:

* ``client_dp`` (DP-FedAvg's clip-and-noise, applied by the client): one step at ``q = 1``.
  The round's sample is public (derived from the config hash and round) and every noised update is
  published under its client's signature, so amplification by sampling does not hold towards
  ledger readers; a client spends only in the rounds it takes part in.
* ``dpsgd`` (record-level DP-SGD inside local training): ``local_steps`` steps, or
  ``local_epochs * ceil(num_samples / batch_size)``, at ``q = min(1, batch_size / num_samples)``
  (the client's Poisson sampling is private, so amplification holds), where ``num_samples``
  is what the client signed in its transaction.

A member's ε is Opacus' RDP accountant over the single entry ``(σ, q_max, steps)``: the RDP of
the sampled Gaussian mechanism grows with ``q``, so accounting every step at the largest rate a
client ever used bounds its true history. The block records the largest ε over all members
(``privacy.epsilon`` in the round record) at the genesis ``privacy.delta``; replaying the block
recomputes it from the parent's state and the block's transactions. A block whose ε exceeds the
genesis ``privacy.target_epsilon`` breaks the rules.

What the chain cannot check: that a client really clipped and added noise. The noise is drawn
from the client's private generator (noise anyone could regenerate protects nothing), so the
recorded ε is the guarantee each honest client gives its own data; a client that skips the
noise spends its own privacy, not anyone else's.

Rejected submissions are not counted: their bytes are not stored in the ledger. A peer that
received one has seen it, so a client should treat a rejected release as spent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torchchain.chain.block import Transaction
from torchchain.errors import ConfigError

__all__ = ["PRIVACY_KINDS", "STATE_KEYS", "PrivacyRules", "split_state"]

#: The values of ``privacy.kind``.
PRIVACY_KINDS = ("none", "client_dp", "dpsgd", "secagg")
#: The round-state keys the privacy ledger owns.
STATE_KEYS = ("privacy.sample_rate", "privacy.steps")

_MAX_STEPS = 10**9
_MAX_SIGMA = 1e6
_NOISE_KEYS = {"client_dp": ("clip", "noise_multiplier"), "dpsgd": ("max_grad_norm", "noise_multiplier")}


def split_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(strategy state, privacy state)`` of a round state."""
    strategy = {k: v for k, v in state.items() if not k.startswith("privacy.")}
    privacy = {k: v for k, v in state.items() if k.startswith("privacy.")}
    return strategy, privacy


def _number(privacy: Mapping[str, Any], key: str, low: float, high: float, *, open_low: bool = True) -> float:
    value = privacy.get(key)
    ok = type(value) in (int, float) and math.isfinite(value) and (low < value if open_low else low <= value) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise ConfigError(f"privacy.{key} must be a number in {bracket}{low:g}, {high:g}], got {str(value)[:40]!r}")
    return float(value)


@dataclass(frozen=True)
class PrivacyRules:
    """The privacy part of a chain's protocol, read from its genesis config.

    Attributes:
        kind: One of :data:`PRIVACY_KINDS`.
        noise_multiplier: ``σ`` of the Gaussian noise (``client_dp`` and ``dpsgd``).
        delta: The ``δ`` at which ε is reported.
        target_epsilon: The budget no block may exceed, or ``None``.
        batch_size: The local mini-batch size (``dpsgd``'s sampling rate).
        local_epochs: Local passes per round (``dpsgd``'s step count when ``local_steps`` is unset).
        local_steps: Local steps per round, or ``None``.
        members: Client keys, sorted: the order of the state tensors.
    """

    kind: str
    members: tuple[str, ...]
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    target_epsilon: float | None = None
    batch_size: int = 1
    local_epochs: int = 1
    local_steps: int | None = None

    @property
    def accounts(self) -> bool:
        """Whether this chain keeps a privacy ledger (``client_dp`` or ``dpsgd``)."""
        return self.kind in _NOISE_KEYS

    @classmethod
    def from_config(cls, config: Mapping[str, Any], members: Iterable[str]) -> PrivacyRules:
        """The rules of a protocol config (``privacy`` absent means ``none``).

        Raises:
            ConfigError: An unknown kind, or a value out of range; the message names the key.
        """
        members = tuple(sorted(members))
        privacy = config.get("privacy")
        if privacy is None:
            return cls(kind="none", members=members)
        if not isinstance(privacy, Mapping):
            raise ConfigError(f"privacy must be a mapping with a 'kind', got {type(privacy).__name__}")
        kind = privacy.get("kind")
        if kind not in PRIVACY_KINDS:
            raise ConfigError(f"privacy.kind must be one of {', '.join(PRIVACY_KINDS)}; got {str(kind)[:40]!r}")
        if kind not in _NOISE_KEYS:
            return cls(kind=kind, members=members)
        for key in _NOISE_KEYS[kind]:
            _number(privacy, key, 0.0, 1e9)
        sigma = _number(privacy, "noise_multiplier", 0.0, _MAX_SIGMA)
        delta = _number(privacy, "delta", 0.0, 0.1)
        target = privacy.get("target_epsilon")
        target_epsilon = None if target is None else _number(privacy, "target_epsilon", 0.0, 1e6)
        batch = config.get("batch_size")
        epochs = config.get("local_epochs")
        steps = config.get("local_steps")
        for key, value in (("batch_size", batch), ("local_epochs", epochs)):
            if type(value) is not int or not 1 <= value <= _MAX_STEPS:
                raise ConfigError(f"{key} must be a positive integer for privacy accounting, got {str(value)[:40]!r}")
        if steps is not None and (type(steps) is not int or not 1 <= steps <= _MAX_STEPS):
            raise ConfigError(f"local_steps must be null or a positive integer, got {str(steps)[:40]!r}")
        return cls(
            kind=kind, members=members, noise_multiplier=sigma, delta=delta, target_epsilon=target_epsilon,
            batch_size=batch, local_epochs=epochs, local_steps=steps,
        )

    # -- what one release costs ----------------------------------------------------------------

    def release(self, num_samples: int) -> tuple[int, float]:
        """``(steps, sample rate)`` one accepted update of a client holding ``num_samples`` spends."""
        if self.kind == "client_dp":
            return 1, 1.0
        n = max(int(num_samples), 1)
        steps = self.local_steps if self.local_steps is not None else self.local_epochs * math.ceil(n / self.batch_size)
        return steps, min(1.0, self.batch_size / n)

    def initial_state(self) -> dict[str, torch.Tensor]:
        """The privacy state before any round (nothing spent)."""
        m = len(self.members)
        return {"privacy.sample_rate": torch.zeros(m, dtype=torch.float64), "privacy.steps": torch.zeros(m, dtype=torch.int64)}

    def _check_state(self, state: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if not state:
            state = self.initial_state()
        if sorted(state) != list(STATE_KEYS):
            raise ValueError(f"the privacy state must hold exactly {list(STATE_KEYS)}, got {sorted(state)}")
        rates, steps = state["privacy.sample_rate"], state["privacy.steps"]
        m = len(self.members)
        if rates.dtype != torch.float64 or rates.shape != (m,) or steps.dtype != torch.int64 or steps.shape != (m,):
            raise ValueError(f"the privacy state must hold a float64 and an int64 vector of {m} entries (one per member)")
        if not bool(((rates >= 0) & (rates <= 1)).all()) or not bool(((steps >= 0) & (steps <= _MAX_STEPS)).all()):
            raise ValueError(f"the privacy state holds a sample rate outside [0, 1] or a step count outside [0, {_MAX_STEPS}]")
        return rates, steps

    def advance(self, state: Mapping[str, torch.Tensor], transactions: Sequence[Transaction]) -> dict[str, torch.Tensor]:
        """The privacy state after the accepted ``transactions`` (``{}`` when nothing is accounted).

        Raises:
            ValueError: As :meth:`spend`.
        """
        return self.spend(state, [(tx.client, tx.num_samples) for tx in transactions])

    def spend(self, state: Mapping[str, torch.Tensor], releases: Iterable[tuple[str, int]]) -> dict[str, torch.Tensor]:
        """The privacy state after one release per ``(client key, num_samples)``.

        Raises:
            ValueError: ``state`` is not a privacy state of this chain, a transaction's client
                is not a member, or a member would pass :data:`_MAX_STEPS` steps.
        """
        if not self.accounts:
            return {}
        rates, steps = (t.clone() for t in self._check_state(state))
        index = {key: i for i, key in enumerate(self.members)}
        for client, num_samples in releases:
            if client not in index:
                raise ValueError(f"client {client[:12]} is not a member of this chain")
            i = index[client]
            spent, rate = self.release(num_samples)
            if int(steps[i]) + spent > _MAX_STEPS:
                raise ValueError(f"client {client[:12]} would pass {_MAX_STEPS} privacy steps")
            steps[i] += spent
            rates[i] = max(float(rates[i]), rate)
        return {"privacy.sample_rate": rates, "privacy.steps": steps}

    def epsilon(self, state: Mapping[str, torch.Tensor]) -> float:
        """The largest ε over members at :attr:`delta` (``0.0`` before anything is spent)."""
        from torchchain.privacy.accountant import PrivacyHistory

        rates, steps = self._check_state(state)
        # ε grows with both q and steps: only members no other member dominates can be the largest.
        pairs = sorted({(float(q), int(s)) for q, s in zip(rates.tolist(), steps.tolist()) if s > 0}, reverse=True)
        frontier, most_steps = [], 0
        for q, s in pairs:
            if s > most_steps:
                frontier.append((q, s))
                most_steps = s
        return max(
            (PrivacyHistory(((self.noise_multiplier, q, s),)).epsilon(self.delta) for q, s in frontier), default=0.0
        )

    def planned_epsilon(self, sample_sizes: Iterable[int], releases: int) -> float:
        """The ε a client reaches after ``releases`` accepted updates, the largest over clients
        holding ``sample_sizes`` examples (``0.0`` for no release)."""
        from torchchain.privacy.accountant import plan_epsilon

        if not self.accounts or releases <= 0:
            return 0.0
        costs = {self.release(n) for n in sample_sizes}
        return max(plan_epsilon(self.noise_multiplier, q, steps, releases, self.delta) for steps, q in costs)

    def over_budget(self, epsilon: float) -> bool:
        """Whether ``epsilon`` exceeds :attr:`target_epsilon`."""
        return self.target_epsilon is not None and epsilon > self.target_epsilon
