"""Malformed encoding: sign and send bytes that do not decode as the chain's codec."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from torchchain.attacks.base import Attack
from torchchain.errors import ConfigError

__all__ = ["MalformedEncoding"]


class MalformedEncoding(Attack):
    """The malicious clients sign payloads that break the codec's format.

    Compression opens a parsing surface: a quantized or sparse payload carries lengths, ranges
    and indices that a decoder must not trust (the hostile-input stance of every node). Each
    round, each malicious client encodes its honest update as an honest client would, then
    damages the bytes before hashing and signing them, so the signature is valid and only the
    decoder can tell. Every node must reject the update as ``malformed`` with a reason, and the
    round goes on with the rest.

    Args:
        mode: ``"truncate"`` (cut the payload in half), ``"flip"`` (flip every bit of one byte
            of the payload's header, chosen with the generator: the safetensors header is JSON,
            so the flipped byte is no longer valid text) or ``"garbage"`` (replace the payload
            with random bytes of the same length). Default ``"flip"``. Flipping a byte of the
            data instead would often leave a valid, merely different update (any 8-bit code
            is a valid code), which is model poisoning, not a malformed encoding.
    """

    name = "malformed"
    MODES: ClassVar[tuple[str, ...]] = ("truncate", "flip", "garbage")

    def __init__(self, *, mode: str = "flip") -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ConfigError(f"malformed attack: mode must be one of {list(self.MODES)}, got {mode!r}")
        self.mode = mode

    def tamper_payload(self, payload: bytes, *, generator: torch.Generator) -> bytes:
        if self.mode == "truncate":
            return payload[: len(payload) // 2]
        if self.mode == "garbage":
            return bytes(torch.randint(0, 256, (len(payload),), generator=generator, dtype=torch.uint8).tolist())
        header = int.from_bytes(payload[:8], "little") if len(payload) >= 8 else 0
        if header < 1 or 8 + header > len(payload):
            return payload[:-1]
        at = 8 + int(torch.randint(0, header, (1,), generator=generator))
        return payload[:at] + bytes([payload[at] ^ 0xFF]) + payload[at + 1 :]

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": "malformed", "mode": ...}``."""
        return {"name": self.name, "mode": self.mode}
