"""Update codecs: fewer bytes per update, decoded bit-identically by every node.

A codec turns a client's update (``Δ``, the float tensors of :func:`~torchchain.updates.delta.compute_delta`)
into payload bytes, and those bytes back into tensors shaped like the model. The payload is
always a canonical safetensors container (:func:`~torchchain.updates.serialize.update_to_bytes`),
so its SHA-256 identifies it and :func:`~torchchain.updates.serialize.update_from_bytes` parses it
without ever unpickling. A transaction records the codec by its :meth:`Codec.tag`.

Codecs:

* ``none`` (:class:`NoCodec`): the update's own tensors.
* ``quantize/<bits>`` (:class:`Quantize`): per chunk of each flattened tensor, the minimum and
  maximum in float32 and one stochastically rounded ``bits``-bit code per coordinate, as in
  Konečný et al. 2016, "Federated Learning: Strategies for Improving Communication Efficiency"
  (probabilistic quantization) and Suresh et al. 2017, "Distributed Mean Estimation with
  Limited Communication" (stochastic k-level quantization). Unbiased: ``E[decode] = Δ``.
* ``rotate_quantize/<bits>`` (:class:`RotateQuantize`): a random rotation first, a ±1 diagonal
  drawn from the public per-client seed followed by the normalized Walsh–Hadamard transform
  (Suresh et al. 2017, §4, "randomized Hadamard rotation"): it spreads an outlier over many
  coordinates, so each chunk's range, and with it the quantization error, shrinks.
* ``topk/<fraction>`` (:class:`TopK`): the ``k`` coordinates of largest magnitude of each
  tensor, with their indices. Biased on its own; :func:`error_feedback_step` feeds what was not
  sent back into the next round (Stich, Cordonnier and Jaggi 2018, "Sparsified SGD with
  Memory"; Karimireddy et al. 2019, "Error Feedback Fixes SignSGD and other Gradient
  Compression Schemes").

Determinism. Encoding may be random (stochastic rounding draws from the client's private
``generator``); decoding is a pure function of the payload, the template and the public
``seed``. Every decoding step is elementwise float64 arithmetic (add, subtract, multiply,
divide: IEEE-754 exact-rounded, hence independent of the CPU, the SIMD width and the thread
count), integer bit operations, or a scatter to distinct indices. The transform's scale is a
power of two times ``math.sqrt(0.5)`` (correctly rounded), not a ``pow`` from libm.

Hostile payloads. :meth:`Codec.decode` checks the container with ``update_from_bytes``, then
the exact set of entry names the codec and template imply, each entry's dtype and length,
every value (finite, ``min <= max``, indices in range and strictly increasing, padding bits
zero), and the decoded tensors (finite after the cast to the template's dtype). Anything else
raises :class:`~torchchain.errors.SerializationError` and nothing else. Payload bytes are
canonical: the container is re-encoded and compared by ``update_from_bytes``, and the codec
refuses slack of its own (unused padding bits and the codes of a constant chunk must be zero;
indices are strictly increasing and of one fixed dtype), so a payload cannot be re-dressed into
different bytes with the same meaning by flipping bits the decoder ignores. (An update still
has many valid encodings, since rounding is random; the ledger identifies the payload.)

Payload layout, per template tensor ``n`` (names are injective: the suffix after the last
``/`` is one of the codec's fixed words):

* quantize, rotate_quantize: ``n/min`` and ``n/max`` (float32, one per chunk), ``n/codes``
  (uint8, ``ceil(m * bits / 8)`` bytes; code ``i`` sits in byte ``i * bits // 8`` at bit offset
  ``i * bits % 8``, least significant bits first), where ``m`` is the tensor's element count
  (quantize) or its padded, rotated length (rotate_quantize, see :func:`rotation_length`).
* topk: ``n/indices`` (int32, or int64 for tensors over 2**31 elements; strictly increasing)
  and ``n/values`` (the template's dtype).

Sizes per element (float32 model, large tensors): none 4 bytes; quantize ``bits / 8`` plus
``8 / chunk`` bytes (8 bits: ~1.002, 4 bits: ~0.502); rotate_quantize the same times
``rotation_length(n) / n`` (at most ``1 + 1023 / n``, at most 2 for tensors under 1024
elements); topk ``8 * fraction`` bytes (index + value).
"""

from __future__ import annotations

import hashlib
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

import torch

from torchchain.errors import ConfigError, SerializationError
from torchchain.updates.serialize import update_from_bytes, update_to_bytes

