"""Secure aggregation (Bonawitz et al. 2017): masks cancel, dropouts recover, bad input is refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from Crypto.Protocol.SecretSharing import Shamir

from torchchain.errors import ConfigError, SerializationError, TorchchainError
from torchchain.privacy import secagg
from torchchain.privacy.secagg import (
    ClientKeys,
    EncryptedShare,
    InvalidMaskedInput,
    PublicKeys,
    ReconstructionError,
    RevealedShares,
    RevealRequest,
    Roster,
    SecAggConfig,
    SecAggError,
    check_masked_input,
    collect_masked_inputs,
    decode_fixed_point,
    decode_masked_input,
    encode_fixed_point,
    encode_masked_input,
    expand_mask,
    mask_update,
    quantization_error_bound,
    receive_shares,
    reveal_shares,
    route_shares,
    self_mask,
    setup_client,
    share_secrets,
    unmask_sum,
)

N = 10
T = 6
DIM = 257
ROUND = 7
CONFIG = SecAggConfig(threshold=T, clip=1.0, frac_bits=16, ring_bits=32)


def make_keys(n: int = N, round_number: int = ROUND, salt: bytes = b"") -> list[ClientKeys]:
    return [setup_client(f"c{i:02d}", round_number, seed=bytes([i]) * 16 + salt) for i in range(n)]


def make_updates(keys: list[ClientKeys], dim: int = DIM, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k.client: torch.rand(dim, generator=generator, dtype=torch.float64) * 2.4 - 1.2 for k in keys}


class Round:
    """One round driven through the public API, with hooks to tamper with each step."""

    def __init__(self, n: int = N, config: SecAggConfig = CONFIG, dim: int = DIM, round_number: int = ROUND) -> None:
        self.config = config
        self.dim = dim
        self.keys = make_keys(n, round_number)
        self.by_client = {k.client: k for k in self.keys}
        self.roster = Roster([k.public for k in self.keys], round_number=round_number)
        self.updates = make_updates(self.keys, dim)
        bundles = {k.client: list(share_secrets(k, self.roster, config).values()) for k in self.keys}
        self.routed = route_shares(bundles, self.roster, config)
        self.held = {
            k.client: receive_shares(k, self.roster, self.routed.inbox[k.client], participants=self.routed.participants)
            for k in self.keys
        }
        self.masked = {
            k.client: mask_update(k, self.updates[k.client], self.roster, config, participants=self.routed.participants)
            for k in self.keys
        }

    def collect(self, drop: tuple[str, ...] = (), replace: dict | None = None) -> secagg.CollectedInputs:
        sent: dict = {c: y for c, y in self.masked.items() if c not in drop}
        sent.update(replace or {})
        return collect_masked_inputs(self.roster, self.routed, sent, dim=self.dim, config=self.config)

    def reveals(
        self, collected: secagg.CollectedInputs, only: tuple[str, ...] | None = None
    ) -> dict[str, RevealedShares]:
        holders = collected.request.survivors if only is None else only
        request, roster, config = collected.request, self.roster, self.config
        return {h: reveal_shares(self.by_client[h], self.held[h], request, roster, config) for h in holders}

    def ring_sum(self, clients) -> torch.Tensor:
        total = torch.zeros(self.dim, dtype=torch.int64)
        for c in clients:
            total = (total + encode_fixed_point(self.updates[c], self.config)) & self.config.ring_mask
        return total


@pytest.fixture(scope="module")
def rnd() -> Round:
    return Round()


# ---------------------------------------------------------------------------- masks and sums


def test_masks_cancel_exactly(rnd: Round) -> None:
    mask = CONFIG.ring_mask
    total = torch.zeros(DIM, dtype=torch.int64)
    for k in rnd.keys:
        y = rnd.masked[k.client]
        assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= mask
        # A masked input alone looks nothing like the encoded update.
        assert not torch.equal(y, encode_fixed_point(rnd.updates[k.client], CONFIG))
        total = (total + y - self_mask(k.self_seed, round_number=ROUND, dim=DIM, config=CONFIG)) & mask
    assert torch.equal(total, rnd.ring_sum(rnd.roster.clients))


def test_full_round_sum_bit_exact_and_within_quantization_bound(rnd: Round) -> None:
    collected = rnd.collect()
    result = unmask_sum(collected, rnd.reveals(collected), rnd.roster, rnd.routed, CONFIG)
    assert result.dropped == () and result.rejected == {} and len(result.survivors) == N
    assert torch.equal(result.ring_sum, rnd.ring_sum(rnd.roster.clients))
    clipped = sum(u.clamp(-CONFIG.clip, CONFIG.clip) for u in rnd.updates.values())
    bound = quantization_error_bound(N, CONFIG)
    assert bound == N * 2.0**-17
    error = (result.sum - clipped).abs().max().item()
    assert error <= bound + 1e-12
    assert error > bound / 100  # the quantization is really at 2^-16 resolution, not finer
    # Clipping happened: some inputs were outside [-1, 1] and the unclipped sum is far off.
    assert (result.sum - sum(rnd.updates.values())).abs().max().item() > 10 * bound


def test_fixed_point_round_trip_and_rounding() -> None:
    config = SecAggConfig(threshold=2, clip=2.0, frac_bits=4, ring_bits=16)
    x = torch.tensor([0.0, 1.0, -1.0, 0.03125, -0.03125, 0.09375, 5.0, -7.0, 1.96875], dtype=torch.float64)
    ring = encode_fixed_point(x, config)
    assert int(ring.min()) >= 0 and int(ring.max()) < 2**16
    # 0.03125 * 16 = 0.5 rounds to 0 (half to even), 0.09375 * 16 = 1.5 rounds to 2; clip at +-2.
    expected = torch.tensor([0.0, 1.0, -1.0, 0.0, -0.0, 0.125, 2.0, -2.0, 2.0], dtype=torch.float64)
    assert torch.equal(decode_fixed_point(ring, config), expected)
    assert torch.equal(encode_fixed_point(x.to(torch.float32), config), ring)
    with pytest.raises(SecAggError) as info:
        encode_fixed_point(torch.tensor([1.0, float("nan")]), config)
    assert info.value.code == "bad_update"
    with pytest.raises(SecAggError):
        encode_fixed_point(torch.ones(2, 2), config)
    with pytest.raises(SecAggError):
        encode_fixed_point(torch.ones(3, dtype=torch.int64), config)


# ---------------------------------------------------------------------------- dropouts


def test_dropped_clients_masks_recovered_from_shares(rnd: Round) -> None:
    dropped = ("c01", "c04", "c08")  # 30 %
    collected = rnd.collect(drop=dropped)
    assert collected.request.dropped == dropped
    reveals = rnd.reveals(collected)
    assert all(set(r.mask_shares) == set(dropped) for r in reveals.values())
    assert all(set(r.self_shares) == set(collected.request.survivors) for r in reveals.values())
    result = unmask_sum(collected, reveals, rnd.roster, rnd.routed, CONFIG)
    survivors = tuple(c for c in sorted(rnd.by_client) if c not in dropped)
    assert result.survivors == survivors and result.dropped == dropped
    assert torch.equal(result.ring_sum, rnd.ring_sum(survivors))
    # Without removing the dropped clients' pairwise masks the sum would be garbage.
    naive = torch.zeros(DIM, dtype=torch.int64)
    for c in survivors:
        own = self_mask(rnd.by_client[c].self_seed, round_number=ROUND, dim=DIM, config=CONFIG)
        naive = (naive + rnd.masked[c] - own) & CONFIG.ring_mask
    assert not torch.equal(naive, result.ring_sum)


def test_fewer_than_threshold_shares_fail_loudly(rnd: Round) -> None:
    collected = rnd.collect(drop=("c01", "c04", "c08"))
    reveals = rnd.reveals(collected, only=collected.request.survivors[: T - 1])
    with pytest.raises(ReconstructionError) as info:
        unmask_sum(collected, reveals, rnd.roster, rnd.routed, CONFIG)
    assert info.value.code == "not_enough_shares"
    assert info.value.client in rnd.by_client
    assert isinstance(info.value, TorchchainError)
    # Why the check is needed: Shamir.combine returns a wrong secret, silently, from t-1 shares.
    secret = b"0123456789abcdef"
    assert Shamir.combine(Shamir.split(T, N, secret)[: T - 1]) != secret


def test_too_few_survivors_refused(rnd: Round) -> None:
    with pytest.raises(SecAggError) as info:
        rnd.collect(drop=tuple(sorted(rnd.by_client))[: N - T + 1])
    assert info.value.code == "too_few_survivors"
    request = RevealRequest(round=ROUND, survivors=("c00", "c01"), dropped=("c02",))
    with pytest.raises(SecAggError) as info:
        reveal_shares(rnd.by_client["c00"], rnd.held["c00"], request, rnd.roster, CONFIG)
    assert info.value.code == "bad_request"


def test_request_never_asks_for_both_secrets_of_one_client(rnd: Round) -> None:
    with pytest.raises(SecAggError) as info:
        RevealRequest(round=ROUND, survivors=("c00", "c01"), dropped=("c01",))
    assert info.value.code == "bad_request"
    # And a survivor refuses a request that does not list it.
    survivors = tuple(sorted(rnd.by_client))[1:]
    request = RevealRequest(round=ROUND, survivors=survivors, dropped=("c00",))
    with pytest.raises(SecAggError):
        reveal_shares(rnd.by_client["c00"], rnd.held["c00"], request, rnd.roster, CONFIG)


# ---------------------------------------------------------------------------- bad shares


def tamper(reveal: RevealedShares, dealer: str, kind: str = "self_shares") -> RevealedShares:
    shares = dict(getattr(reveal, kind))
    shares[dealer] = bytes(b ^ 0x01 for b in shares[dealer])
    return dataclasses.replace(reveal, **{kind: shares})


def test_wrong_shares_identified_and_round_completes(rnd: Round) -> None:
    dropped = ("c07",)
    collected = rnd.collect(drop=dropped)  # 9 survivors; 3 liars leave 6 = threshold honest
    reveals = rnd.reveals(collected)
    reveals["c00"] = tamper(reveals["c00"], "c05")
    reveals["c02"] = tamper(reveals["c02"], "c07", kind="mask_shares")
    reveals["c09"] = tamper(reveals["c09"], "c09").to_bytes()  # as bytes from the wire
    result = unmask_sum(collected, reveals, rnd.roster, rnd.routed, CONFIG)
    assert set(result.rejected) == {"c00", "c02", "c09"}
    assert "wrong share of c05's self-mask seed" in result.rejected["c00"]
    assert "wrong share of c07's mask secret" in result.rejected["c02"]
    assert "c09's self-mask seed" in result.rejected["c09"]
    # The liars are survivors: their own updates still count.
    assert "c00" in result.survivors and result.dropped == dropped
    assert torch.equal(result.ring_sum, rnd.ring_sum(result.survivors))


def test_wrong_shares_below_threshold_fail(rnd: Round) -> None:
    collected = rnd.collect(drop=("c03", "c07"))  # 8 survivors, threshold 6
    reveals = rnd.reveals(collected)
    for holder in ("c00", "c01", "c02"):
        reveals[holder] = tamper(reveals[holder], "c05")
    with pytest.raises(ReconstructionError) as info:
        unmask_sum(collected, reveals, rnd.roster, rnd.routed, CONFIG)
    assert info.value.code == "not_enough_shares"


def test_unrequested_or_foreign_reveals_rejected(rnd: Round) -> None:
    collected = rnd.collect(drop=("c03",))
    reveals: dict = dict(rnd.reveals(collected))
    reveals["c03"] = reveals["c04"]  # a dropped client cannot reveal
    extra = dict(reveals["c05"].mask_shares)
    extra["c06"] = reveals["c05"].self_shares["c06"]  # asks the mask secret of a survivor
    reveals["c05"] = dataclasses.replace(reveals["c05"], mask_shares=extra)
    reveals["c06"] = dataclasses.replace(reveals["c06"], holder="c07")
    reveals["c08"] = b"{not json"
    result = unmask_sum(collected, reveals, rnd.roster, rnd.routed, CONFIG)
    assert "not a survivor" in result.rejected["c03"]
    assert "not requested" in result.rejected["c05"]
    assert "another holder" in result.rejected["c06"]
    assert "malformed" in result.rejected["c08"]
    assert torch.equal(result.ring_sum, rnd.ring_sum(result.survivors))


def test_dealer_with_inconsistent_shares_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Shamir.split
    calls = {"n": 0}

    def bad_split(k: int, n: int, secret: bytes, ssss: bool = False):
        calls["n"] += 1
        # The first client's self-seed shares (second split call) share another secret.
        return original(k, n, bytes(16) if calls["n"] == 2 else secret)

    monkeypatch.setattr(secagg.Shamir, "split", staticmethod(bad_split))
    rnd = Round(n=7, config=SecAggConfig(threshold=4, clip=1.0, frac_bits=16), dim=16)
    monkeypatch.setattr(secagg.Shamir, "split", staticmethod(original))
    collected = rnd.collect()
    with pytest.raises(ReconstructionError) as info:
        unmask_sum(collected, rnd.reveals(collected), rnd.roster, rnd.routed, rnd.config)
    assert info.value.code == "inconsistent_shares"
    assert info.value.client == "c00"


def test_shares_are_encrypted_and_authenticated(rnd: Round) -> None:
    keys = rnd.by_client["c00"]
    bundle = share_secrets(keys, rnd.roster, CONFIG)
    assert set(bundle) == set(rnd.roster.clients)
    held = rnd.held["c01"]
    mask_share, self_share = held.shares["c00"]
    wire = rnd.routed.inbox["c01"][0].to_bytes()
    assert mask_share.hex().encode() not in wire and self_share.hex().encode() not in wire
    original = next(s for s in rnd.routed.inbox["c01"] if s.dealer == "c02")
    flipped = dataclasses.replace(original, ciphertext=bytes([original.ciphertext[0] ^ 1]) + original.ciphertext[1:])
    rerouted = dataclasses.replace(original, mask_commitment=bytes(32))
    wrong = rnd.routed.inbox["c02"][3]  # addressed to c02
    got = receive_shares(rnd.by_client["c01"], rnd.roster, [flipped, wrong, rerouted.to_bytes()])
    assert got.shares == {}
    assert "does not decrypt" in got.rejected["c02"] or "more than one" in got.rejected["c02"]
    assert "another client" in got.rejected[wrong.dealer]
    got = receive_shares(rnd.by_client["c01"], rnd.roster, [flipped])
    assert "does not decrypt" in got.rejected["c02"]
    got = receive_shares(rnd.by_client["c01"], rnd.roster, [rerouted])
    assert "does not decrypt" in got.rejected["c02"]  # commitments are bound as associated data


def test_route_shares_rejects_bad_bundles(rnd: Round) -> None:
    bundles: dict = {k.client: list(share_secrets(k, rnd.roster, CONFIG).values()) for k in rnd.keys}
    bundles["c01"] = bundles["c01"][:-1]
    bundles["c02"] = bundles["c03"]  # someone else's shares
    bundles["c04"] = [b"x" * 5000] * N
    bundles["mallory"] = []
    routed = route_shares(bundles, rnd.roster, CONFIG)
    assert set(routed.rejected) == {"c01", "c02", "c04", "mallory"}
    assert "over the limit" in routed.rejected["c04"]
    assert routed.participants == tuple(c for c in sorted(rnd.by_client) if c not in {"c01", "c02", "c04"})
    # Non-participants are excluded from masking, and the round still sums the rest.
    keys = [k for k in rnd.keys if k.client in routed.participants]
    parts = routed.participants
    held = {k.client: receive_shares(k, rnd.roster, routed.inbox[k.client], participants=parts) for k in keys}
    masked = {k.client: mask_update(k, rnd.updates[k.client], rnd.roster, CONFIG, participants=parts) for k in keys}
    del masked["c05"]
    collected = collect_masked_inputs(rnd.roster, routed, masked, dim=DIM, config=CONFIG)
    reveals = {
        c: reveal_shares(rnd.by_client[c], held[c], collected.request, rnd.roster, CONFIG)
        for c in collected.request.survivors
    }
    result = unmask_sum(collected, reveals, rnd.roster, routed, CONFIG)
    assert result.excluded == ("c01", "c02", "c04") and result.dropped == ("c05",)
    assert torch.equal(result.ring_sum, rnd.ring_sum(result.survivors))


# ---------------------------------------------------------------------------- malformed masked input


def test_malformed_masked_inputs_rejected_and_treated_as_dropped(rnd: Round) -> None:
    good = rnd.masked
    wire = encode_masked_input(good["c06"], client="c06", round_number=ROUND, config=CONFIG)
    out_of_ring = good["c02"].clone()
    out_of_ring[5] = 2**32
    replace = {
        "c00": good["c00"][:-1],  # wrong length
        "c01": good["c01"].to(torch.float64),  # wrong dtype
        "c02": out_of_ring,
        "c06": wire[:-1],  # truncated bytes
        "c07": encode_masked_input(good["c07"], client="c07", round_number=ROUND, config=CONFIG),  # fine
        "zz": good["c09"],  # not a participant
    }
    collected = rnd.collect(replace=replace)
    rejected = collected.rejected
    assert set(rejected) == {"c00", "c01", "c02", "c06", "zz"}
    assert "expected 257 values" in rejected["c00"]
    assert "dtype" in rejected["c01"]
    assert "outside the ring" in rejected["c02"]
    assert "bytes" in rejected["c06"]
    assert "not a participant" in rejected["zz"]
    assert collected.request.dropped == ("c00", "c01", "c02", "c06")
    result = unmask_sum(collected, rnd.reveals(collected), rnd.roster, rnd.routed, CONFIG)
    assert result.survivors == ("c03", "c04", "c05", "c07", "c08", "c09")
    assert "outside the ring" in result.rejected["c02"]
    assert torch.equal(result.ring_sum, rnd.ring_sum(result.survivors))
    for bad, reason in (
        (good["c03"].to(torch.int32), "dtype"),
        (good["c03"].reshape(1, -1), "1-D"),
        (good["c03"].tolist(), "expected a tensor"),
        (torch.full((DIM,), -1, dtype=torch.int64), "outside the ring"),
    ):
        with pytest.raises(InvalidMaskedInput, match=reason):
            check_masked_input(bad, client="c03", round_number=ROUND, dim=DIM, config=CONFIG)


def test_masked_input_bytes_round_trip_and_strictness(rnd: Round) -> None:
    y = rnd.masked["c04"]
    wire = encode_masked_input(y, client="c04", round_number=ROUND, config=CONFIG)
    assert len(wire) < DIM * 4 + 120  # 4 bytes a value for a 32-bit ring
    assert torch.equal(decode_masked_input(wire, client="c04", round_number=ROUND, dim=DIM, config=CONFIG), y)
    cases = {
        "other client": dict(client="c05"),
        "other round": dict(round_number=ROUND + 1),
        "other dim": dict(dim=DIM + 1),
    }
    for name, override in cases.items():
        kwargs = dict(client="c04", round_number=ROUND, dim=DIM, config=CONFIG) | override
        with pytest.raises(SerializationError):
            decode_masked_input(wire, **kwargs)
    bad_magic = b"X" + wire[1:]
    padded = wire + b"\0"
    header_start = 12
    spaced = wire[:header_start] + wire[header_start:].replace(b'"dim":257', b'"dim":257 ', 1)
    for data in (bad_magic, padded, spaced, b"", b"\0" * 4000, "text"):
        with pytest.raises(InvalidMaskedInput) as info:
            check_masked_input(data, client="c04", round_number=ROUND, dim=DIM, config=CONFIG)
        assert info.value.code == "malformed_masked_input" and info.value.client == "c04"
    # Out-of-ring values inside well-formed bytes (a 24-bit ring stores 3 bytes per value).
    config24 = SecAggConfig(threshold=2, clip=1.0, frac_bits=8, ring_bits=20)
    small = torch.tensor([0, 1, 2**20 - 1], dtype=torch.int64)
    wire24 = encode_masked_input(small, client="c04", round_number=ROUND, config=config24)
    assert torch.equal(decode_masked_input(wire24, client="c04", round_number=ROUND, dim=3, config=config24), small)
    broken = bytearray(wire24)
    broken[-1] = 0xFF
    with pytest.raises(SerializationError, match="outside the ring"):
        decode_masked_input(bytes(broken), client="c04", round_number=ROUND, dim=3, config=config24)


# ---------------------------------------------------------------------------- parsers


def test_message_round_trips(rnd: Round) -> None:
    keys = rnd.keys[0].public
    assert PublicKeys.from_bytes(keys.to_bytes()) == keys
    share = rnd.routed.inbox["c01"][0]
    assert EncryptedShare.from_bytes(share.to_bytes()) == share
    collected = rnd.collect(drop=("c02",))
    assert RevealRequest.from_bytes(collected.request.to_bytes()) == collected.request
    reveal = rnd.reveals(collected, only=("c00",))["c00"]
    assert RevealedShares.from_bytes(reveal.to_bytes()) == reveal


def test_parsers_refuse_oversized_and_malformed(rnd: Round) -> None:
    keys_wire = rnd.keys[0].public.to_bytes()
    obj = json.loads(keys_wire)

    def dump(o: dict, **kw) -> bytes:
        return json.dumps(o, sort_keys=True, separators=(",", ":"), **kw).encode()

    bad_keys = [
        keys_wire + b" ",  # trailing whitespace: not canonical
        json.dumps(obj, sort_keys=True).encode(),  # spaces: not canonical
        dump({**obj, "extra": 1}),
        dump({k: v for k, v in obj.items() if k != "mask_public"}),
        dump({**obj, "mask_public": obj["mask_public"].upper()}),
        dump({**obj, "mask_public": obj["mask_public"][:-2]}),
        dump({**obj, "round": True}),
        dump({**obj, "round": -1}),
        dump({**obj, "round": 7.0}),
        dump({**obj, "client": "bad id with spaces"}),
        dump({**obj, "type": "secagg/share"}),
        dump({**obj, "v": 2}),
        dump({**obj, "enc_public": "00" * 32}),  # a low-order point, not a usable key
        b'{"client":"c00","client":"c01"}',
        b"[]",
        b"\xff\xfe",
        b"{" * 5000,
        dump({**obj, "client": "x" * 2000}),  # over the 1 KiB limit
    ]
    for data in bad_keys:
        with pytest.raises(SerializationError):
            PublicKeys.from_bytes(data)
    share = json.loads(rnd.routed.inbox["c01"][0].to_bytes())
    for data in (dump({**share, "ciphertext": share["ciphertext"] + "00"}), dump({**share, "nonce": "zz" * 12})):
        with pytest.raises(SerializationError):
            EncryptedShare.from_bytes(data)
    request = {"dropped": ["c02"], "round": ROUND, "survivors": ["c01", "c00"], "type": "secagg/request", "v": 1}
    with pytest.raises(SerializationError, match="sorted"):
        RevealRequest.from_bytes(dump(request))
    with pytest.raises(SerializationError, match="over the limit"):
        RevealRequest.from_bytes(dump({**request, "survivors": [f"c{i:06d}" for i in range(20000)]}))
    with pytest.raises(SecAggError):
        RevealRequest.from_bytes(dump({**request, "survivors": ["c00", "c02"]}))
    reveal = {"holder": "c00", "mask_shares": {}, "round": ROUND, "self_shares": {"c01": "ab" * 15}}
    reveal |= {"type": "secagg/reveal", "v": 1}
    with pytest.raises(SerializationError):
        RevealedShares.from_bytes(dump(reveal))
    with pytest.raises(SerializationError):
        RevealedShares.from_bytes(dump({**reveal, "self_shares": {"c01": {"nested": "ab" * 16}}}))
    with pytest.raises(SerializationError, match="over the limit"):
        RevealedShares.from_bytes(b" " * (256 + 112 * secagg.MAX_CLIENTS + 1))


def test_roster_validation(rnd: Round) -> None:
    publics = [k.public for k in rnd.keys]
    with pytest.raises(SecAggError, match="same client"):
        Roster(publics + [make_keys(1, salt=b"x")[0].public], round_number=ROUND)
    with pytest.raises(SecAggError, match="round"):
        Roster(publics, round_number=ROUND + 1)
    with pytest.raises(SecAggError, match="at least 2"):
        Roster(publics[:1], round_number=ROUND)
    # Protocol order is by mask public key.
    assert list(rnd.roster.clients) == [p.client for p in sorted(publics, key=lambda p: p.mask_public)]
    with pytest.raises(SecAggError) as info:
        mask_update(make_keys(1, ROUND + 1)[0], rnd.updates["c00"], rnd.roster, CONFIG)
    assert info.value.code == "wrong_round"


# ---------------------------------------------------------------------------- configuration


def test_config_validation() -> None:
    for kwargs in (
        dict(threshold=1),
        dict(threshold=True),
        dict(threshold=3, clip=0.0),
        dict(threshold=3, clip=float("inf")),
        dict(threshold=3, clip="1"),
        dict(threshold=3, frac_bits=-1),
        dict(threshold=3, frac_bits=53),
        dict(threshold=3, ring_bits=63),
        dict(threshold=3, ring_bits=7),
        dict(threshold=3, clip=2.0**40, frac_bits=20, ring_bits=62),  # clip * 2^frac over 2^52
    ):
        with pytest.raises(ConfigError):
            SecAggConfig(**kwargs)


def test_overflow_config_raises_config_error() -> None:
    # 1.0 * 2^28 per client: 8 clients need 2^31, which a 32-bit ring (signed half 2^31) cannot hold.
    config = SecAggConfig(threshold=2, clip=1.0, frac_bits=28, ring_bits=32)
    assert config.max_clients == 7
    config.check_capacity(7)
    with pytest.raises(ConfigError, match="overflows the ring"):
        config.check_capacity(8)
    with pytest.raises(ConfigError, match="overflows the ring"):
        SecAggConfig(threshold=8, clip=1.0, frac_bits=28, ring_bits=32)
    keys = make_keys(8)
    roster = Roster([k.public for k in keys], round_number=ROUND)
    with pytest.raises(ConfigError):
        mask_update(keys[0], torch.zeros(4), roster, config)
    with pytest.raises(ConfigError):
        share_secrets(keys[0], roster, config)
    # The bound is tight: 7 clients at the clip decode exactly, at the edge of the ring.
    small = SecAggConfig(threshold=2, clip=1.0, frac_bits=28, ring_bits=32)
    total = torch.zeros(1, dtype=torch.int64)
    for _ in range(7):
        total = (total + encode_fixed_point(torch.tensor([-1.0], dtype=torch.float64), small)) & small.ring_mask
    assert decode_fixed_point(total, small).item() == -7.0
    with pytest.raises(ConfigError):
        share_secrets(keys[0], Roster([k.public for k in keys[:3]], round_number=ROUND), SecAggConfig(threshold=4))


# ---------------------------------------------------------------------------- rounds and determinism


def test_different_rounds_give_different_masks() -> None:
    seed = b"s" * 32
    a = expand_mask(seed, round_number=1, label="pair", length=64, ring_bits=32)
    b = expand_mask(seed, round_number=2, label="pair", length=64, ring_bits=32)
    c = expand_mask(seed, round_number=1, label="self", length=64, ring_bits=32)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, expand_mask(seed, round_number=1, label="pair", length=64, ring_bits=32))
    # Whole rounds: the same client seeds in two rounds give unrelated keys and masked inputs.
    update = torch.full((32,), 0.25)
    masked = []
    for round_number in (1, 2):
        keys = make_keys(3, round_number)
        roster = Roster([k.public for k in keys], round_number=round_number)
        config = SecAggConfig(threshold=2)
        masked.append(mask_update(keys[0], update, roster, config))
        assert keys[0].self_seed != make_keys(3, 3 - round_number)[0].self_seed
    assert not torch.equal(masked[0], masked[1])
    assert (masked[0] == masked[1]).sum().item() < 3


def test_ring_bits_word_widths() -> None:
    for bits in (8, 20, 32, 33, 48, 62):
        words = expand_mask(b"k" * 16, round_number=0, label="pair", length=4096, ring_bits=bits)
        assert words.dtype == torch.int64
        assert int(words.min()) >= 0 and int(words.max()) < 2**bits
        assert int(words.max()) >= 2 ** (bits - 1)  # the top bit is used
    # A 62-bit ring round: masks cancel and the sum decodes.
    config = SecAggConfig(threshold=2, clip=4.0, frac_bits=40, ring_bits=62)
    keys = make_keys(3)
    roster = Roster([k.public for k in keys], round_number=ROUND)
    updates = make_updates(keys, 50)
    total = torch.zeros(50, dtype=torch.int64)
    for k in keys:
        y = mask_update(k, updates[k.client], roster, config)
        total = (total + y - self_mask(k.self_seed, round_number=ROUND, dim=50, config=config)) & config.ring_mask
    bound = quantization_error_bound(3, config)
    assert torch.allclose(decode_fixed_point(total, config), sum(updates.values()), atol=bound, rtol=0)


def test_determinism_from_seeds() -> None:
    first, second = make_keys(4), make_keys(4)
    assert [k.public.to_bytes() for k in first] == [k.public.to_bytes() for k in second]
    assert first[0].mask_secret == second[0].mask_secret
    other = make_keys(4, salt=b"other")
    assert all(a.public != b.public for a, b in zip(first, other))
    config = SecAggConfig(threshold=3)
    wires = []
    for keys in (first, second):
        roster = Roster([k.public for k in keys], round_number=ROUND)
        y = mask_update(keys[1], torch.linspace(-1, 1, 100), roster, config)
        wires.append(encode_masked_input(y, client=keys[1].client, round_number=ROUND, config=config))
    assert wires[0] == wires[1]
    # Two full rounds from the same seeds (fresh Shamir randomness) unmask to the same bytes.
    sums = []
    for _ in range(2):
        r = Round(n=5, config=config, dim=33)
        collected = r.collect(drop=("c03",))
        sums.append(unmask_sum(collected, r.reveals(collected), r.roster, r.routed, config).sum.numpy().tobytes())
    assert sums[0] == sums[1]
    assert "mask_secret" not in repr(first[0]) and first[0].mask_secret.hex() not in repr(first[0])
