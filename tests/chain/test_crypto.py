from __future__ import annotations

import hashlib

import pytest

from torchchain.chain.crypto import SigningKey, sha256_hex, verify_signature
from torchchain.errors import SerializationError

# RFC 8032, section 7.1, TEST 1 and TEST 2.
RFC_SEED_1 = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC_1 = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC_SIGNATURE_1 = (
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
RFC_SEED_2 = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
RFC_PUBLIC_2 = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
RFC_SIGNATURE_2 = (
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


def test_sha256_hex_matches_the_standard_digest() -> None:
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(
    ("seed", "public", "message", "signature"),
    [(RFC_SEED_1, RFC_PUBLIC_1, b"", RFC_SIGNATURE_1), (RFC_SEED_2, RFC_PUBLIC_2, b"\x72", RFC_SIGNATURE_2)],
)
def test_keys_and_signatures_match_rfc8032_vectors(seed: bytes, public: str, message: bytes, signature: str) -> None:
    key = SigningKey.generate(seed)
    assert key.public_key == public
    assert key.sign(message) == signature
    assert verify_signature(public, message, signature)


def test_generate_is_deterministic_given_a_seed() -> None:
    assert SigningKey.generate(b"\x01" * 32).public_key == SigningKey.generate(b"\x01" * 32).public_key
    assert SigningKey.generate(b"\x01" * 32).public_key != SigningKey.generate(b"\x02" * 32).public_key


def test_generate_without_seed_gives_fresh_keys() -> None:
    assert SigningKey.generate().public_key != SigningKey.generate().public_key


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33, "0" * 32])
def test_generate_refuses_a_seed_that_is_not_32_bytes(seed: object) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SigningKey.generate(seed)  # type: ignore[arg-type]


def test_from_seed_material_hashes_the_string_into_the_seed() -> None:
    material = "torchchain/client/3/seed=0"
    key = SigningKey.from_seed_material(material)
    assert key.public_key == SigningKey.generate(hashlib.sha256(material.encode()).digest()).public_key
    assert key.public_key != SigningKey.from_seed_material("torchchain/client/3/seed=1").public_key


def test_sign_and_verify() -> None:
    key = SigningKey.from_seed_material("signer")
    signature = key.sign(b"update 1")
    assert len(signature) == 128
    assert verify_signature(key.public_key, b"update 1", signature)
    assert not verify_signature(key.public_key, b"update 2", signature)
    other = SigningKey.from_seed_material("someone else")
    assert not verify_signature(other.public_key, b"update 1", signature)


def test_pem_round_trip_keeps_the_key() -> None:
    key = SigningKey.from_seed_material("resume me")
    pem = key.to_pem()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    loaded = SigningKey.from_pem(pem)
    assert loaded.public_key == key.public_key
    assert loaded.sign(b"m") == key.sign(b"m")


@pytest.mark.parametrize("pem", ["", "not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_from_pem_refuses_garbage(pem: str) -> None:
    with pytest.raises(SerializationError):
        SigningKey.from_pem(pem)


def test_from_pem_refuses_a_public_key() -> None:
    from Crypto.PublicKey import ECC

    public_pem = ECC.generate(curve="Ed25519").public_key().export_key(format="PEM")
    with pytest.raises(SerializationError, match="private key"):
        SigningKey.from_pem(public_pem)


def test_repr_does_not_show_the_private_key() -> None:
    key = SigningKey.generate(RFC_SEED_1)
    assert RFC_PUBLIC_1 in repr(key)
    assert RFC_SEED_1.hex() not in repr(key)


_SIGNATURE = SigningKey.generate(RFC_SEED_1).sign(b"m")


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        ("", _SIGNATURE),
        ("zz" * 32, _SIGNATURE),
        (RFC_PUBLIC_1[:-2], _SIGNATURE),
        (RFC_PUBLIC_1 + "00", _SIGNATURE),
        (RFC_PUBLIC_1.upper(), _SIGNATURE),
        (" " + RFC_PUBLIC_1[1:], _SIGNATURE),
        ("ff" * 32, _SIGNATURE),  # y >= p: not a valid point encoding
        (None, _SIGNATURE),
        (bytes.fromhex(RFC_PUBLIC_1), _SIGNATURE),
        (RFC_PUBLIC_1, ""),
        (RFC_PUBLIC_1, _SIGNATURE[:-2]),
        (RFC_PUBLIC_1, _SIGNATURE + "00"),
        (RFC_PUBLIC_1, "g" * 128),
        (RFC_PUBLIC_1, "ff" * 64),  # S larger than the group order
        (RFC_PUBLIC_1, None),
        (RFC_PUBLIC_1, 12),
    ],
)
def test_verify_signature_returns_false_on_garbage(public_key: object, signature: object) -> None:
    assert verify_signature(public_key, b"m", signature) is False  # type: ignore[arg-type]


def test_verify_signature_returns_false_on_a_non_bytes_message() -> None:
    assert verify_signature(RFC_PUBLIC_1, "m", _SIGNATURE) is False  # type: ignore[arg-type]
    assert verify_signature(RFC_PUBLIC_1, b"m", _SIGNATURE) is True