__all__ = [
    "CODECS",
    "CODEC_SEED_DOMAIN",
    "DEFAULT_CHUNK",
    "MAX_CHUNK",
    "MAX_TAG_LENGTH",
    "MIN_CHUNK",
    "QUANTIZE_BITS",
    "ROTATION_BLOCK",
    "ROTATION_DOMAIN",
    "ROTATION_MIN_PIECE",
    "Codec",
    "NoCodec",
    "Quantize",
    "RotateQuantize",
    "TopK",
    "codec_from_tag",
    "codec_seed",
    "error_feedback_step",
    "fwht",
    "rotation_length",
    "rotation_signs",
]

#: Domain tag of :func:`codec_seed`.
CODEC_SEED_DOMAIN = b"torchchain/codec-seed/v1\x00"
#: Domain tag of the rotation's ±1 diagonal (:func:`rotation_signs`).
ROTATION_DOMAIN = b"torchchain/codec-rotation/v1\x00"
#: The bit widths :class:`Quantize` and :class:`RotateQuantize` accept.
QUANTIZE_BITS = (1, 2, 4, 8)
#: Quantization chunk bounds (powers of two) and the default.
MIN_CHUNK, MAX_CHUNK, DEFAULT_CHUNK = 64, 1 << 20, 4096
#: The largest block one Walsh–Hadamard transform covers; longer tensors are cut into blocks.
ROTATION_BLOCK = 1 << 16
#: Pieces of a tensor shorter than this are not split further but zero-padded.
ROTATION_MIN_PIECE = 1 << 10
#: The longest tag; the same bound a transaction's ``codec`` field has.
MAX_TAG_LENGTH = 64

_TAG_RE = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_TAG_LENGTH)
_UINT_RE = re.compile(r"[1-9][0-9]*")
_FLOAT_RE = re.compile(r"[0-9][0-9.e-]*")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FLOAT32_MAX = torch.finfo(torch.float32).max


# --------------------------------------------------------------------------------------------
# Seeds and the rotation


def codec_seed(round: int, client: str) -> bytes:  # noqa: A002 - the protocol's word
    """The public 32-byte seed of one client's codec in one round.

    SHA-256 of :data:`CODEC_SEED_DOMAIN`, ``round`` as 8 big-endian bytes and the client's
    32-byte public key. Every node derives it from the transaction, so the rotation it drives
    needs no extra bytes in the payload.

    Raises:
        ValueError: ``round`` is not an integer in ``[0, 2**64)`` or ``client`` is not 64
            lowercase hex characters.
    """
    if type(round) is not int or not 0 <= round < 1 << 64:
        raise ValueError(f"round must be an integer in [0, 2**64), got {round!r:.40}")
    if type(client) is not str or not _HEX64_RE.fullmatch(client):
        raise ValueError("client must be a public key of 64 lowercase hex characters")
    return hashlib.sha256(CODEC_SEED_DOMAIN + round.to_bytes(8, "big") + bytes.fromhex(client)).digest()


def _check_seed(seed: Any) -> None:
    if type(seed) is not bytes or len(seed) != 32:
        raise ValueError("seed must be 32 bytes (see codec_seed)")


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _rotation_pieces(n: int) -> list[tuple[int, int]]:
    """``(length, padded)`` of each contiguous piece a tensor of ``n`` elements is rotated in."""
    pieces = []
    while n >= ROTATION_MIN_PIECE:
        size = min(ROTATION_BLOCK, 1 << (n.bit_length() - 1))
        pieces.append((size, size))
        n -= size
    if n:
        pieces.append((n, _pow2_at_least(n)))
    return pieces


def rotation_length(numel: int) -> int:
    """How many coordinates :class:`RotateQuantize` quantizes for a tensor of ``numel`` elements.

    The flattened tensor is cut, front to back, into the largest powers of two it still holds
    (at most :data:`ROTATION_BLOCK`) while at least :data:`ROTATION_MIN_PIECE` elements are
    left; the remainder is zero-padded to the next power of two. Each piece is rotated on its
    own. So the cost over ``numel`` is under :data:`ROTATION_MIN_PIECE` coordinates, and under
    2× for tensors shorter than that, while every piece but a final remainder mixes at least
    1024 coordinates. Each transform costs ``O(L log L)`` with ``L <= 2**16``; rotating a
    block-diagonal of Hadamards rather than one ``numel``-wide Hadamard trades a little mixing
    for bounded work and no 2× padding of large tensors.
    """
    return sum(padded for _, padded in _rotation_pieces(numel))


