"""Hashes and signatures: SHA-256 and Ed25519.

Ed25519 is the signature scheme of Bernstein, Duif, Lange, Schwabe and Yang (2012), "High-speed
high-security signatures", as specified by RFC 8032 (Josefsson and Liusvaara, 2017). Keys and
signatures travel as lowercase hex of their RFC 8032 encodings: 32 bytes for a public key,
64 bytes for a signature. The signature code is pycryptodome's; SHA-256 is the standard
library's (:mod:`hashlib`), which is the same function and much faster in the mining loop.
"""

from __future__ import annotations

import hashlib
import re

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from torchchain.errors import SerializationError

__all__ = ["SigningKey", "sha256_hex", "verify_signature"]

_PUBLIC_KEY_RE = re.compile(r"[0-9a-f]{64}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{128}")
_SEED_BYTES = 32


def sha256_hex(data: bytes) -> str:
    """Returns the SHA-256 digest of ``data`` as 64 lowercase hex characters."""
    return hashlib.sha256(data).hexdigest()


class SigningKey:
    """An Ed25519 private key: signs messages, exports its public key and itself.

    Build one with :meth:`generate`, :meth:`from_seed_material` or :meth:`from_pem`.
    ``repr()`` shows the public key only, so a key never leaks into logs.
    """

    __slots__ = ("_key", "_public_key")

    def __init__(self, key: ECC.EccKey) -> None:
        if key.curve != "Ed25519" or not key.has_private():
            raise ValueError("SigningKey needs an Ed25519 private key")
        self._key = key
        self._public_key = key.public_key().export_key(format="raw").hex()

    @classmethod
    def generate(cls, seed: bytes | None = None) -> SigningKey:
        """Makes a key, deterministic when a seed is given.

        Args:
            seed: Exactly 32 bytes (the RFC 8032 private key); the same seed always gives the
                same key. ``None`` draws a fresh random key.

        Raises:
            ValueError: ``seed`` is not 32 bytes.
        """
        if seed is None:
            return cls(ECC.generate(curve="Ed25519"))
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != _SEED_BYTES:
            raise ValueError(f"an Ed25519 seed must be exactly {_SEED_BYTES} bytes")
        return cls(ECC.construct(curve="Ed25519", seed=bytes(seed)))

    @classmethod
    def from_seed_material(cls, material: str) -> SigningKey:
        """Derives a key from a string, e.g. ``"torchchain/client/3/seed=0"``.

        The seed is the SHA-256 of the UTF-8 string, so a simulation can give every client a
        stable key from its run seed. Anyone who knows the string can sign as that key: use it
        for simulations, not for keys that guard anything.
        """
        return cls.generate(hashlib.sha256(material.encode("utf-8")).digest())

    @classmethod
    def from_pem(cls, pem: str) -> SigningKey:
        """Loads a key written by :meth:`to_pem`.

        Raises:
            SerializationError: ``pem`` is not a PKCS#8 PEM Ed25519 private key.
        """
        try:
            key = ECC.import_key(pem)
        except (ValueError, TypeError, IndexError) as exc:
            raise SerializationError(f"not a PEM private key: {exc}") from None
        if key.curve != "Ed25519" or not key.has_private():
            raise SerializationError("the PEM does not hold an Ed25519 private key")
        return cls(key)

    def to_pem(self) -> str:
        """Exports the private key as PKCS#8 PEM text (keep it secret)."""
        return self._key.export_key(format="PEM")

    @property
    def public_key(self) -> str:
        """The public key: lowercase hex of its 32-byte RFC 8032 encoding."""
        return self._public_key

    def sign(self, message: bytes) -> str:
        """Signs ``message`` (pure Ed25519, no context) and returns the 64-byte signature as hex."""
        return eddsa.new(self._key, "rfc8032").sign(message).hex()

    def __repr__(self) -> str:
        return f"SigningKey(public_key={self._public_key!r})"


def verify_signature(public_key: str, message: bytes, signature: str) -> bool:
    """Checks an Ed25519 signature.

    Never raises: a public key or signature that is not lowercase hex of the right length, or
    that does not decode to a curve point, simply does not verify.

    Args:
        public_key: 64 lowercase hex characters (see :attr:`SigningKey.public_key`).
        message: The signed bytes.
        signature: 128 lowercase hex characters (see :meth:`SigningKey.sign`).

    Returns:
        ``True`` if and only if the signature is valid for ``message`` under ``public_key``.
    """
    if not isinstance(public_key, str) or not isinstance(signature, str):
        return False
    if not _PUBLIC_KEY_RE.fullmatch(public_key) or not _SIGNATURE_RE.fullmatch(signature):
        return False
    if not isinstance(message, (bytes, bytearray, memoryview)):
        return False
    try:
        key = eddsa.import_public_key(bytes.fromhex(public_key))
        eddsa.new(key, "rfc8032").verify(bytes(message), bytes.fromhex(signature))
    except (ValueError, TypeError):
        return False
    return True
