"""Secure aggregation by pairwise masking, with dropout recovery.

The protocol is the one of Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal
and Seth (2017), "Practical Secure Aggregation for Privacy-Preserving Machine Learning", ACM CCS
2017, in its honest-but-curious form (no consistency-check round, no signatures on the protocol
messages; the chain's own signed transactions carry the result). The server -- the miner -- learns
the sum of the surviving clients' updates and nothing else about any single update, as long as
fewer than ``threshold`` clients collude with it; it can finish a round although some clients
drop out after masking.

One round, in the order the functions are called::

    keys = setup_client(client_id, round_number)            # every client
    keys.public.to_bytes()                         -> server  # advertise (Bonawitz round 0)
    roster = Roster(all advertised PublicKeys, round_number=...)   # server -> every client
    share_secrets(keys, roster, config)            -> server  # Shamir shares, encrypted (round 1)
    routed = route_shares({sender: bundle}, roster, config)  # server: check, keep commitments
    held = receive_shares(keys, roster, routed.inbox[me], participants=routed.participants)
    mask_update(keys, update, roster, config, participants=routed.participants)  (round 2)
    collected = collect_masked_inputs(roster, routed, {sender: masked}, dim=..., config=...)
    reveal_shares(keys, held, collected.request, roster, config)   -> server   (round 3)
    result = unmask_sum(collected, {sender: reveal}, roster, routed, config)

Design choices:

* **Ring.** Updates live in Z_{2^k}, ``k = ring_bits`` between 8 and 62, held in ``int64``
  tensors with every value in ``[0, 2^k)``. Every sum or difference of two such values lies in
  ``(-2^62, 2^63)``, so it never overflows ``int64``; it is reduced right away with
  ``& (2^k - 1)``, which is the exact residue mod 2^k also for negative intermediates (two's
  complement). All ring arithmetic is therefore exact. It runs in NumPy on one thread (element
  by element, so the result does not depend on threading) and the API hands out torch tensors.
* **Fixed point.** :func:`encode_fixed_point` clips a float update to ``[-clip, clip]``,
  multiplies by ``2^frac_bits`` (exact in float64) and rounds half to even (``numpy.rint``,
  deterministic), then maps negatives into the ring. :func:`decode_fixed_point` lifts a ring
  value to ``(-2^(k-1), 2^(k-1)]`` and divides by ``2^frac_bits``. The decoded sum of ``n``
  inputs is exact as long as ``n * ceil(clip * 2^frac_bits) < min(2^(k-1), 2^53)``;
  :meth:`SecAggConfig.check_capacity` raises :class:`~torchchain.errors.ConfigError` when the
  roster is larger than that. Each client's rounding moves a coordinate by at most
  ``2^-(frac_bits+1)``, so the decoded sum differs from the sum of the clipped floats by at most
  :func:`quantization_error_bound` ``= n * 2^-(frac_bits+1)``.
* **PRG.** :func:`expand_mask` keys ChaCha20 (pycryptodome, 12-byte all-zero nonce) with
  SHA-256 of a domain string, the round number, a label (``"self"`` or ``"pair"``) and the seed,
  and reads the key stream as little-endian 32-bit words (``k <= 32``) or 64-bit words, keeping
  the low ``k`` bits. Each ChaCha20 key encrypts one stream only, so the fixed nonce is safe, and
  because the round is in the key, masks never repeat across rounds even if keys were reused.
* **Keys.** Each client has two X25519 key pairs, as in the paper: ``c_u`` encrypts the shares
  sent to other clients, ``s_u`` agrees the pairwise mask seeds
  ``s_uv = HKDF-SHA256(X25519(s_u, s_v^PK))``. The mask key pair is derived deterministically
  (HKDF) from a 16-byte *mask secret*, and that secret is what the client Shamir-shares, so the
  server can rebuild a dropped client's mask key from ``threshold`` shares (the mask private key
  thus carries 128 bits of entropy, the security level of X25519 itself). The published mask
  public key is the commitment to the mask secret. The 16-byte self-mask seed ``b_u`` is shared
  too; its commitment is a domain-separated SHA-256 published with the public keys.
* **Order.** Clients are ordered by mask public key (bytes); client ``u`` adds ``PRG(s_uv)`` for
  every ``v`` after it and subtracts it for every ``v`` before it. A client's Shamir x-coordinate
  is its 1-based position in that order.
* **Shares.** ``Shamir.split(threshold, n, secret)`` over GF(2^128) (pycryptodome). The share for
  holder ``v`` is encrypted with ChaCha20-Poly1305 under a key agreed between ``c_u`` and
  ``c_v`` (HKDF context: round, dealer, recipient), with the routing header as associated data,
  so the server only routes ciphertexts.
* **Bad shares.** ``Shamir.combine`` returns garbage, not an error, when given too few or wrong
  shares. Two checks stop that from ever reaching the sum. (1) The dealer publishes, next to each
  encrypted share, a SHA-256 commitment of that share (bound to round, dealer, holder, kind and
  x-coordinate). When a holder reveals a share, the server checks it against that commitment; a
  holder whose revealed share does not match is named in :attr:`UnmaskResult.rejected` and none of
  its shares are used. The check costs one hash per share, so no search over subsets of shares is
  ever needed. (2) Every reconstructed secret is checked against the dealer's own commitment
  (its mask public key, or the self-seed commitment); with verified shares this fails only if the
  dealer dealt inconsistent shares, and :class:`ReconstructionError` names the dealer. Fewer than
  ``threshold`` verified shares raise :class:`ReconstructionError` before combining anything.
  Commitments to single shares reveal nothing useful: each share is a uniformly random 128-bit
  string to anyone holding fewer than ``threshold`` of them.
* **Dropouts.** Clients whose share bundle is missing or malformed are not *participants*:
  nobody masks against them. Participants whose masked input is missing or malformed are
  *dropped*: the survivors reveal their shares of the dropped clients' mask secrets, and shares of
  every survivor's self-mask seed, never both for one client (:class:`RevealRequest` refuses
  overlapping sets, :func:`reveal_shares` refuses a request with fewer than ``threshold``
  survivors).
* **Messages.** Every message has one canonical byte encoding: canonical JSON with lowercase hex
  for bytes (:func:`torchchain.chain.encoding.canonical_json`), except the masked input, which is
  a small canonical JSON header followed by the ring values as ``ceil(k/8)``-byte little-endian
  words. Each parser checks the size first, then the exact key set, types, lengths, ranges and
  that the input is byte-for-byte the canonical encoding of what it parsed. Nothing is pickled.
* **Determinism.** With a seed, :func:`setup_client` derives every secret from it; the public
  keys, the masked input and the unmasked sum are then the same bytes on every run. The share
  ciphertexts are not: pycryptodome draws the Shamir coefficients and the nonces from the
  operating system, and any ``threshold`` valid shares rebuild the same secrets.
* **Keys are per round.** Once a dropped client's mask secret is revealed its pairwise masks are
  public, so :class:`ClientKeys` carry their round and every step refuses keys of another round.

Costs: a client does about ``2n`` X25519 agreements, two Shamir splits (``O(n * threshold)``
GF(2^128) products in pure Python) and ``n`` PRG expansions of the update's length; the server
does one ``O(threshold^2)`` Shamir combination per participant and ``|dropped| * |survivors|``
agreements and PRG expansions. The pure-Python Shamir combinations dominate the server's time
from a few dozen clients on (``benchmarks/secagg.py`` measures it). :data:`MAX_CLIENTS` bounds
``n``.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from Crypto.Cipher import ChaCha20, ChaCha20_Poly1305
from Crypto.Hash import SHA256
from Crypto.Protocol.DH import import_x25519_public_key, key_agreement
from Crypto.Protocol.KDF import HKDF
from Crypto.Protocol.SecretSharing import Shamir
from Crypto.PublicKey import ECC
from Crypto.Random import get_random_bytes

from torchchain.chain.encoding import canonical_json, parse_json_object
from torchchain.errors import ConfigError, SerializationError, TorchchainError

__all__ = [
    "MAX_CLIENTS",
    "MAX_DIM",
    "PROTOCOL",
    "ClientKeys",
    "CollectedInputs",
    "EncryptedShare",
    "HeldShares",
    "InvalidMaskedInput",
    "PublicKeys",
    "ReconstructionError",
    "RevealRequest",
    "RevealedShares",
    "Roster",
    "RoutedShares",
    "SecAggConfig",
    "SecAggError",
    "UnmaskResult",
    "check_masked_input",
    "collect_masked_inputs",
    "decode_fixed_point",
    "decode_masked_input",
    "encode_fixed_point",
    "encode_masked_input",
    "expand_mask",
    "mask_update",
    "quantization_error_bound",
    "receive_shares",
    "reveal_shares",
    "route_shares",
    "self_mask",
    "setup_client",
    "share_secrets",
    "unmask_sum",
]

PROTOCOL = "torchchain/secagg/v1"
"""Domain string: prefixes every hash, key derivation and PRG key, and names the message format."""

MAX_CLIENTS = 1024
"""The most clients one round may have. Shamir reconstruction costs ``O(threshold^2)`` products
in GF(2^128) per client in pure Python, which is what bounds this, not the message sizes."""

MAX_DIM = 1 << 27
"""The longest update (number of coordinates) a round may aggregate: 1 GiB as ``int64``."""

MAX_ROUND = (1 << 63) - 1
"""The largest round number."""

SECRET_BYTES = 16
"""Length of a Shamir-shared secret (pycryptodome's Shamir works on 16-byte secrets)."""

_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_CLIENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_MAGIC = b"TCSAMASK"
_MAX_HEADER_BYTES = 512
_SMALL_MESSAGE_BYTES = 1024
_MAX_SEED_BYTES = 1024
_VERSION = 1


# --------------------------------------------------------------------------------------------
# Errors


class SecAggError(TorchchainError):
    """A secure-aggregation step refused its input or could not finish the round.

    Attributes:
        code: A short machine-readable reason (``"too_few_survivors"``, ``"not_enough_shares"``,
            ``"inconsistent_shares"``, ``"wrong_round"``, ``"bad_request"``, ...).
        reason: A sentence a user can read.
        client: The client the error is about, or ``None``.
    """

    def __init__(self, code: str, reason: str, *, client: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.client = client
        super().__init__(f"{code}: {reason}")


class ReconstructionError(SecAggError):
    """A client's secret cannot be rebuilt from the shares the survivors revealed.

    Raised instead of returning a sum: ``code`` is ``"not_enough_shares"`` (fewer than
    ``threshold`` verified shares) or ``"inconsistent_shares"`` (the verified shares rebuild a
    secret that does not match the dealer's commitment, i.e. the dealer dealt bad shares);
    ``client`` names the dealer.
    """


class InvalidMaskedInput(SecAggError):
    """A masked input is malformed: wrong type, dtype, shape or length, or values outside the ring.

    ``code`` is ``"malformed_masked_input"``; ``client`` names the sender.
    """


# --------------------------------------------------------------------------------------------
# Small helpers


def _hash(*parts: bytes) -> bytes:
    """SHA-256 of length-prefixed parts, so no two different part lists hash alike."""
    digest = SHA256.new()
    for part in parts:
        digest.update(struct.pack(">I", len(part)))
        digest.update(part)
    return digest.digest()


def _label(name: str) -> bytes:
    return f"{PROTOCOL}/{name}".encode("ascii")


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_round(value: Any, what: str = "round") -> int:
    if not _is_int(value) or not 0 <= value <= MAX_ROUND:
        raise SerializationError(f"{what}: expected an integer in [0, 2^63), got {value!r:.40}")
    return value


def _check_client(value: Any, what: str = "client") -> str:
    if not isinstance(value, str) or _CLIENT_RE.fullmatch(value) is None:
        raise SerializationError(
            f"{what}: a client id is 1-64 characters of [A-Za-z0-9._:-] starting with a letter or digit, "
            f"got {value!r:.80}"
        )
    return value


def _check_bytes(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise SerializationError(f"{what}: expected {size} bytes")
    return value


def _hex_field(obj: Mapping[str, Any], key: str, size: int, what: str) -> bytes:
    value = obj[key]
    if not isinstance(value, str) or len(value) != 2 * size or re.fullmatch(r"[0-9a-f]*", value) is None:
        raise SerializationError(f"{what}: {key!r} must be {2 * size} lowercase hex characters")
    return bytes.fromhex(value)


def _parse_message(data: Any, *, what: str, kind: str, keys: set[str], max_bytes: int) -> dict[str, Any]:
    """Parses canonical JSON of message type ``kind`` with exactly ``keys`` (plus type and v)."""
    obj = parse_json_object(data, what=what, max_bytes=max_bytes, max_depth=2)
    expected = keys | {"type", "v"}
    if set(obj) != expected:
        missing = sorted(expected - set(obj))
        extra = sorted(set(obj) - expected)
        raise SerializationError(f"{what}: wrong fields (missing {missing}, unexpected {extra[:5]})")
    if obj["type"] != kind:
        raise SerializationError(f"{what}: expected type {kind!r}, got {obj['type']!r:.40}")
    if obj["v"] != _VERSION or not _is_int(obj["v"]):
        raise SerializationError(f"{what}: unsupported version {obj['v']!r:.20}")
    if canonical_json(obj) != bytes(data):
        raise SerializationError(f"{what}: not in canonical form (sorted keys, no whitespace)")
    return obj


def _client_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_CLIENTS:
        raise SerializationError(f"{what}: expected a list of at most {MAX_CLIENTS} client ids")
    clients = tuple(_check_client(item, what) for item in value)
    if list(clients) != sorted(set(clients)):
        raise SerializationError(f"{what}: client ids must be sorted and unique")
    return clients


# --------------------------------------------------------------------------------------------
# Configuration and fixed point


@dataclass(frozen=True)
class SecAggConfig:
    """Parameters of one secure-aggregation deployment.

    Attributes:
        threshold: Shamir threshold ``t``: how many survivors must reveal shares to rebuild a
            secret, and the most colluding parties (server included) the masking withstands is
            ``t - 1``. At least 2; at most the number of clients in a round. A majority of the
            clients (``n // 2 + 1``) is the usual choice.
        clip: Each coordinate of an update is clipped to ``[-clip, clip]`` before encoding.
        frac_bits: Fixed-point fractional bits: a coordinate is rounded to a multiple of
            ``2^-frac_bits``. Between 0 and 52.
        ring_bits: ``k``: masked values live in Z_{2^k}. Between 8 and 62.

    Raises:
        ConfigError: A value is out of range, or not even ``threshold`` clients fit the ring.
    """

    threshold: int
    clip: float = 1.0
    frac_bits: int = 20
    ring_bits: int = 32

    def __post_init__(self) -> None:
        if not _is_int(self.threshold) or not 2 <= self.threshold <= MAX_CLIENTS:
            raise ConfigError(f"secagg.threshold must be an integer in [2, {MAX_CLIENTS}], got {self.threshold!r}")
        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)):
            raise ConfigError(f"secagg.clip must be a positive number, got {self.clip!r}")
        if not math.isfinite(self.clip) or self.clip <= 0:
            raise ConfigError(f"secagg.clip must be finite and > 0, got {self.clip!r}")
        object.__setattr__(self, "clip", float(self.clip))
        if not _is_int(self.frac_bits) or not 0 <= self.frac_bits <= 52:
            raise ConfigError(f"secagg.frac_bits must be an integer in [0, 52], got {self.frac_bits!r}")
        if not _is_int(self.ring_bits) or not 8 <= self.ring_bits <= 62:
            raise ConfigError(f"secagg.ring_bits must be an integer in [8, 62], got {self.ring_bits!r}")
        if self.scale_bound > 1 << 52:
            raise ConfigError(
                f"secagg.clip * 2^frac_bits = {self.clip * 2.0**self.frac_bits:.6g} exceeds 2^52; "
                "lower secagg.clip or secagg.frac_bits"
            )
        self.check_capacity(self.threshold)

    @property
    def modulus(self) -> int:
        """``2^ring_bits``."""
        return 1 << self.ring_bits

    @property
    def ring_mask(self) -> int:
        """``2^ring_bits - 1``: ``x & ring_mask`` is ``x mod 2^ring_bits``."""
        return (1 << self.ring_bits) - 1

    @property
    def scale_bound(self) -> int:
        """The largest magnitude of one encoded coordinate: ``ceil(clip * 2^frac_bits)``."""
        return math.ceil(self.clip * 2.0**self.frac_bits)

    @property
    def word_bytes(self) -> int:
        """Bytes per ring value on the wire: ``ceil(ring_bits / 8)``."""
        return (self.ring_bits + 7) // 8

    @property
    def max_clients(self) -> int:
        """The most clients whose encoded sum still decodes exactly (at most :data:`MAX_CLIENTS`)."""
        limit = min((1 << (self.ring_bits - 1)) - 1, 1 << 53)
        return min(limit // self.scale_bound, MAX_CLIENTS)

    def check_capacity(self, clients: int) -> None:
        """Checks that the sum of ``clients`` encoded updates decodes exactly.

        Raises:
            ConfigError: ``clients * ceil(clip * 2^frac_bits)`` reaches ``2^(ring_bits-1)`` or
                exceeds ``2^53``, or ``clients`` exceeds :data:`MAX_CLIENTS`.
        """
        if clients > self.max_clients:
            raise ConfigError(
                f"secure aggregation of {clients} clients overflows the ring: "
                f"{clients} * ceil(clip * 2^frac_bits) = {clients * self.scale_bound} must stay below "
                f"2^{self.ring_bits - 1} (and 2^53), so at most {self.max_clients} clients fit; raise "
                "secagg.ring_bits or lower secagg.clip / secagg.frac_bits"
            )


def quantization_error_bound(clients: int, config: SecAggConfig) -> float:
    """The largest per-coordinate gap between the decoded sum and the sum of the clipped floats.

    Each client's round-to-nearest moves a coordinate by at most ``2^-(frac_bits+1)``; the ring
    sum is exact and its decoding is exact, so the bound is ``clients * 2^-(frac_bits+1)``.
    """
    return clients * 2.0 ** -(config.frac_bits + 1)


def encode_fixed_point(update: torch.Tensor, config: SecAggConfig) -> torch.Tensor:
    """Maps a float update into the ring: clip, scale by ``2^frac_bits``, round half to even.

    Args:
        update: 1-D floating tensor of finite values, at most :data:`MAX_DIM` long.
        config: The deployment's parameters.

    Returns:
        A new ``int64`` CPU tensor of the same length with values in ``[0, 2^ring_bits)``.

    Raises:
        SecAggError: ``code="bad_update"``: not a 1-D floating tensor, empty, too long, or holds
            NaN or infinity.
    """
    if not isinstance(update, torch.Tensor) or not update.is_floating_point() or update.dim() != 1:
        raise SecAggError("bad_update", "the update must be a 1-D floating-point tensor")
    if not 1 <= update.numel() <= MAX_DIM:
        raise SecAggError("bad_update", f"the update must have 1 to {MAX_DIM} coordinates, got {update.numel()}")
    values = update.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(values).all():
        raise SecAggError("bad_update", "the update holds NaN or infinite values")
    scaled = np.clip(values, -config.clip, config.clip)
    np.multiply(scaled, 2.0**config.frac_bits, out=scaled)
    np.rint(scaled, out=scaled)
    ring = scaled.astype(np.int64)
    np.bitwise_and(ring, config.ring_mask, out=ring)
    return torch.from_numpy(ring)


def decode_fixed_point(ring: torch.Tensor, config: SecAggConfig) -> torch.Tensor:
    """Maps ring values back to floats: lift to ``(-2^(k-1), 2^(k-1)]``, divide by ``2^frac_bits``.

    Exact for every value that :meth:`SecAggConfig.check_capacity` admits (integers up to 2^53
    and a division by a power of two).

    Raises:
        SecAggError: ``code="bad_ring_values"``: not a 1-D ``int64`` tensor of values in the ring.
    """
    _check_ring_tensor(ring, config, error=lambda reason: SecAggError("bad_ring_values", reason))
    lifted = ring.numpy().copy()
    lifted[lifted >= 1 << (config.ring_bits - 1)] -= config.modulus
    return torch.from_numpy(lifted.astype(np.float64) / 2.0**config.frac_bits)


def _check_ring_tensor(value: Any, config: SecAggConfig, *, error: Any, dim: int | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise error(f"expected a tensor, got {type(value).__name__}")
    if value.dtype != torch.int64:
        raise error(f"expected dtype int64, got {value.dtype}")
    if value.dim() != 1:
        raise error(f"expected a 1-D tensor, got shape {tuple(value.shape)}")
    if dim is not None and value.numel() != dim:
        raise error(f"expected {dim} values, got {value.numel()}")
    if not 1 <= value.numel() <= MAX_DIM:
        raise error(f"expected 1 to {MAX_DIM} values, got {value.numel()}")
    if value.device.type != "cpu":
        raise error(f"expected a CPU tensor, got device {value.device}")
    array = value.detach().numpy()
    if int(array.min()) < 0 or int(array.max()) > config.ring_mask:
        raise error(f"values outside the ring [0, 2^{config.ring_bits})")
    return value


# --------------------------------------------------------------------------------------------
# PRG


def expand_mask(seed: bytes, *, round_number: int, label: str, length: int, ring_bits: int) -> torch.Tensor:
    """Expands a seed into a pseudorandom vector of ring elements.

    The ChaCha20 key is SHA-256 over (:data:`PROTOCOL` ``/prg``, round, label, seed); the nonce is
    12 zero bytes (each key is used for one stream). The key stream is read as little-endian
    ``uint32`` words when ``ring_bits <= 32``, else ``uint64``, and each word keeps its low
    ``ring_bits`` bits.

    Args:
        seed: The seed (a self-mask seed or a pairwise seed), 1 to 1024 bytes.
        round_number: The round; different rounds give unrelated vectors.
        label: What the mask is for (``"self"``, ``"pair"``); different labels give unrelated
            vectors.
        length: Number of elements, 1 to :data:`MAX_DIM`.
        ring_bits: ``k``, 8 to 62.

    Returns:
        An ``int64`` tensor of ``length`` values in ``[0, 2^ring_bits)``.
    """
    return torch.from_numpy(_expand(seed, round_number=round_number, label=label, length=length, ring_bits=ring_bits))


def _expand(seed: bytes, *, round_number: int, label: str, length: int, ring_bits: int) -> np.ndarray:
    if not isinstance(seed, bytes) or not 1 <= len(seed) <= _MAX_SEED_BYTES:
        raise ValueError(f"a mask seed must be 1 to {_MAX_SEED_BYTES} bytes")
    if not _is_int(length) or not 1 <= length <= MAX_DIM:
        raise ValueError(f"a mask length must be an integer in [1, {MAX_DIM}], got {length!r}")
    if not _is_int(ring_bits) or not 8 <= ring_bits <= 62:
        raise ValueError(f"ring_bits must be an integer in [8, 62], got {ring_bits!r}")
    _check_round(round_number, "round_number")
    key = _hash(_label("prg"), _u64(round_number), label.encode("utf-8"), seed)
    cipher = ChaCha20.new(key=key, nonce=bytes(_NONCE_BYTES))
    if ring_bits <= 32:
        words = np.frombuffer(cipher.encrypt(bytes(4 * length)), dtype="<u4").astype(np.int64)
        if ring_bits < 32:
            np.bitwise_and(words, (1 << ring_bits) - 1, out=words)
    else:
        raw = np.frombuffer(cipher.encrypt(bytes(8 * length)), dtype="<u8")
        words = np.bitwise_and(raw, np.uint64((1 << ring_bits) - 1)).astype(np.int64)
    return words


def self_mask(self_seed: bytes, *, round_number: int, dim: int, config: SecAggConfig) -> torch.Tensor:
    """The self mask ``PRG(b_u)`` a client adds to its input (and the server removes)."""
    return expand_mask(self_seed, round_number=round_number, label="self", length=dim, ring_bits=config.ring_bits)


def _self_mask(self_seed: bytes, *, round_number: int, dim: int, config: SecAggConfig) -> np.ndarray:
    return _expand(self_seed, round_number=round_number, label="self", length=dim, ring_bits=config.ring_bits)


# --------------------------------------------------------------------------------------------
# Keys


def _self_commitment(round_number: int, client: str, self_seed: bytes) -> bytes:
    return _hash(_label("self-seed-commitment"), _u64(round_number), client.encode("ascii"), self_seed)


def _share_commitment(kind: str, round_number: int, dealer: str, holder: str, x: int, share: bytes) -> bytes:
    return _hash(
        _label("share-commitment"),
        kind.encode("ascii"),
        _u64(round_number),
        dealer.encode("ascii"),
        holder.encode("ascii"),
        _u64(x),
        share,
    )


def _derive_mask_key(mask_secret: bytes, client: str, round_number: int) -> ECC.EccKey:
    """The X25519 mask key pair of ``client`` for ``round_number``, from its 16-byte mask secret."""
    context = _hash(_label("mask-key"), _u64(round_number), client.encode("ascii"))
    seed = HKDF(mask_secret, _KEY_BYTES, b"", SHA256, context=context)
    return ECC.construct(curve="curve25519", seed=seed)


def _raw_public(key: ECC.EccKey) -> bytes:
    return key.public_key().export_key(format="raw")


def _import_point(raw: bytes, what: str) -> ECC.EccKey:
    try:
        return import_x25519_public_key(raw)
    except ValueError as exc:
        raise SerializationError(f"{what}: not a valid X25519 public key ({exc})") from None


@dataclass(frozen=True)
class PublicKeys:
    """What a client advertises for one round (Bonawitz round 0), canonical bytes by :meth:`to_bytes`.

    Attributes:
        client: The client id.
        round: The round these keys are for.
        enc_public: Raw X25519 public key (32 bytes) for encrypting shares to this client.
        mask_public: Raw X25519 public key (32 bytes) for pairwise masks; also the commitment to
            the client's mask secret.
        self_commitment: SHA-256 commitment (32 bytes) to the client's self-mask seed.
    """

    client: str
    round: int
    enc_public: bytes
    mask_public: bytes
    self_commitment: bytes

    def __post_init__(self) -> None:
        _check_client(self.client, "PublicKeys.client")
        _check_round(self.round, "PublicKeys.round")
        _check_bytes(self.enc_public, _KEY_BYTES, "PublicKeys.enc_public")
        _check_bytes(self.mask_public, _KEY_BYTES, "PublicKeys.mask_public")
        _check_bytes(self.self_commitment, _KEY_BYTES, "PublicKeys.self_commitment")
        _import_point(self.enc_public, "PublicKeys.enc_public")
        _import_point(self.mask_public, "PublicKeys.mask_public")

    def to_bytes(self) -> bytes:
        """The canonical JSON encoding."""
        return canonical_json(
            {
                "client": self.client,
                "enc_public": self.enc_public.hex(),
                "mask_public": self.mask_public.hex(),
                "round": self.round,
                "self_commitment": self.self_commitment.hex(),
                "type": "secagg/keys",
                "v": _VERSION,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicKeys:
        """Parses :meth:`to_bytes` output strictly.

        Raises:
            SerializationError: Over 1 KiB, not canonical JSON, wrong fields, bad hex, or a key
                that is not a valid X25519 point.
        """
        what = "secagg public keys"
        obj = _parse_message(
            data,
            what=what,
            kind="secagg/keys",
            keys={"client", "enc_public", "mask_public", "round", "self_commitment"},
            max_bytes=_SMALL_MESSAGE_BYTES,
        )
        return cls(
            client=_check_client(obj["client"], what),
            round=_check_round(obj["round"], what),
            enc_public=_hex_field(obj, "enc_public", _KEY_BYTES, what),
            mask_public=_hex_field(obj, "mask_public", _KEY_BYTES, what),
            self_commitment=_hex_field(obj, "self_commitment", _KEY_BYTES, what),
        )


class ClientKeys:
    """A client's secrets for one round: encryption key pair, mask secret (and key pair), self-mask seed.

    Build with :func:`setup_client`. ``repr()`` shows the public part only.
    """

    __slots__ = ("_enc_key", "_mask_key", "_mask_secret", "_public", "_self_seed", "client", "round")

    def __init__(
        self, client: str, round_number: int, enc_key: ECC.EccKey, mask_secret: bytes, self_seed: bytes
    ) -> None:
        _check_client(client, "client")
        _check_round(round_number, "round_number")
        _check_bytes(mask_secret, SECRET_BYTES, "mask_secret")
        _check_bytes(self_seed, SECRET_BYTES, "self_seed")
        if enc_key.curve != "Curve25519" or not enc_key.has_private():
            raise ValueError("the encryption key must be an X25519 private key")
        self.client = client
        self.round = round_number
        self._enc_key = enc_key
        self._mask_secret = mask_secret
        self._self_seed = self_seed
        self._mask_key = _derive_mask_key(mask_secret, client, round_number)
        self._public = PublicKeys(
            client=client,
            round=round_number,
            enc_public=_raw_public(enc_key),
            mask_public=_raw_public(self._mask_key),
            self_commitment=_self_commitment(round_number, client, self_seed),
        )

    @property
    def public(self) -> PublicKeys:
        """What the client advertises."""
        return self._public

    @property
    def self_seed(self) -> bytes:
        """The secret self-mask seed ``b_u`` (16 bytes)."""
        return self._self_seed

    @property
    def mask_secret(self) -> bytes:
        """The secret 16 bytes the mask key pair derives from; what is Shamir-shared."""
        return self._mask_secret

    def __repr__(self) -> str:
        return f"ClientKeys(client={self.client!r}, round={self.round}, mask_public={self._public.mask_public.hex()})"


def setup_client(client: str, round_number: int, *, seed: bytes | None = None) -> ClientKeys:
    """Makes a client's keys for one round.

    Args:
        client: The client id (1-64 characters of ``[A-Za-z0-9._:-]``).
        round_number: The round the keys are for; keys must not be reused in another round.
        seed: 16 to 1024 bytes: every secret then derives from SHA-256 of (seed, client, round),
            so the same seed gives the same keys. ``None`` draws fresh randomness.

    Raises:
        ValueError: Bad client id, round or seed length.
    """
    _check_client(client, "client")
    _check_round(round_number, "round_number")
    if seed is None:
        enc_key = ECC.generate(curve="curve25519")
        return ClientKeys(client, round_number, enc_key, get_random_bytes(SECRET_BYTES), get_random_bytes(SECRET_BYTES))
    if not isinstance(seed, bytes) or not SECRET_BYTES <= len(seed) <= _MAX_SEED_BYTES:
        raise ValueError(f"a client seed must be {SECRET_BYTES} to {_MAX_SEED_BYTES} bytes")
    material = _hash(_label("client-seed"), seed, client.encode("ascii"), _u64(round_number))
    enc_key = ECC.construct(curve="curve25519", seed=_hash(_label("enc-key"), material))
    mask_secret = _hash(_label("mask-secret"), material)[:SECRET_BYTES]
    self_seed = _hash(_label("self-seed"), material)[:SECRET_BYTES]
    return ClientKeys(client, round_number, enc_key, mask_secret, self_seed)


class Roster:
    """The clients that advertised keys for a round, in protocol order (by mask public key).

    Args:
        keys: One :class:`PublicKeys` per client.
        round_number: The round; every entry must be for it.

    Raises:
        SecAggError: ``code="bad_roster"``: fewer than 2 or more than :data:`MAX_CLIENTS`
            entries, entries for another round, or a repeated client id or public key.
    """

    __slots__ = ("_by_client", "_index", "_mask_points", "clients", "round")

    def __init__(self, keys: Iterable[PublicKeys], *, round_number: int) -> None:
        _check_round(round_number, "round_number")
        entries: list[PublicKeys] = []
        for entry in keys:
            if len(entries) >= MAX_CLIENTS:
                raise SecAggError("bad_roster", f"a round has at most {MAX_CLIENTS} clients")
            if not isinstance(entry, PublicKeys):
                raise SecAggError("bad_roster", f"expected PublicKeys entries, got {type(entry).__name__}")
            if entry.round != round_number:
                reason = f"keys of {entry.client} are for round {entry.round}, not {round_number}"
                raise SecAggError("bad_roster", reason, client=entry.client)
            entries.append(entry)
        if len(entries) < 2:
            raise SecAggError("bad_roster", "a round needs at least 2 clients")
        for attribute in ("client", "enc_public", "mask_public"):
            values = [getattr(entry, attribute) for entry in entries]
            if len(set(values)) != len(values):
                raise SecAggError("bad_roster", f"two clients advertise the same {attribute}")
        entries.sort(key=lambda entry: entry.mask_public)
        self.round = round_number
        self.clients: tuple[str, ...] = tuple(entry.client for entry in entries)
        self._by_client = {entry.client: entry for entry in entries}
        self._index = {client: position for position, client in enumerate(self.clients)}
        self._mask_points: dict[str, ECC.EccKey] = {}

    def __len__(self) -> int:
        return len(self.clients)

    def __contains__(self, client: object) -> bool:
        return client in self._by_client

    def __iter__(self):  # noqa: ANN204 - an iterator of client ids
        return iter(self.clients)

    def __getitem__(self, client: str) -> PublicKeys:
        return self._by_client[client]

    def position(self, client: str) -> int:
        """0-based place of ``client`` in protocol order (pairwise-mask signs follow it)."""
        return self._index[client]

    def share_x(self, client: str) -> int:
        """The Shamir x-coordinate of the shares ``client`` holds: its position plus one."""
        return self._index[client] + 1

    def mask_point(self, client: str) -> ECC.EccKey:
        """``client``'s mask public key as a pycryptodome key object (cached)."""
        point = self._mask_points.get(client)
        if point is None:
            point = self._mask_points[client] = import_x25519_public_key(self._by_client[client].mask_public)
        return point


def _check_keys_in_roster(keys: ClientKeys, roster: Roster) -> None:
    if not isinstance(keys, ClientKeys):
        raise TypeError(f"expected ClientKeys, got {type(keys).__name__}")
    if keys.round != roster.round:
        reason = f"keys are for round {keys.round}, the roster for round {roster.round}"
        raise SecAggError("wrong_round", reason, client=keys.client)
    if keys.client not in roster or roster[keys.client] != keys.public:
        raise SecAggError("not_in_roster", f"the roster does not hold the keys of {keys.client}", client=keys.client)


def _pairwise_seed(private: ECC.EccKey, peer: ECC.EccKey, public_a: bytes, public_b: bytes) -> bytes:
    low, high = sorted((public_a, public_b))
    context = _hash(_label("pairwise-seed"), low, high)
    return key_agreement(
        static_priv=private, static_pub=peer, kdf=lambda z: HKDF(z, _KEY_BYTES, b"", SHA256, context=context)
    )


def _share_key(private: ECC.EccKey, peer_public: bytes, round_number: int, dealer: str, recipient: str) -> bytes:
    context = _hash(_label("share-key"), _u64(round_number), dealer.encode("ascii"), recipient.encode("ascii"))
    return key_agreement(
        static_priv=private,
        static_pub=import_x25519_public_key(peer_public),
        kdf=lambda z: HKDF(z, _KEY_BYTES, b"", SHA256, context=context),
    )


# --------------------------------------------------------------------------------------------
# Shares


@dataclass(frozen=True)
class EncryptedShare:
    """One dealer's shares for one holder (Bonawitz round 1), encrypted; the server routes it.

    Attributes:
        round: The round.
        dealer: Who made the shares.
        recipient: Who holds them.
        nonce: ChaCha20-Poly1305 nonce (12 bytes).
        ciphertext: Encrypted ``mask_share || self_share`` plus the 16-byte tag (48 bytes).
        mask_commitment: SHA-256 commitment to the mask-secret share (32 bytes); the server
            checks a revealed share against it.
        self_commitment: SHA-256 commitment to the self-seed share (32 bytes).
    """

    round: int
    dealer: str
    recipient: str
    nonce: bytes
    ciphertext: bytes
    mask_commitment: bytes
    self_commitment: bytes

    def __post_init__(self) -> None:
        _check_round(self.round, "EncryptedShare.round")
        _check_client(self.dealer, "EncryptedShare.dealer")
        _check_client(self.recipient, "EncryptedShare.recipient")
        _check_bytes(self.nonce, _NONCE_BYTES, "EncryptedShare.nonce")
        _check_bytes(self.ciphertext, 2 * SECRET_BYTES + _TAG_BYTES, "EncryptedShare.ciphertext")
        _check_bytes(self.mask_commitment, _KEY_BYTES, "EncryptedShare.mask_commitment")
        _check_bytes(self.self_commitment, _KEY_BYTES, "EncryptedShare.self_commitment")

    def _header(self) -> dict[str, Any]:
        return {
            "dealer": self.dealer,
            "mask_commitment": self.mask_commitment.hex(),
            "recipient": self.recipient,
            "round": self.round,
            "self_commitment": self.self_commitment.hex(),
            "type": "secagg/share",
            "v": _VERSION,
        }

    def associated_data(self) -> bytes:
        """What the AEAD authenticates besides the shares: the canonical routing header."""
        return canonical_json(self._header())

    def to_bytes(self) -> bytes:
        """The canonical JSON encoding."""
        return canonical_json({**self._header(), "ciphertext": self.ciphertext.hex(), "nonce": self.nonce.hex()})

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedShare:
        """Parses :meth:`to_bytes` output strictly.

        Raises:
            SerializationError: Over 1 KiB, not canonical JSON, wrong fields, lengths or hex.
        """
        what = "secagg encrypted share"
        obj = _parse_message(
            data,
            what=what,
            kind="secagg/share",
            keys={"ciphertext", "dealer", "mask_commitment", "nonce", "recipient", "round", "self_commitment"},
            max_bytes=_SMALL_MESSAGE_BYTES,
        )
        return cls(
            round=_check_round(obj["round"], what),
            dealer=_check_client(obj["dealer"], what),
            recipient=_check_client(obj["recipient"], what),
            nonce=_hex_field(obj, "nonce", _NONCE_BYTES, what),
            ciphertext=_hex_field(obj, "ciphertext", 2 * SECRET_BYTES + _TAG_BYTES, what),
            mask_commitment=_hex_field(obj, "mask_commitment", _KEY_BYTES, what),
            self_commitment=_hex_field(obj, "self_commitment", _KEY_BYTES, what),
        )


def share_secrets(keys: ClientKeys, roster: Roster, config: SecAggConfig) -> dict[str, EncryptedShare]:
    """Shamir-shares a client's mask secret and self-mask seed to every roster client (itself included).

    Holder ``v`` gets the shares at x-coordinate :meth:`Roster.share_x` ``(v)``, encrypted with
    ChaCha20-Poly1305 under a key agreed between the two clients' encryption keys.

    Returns:
        Recipient id -> :class:`EncryptedShare`, one per roster client, all sent to the server.

    Raises:
        ConfigError: ``threshold`` exceeds the roster size, or the roster overflows the ring.
        SecAggError: The keys are not in the roster or are for another round.
    """
    _check_keys_in_roster(keys, roster)
    n = len(roster)
    config.check_capacity(n)
    if config.threshold > n:
        raise ConfigError(f"secagg.threshold={config.threshold} exceeds the {n} clients of round {roster.round}")
    mask_shares = Shamir.split(config.threshold, n, keys.mask_secret)
    self_shares = Shamir.split(config.threshold, n, keys.self_seed)
    out: dict[str, EncryptedShare] = {}
    for recipient in roster.clients:
        x = roster.share_x(recipient)
        (mask_x, mask_share), (self_x, self_share) = mask_shares[x - 1], self_shares[x - 1]
        if mask_x != x or self_x != x:  # pycryptodome numbers shares 1..n in order
            raise AssertionError("unexpected Shamir share numbering")
        header = EncryptedShare(
            round=roster.round,
            dealer=keys.client,
            recipient=recipient,
            nonce=get_random_bytes(_NONCE_BYTES),
            ciphertext=bytes(2 * SECRET_BYTES + _TAG_BYTES),
            mask_commitment=_share_commitment("mask", roster.round, keys.client, recipient, x, mask_share),
            self_commitment=_share_commitment("self", roster.round, keys.client, recipient, x, self_share),
        )
        key = _share_key(keys._enc_key, roster[recipient].enc_public, roster.round, keys.client, recipient)
        cipher = ChaCha20_Poly1305.new(key=key, nonce=header.nonce)
        cipher.update(header.associated_data())
        body, tag = cipher.encrypt_and_digest(mask_share + self_share)
        out[recipient] = EncryptedShare(
            round=header.round,
            dealer=header.dealer,
            recipient=recipient,
            nonce=header.nonce,
            ciphertext=body + tag,
            mask_commitment=header.mask_commitment,
            self_commitment=header.self_commitment,
        )
    return out


@dataclass(frozen=True)
class RoutedShares:
    """What the server keeps after routing the share bundles.

    Attributes:
        participants: Dealers whose bundle was accepted, sorted (Bonawitz's ``U_2``). Only they
            take part in masking; everyone else is excluded from the round.
        inbox: Recipient -> the encrypted shares to forward to it.
        commitments: ``(dealer, holder)`` -> ``(mask share commitment, self share commitment)``.
        rejected: Sender -> why its bundle was refused.
    """

    participants: tuple[str, ...]
    inbox: dict[str, list[EncryptedShare]]
    commitments: dict[tuple[str, str], tuple[bytes, bytes]]
    rejected: dict[str, str]


def route_shares(
    bundles: Mapping[str, Sequence[EncryptedShare | bytes]], roster: Roster, config: SecAggConfig
) -> RoutedShares:
    """Checks each sender's share bundle and sorts the shares by recipient (server side).

    A bundle is accepted only whole: exactly one well-formed share for every roster client, all
    naming the sender as dealer and this round. Everything is bounded before it is parsed.

    Args:
        bundles: Sender (as the transport authenticated it) -> its list of shares, as objects or
            bytes.
        roster: The round's roster.
        config: The deployment's parameters.

    Raises:
        SecAggError: ``code="too_few_participants"``: fewer than ``threshold`` bundles accepted.
    """
    n = len(roster)
    rejected: dict[str, str] = {}
    accepted: dict[str, list[EncryptedShare]] = {}
    for sender, bundle in bundles.items():
        if sender not in roster:
            rejected[str(sender)[:64]] = "sent shares but is not in the roster"
            continue
        if not isinstance(bundle, (list, tuple)) or len(bundle) != n:
            rejected[sender] = f"a share bundle must be a list of exactly {n} shares"
            continue
        try:
            shares = [item if isinstance(item, EncryptedShare) else EncryptedShare.from_bytes(item) for item in bundle]
        except SerializationError as exc:
            rejected[sender] = f"malformed share: {exc}"
            continue
        problems = [
            f"share for {share.recipient!r} names dealer {share.dealer!r} and round {share.round}"
            for share in shares
            if share.dealer != sender or share.round != roster.round
        ]
        if not problems and {share.recipient for share in shares} != set(roster.clients):
            problems.append("the shares do not go to each roster client exactly once")
        if problems:
            rejected[sender] = problems[0]
            continue
        accepted[sender] = shares
    participants = tuple(sorted(accepted))
    if len(participants) < config.threshold:
        raise SecAggError(
            "too_few_participants",
            f"only {len(participants)} clients sent valid shares; threshold is {config.threshold}",
        )
    inbox: dict[str, list[EncryptedShare]] = {client: [] for client in roster.clients}
    commitments: dict[tuple[str, str], tuple[bytes, bytes]] = {}
    for dealer in participants:
        for share in accepted[dealer]:
            inbox[share.recipient].append(share)
            commitments[(dealer, share.recipient)] = (share.mask_commitment, share.self_commitment)
    return RoutedShares(participants=participants, inbox=inbox, commitments=commitments, rejected=rejected)


class HeldShares:
    """The shares a client holds after decrypting its inbox; ``repr()`` shows no share.

    Attributes:
        holder: The client.
        round: The round.
        shares: Dealer -> ``(mask_share, self_share)``, 16 bytes each, each checked against its
            commitment.
        rejected: Dealer -> why its share could not be used (bad ciphertext, wrong commitment);
            ``"#i"`` keys the i-th inbox entry when it does not even parse, ``"*"`` an inbox
            longer than the roster.
    """

    __slots__ = ("holder", "rejected", "round", "shares")

    def __init__(
        self, holder: str, round_number: int, shares: dict[str, tuple[bytes, bytes]], rejected: dict[str, str]
    ) -> None:
        self.holder = holder
        self.round = round_number
        self.shares = shares
        self.rejected = rejected

    def __repr__(self) -> str:
        return (
            f"HeldShares(holder={self.holder!r}, round={self.round}, dealers={sorted(self.shares)}, "
            f"rejected={self.rejected})"
        )


def receive_shares(
    keys: ClientKeys,
    roster: Roster,
    inbox: Iterable[EncryptedShare | bytes],
    *,
    participants: Sequence[str] | None = None,
) -> HeldShares:
    """Decrypts and checks the shares the server forwarded to this client.

    A share that does not parse, is not addressed to this client, comes from outside the roster
    (or outside ``participants``), repeats a dealer, fails authentication or does not match its
    commitment is skipped and its dealer recorded in :attr:`HeldShares.rejected`. At most one
    share per roster client is read.
    """
    _check_keys_in_roster(keys, roster)
    allowed = set(roster.clients) if participants is None else set(participants)
    x = roster.share_x(keys.client)
    shares: dict[str, tuple[bytes, bytes]] = {}
    rejected: dict[str, str] = {}
    seen: set[str] = set()
    for count, item in enumerate(inbox):
        if count >= len(roster):
            rejected["*"] = f"inbox holds more than {len(roster)} shares; the rest were ignored"
            break
        try:
            share = item if isinstance(item, EncryptedShare) else EncryptedShare.from_bytes(item)
        except SerializationError as exc:
            rejected[f"#{count}"] = f"malformed share: {exc}"
            continue
        dealer = share.dealer
        if dealer in seen:
            rejected[dealer] = "more than one share from this dealer"
            shares.pop(dealer, None)
            continue
        seen.add(dealer)
        if share.recipient != keys.client or share.round != keys.round:
            rejected[dealer] = "share addressed to another client or round"
        elif dealer not in roster or dealer not in allowed:
            rejected[dealer] = "share from a client that is not a participant"
        else:
            key = _share_key(keys._enc_key, roster[dealer].enc_public, keys.round, dealer, keys.client)
            cipher = ChaCha20_Poly1305.new(key=key, nonce=share.nonce)
            cipher.update(share.associated_data())
            try:
                body, tag = share.ciphertext[: 2 * SECRET_BYTES], share.ciphertext[2 * SECRET_BYTES :]
                plain = cipher.decrypt_and_verify(body, tag)
            except ValueError:
                rejected[dealer] = "share does not decrypt (bad key, tag or header)"
                continue
            mask_share, self_share = plain[:SECRET_BYTES], plain[SECRET_BYTES:]
            if share.mask_commitment != _share_commitment("mask", keys.round, dealer, keys.client, x, mask_share) or (
                share.self_commitment != _share_commitment("self", keys.round, dealer, keys.client, x, self_share)
            ):
                rejected[dealer] = "share does not match its published commitment"
                continue
            shares[dealer] = (mask_share, self_share)
    return HeldShares(keys.client, keys.round, shares, rejected)


# --------------------------------------------------------------------------------------------
# Masking


def mask_update(
    keys: ClientKeys,
    update: torch.Tensor,
    roster: Roster,
    config: SecAggConfig,
    *,
    participants: Sequence[str] | None = None,
) -> torch.Tensor:
    """Encodes and masks a client's update (Bonawitz round 2).

    ``y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)  (mod 2^k)`` over
    the participants ``v != u``, with ``x_u`` = :func:`encode_fixed_point` ``(update)`` and the
    order of :class:`Roster`.

    Args:
        keys: The client's keys for this round.
        update: 1-D float tensor.
        roster: The round's roster.
        config: The deployment's parameters.
        participants: The clients that shared secrets (:attr:`RoutedShares.participants`);
            default every roster client.

    Returns:
        ``int64`` tensor of values in ``[0, 2^ring_bits)``; send it with
        :func:`encode_masked_input`.

    Raises:
        ConfigError: The roster overflows the ring.
        SecAggError: Keys not in the roster, participants invalid, or a bad update.
    """
    _check_keys_in_roster(keys, roster)
    config.check_capacity(len(roster))
    peers = _check_participants(roster, participants, config, must_hold=keys.client)
    masked = encode_fixed_point(update, config).numpy()
    dim = masked.size
    ring_mask = config.ring_mask
    np.add(masked, _self_mask(keys.self_seed, round_number=keys.round, dim=dim, config=config), out=masked)
    np.bitwise_and(masked, ring_mask, out=masked)
    mine = keys.public.mask_public
    for peer in peers:
        if peer == keys.client:
            continue
        theirs = roster[peer].mask_public
        seed = _pairwise_seed(keys._mask_key, roster.mask_point(peer), mine, theirs)
        pad = _expand(seed, round_number=keys.round, label="pair", length=dim, ring_bits=config.ring_bits)
        (np.add if mine < theirs else np.subtract)(masked, pad, out=masked)
        np.bitwise_and(masked, ring_mask, out=masked)
    return torch.from_numpy(masked)


def _check_participants(
    roster: Roster, participants: Sequence[str] | None, config: SecAggConfig, *, must_hold: str | None = None
) -> tuple[str, ...]:
    if participants is None:
        chosen = tuple(roster.clients)
    else:
        chosen = tuple(participants)
        if len(chosen) > len(roster) or len(set(chosen)) != len(chosen) or any(c not in roster for c in chosen):
            raise SecAggError("bad_participants", "participants must be distinct roster clients")
    if must_hold is not None and must_hold not in chosen:
        raise SecAggError("bad_participants", f"{must_hold} is not among the participants", client=must_hold)
    if len(chosen) < config.threshold:
        raise SecAggError("too_few_participants", f"{len(chosen)} participants; threshold is {config.threshold}")
    return chosen


def _masked_header(client: str, round_number: int, dim: int, ring_bits: int) -> bytes:
    return canonical_json(
        {
            "client": client,
            "dim": dim,
            "ring_bits": ring_bits,
            "round": round_number,
            "type": "secagg/masked",
            "v": _VERSION,
        }
    )


def encode_masked_input(masked: torch.Tensor, *, client: str, round_number: int, config: SecAggConfig) -> bytes:
    """The canonical bytes of a masked input.

    Layout: ``b"TCSAMASK"``, the header length as 4-byte big-endian, the canonical JSON header
    ``{"client", "dim", "ring_bits", "round", "type": "secagg/masked", "v": 1}``, then ``dim``
    little-endian words of ``ceil(ring_bits / 8)`` bytes.

    Raises:
        InvalidMaskedInput: ``masked`` is not a 1-D ``int64`` tensor of ring values.
    """
    _check_client(client, "client")
    _check_round(round_number, "round_number")
    _check_ring_tensor(
        masked, config, error=lambda reason: InvalidMaskedInput("malformed_masked_input", reason, client=client)
    )
    header = _masked_header(client, round_number, masked.numel(), config.ring_bits)
    width = config.word_bytes
    words = masked.numpy().astype("<u8").view(np.uint8).reshape(-1, 8)[:, :width]
    return _MAGIC + struct.pack(">I", len(header)) + header + words.tobytes()


def decode_masked_input(data: bytes, *, client: str, round_number: int, dim: int, config: SecAggConfig) -> torch.Tensor:
    """Parses :func:`encode_masked_input` bytes strictly, for an expected sender, round and length.

    The total size is checked against ``dim`` before anything else is read.

    Raises:
        SerializationError: Wrong size, magic, header (not canonical, other client, round, length
            or ring), or a value outside the ring.
    """
    what = f"masked input from {client}"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"{what}: expected bytes, got {type(data).__name__}")
    if not _is_int(dim) or not 1 <= dim <= MAX_DIM:
        raise ValueError(f"dim must be an integer in [1, {MAX_DIM}], got {dim!r}")
    data = bytes(data)
    expected_header = _masked_header(client, round_number, dim, config.ring_bits)
    width = config.word_bytes
    expected_size = len(_MAGIC) + 4 + len(expected_header) + dim * width
    if len(data) != expected_size:
        raise SerializationError(f"{what}: {len(data)} bytes, expected {expected_size} for {dim} values")
    if data[: len(_MAGIC)] != _MAGIC:
        raise SerializationError(f"{what}: bad magic bytes")
    (header_size,) = struct.unpack(">I", data[len(_MAGIC) : len(_MAGIC) + 4])
    if header_size != len(expected_header) or header_size > _MAX_HEADER_BYTES:
        raise SerializationError(f"{what}: header of {header_size} bytes, expected {len(expected_header)}")
    start = len(_MAGIC) + 4
    header = data[start : start + header_size]
    if header != expected_header:
        parse_json_object(header, what=what, max_bytes=_MAX_HEADER_BYTES, max_depth=1)
        raise SerializationError(f"{what}: header does not match (client {client}, round {round_number}, dim {dim})")
    raw = np.frombuffer(data, dtype=np.uint8, offset=start + header_size).reshape(dim, width)
    if width == 8:
        words = raw.reshape(-1).view("<u8")
    else:
        padded = np.zeros((dim, 8), dtype=np.uint8)
        padded[:, :width] = raw
        words = padded.reshape(-1).view("<u8")
    if int(words.max()) > config.ring_mask:
        raise SerializationError(f"{what}: values outside the ring [0, 2^{config.ring_bits})")
    return torch.from_numpy(words.astype(np.int64))


def check_masked_input(
    value: torch.Tensor | bytes, *, client: str, round_number: int, dim: int, config: SecAggConfig
) -> torch.Tensor:
    """Validates one masked input, given as a tensor or as :func:`encode_masked_input` bytes.

    Returns:
        The ``int64`` tensor.

    Raises:
        InvalidMaskedInput: With the reason; ``client`` names the sender.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return decode_masked_input(value, client=client, round_number=round_number, dim=dim, config=config)
        except SerializationError as exc:
            raise InvalidMaskedInput("malformed_masked_input", str(exc), client=client) from None
    return _check_ring_tensor(
        value,
        config,
        dim=dim,
        error=lambda reason: InvalidMaskedInput(
            "malformed_masked_input", f"masked input from {client}: {reason}", client=client
        ),
    )


# --------------------------------------------------------------------------------------------
# Unmasking


@dataclass(frozen=True)
class RevealRequest:
    """The server's call for shares (Bonawitz round 3): who survived and who dropped.

    Both lists are sorted client ids and disjoint: no client's self-mask seed and mask secret are
    ever asked for together.

    Raises:
        SecAggError: ``code="bad_request"``: the lists overlap, repeat or are unsorted.
    """

    round: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_round(self.round, "RevealRequest.round")
        for name in ("survivors", "dropped"):
            clients = tuple(getattr(self, name))
            object.__setattr__(self, name, clients)
            if len(clients) > MAX_CLIENTS:
                raise SecAggError("bad_request", f"{name}: more than {MAX_CLIENTS} clients")
            for client in clients:
                _check_client(client, f"RevealRequest.{name}")
            if list(clients) != sorted(set(clients)):
                raise SecAggError("bad_request", f"{name} must be sorted and unique")
        overlap = set(self.survivors) & set(self.dropped)
        if overlap:
            raise SecAggError("bad_request", f"clients both surviving and dropped: {sorted(overlap)[:5]}")

    def to_bytes(self) -> bytes:
        """The canonical JSON encoding."""
        return canonical_json(
            {
                "dropped": list(self.dropped),
                "round": self.round,
                "survivors": list(self.survivors),
                "type": "secagg/request",
                "v": _VERSION,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RevealRequest:
        """Parses :meth:`to_bytes` output strictly.

        Raises:
            SerializationError: Oversized, not canonical, wrong fields or client lists.
            SecAggError: ``code="bad_request"``: the lists overlap.
        """
        what = "secagg reveal request"
        obj = _parse_message(
            data,
            what=what,
            kind="secagg/request",
            keys={"dropped", "round", "survivors"},
            max_bytes=256 + 80 * MAX_CLIENTS,
        )
        return cls(
            round=_check_round(obj["round"], what),
            survivors=_client_list(obj["survivors"], f"{what}: survivors"),
            dropped=_client_list(obj["dropped"], f"{what}: dropped"),
        )


@dataclass(frozen=True)
class RevealedShares:
    """A survivor's answer to a :class:`RevealRequest`.

    Attributes:
        round: The round.
        holder: The survivor revealing.
        self_shares: Survivor -> this holder's share of its self-mask seed (16 bytes).
        mask_shares: Dropped client -> this holder's share of its mask secret (16 bytes).
    """

    round: int
    holder: str
    self_shares: dict[str, bytes]
    mask_shares: dict[str, bytes]

    def __post_init__(self) -> None:
        _check_round(self.round, "RevealedShares.round")
        _check_client(self.holder, "RevealedShares.holder")
        for name in ("self_shares", "mask_shares"):
            shares = getattr(self, name)
            if not isinstance(shares, dict) or len(shares) > MAX_CLIENTS:
                raise SerializationError(f"RevealedShares.{name}: expected a dict of at most {MAX_CLIENTS} shares")
            for client, share in shares.items():
                _check_client(client, f"RevealedShares.{name}")
                _check_bytes(share, SECRET_BYTES, f"RevealedShares.{name}[{client}]")

    def to_bytes(self) -> bytes:
        """The canonical JSON encoding."""
        return canonical_json(
            {
                "holder": self.holder,
                "mask_shares": {client: share.hex() for client, share in self.mask_shares.items()},
                "round": self.round,
                "self_shares": {client: share.hex() for client, share in self.self_shares.items()},
                "type": "secagg/reveal",
                "v": _VERSION,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RevealedShares:
        """Parses :meth:`to_bytes` output strictly.

        Raises:
            SerializationError: Oversized, not canonical, wrong fields, client ids or share hex.
        """
        what = "secagg revealed shares"
        obj = _parse_message(
            data,
            what=what,
            kind="secagg/reveal",
            keys={"holder", "mask_shares", "round", "self_shares"},
            max_bytes=256 + 112 * MAX_CLIENTS,
        )
        parsed: dict[str, dict[str, bytes]] = {}
        for name in ("self_shares", "mask_shares"):
            value = obj[name]
            if not isinstance(value, dict) or len(value) > MAX_CLIENTS:
                raise SerializationError(f"{what}: {name} must be an object of at most {MAX_CLIENTS} shares")
            parsed[name] = {
                _check_client(client, what): _hex_field(value, client, SECRET_BYTES, what) for client in value
            }
        return cls(
            round=_check_round(obj["round"], what),
            holder=_check_client(obj["holder"], what),
            self_shares=parsed["self_shares"],
            mask_shares=parsed["mask_shares"],
        )


@dataclass(frozen=True)
class CollectedInputs:
    """The server's view after collecting masked inputs.

    Attributes:
        request: Survivors (valid masked input) and dropped participants; send it to the survivors.
        inputs: Survivor -> its masked input (``int64``).
        rejected: Sender -> why its masked input was refused (it counts as dropped).
        dim: The update length.
    """

    request: RevealRequest
    inputs: dict[str, torch.Tensor]
    rejected: dict[str, str]
    dim: int


def collect_masked_inputs(
    roster: Roster,
    routed: RoutedShares,
    masked: Mapping[str, torch.Tensor | bytes],
    *,
    dim: int,
    config: SecAggConfig,
) -> CollectedInputs:
    """Checks the masked inputs and decides survivors and dropped clients (server side).

    A participant whose masked input is missing is dropped; one whose input is malformed is
    dropped and its reason recorded. Inputs from non-participants are refused.

    Raises:
        SecAggError: ``code="too_few_survivors"``: fewer than ``threshold`` valid inputs.
    """
    if not _is_int(dim) or not 1 <= dim <= MAX_DIM:
        raise ValueError(f"dim must be an integer in [1, {MAX_DIM}], got {dim!r}")
    participants = _check_participants(roster, routed.participants, config)
    rejected: dict[str, str] = {}
    inputs: dict[str, torch.Tensor] = {}
    for sender, value in masked.items():
        if sender not in participants:
            rejected[str(sender)[:64]] = "sent a masked input but is not a participant"
            continue
        try:
            inputs[sender] = check_masked_input(value, client=sender, round_number=roster.round, dim=dim, config=config)
        except InvalidMaskedInput as exc:
            rejected[sender] = exc.reason
    survivors = tuple(sorted(inputs))
    dropped = tuple(sorted(set(participants) - set(inputs)))
    if len(survivors) < config.threshold:
        raise SecAggError(
            "too_few_survivors", f"only {len(survivors)} valid masked inputs; threshold is {config.threshold}"
        )
    return CollectedInputs(
        request=RevealRequest(round=roster.round, survivors=survivors, dropped=dropped),
        inputs=inputs,
        rejected=rejected,
        dim=dim,
    )


def reveal_shares(
    keys: ClientKeys, held: HeldShares, request: RevealRequest | bytes, roster: Roster, config: SecAggConfig
) -> RevealedShares:
    """A survivor's answer: its shares of every survivor's self-mask seed and every dropped client's mask secret.

    Raises:
        SecAggError: The request is for another round, does not list this client as a survivor,
            names clients outside the roster, or lists fewer than ``threshold`` survivors
            (``code="bad_request"``); the keys are not in the roster.
        SerializationError: ``request`` bytes are malformed.
    """
    _check_keys_in_roster(keys, roster)
    if isinstance(request, (bytes, bytearray, memoryview)):
        request = RevealRequest.from_bytes(bytes(request))
    if request.round != keys.round or held.round != keys.round or held.holder != keys.client:
        reason = "the request or held shares are for another round or client"
        raise SecAggError("wrong_round", reason, client=keys.client)
    if keys.client not in request.survivors:
        raise SecAggError("bad_request", f"{keys.client} is not listed as a survivor", client=keys.client)
    if any(client not in roster for client in request.survivors + request.dropped):
        raise SecAggError("bad_request", "the request names clients outside the roster")
    if len(request.survivors) < config.threshold:
        raise SecAggError("bad_request", f"only {len(request.survivors)} survivors; threshold is {config.threshold}")
    return RevealedShares(
        round=keys.round,
        holder=keys.client,
        self_shares={u: held.shares[u][1] for u in request.survivors if u in held.shares},
        mask_shares={v: held.shares[v][0] for v in request.dropped if v in held.shares},
    )


@dataclass(frozen=True)
class UnmaskResult:
    """The outcome of a round.

    Attributes:
        sum: Decoded float64 sum of the survivors' clipped, quantized updates.
        ring_sum: The same sum in the ring (``int64``), bit-exact.
        survivors: Clients whose updates are in the sum.
        dropped: Participants whose masks were removed via their shares (dropouts and rejected
            masked inputs).
        excluded: Roster clients that did not take part (no valid share bundle).
        rejected: Client -> why a message of it was refused (share bundle, masked input or
            revealed shares); a survivor listed here for bad shares is still in the sum.
    """

    sum: torch.Tensor
    ring_sum: torch.Tensor
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    excluded: tuple[str, ...]
    rejected: dict[str, str] = field(default_factory=dict)


def _note(rejected: dict[str, str], client: str, reason: str) -> None:
    rejected[client] = f"{rejected[client]}; {reason}" if client in rejected else reason


def unmask_sum(
    collected: CollectedInputs,
    reveals: Mapping[str, RevealedShares | bytes],
    roster: Roster,
    routed: RoutedShares,
    config: SecAggConfig,
) -> UnmaskResult:
    """Rebuilds the self-mask seeds of survivors and the mask keys of dropped clients, and unmasks the sum.

    Each revealed share is checked against the commitment its dealer published; a holder with a
    share that does not match (or a malformed or unrequested reveal) is recorded in
    :attr:`UnmaskResult.rejected` and none of its shares are used. Each secret is rebuilt from
    the ``threshold`` verified shares with the smallest x-coordinates and checked against the
    dealer's commitment.

    Args:
        collected: From :func:`collect_masked_inputs`.
        reveals: Sender (as the transport authenticated it) -> its :class:`RevealedShares`.
        roster: The round's roster.
        routed: From :func:`route_shares` (holds the share commitments).
        config: The deployment's parameters.

    Raises:
        ReconstructionError: A secret has fewer than ``threshold`` verified shares, or its
            verified shares rebuild a secret its dealer's commitment refuses; never a wrong sum.
        SecAggError: ``collected`` does not fit the roster (round, participants, inputs).
    """
    request = collected.request
    round_number = roster.round
    survivors, dropped = request.survivors, request.dropped
    if request.round != round_number:
        raise SecAggError("wrong_round", f"request for round {request.round}, roster for round {round_number}")
    if set(survivors) | set(dropped) != set(routed.participants):
        raise SecAggError("bad_request", "survivors and dropped clients must be exactly the participants")
    if set(collected.inputs) != set(survivors):
        raise SecAggError("bad_request", "there must be one masked input per survivor")
    if len(survivors) < config.threshold:
        raise SecAggError("too_few_survivors", f"only {len(survivors)} survivors; threshold is {config.threshold}")
    dim = collected.dim
    inputs = {
        client: check_masked_input(
            collected.inputs[client], client=client, round_number=round_number, dim=dim, config=config
        )
        for client in survivors
    }
    rejected = {**routed.rejected}
    for client, reason in collected.rejected.items():
        _note(rejected, client, reason)

    # Verify every revealed share against its dealer's commitment; pool the good ones.
    self_pool: dict[str, list[tuple[int, bytes]]] = {u: [] for u in survivors}
    mask_pool: dict[str, list[tuple[int, bytes]]] = {v: [] for v in dropped}
    survivor_set, dropped_set = set(survivors), set(dropped)
    for sender, reveal in reveals.items():
        if sender not in survivor_set:
            _note(rejected, str(sender)[:64], "revealed shares but is not a survivor")
            continue
        try:
            message = reveal if isinstance(reveal, RevealedShares) else RevealedShares.from_bytes(reveal)
        except SerializationError as exc:
            _note(rejected, sender, f"malformed revealed shares: {exc}")
            continue
        if message.holder != sender or message.round != round_number:
            _note(rejected, sender, "revealed shares name another holder or round")
            continue
        if not set(message.self_shares) <= survivor_set or not set(message.mask_shares) <= dropped_set:
            _note(rejected, sender, "revealed shares that were not requested")
            continue
        x = roster.share_x(sender)
        problem = None
        for kind, shares, slot in (("self", message.self_shares, 1), ("mask", message.mask_shares, 0)):
            for dealer, share in shares.items():
                commitment = routed.commitments.get((dealer, sender))
                if commitment is None:
                    problem = f"revealed a share of {dealer} that was never dealt to it"
                elif _share_commitment(kind, round_number, dealer, sender, x, share) != commitment[slot]:
                    what = "self-mask seed" if kind == "self" else "mask secret"
                    problem = f"wrong share of {dealer}'s {what} (does not match the dealer's commitment)"
                if problem:
                    break
            if problem:
                break
        if problem:
            _note(rejected, sender, problem)
            continue
        for dealer, share in message.self_shares.items():
            self_pool[dealer].append((x, share))
        for dealer, share in message.mask_shares.items():
            mask_pool[dealer].append((x, share))

    self_seeds = {u: _reconstruct(u, "self-mask seed", self_pool[u], config) for u in survivors}
    for u, seed in self_seeds.items():
        if _self_commitment(round_number, u, seed) != roster[u].self_commitment:
            reason = f"the shares of {u}'s self-mask seed do not rebuild its committed seed; {u} dealt bad shares"
            raise ReconstructionError("inconsistent_shares", reason, client=u)
    mask_keys: dict[str, ECC.EccKey] = {}
    for v in dropped:
        secret = _reconstruct(v, "mask secret", mask_pool[v], config)
        key = _derive_mask_key(secret, v, round_number)
        if _raw_public(key) != roster[v].mask_public:
            reason = f"the shares of {v}'s mask secret do not rebuild its mask key; {v} dealt bad shares"
            raise ReconstructionError("inconsistent_shares", reason, client=v)
        mask_keys[v] = key

    ring_mask = config.ring_mask
    total = np.zeros(dim, dtype=np.int64)
    for u in survivors:
        np.add(total, inputs[u].numpy(), out=total)
        np.bitwise_and(total, ring_mask, out=total)
    for u in survivors:
        np.subtract(total, _self_mask(self_seeds[u], round_number=round_number, dim=dim, config=config), out=total)
        np.bitwise_and(total, ring_mask, out=total)
    for v in dropped:
        theirs = roster[v].mask_public
        for u in survivors:
            mine = roster[u].mask_public
            seed = _pairwise_seed(mask_keys[v], roster.mask_point(u), mine, theirs)
            pad = _expand(seed, round_number=round_number, label="pair", length=dim, ring_bits=config.ring_bits)
            # u added +pad if it comes before v, -pad otherwise; take that back out.
            (np.subtract if mine < theirs else np.add)(total, pad, out=total)
            np.bitwise_and(total, ring_mask, out=total)
    excluded = tuple(sorted(set(roster.clients) - set(routed.participants)))
    ring_sum = torch.from_numpy(total)
    return UnmaskResult(
        sum=decode_fixed_point(ring_sum, config),
        ring_sum=ring_sum,
        survivors=survivors,
        dropped=dropped,
        excluded=excluded,
        rejected=rejected,
    )


def _reconstruct(dealer: str, what: str, shares: list[tuple[int, bytes]], config: SecAggConfig) -> bytes:
    if len(shares) < config.threshold:
        raise ReconstructionError(
            "not_enough_shares",
            f"{len(shares)} verified shares of {dealer}'s {what}; {config.threshold} are needed",
            client=dealer,
        )
    chosen = sorted(shares)[: config.threshold]
    return Shamir.combine(chosen)