def fwht(x: torch.Tensor) -> torch.Tensor:
    """The normalized fast Walsh–Hadamard transform along the last dimension, in float64.

    Sylvester (natural) order; the last dimension's length must be a power of two. The
    transform is orthonormal and symmetric, hence its own inverse. Butterflies run in a fixed
    order (strides 1, 2, 4, ...) with elementwise adds and subtracts, then one multiplication
    by ``2**(-m/2)``, so the result is bit-identical on every CPU and thread count.

    Raises:
        ValueError: The last dimension is not a power of two.
    """
    n = x.shape[-1] if x.ndim else 0
    if n < 1 or n & (n - 1):
        raise ValueError(f"the transform needs a power-of-two length, got {n}")
    lead = x.shape[:-1]
    y = x.detach().to("cpu", torch.float64).reshape(-1, n).clone()
    rows = y.shape[0]
    z = torch.empty_like(y)
    h = 1
    while h < n:  # stage h: (a, b) -> (a + b, a - b) for pairs h apart; two buffers, swapped
        src, dst = y.view(rows, n // (2 * h), 2, h), z.view(rows, n // (2 * h), 2, h)
        torch.add(src[:, :, 0, :], src[:, :, 1, :], out=dst[:, :, 0, :])
        torch.sub(src[:, :, 0, :], src[:, :, 1, :], out=dst[:, :, 1, :])
        y, z = z, y
        h *= 2
    m = n.bit_length() - 1
    scale = math.ldexp(1.0, -(m // 2)) * (math.sqrt(0.5) if m % 2 else 1.0)
    return (y * scale).reshape(*lead, n)


def _transform_pieces(x: torch.Tensor, pieces: list[tuple[int, int]]) -> torch.Tensor:
    """:func:`fwht` of each consecutive piece of ``x`` (lengths ``padded``); the full
    :data:`ROTATION_BLOCK` pieces, which come first, go through one batched call."""
    full = sum(1 for _, padded in pieces if padded == ROTATION_BLOCK)
    out = [fwht(x[: full * ROTATION_BLOCK].reshape(full, ROTATION_BLOCK)).reshape(-1)] if full else []
    start = full * ROTATION_BLOCK
    for _, padded in pieces[full:]:
        out.append(fwht(x[start : start + padded]))
        start += padded
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def rotation_signs(seed: bytes, name: str, length: int) -> torch.Tensor:
    """The rotation's ±1 diagonal (float64) for tensor ``name``: bits of SHAKE-256 over
    :data:`ROTATION_DOMAIN`, the seed and the length-prefixed UTF-8 name (bit ``i`` is bit
    ``i % 8`` of byte ``i // 8``; 0 gives +1, 1 gives −1)."""
    _check_seed(seed)
    if not length:
        return torch.zeros(0, dtype=torch.float64)
    raw = name.encode("utf-8", "surrogatepass")
    stream = hashlib.shake_256(ROTATION_DOMAIN + seed + len(raw).to_bytes(8, "big") + raw).digest((length + 7) // 8)
    bits = _unpack(torch.frombuffer(bytearray(stream), dtype=torch.uint8), 1)[:length]
    return 1.0 - 2.0 * bits.to(torch.float64)


# --------------------------------------------------------------------------------------------
# Bit packing and quantization


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes (< 2**bits) into uint8, code ``i`` at bit ``i * bits`` (LSB first)."""
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    per = 8 // bits
    n = codes.numel()
    padded = torch.zeros(-(-n // per) * per, dtype=torch.int32)
    padded[:n] = codes.to(torch.int32)
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return (padded.reshape(-1, per) << shifts).sum(dim=1).to(torch.uint8)


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`_pack`, every code slot included (padding slots too); int64."""
    if bits == 8:
        return packed.to(torch.int64)
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    return ((packed.to(torch.int64).unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)


def _float32_bounds(x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chunk min rounded down and max rounded up to float32, so they enclose the chunk."""
    n = x.numel()
    chunks = -(-n // chunk)
    if not chunks:
        empty = torch.zeros(0, dtype=torch.float32)
        return empty, empty.clone()
    padded = torch.empty(chunks * chunk, dtype=torch.float64)
    padded[:n] = x
    padded[n:] = x[-1]
    rows = padded.reshape(chunks, chunk)
    lo64, hi64 = rows.amin(dim=1), rows.amax(dim=1)
    lo, hi = lo64.to(torch.float32), hi64.to(torch.float32)
    down = lo.to(torch.float64) > lo64
    lo[down] = torch.nextafter(lo[down], torch.tensor(-math.inf))
    up = hi.to(torch.float64) < hi64
    hi[up] = torch.nextafter(hi[up], torch.tensor(math.inf))
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
        raise ValueError(f"update values exceed the float32 range (±{_FLOAT32_MAX:.3g}) a quantized chunk can hold")
    return lo, hi


def _per_element(per_chunk: torch.Tensor, chunk: int, n: int) -> torch.Tensor:
    return per_chunk.repeat_interleave(chunk)[:n]


def _quantize(x: torch.Tensor, bits: int, chunk: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Stochastic ``bits``-bit quantization of the float64 vector ``x`` (Suresh et al. 2017)."""
    levels = (1 << bits) - 1
    n = x.numel()
    lo, hi = _float32_bounds(x, chunk)
    lo64 = _per_element(lo.to(torch.float64), chunk, n)
    step = _per_element((hi.to(torch.float64) - lo.to(torch.float64)) / levels, chunk, n)
    flat = step == 0
    scaled = ((x - lo64) / torch.where(flat, torch.ones_like(step), step)).clamp(0, levels)
    scaled[flat] = 0.0
    floor = scaled.floor()
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    codes = (floor + (u < scaled - floor).to(torch.float64)).clamp(0, levels).to(torch.int64)
    return {"min": lo, "max": hi, "codes": _pack(codes, bits)}


def _check_entry(entries: Mapping[str, torch.Tensor], key: str, dtype: torch.dtype, length: int) -> torch.Tensor:
    got = entries[key]
    if got.dtype != dtype:
        raise SerializationError(f"entry {key[:80]!r} has dtype {got.dtype}, expected {dtype}")
    if tuple(got.shape) != (length,):
        raise SerializationError(f"entry {key[:80]!r} has shape {tuple(got.shape)}, expected ({length},)")
    return got


def _dequantize(entries: Mapping[str, torch.Tensor], name: str, n: int, bits: int, chunk: int) -> torch.Tensor:
    """Checks one tensor's quantized entries and returns its ``n`` values in float64."""
    levels = (1 << bits) - 1
    chunks = -(-n // chunk)
    lo = _check_entry(entries, f"{name}/min", torch.float32, chunks).to(torch.float64)
    hi = _check_entry(entries, f"{name}/max", torch.float32, chunks).to(torch.float64)
    packed = _check_entry(entries, f"{name}/codes", torch.uint8, -(-n * bits // 8))
    what = f"tensor {name[:80]!r}"
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
        raise SerializationError(f"{what}: a chunk's min or max is not finite")
    if bool((lo > hi).any()):
        raise SerializationError(f"{what}: a chunk's min exceeds its max")
    codes = _unpack(packed, bits)
    if bool(codes[n:].any()):
        raise SerializationError(f"{what}: the padding bits after the last code are not zero")
    codes = codes[:n]
    step = _per_element((hi - lo) / levels, chunk, n)
    if bool(codes[step == 0].any()):
        raise SerializationError(f"{what}: a chunk whose min equals its max has a non-zero code")
    return codes.to(torch.float64) * step + _per_element(lo, chunk, n)


# --------------------------------------------------------------------------------------------
# Shared checks


def _check_template(template: Mapping[str, torch.Tensor]) -> None:
    for name, ref in template.items():
        if not isinstance(ref, torch.Tensor) or ref.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"template tensor {name!r} must be a float tensor, got {getattr(ref, 'dtype', type(ref))}")


def _check_update(update: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The update's tensors on CPU; refuses non-float and non-finite ones (a client bug)."""
    out = {}
    for name in sorted(update):
        t = update[name]
        if not isinstance(t, torch.Tensor) or t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"update tensor {name!r} must be a float tensor, got {getattr(t, 'dtype', type(t))}")
        t = t.detach().cpu()
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"update tensor {name!r} holds NaN or infinite values")
        out[name] = t
    return out


def _load(payload: bytes, expected: Mapping[str, None], *, max_bytes: int) -> dict[str, torch.Tensor]:
    """Parse the container and check it holds exactly the ``expected`` entry names."""
    entries = update_from_bytes(payload, max_bytes=max_bytes)
    if entries.keys() != expected.keys():
        missing = sorted(set(expected) - set(entries))
        extra = sorted(set(entries) - set(expected))
        raise SerializationError(
            f"payload entries differ from what the codec and model imply (missing {[m[:80] for m in missing[:8]]}, "
            f"unexpected {[e[:80] for e in extra[:8]]})"
        )
    return entries


def _finish(name: str, values: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    out = values.reshape(ref.shape).to(ref.dtype).contiguous()
    if not bool(torch.isfinite(out).all()):
        raise SerializationError(f"tensor {name[:80]!r} decodes to NaN or infinite values in {ref.dtype}")
    return out


def _entry_names(template: Mapping[str, torch.Tensor], suffixes: tuple[str, ...]) -> dict[str, None]:
    return {f"{name}/{s}": None for name in sorted(template) for s in suffixes}


# --------------------------------------------------------------------------------------------
# Codecs


class Codec(ABC):
    """An update encoding. Instances are immutable values; equal hyperparameters, equal codecs."""

    #: The tag's first word, the key in :data:`CODECS`.
    name: ClassVar[str]

    @abstractmethod
    def tag(self) -> str:
        """What a transaction records: printable ASCII, no spaces, at most 64 characters;
        :func:`codec_from_tag` inverts it, and every codec has exactly one tag."""

    @classmethod
    @abstractmethod
    def parse_tag(cls, tag: str) -> Codec:
        """The codec whose :meth:`tag` is exactly ``tag``.

        Raises:
            SerializationError: ``tag`` is not this codec's canonical tag.
        """

    @abstractmethod
    def encode(self, update: Mapping[str, torch.Tensor], *, seed: bytes, generator: torch.Generator) -> bytes:
        """Encode ``update`` (float tensors) to canonical payload bytes.

        Args:
            update: The tensors, by name; decode against a template with the same names,
                shapes and dtypes.
            seed: The public 32-byte seed of :func:`codec_seed`.
            generator: The client's private CPU generator for stochastic rounding.

        Raises:
            ValueError: A tensor is not a float tensor or holds non-finite values (or, for the
                quantizers, values beyond the float32 range); the seed is not 32 bytes.
        """

    @abstractmethod
    def decode(
        self, payload: bytes, template: Mapping[str, torch.Tensor], *, seed: bytes, max_bytes: int
    ) -> dict[str, torch.Tensor]:
        """Decode hostile ``payload`` into tensors with exactly the template's names, shapes and dtypes.

        Raises:
            SerializationError: The payload is over ``max_bytes``, malformed, not canonical, or
                decodes to non-finite values; the message says which entry and why.
            ValueError: The template holds a non-float tensor or the seed is not 32 bytes
                (caller errors, not payload errors).
        """

    @abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """The codec's parameters as plain JSON values."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.tag()!r})"


def _parse_error(tag: Any, why: str) -> SerializationError:
    return SerializationError(f"codec tag {str(tag)[:MAX_TAG_LENGTH]!r}: {why}")


def _split_tag(cls: type[Codec], tag: Any, arity: tuple[int, ...]) -> list[str]:
    if type(tag) is not str or not _TAG_RE.fullmatch(tag):
        raise _parse_error(tag, f"a tag is 1 to {MAX_TAG_LENGTH} printable ASCII characters without spaces")
    parts = tag.split("/")
    if parts[0] != cls.name or len(parts) - 1 not in arity:
        raise _parse_error(tag, f"not a {cls.name!r} tag")
    return parts[1:]


def _canonical(codec: Codec, tag: str) -> Codec:
    if codec.tag() != tag:
        raise _parse_error(tag, f"not canonical; this codec's tag is {codec.tag()!r}")
    return codec


@dataclass(frozen=True, repr=False)
class NoCodec(Codec):
    """The update's tensors as they are (``update_to_bytes``), 4 bytes per float32 element."""

    name: ClassVar[str] = "none"

    def tag(self) -> str:
        return "none"

    @classmethod
    def parse_tag(cls, tag: str) -> NoCodec:
        _split_tag(cls, tag, (0,))
        return cls()

    def encode(self, update: Mapping[str, torch.Tensor], *, seed: bytes, generator: torch.Generator) -> bytes:
        _check_seed(seed)
        return update_to_bytes(update)

    def decode(
        self, payload: bytes, template: Mapping[str, torch.Tensor], *, seed: bytes, max_bytes: int
    ) -> dict[str, torch.Tensor]:
        _check_seed(seed)
        _check_template(template)
        entries = _load(payload, dict.fromkeys(template), max_bytes=max_bytes)
        out = {}
        for name in sorted(template):
            ref, got = template[name], entries[name]
            if got.dtype != ref.dtype:
                raise SerializationError(f"tensor {name[:80]!r} has dtype {got.dtype}, the model has {ref.dtype}")
            if got.shape != ref.shape:
                raise SerializationError(
                    f"tensor {name[:80]!r} has shape {tuple(got.shape)}, the model has {tuple(ref.shape)}"
                )
            out[name] = _finish(name, got, ref)
        return out

    def hyperparameters(self) -> dict[str, Any]:
        return {}


def _check_bits_chunk(bits: Any, chunk: Any) -> None:
    if type(bits) is not int or bits not in QUANTIZE_BITS:
        raise ConfigError(f"codec bits must be one of {list(QUANTIZE_BITS)}, got {bits!r:.40}")
    if type(chunk) is not int or not MIN_CHUNK <= chunk <= MAX_CHUNK or chunk & (chunk - 1):
        raise ConfigError(f"codec chunk must be a power of two in [{MIN_CHUNK}, {MAX_CHUNK}], got {chunk!r:.40}")


def _quantizer_tag(name: str, bits: int, chunk: int) -> str:
    return f"{name}/{bits}" if chunk == DEFAULT_CHUNK else f"{name}/{bits}/{chunk}"


def _parse_quantizer(cls: type[Quantize], tag: str) -> Quantize:
    args = _split_tag(cls, tag, (1, 2))
    if not all(_UINT_RE.fullmatch(a) and len(a) <= 8 for a in args):
        raise _parse_error(tag, "bits and chunk must be plain decimal integers")
    try:
        codec = cls(*(int(a) for a in args))
    except ConfigError as exc:
        raise _parse_error(tag, str(exc)) from None
    return _canonical(codec, tag)


@dataclass(frozen=True, repr=False)
class Quantize(Codec):
    """Stochastic ``bits``-bit quantization per chunk of ``chunk`` coordinates.

    Each tensor is flattened and cut into chunks; a chunk stores its min and max (float32,
    rounded outward so they enclose it) and each coordinate a code ``c`` in
    ``[0, 2**bits − 1]``, rounded up with probability equal to the fractional part, so that
    the decoded value ``min + c·(max − min)/(2**bits − 1)`` (float64, then cast to the
    template's dtype) is unbiased with error below one step (Konečný et al. 2016; Suresh et
    al. 2017). The tag omits the chunk when it is :data:`DEFAULT_CHUNK`.

    Raises:
        ConfigError: ``bits`` not in {1, 2, 4, 8}, or ``chunk`` not a power of two in
            [64, 2**20].
    """

    bits: int
    chunk: int = DEFAULT_CHUNK
    name: ClassVar[str] = "quantize"

    def __post_init__(self) -> None:
        _check_bits_chunk(self.bits, self.chunk)

    def tag(self) -> str:
        return _quantizer_tag(self.name, self.bits, self.chunk)

    @classmethod
    def parse_tag(cls, tag: str) -> Quantize:
        return _parse_quantizer(cls, tag)

    def hyperparameters(self) -> dict[str, Any]:
        return {"bits": self.bits, "chunk": self.chunk}

    def _forward(self, name: str, flat: torch.Tensor, seed: bytes) -> torch.Tensor:
        return flat

    def _backward(self, name: str, values: torch.Tensor, numel: int, seed: bytes) -> torch.Tensor:
        return values

    def _coded_length(self, numel: int) -> int:
        return numel

    def encode(self, update: Mapping[str, torch.Tensor], *, seed: bytes, generator: torch.Generator) -> bytes:
        _check_seed(seed)
        out = {}
        for name, t in _check_update(update).items():
            coded = self._forward(name, t.reshape(-1).to(torch.float64), seed)
            for suffix, entry in _quantize(coded, self.bits, self.chunk, generator).items():
                out[f"{name}/{suffix}"] = entry
        return update_to_bytes(out)

    def decode(
        self, payload: bytes, template: Mapping[str, torch.Tensor], *, seed: bytes, max_bytes: int
    ) -> dict[str, torch.Tensor]:
        _check_seed(seed)
        _check_template(template)
        entries = _load(payload, _entry_names(template, ("codes", "max", "min")), max_bytes=max_bytes)
        out = {}
        for name in sorted(template):
            ref = template[name]
            values = _dequantize(entries, name, self._coded_length(ref.numel()), self.bits, self.chunk)
            out[name] = _finish(name, self._backward(name, values, ref.numel(), seed), ref)
        return out


@dataclass(frozen=True, repr=False)
class RotateQuantize(Quantize):
    """Randomized Hadamard rotation, then :class:`Quantize` (Suresh et al. 2017, §4).

    Per tensor: flatten to float64; cut into power-of-two pieces as :func:`rotation_length`
    describes (the last zero-padded); multiply by the ±1 diagonal :func:`rotation_signs` draws
    from the public seed and the tensor's name; apply :func:`fwht` to each piece; quantize the
    concatenation. Decoding dequantizes, applies :func:`fwht` again (its own inverse),
    multiplies by the same diagonal, drops the padding, reshapes and casts. After the rotation
    every coordinate of a piece of length ``L`` is at most about ``‖Δ‖·√(2 ln L / L)`` with high
    probability, so one large outlier no longer stretches its chunk's range, and the error, a
    fraction of that range, shrinks accordingly (Suresh et al. 2017, Lemma 7).
    The payload is ``rotation_length(n) / n`` times the plain quantizer's (≤ 1 + 1023/n).
    """

    name: ClassVar[str] = "rotate_quantize"

    @classmethod
    def parse_tag(cls, tag: str) -> RotateQuantize:
        return _parse_quantizer(cls, tag)  # type: ignore[return-value]

    def _forward(self, name: str, flat: torch.Tensor, seed: bytes) -> torch.Tensor:
        pieces = _rotation_pieces(flat.numel())
        padded = torch.zeros(sum(p for _, p in pieces), dtype=torch.float64)
        padded[: flat.numel()] = flat  # only the last piece is ever padded, so pieces stay aligned
        return _transform_pieces(padded * rotation_signs(seed, name, padded.numel()), pieces)

    def _backward(self, name: str, values: torch.Tensor, numel: int, seed: bytes) -> torch.Tensor:
        pieces = _rotation_pieces(numel)
        return (_transform_pieces(values, pieces) * rotation_signs(seed, name, values.numel()))[:numel]

    def _coded_length(self, numel: int) -> int:
        return rotation_length(numel)


@dataclass(frozen=True, repr=False)
class TopK(Codec):
    """The ``k = max(1, ceil(fraction · numel))`` largest-magnitude coordinates of each tensor.

    Ties are broken by the lower index. The payload holds the indices, ascending (int32, or
    int64 for tensors over 2**31 elements), and the values in the update's dtype; everything
    else decodes to zero. Pair it with :func:`error_feedback_step` (Stich et al. 2018;
    Karimireddy et al. 2019), without which top-k is biased. Tag: ``topk/<repr(fraction)>``.

    Raises:
        ConfigError: ``fraction`` is not a finite real number in (0, 1].
    """

    fraction: float
    name: ClassVar[str] = "topk"

    def __post_init__(self) -> None:
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, Real) or not math.isfinite(float(f)) or not 0 < float(f) <= 1:
            raise ConfigError(f"codec fraction must be a finite number in (0, 1], got {f!r:.40}")
        object.__setattr__(self, "fraction", float(f))

    def tag(self) -> str:
        return f"topk/{self.fraction!r}"

    @classmethod
    def parse_tag(cls, tag: str) -> TopK:
        (arg,) = _split_tag(cls, tag, (1,))
        if not _FLOAT_RE.fullmatch(arg):
            raise _parse_error(tag, "the fraction must be a decimal number")
        try:
            codec = cls(float(arg))
        except (ValueError, ConfigError) as exc:
            raise _parse_error(tag, str(exc)) from None
        return _canonical(codec, tag)

    def hyperparameters(self) -> dict[str, Any]:
        return {"fraction": self.fraction}

    def k(self, numel: int) -> int:
        """How many coordinates a tensor of ``numel`` elements keeps."""
        return 0 if numel == 0 else min(numel, max(1, math.ceil(self.fraction * numel)))

    @staticmethod
    def _index_dtype(numel: int) -> torch.dtype:
        return torch.int32 if numel <= 1 << 31 else torch.int64

    def encode(self, update: Mapping[str, torch.Tensor], *, seed: bytes, generator: torch.Generator) -> bytes:
        _check_seed(seed)
        out = {}
        for name, t in _check_update(update).items():
            flat = t.reshape(-1)
            order = torch.sort(flat.abs(), descending=True, stable=True).indices
            indices = order[: self.k(flat.numel())].sort().values
            out[f"{name}/indices"] = indices.to(self._index_dtype(flat.numel()))
            out[f"{name}/values"] = flat[indices].clone()
        return update_to_bytes(out)

    def decode(
        self, payload: bytes, template: Mapping[str, torch.Tensor], *, seed: bytes, max_bytes: int
    ) -> dict[str, torch.Tensor]:
        _check_seed(seed)
        _check_template(template)
        entries = _load(payload, _entry_names(template, ("indices", "values")), max_bytes=max_bytes)
        out = {}
        for name in sorted(template):
            ref = template[name]
            n, k = ref.numel(), self.k(ref.numel())
            indices = _check_entry(entries, f"{name}/indices", self._index_dtype(n), k).to(torch.int64)
            values = _check_entry(entries, f"{name}/values", ref.dtype, k)
            what = f"tensor {name[:80]!r}"
            if k and (int(indices[0]) < 0 or int(indices[-1]) >= n):
                raise SerializationError(f"{what}: an index falls outside [0, {n})")
            if k > 1 and not bool((indices[1:] > indices[:-1]).all()):
                raise SerializationError(f"{what}: indices are not strictly increasing")
            if not bool(torch.isfinite(values).all()):
                raise SerializationError(f"{what}: a value is NaN or infinite")
            dense = torch.zeros(n, dtype=ref.dtype)
            dense[indices] = values
            out[name] = _finish(name, dense, ref)
        return out


#: Every codec by its :attr:`Codec.name`.
CODECS: dict[str, type[Codec]] = {c.name: c for c in (NoCodec, Quantize, RotateQuantize, TopK)}


def codec_from_tag(tag: str) -> Codec:
    """The codec a transaction's tag names, parsed strictly (the tag may come from a peer).

    Raises:
        SerializationError: The tag is not exactly the :meth:`Codec.tag` of a valid codec
            (unknown name, wrong arity, out-of-bounds or non-canonical arguments).
    """
    if type(tag) is not str or not _TAG_RE.fullmatch(tag):
        raise _parse_error(tag, f"a tag is 1 to {MAX_TAG_LENGTH} printable ASCII characters without spaces")
    cls = CODECS.get(tag.split("/", 1)[0])
    if cls is None:
        raise _parse_error(tag, f"unknown codec; expected one of {sorted(CODECS)}")
    return cls.parse_tag(tag)


# --------------------------------------------------------------------------------------------
# Error feedback


def error_feedback_step(
    update: Mapping[str, torch.Tensor],
    residual: Mapping[str, torch.Tensor] | None,
    codec: Codec,
    *,
    seed: bytes,
    generator: torch.Generator,
) -> tuple[bytes, dict[str, torch.Tensor]]:
    """One round of error feedback: encode ``Δ + e`` and keep what was not sent.

    With ``c = Δ + e`` (float64), the payload is ``codec.encode(c)`` and the new residual is
    ``c − decode(payload)``, so the sum of what a client sends over rounds equals the sum of
    its true updates minus the current residual (Stich et al. 2018; Karimireddy et al. 2019).
    The residual is private client state, in each tensor's dtype, to be checkpointed with the
    client; pass ``None`` (or an empty mapping) in the first round.

    Returns:
        ``(payload, new_residual)``.

    Raises:
        ValueError: ``residual`` does not have the update's names, shapes and dtypes, or
            :meth:`Codec.encode` refused the corrected update.
    """
    tensors = _check_update(update)
    if residual and residual.keys() != tensors.keys():
        raise ValueError("the residual's tensor names differ from the update's")
    corrected = {}
    for name, t in tensors.items():
        c = t.to(torch.float64)
        if residual:
            e = residual[name]
            if not isinstance(e, torch.Tensor) or e.shape != t.shape or e.dtype != t.dtype:
                raise ValueError(f"residual tensor {name!r} must have the update's shape and dtype")
            c = c + e.detach().cpu().to(torch.float64)
        corrected[name] = c
    payload = codec.encode({k: v.to(tensors[k].dtype) for k, v in corrected.items()}, seed=seed, generator=generator)
    sent = codec.decode(payload, tensors, seed=seed, max_bytes=len(payload))
    new_residual = {k: (corrected[k] - sent[k].to(torch.float64)).to(tensors[k].dtype) for k in tensors}
    return payload, new_residual
