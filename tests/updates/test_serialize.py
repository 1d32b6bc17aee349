import struct

import pytest
import torch

from torchchain.errors import SerializationError
from torchchain.updates import apply_delta, compute_delta, flatten, float_keys, unflatten
from torchchain.updates.serialize import update_from_bytes, update_to_bytes


def _tensors():
    return {"b.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a.bias": torch.tensor([1.5, -2.0])}


def test_same_tensors_give_same_bytes_whatever_the_insertion_order():
    t = _tensors()
    reordered = {k: t[k] for k in reversed(list(t))}
    assert update_to_bytes(t) == update_to_bytes(reordered)


def test_round_trip_is_exact():
    t = _tensors()
    back = update_from_bytes(update_to_bytes(t), max_bytes=1 << 20)
    assert sorted(back) == sorted(t)
    for k in t:
        assert torch.equal(back[k], t[k]) and back[k].dtype == t[k].dtype


def test_oversized_payload_is_refused_before_parsing():
    data = update_to_bytes(_tensors())
    with pytest.raises(SerializationError, match="over the limit"):
        update_from_bytes(data, max_bytes=len(data) - 1)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 7, struct.pack("<Q", 1 << 40) + b"{}", struct.pack("<Q", 4) + b"nope", struct.pack("<Q", 2) + b"[]"],
)
def test_malformed_bytes_raise_serialization_error(data):
    with pytest.raises(SerializationError):
        update_from_bytes(data, max_bytes=1 << 20)


def test_metadata_and_non_canonical_bytes_are_refused():
    from safetensors.torch import save

    with pytest.raises(SerializationError, match="metadata"):
        update_from_bytes(save({"a": torch.ones(1)}, metadata={"x": "y"}), max_bytes=1 << 20)
    data = bytearray(update_to_bytes({"a": torch.ones(1)}))
    # Swap the header's padding for a different but still valid JSON layout.
    header_len = struct.unpack("<Q", data[:8])[0]
    header = bytes(data[8 : 8 + header_len]).rstrip(b" ")
    padded = b" " + header + b" " * (header_len - len(header) - 1)
    with pytest.raises(SerializationError, match="canonical"):
        update_from_bytes(bytes(data[:8]) + padded + bytes(data[8 + header_len :]), max_bytes=1 << 20)


def test_delta_covers_float_tensors_only_and_applies_back():
    global_ = {"w": torch.ones(2, 2), "b": torch.zeros(2), "steps": torch.tensor(3)}
    local = {"w": torch.full((2, 2), 1.25), "b": torch.tensor([0.5, -0.5]), "steps": torch.tensor(9)}
    delta = compute_delta(local, global_)
    assert sorted(delta) == ["b", "w"] == float_keys(global_)
    new = apply_delta(global_, delta)
    assert torch.equal(new["w"], local["w"]) and torch.equal(new["b"], local["b"])
    assert int(new["steps"]) == 3  # integer buffers are not averaged


def test_flatten_orders_by_key_and_unflatten_inverts():
    t = {"z": torch.tensor([1.0, 2.0]), "a": torch.tensor([[3.0]])}
    v = flatten(t)
    assert v.dtype == torch.float64 and v.tolist() == [3.0, 1.0, 2.0]
    back = unflatten(v, t)
    assert torch.equal(back["z"], t["z"]) and back["a"].shape == (1, 1)
    with pytest.raises(ValueError):
        unflatten(torch.zeros(4, dtype=torch.float64), t)
