"""What malicious clients do to their updates before signing them, for every runtime.

A single-node :class:`~torchchain.runtime.simulation.Simulation` and every
:class:`~torchchain.runtime.peer.Peer` call these functions on the clients they hold, so an
attack behaves the same under both, with one difference that is the runtime's, not the attack's:
an omniscient attack sees the honest updates of the clients its runtime holds (every sampled
client in a simulation; only the peer's own sampled clients under peers) and a defence-aware
attack runs the round's rule on the round state its runtime's head commits to.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch

from torchchain.attacks.base import Attack
from torchchain.protocol.privacy import split_state
from torchchain.protocol.round import RoundRules
from torchchain.runtime.client import Client
from torchchain.runtime.seeding import derive_generator
from torchchain.updates.delta import flatten, unflatten

__all__ = ["poison_updates", "tamper_hook"]


def poison_updates(
    attack: Attack,
    *,
    clients: Sequence[Client],
    deltas: dict[int, dict[str, torch.Tensor]],
    rules: RoundRules,
    round_state: Mapping[str, torch.Tensor],
    seed: int,
    round: int,
) -> None:
    """Replace the delta of each malicious client among ``clients`` by the attack's output, in place.

    Args:
        attack: The configured attack (after ``setup``); attacks that forge transactions do
            nothing here.
        clients: The round's clients this runtime holds, in client order; ``deltas`` has an
            entry for each.
        deltas: Each client's honestly trained delta, by client index.
        rules: The chain's rules (the strategy a defence-aware attack simulates).
        round_state: The round state the round starts from (the head's; never advanced here).
        seed: The run's seed (each malicious client's stream is ``("attack", round, index)``).
        round: The round.
    """
    if attack.forges_transactions:
        return
    honest = None
    if attack.omniscient:
        rows = [flatten(deltas[c.index]) for c in clients if not c.byzantine]
        # An update that overflowed (training on a blown-up model) will be rejected as
        # non-finite: the attack hides among the ones the node will aggregate.
        rows = [row for row in rows if bool(torch.isfinite(row).all())]
        if not rows:  # no honest client in view: nothing to hide among
            return
        honest = torch.stack(rows)
    if attack.needs_defence:
        # The round's rule on a copy holding the round state the round starts from, so that
        # simulating the defence never advances the real one (centered clipping's centre).
        rule, state = rules.strategy, split_state(round_state)[0]
        known = 0 if honest is None else honest.shape[0]

        def aggregate(submissions: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
            simulated = copy.deepcopy(rule)
            simulated.load_state_dict({k: v.clone() for k, v in state.items()})
            if simulated.requires_reference:  # the node's root-set update is private: the honest mean stands in
                simulated.set_reference(submissions[: known or None].mean(dim=0))
            weights = torch.ones(submissions.shape[0], dtype=torch.float64)
            return simulated(submissions, weights, generator=generator).update

        attack.observe_defence(aggregate)
    for client in clients:
        if not client.byzantine:
            continue
        own = deltas[client.index]
        poisoned = attack.poison_update(
            flatten(own), honest=honest, generator=derive_generator(seed, "attack", round, client.index)
        )
        deltas[client.index] = unflatten(poisoned, own)


def tamper_hook(attack: Attack, *, seed: int, round: int, index: int) -> Callable[[bytes], bytes]:
    """What malicious client ``index`` does to its encoded payload before signing it."""
    generator = derive_generator(seed, "tamper", round, index)
    return lambda payload: attack.tamper_payload(payload, generator=generator)
