"""Model updates: deltas against the global model and their canonical bytes."""

from torchchain.updates.delta import apply_delta, compute_delta, flatten, float_keys, unflatten
from torchchain.updates.serialize import update_from_bytes, update_to_bytes

__all__ = [
    "apply_delta",
    "compute_delta",
    "flatten",
    "float_keys",
    "unflatten",
    "update_from_bytes",
    "update_to_bytes",
]
