"""torchchain: federated learning whose every update is signed and mined into a proof-of-work ledger."""

from __future__ import annotations

__version__ = "0.1.0"
