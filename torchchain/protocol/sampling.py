"""Client sampling: which members may submit in a round (``clients_per_round``).

With many registered clients only a sample trains each round, as in FedAvg (McMahan et al.
2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data"): unsampled
clients cost nothing, so a round's time grows with the sample, not with the membership.

The sample of a round is a pure function of the chain's config hash, the round number and the
member list, so every node, client and auditor derives the same one without being told: the
members ordered by SHA-256(domain ‖ config hash ‖ round ‖ member key), first ``k`` taken. A
submission from a member outside the sample is rejected (``not_sampled``). The sample does not
depend on block hashes, which hold the mining time: two runs of one ``seed`` sample the same
clients, and no miner can grind a nonce to steer the next sample. The price is that every
round's sample is known from the genesis block on; a client learns no more from that than it
learns at the start of each round, before it trains.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from torchchain.errors import ConfigError

__all__ = ["SAMPLE_DOMAIN", "round_sample", "sample_size"]

SAMPLE_DOMAIN = b"torchchain/client-sample/v2\x00"


def sample_size(config: Mapping[str, Any], clients: int) -> int | None:
    """The number of clients a round samples: ``None`` for all (``clients_per_round`` null),
    else a count in [1, clients] or a fraction in (0, 1] of ``clients`` (at least 1).

    Raises:
        ConfigError: Any other value.
    """
    value = config.get("clients_per_round")
    if value is None:
        return None
    if type(value) is int:
        if not 1 <= value <= clients:
            raise ConfigError(f"clients_per_round={value} must lie in [1, clients={clients}], or be a fraction in (0, 1]")
        return None if value == clients else value
    if type(value) is float and math.isfinite(value) and 0 < value <= 1:
        count = max(1, math.floor(value * clients + 1e-9))
        return None if count == clients else count
    raise ConfigError(
        f"clients_per_round must be null (every client), a count in [1, {clients}] or a fraction in (0, 1], "
        f"got {repr(value)[:40]}"
    )


def round_sample(config_hash: str, round: int, members: Iterable[str], k: int | None) -> frozenset[str]:  # noqa: A002
    """The members sampled for round ``round`` of the chain whose config hashes to ``config_hash``
    (all when ``k`` is ``None``)."""
    members = sorted(members)
    if k is None or k >= len(members):
        return frozenset(members)
    prefix = SAMPLE_DOMAIN + bytes.fromhex(config_hash) + round.to_bytes(8, "big")
    ranked = sorted(members, key=lambda m: hashlib.sha256(prefix + bytes.fromhex(m)).digest())
    return frozenset(ranked[:k])
