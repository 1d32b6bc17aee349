"""Deltas between state dicts, and their flat float64 view used by strategies.

A client's update is ``Δ = θ_local − θ_global`` over the model's floating-point tensors only:
integer buffers (step counters and the like) are not averaged. Keys are always taken in sorted
order so that every node flattens an update into the same vector.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["apply_delta", "compute_delta", "flatten", "float_keys", "unflatten"]


def float_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Sorted names of the floating-point tensors of ``state``."""
    return sorted(k for k, v in state.items() if torch.is_floating_point(v))


def compute_delta(
    local: Mapping[str, torch.Tensor], global_: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Return ``local − global`` for every floating tensor, on CPU, in the global tensor's dtype.

    Raises:
        KeyError: if ``local`` lacks a floating tensor that ``global_`` has.
    """
    delta = {}
    for key in float_keys(global_):
        ref = global_[key]
        delta[key] = (local[key].detach().to("cpu", ref.dtype) - ref.detach().cpu()).contiguous()
    return delta


def apply_delta(
    global_: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Return a new state dict ``global + delta`` on CPU.

    The sum is taken in float64 and cast back to each tensor's dtype, so every node that applies
    the same delta to the same model gets the same bytes. Tensors the delta does not name
    (integer buffers) are copied unchanged.
    """
    out = {}
    for key, ref in global_.items():
        ref = ref.detach().cpu()
        if key in delta:
            out[key] = (ref.double() + delta[key].double()).to(ref.dtype).contiguous()
        else:
            out[key] = ref.clone()
    return out


def flatten(update: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate the tensors of ``update`` in sorted-key order into one float64 vector."""
    if not update:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([update[k].detach().cpu().reshape(-1).double() for k in sorted(update)])


def unflatten(
    vector: torch.Tensor, like: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten`: split ``vector`` into tensors shaped like ``like``.

    Each tensor takes the dtype of its counterpart in ``like``, or ``dtype`` when given.

    Raises:
        ValueError: if the vector's length does not match the total size of ``like``.
    """
    total = sum(like[k].numel() for k in like)
    if vector.ndim != 1 or vector.numel() != total:
        raise ValueError(f"cannot unflatten a vector of shape {tuple(vector.shape)} into {total} values")
    out, offset = {}, 0
    for key in sorted(like):
        ref = like[key]
        out[key] = vector[offset : offset + ref.numel()].reshape(ref.shape).to(dtype or ref.dtype).contiguous()
        offset += ref.numel()
    return out
