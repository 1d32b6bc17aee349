"""Everything a run derives from its one ``seed``: random streams and client keys.

A simulation and every peer of a run call the same functions, so the same seed gives the same
clients, keys and streams whichever runtime holds them.
"""

from __future__ import annotations

import hashlib

import torch

from torchchain.chain.crypto import SigningKey

__all__ = ["client_key", "derive_generator"]


def derive_generator(seed: int, *parts: object) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and a purpose, e.g. ``("train", round, client)``.

    Every random stream of a run is derived this way, so one ``seed`` fixes them all and no
    stream depends on how many numbers another one consumed.
    """
    material = "/".join(str(p) for p in (seed, *parts)).encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(material).digest()[:8], "big") >> 1)


def client_key(seed: int, index: int) -> SigningKey:
    """The signing key of client ``index`` in a run seeded with ``seed`` (a simulation's
    convention: anyone who knows the seed can derive it)."""
    return SigningKey.from_seed_material(f"torchchain/client/{index}/seed={seed}")
