"""Typed errors a user can act on.

Every error torchchain raises on bad input derives from :class:`TorchchainError`, so a caller
can catch one type; the subclasses say which part of the system refused the input.
"""

from __future__ import annotations

__all__ = ["ConfigError", "LedgerError", "RejectedUpdate", "SerializationError", "TorchchainError"]


class TorchchainError(Exception):
    """Base class of every error torchchain raises on purpose."""


class ConfigError(TorchchainError, ValueError):
    """A configuration value is invalid; the message says which key to change and how."""


class SerializationError(TorchchainError, ValueError):
    """Bytes that should hold tensors or a JSON record are malformed."""


class LedgerError(TorchchainError):
    """The ledger on disk is malformed, tampered with, or cannot be written.

    Attributes:
        block: The name of the offending block file (or ``None`` when the error is not tied to one).
        reason: The reason alone, without the block name.
    """

    def __init__(self, reason: str, *, block: str | None = None) -> None:
        self.block = block
        self.reason = reason
        super().__init__(f"block {block}: {reason}" if block is not None else reason)


class RejectedUpdate(TorchchainError):
    """A client's update failed validation on the miner.

    Attributes:
        code: A short machine-readable reason (``"bad_signature"``, ``"unknown_client"``,
            ``"wrong_round"``, ``"stale_base"``, ``"shape_mismatch"``, ``"non_finite"``, ...).
        reason: A sentence a user can read.
    """

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")
