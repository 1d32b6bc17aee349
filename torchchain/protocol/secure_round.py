"""Secure aggregation in the chain (``privacy.kind: secagg``): the rules every node and the auditor apply.

The cryptography is :mod:`torchchain.privacy.secagg` (pairwise masking with dropout recovery,
Bonawitz et al. 2017). This module adds what the chain needs around it, in one place that the
miner (:mod:`torchchain.runtime.node`), every validating peer and ``torchchain audit``
(:func:`torchchain.protocol.round.replay_round`) all call:

* **Configuration** (:func:`secagg_config`): a secagg chain aggregates with FedAvg over equal
  weights, no pre-aggregation steps and no codec. Robust rules (median, Krum, trimmed mean,
  FLTrust, ...) and pre-aggregation steps compare or discard individual updates, which the miner
  never sees; the masked sum is unweighted (client-claimed sample counts would have to be applied
  by the clients before masking, where nobody can check them), so ``strategy.weights`` must be
  ``equal``; codecs encode float updates, while a masked update is already a vector of ring words.
  Each violation is a :class:`~torchchain.errors.ConfigError` that says what to set instead. The
  Shamir threshold ``privacy.threshold`` is fixed by the chain: an integer ``>= 2``, or ``null``
  for a majority of the clients a round samples (``k // 2 + 1``, ``k`` = ``clients_per_round``
  or every member).
* **Signed protocol messages** (:class:`SignedMessage`): every message a client sends in the
  protocol (its :class:`~torchchain.privacy.secagg.PublicKeys`, the commitments to the shares it
  dealt (:class:`DealtShares`) and its :class:`~torchchain.privacy.secagg.RevealedShares`) is
  signed with the client's Ed25519 chain key over :data:`SIGNATURE_DOMAIN` followed by the
  message's canonical bytes. The miner can neither substitute a client's keys (which would let it
  compute that client's masks), nor forge commitments or reveals.
* **The transcript** (:class:`Transcript`): the signed keys of every client in the roster, the
  signed share commitments of every participant, the :class:`~torchchain.privacy.secagg.RevealRequest`
  and the signed reveals. It is canonical JSON, stored as a blob, and its hash is in the round
  record; the encrypted shares themselves are not stored (only the commitments that reveals are
  checked against).
* **Masked inputs** travel as the transactions' payloads: each accepted transaction's
  ``update_hash`` is the SHA-256 of the client's :func:`~torchchain.privacy.secagg.encode_masked_input`
  bytes, its codec tag is :data:`SECAGG_CODEC`, and the submission check
  (:func:`torchchain.protocol.submission.check_submission`) applies
  :func:`~torchchain.privacy.secagg.check_masked_input` (code ``malformed_masked_input``) and
  refuses a client that dealt no shares (``not_participant``).
* **The outcome** (:func:`check_transcript`, then :func:`unmask_round`): survivors are the
  clients of the accepted transactions, dropped clients are the other participants; the
  transcript's request must name exactly those; :func:`~torchchain.privacy.secagg.unmask_sum`
  recovers the sum, and the round's model is ``parent + sum / survivors`` in float64. A round
  with fewer than ``threshold`` participants or survivors, or whose revealed shares cannot rebuild
  a secret, keeps the parent's model (``outcome: kept_parent``) and records why (``failure``).

What a ledger reader learns (the privacy of a secagg chain): the sum of the survivors'
clipped, fixed-point updates of every round (in the round record's ``sum`` blob, and implied by
the model) and who survived or dropped. Individual updates are never on the ledger: each masked
input is one-time padded by the pairwise masks among the survivors, which stay hidden as long as
fewer than ``threshold`` parties (the miner included) collude. What the transcript publishes is
what the server learns in Bonawitz et al.'s protocol: the survivors' self-mask seeds and the
dropped clients' mask secrets; a dropped client's update was never sent, so revealing its masks
exposes nothing of it. Keys are per round, so nothing revealed in one round helps in another.

What the chain does not defend: the protocol is the honest-but-curious variant (no consistency
check round), so a miner that sends different clients different views of the participants or of
the reveal request can make the round fail, though not forge a sum; a client that copies another
client's public keys gets both refused from the round's roster; a malicious client may mask any
update it likes within the clip (secure aggregation hides updates, it does not check them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchchain.chain.crypto import SigningKey, verify_signature
from torchchain.chain.encoding import canonical_json, parse_json_object
from torchchain.errors import ConfigError, SerializationError
from torchchain.privacy.secagg import (
    MAX_CLIENTS,
    CollectedInputs,
    EncryptedShare,
    PublicKeys,
    ReconstructionError,
    RevealedShares,
    RevealRequest,
    Roster,
    RoutedShares,
    SecAggConfig,
    SecAggError,
    unmask_sum,
)

__all__ = [
    "FAILURE_CODES",
    "MASKED_KEY",
    "SECAGG_CODEC",
    "SIGNATURE_DOMAIN",
    "CheckedTranscript",
    "DealtShares",
    "SecureOutcome",
    "SignedMessage",
    "Transcript",
    "check_transcript",
    "secagg_config",
    "sign_message",
    "transcript_max_bytes",
    "unmask_round",
]

#: The codec tag of a secagg transaction: its payload is a masked ring input, not float tensors.
SECAGG_CODEC = "secagg"
#: The name under which :func:`~torchchain.protocol.submission.check_submission` returns a masked input.
MASKED_KEY = "secagg.masked"
#: Prefix of every signed protocol message (then the message's canonical bytes), so that such a
#: signature never verifies as a transaction or a block, nor a transaction's as a message.
SIGNATURE_DOMAIN = b"torchchain/secagg/signed/v1\x00"
#: Why a secagg round kept its parent's model.
FAILURE_CODES = (
    "too_few_participants",
    "too_few_survivors",
    "not_enough_shares",
    "inconsistent_shares",
    "non_finite_model",
)

_TRANSCRIPT_TYPE = "torchchain/secagg-transcript"
_DEALT_TYPE = "secagg/dealt"
_VERSION = 1
_KEY_RE = re.compile(r"[0-9a-f]{64}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{128}")
_SIGNED_KEYS = frozenset({"body", "signature"})
_TRANSCRIPT_KEYS = frozenset({"type", "v", "round", "keys", "dealt", "request", "reveals"})
_DEALT_KEYS = frozenset({"type", "v", "round", "dealer", "commitments"})
# Depth of a transcript: transcript > list > signed > body > commitments > [mask, self].
_TRANSCRIPT_DEPTH = 6
_SMALL_MESSAGE_BYTES = 1024
_MAX_BLOB_BYTES = 512 * 1024 * 1024  # torchchain.chain.ledger.MAX_BLOB_BYTES


# --------------------------------------------------------------------------------------------
# Configuration


def _fedavg_targets() -> set[str]:
    from torchchain.protocol.registry import builtin_strategy_targets
    from torchchain.strategies.fedavg import FedAvg

    return {path for path, cls in builtin_strategy_targets().items() if cls is FedAvg}


def _strategy_name(target: str) -> str:
    return target.rsplit(".", 1)[-1]


def _privacy_int(privacy: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = privacy.get(key)
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"privacy.{key} must be an integer in [{low}, {high}] for privacy=secagg, got {str(value)[:40]!r}")
    return value


def secagg_config(config: Mapping[str, Any], *, round_size: int) -> SecAggConfig | None:
    """The secure-aggregation parameters of a protocol config, or ``None`` when it does not use secagg.

    Args:
        config: The protocol config (as the genesis block records it): ``privacy``, ``strategy``
            and ``codec`` are read.
        round_size: How many clients a round samples (``clients_per_round``, or every member).

    Raises:
        ConfigError: The strategy is not FedAvg with equal weights and no pre-aggregation steps,
            a codec other than ``none`` is set, or ``privacy.threshold``, ``privacy.clip``,
            ``privacy.frac_bits`` or ``privacy.ring_bits`` is out of range (the message names
            the key and what to set).
    """
    privacy = config.get("privacy")
    if not isinstance(privacy, Mapping) or privacy.get("kind") != "secagg":
        return None
    strategy = config.get("strategy")
    target = strategy.get("_target_") if isinstance(strategy, Mapping) else None
    if not isinstance(target, str) or target not in _fedavg_targets():
        name = _strategy_name(str(target))[:60]
        raise ConfigError(
            f"privacy=secagg hides individual updates: the miner sees only their masked sum, and robust rules "
            f"({name}) need individual updates to compare, weigh or discard them; use strategy=fedavg "
            "strategy.weights=equal with privacy=secagg, or keep the robust rule with privacy=none, client_dp or dpsgd"
        )
    pre = strategy.get("pre")
    if pre:
        raise ConfigError(
            f"privacy=secagg: pre-aggregation steps (strategy.pre={str(pre)[:60]}) need individual updates, "
            "which secure aggregation hides; set strategy.pre=[]"
        )
    weights = strategy.get("weights", "samples")
    if weights != "equal":
        raise ConfigError(
            f"privacy=secagg sums masked updates without weights, so every survivor counts alike; "
            f"strategy.weights={str(weights)[:20]} cannot apply: use strategy=fedavg strategy.weights=equal"
        )
    from torchchain.protocol.registry import build_codec
    from torchchain.updates.codecs import NoCodec

    codec = build_codec(config.get("codec"))
    if not isinstance(codec, NoCodec):
        raise ConfigError(
            f"privacy=secagg sends each update as masked fixed-point ring words, so codec {codec.tag()} "
            "cannot apply to it: use codec=none with privacy=secagg"
        )
    if type(round_size) is not int or round_size < 2:
        raise ConfigError(
            f"privacy=secagg needs at least 2 clients per round (masks cancel between clients); a round samples "
            f"{round_size}: raise clients or clients_per_round"
        )
    threshold = privacy.get("threshold")
    if threshold is None:
        threshold = round_size // 2 + 1
    elif type(threshold) is not int or not 2 <= threshold <= round_size:
        raise ConfigError(
            f"privacy.threshold must be null (a majority of the {round_size} clients a round samples) or an integer "
            f"in [2, {round_size}], got {str(threshold)[:40]!r}"
        )
    clip = privacy.get("clip")
    if type(clip) not in (int, float) or not 0 < clip < float("inf"):
        raise ConfigError(
            f"privacy.clip must be a finite number > 0 (each coordinate is clipped to [-clip, clip]), got {str(clip)[:40]!r}"
        )
    frac_bits = _privacy_int(privacy, "frac_bits", 0, 52)
    ring_bits = _privacy_int(privacy, "ring_bits", 8, 62)
    try:
        result = SecAggConfig(threshold=threshold, clip=float(clip), frac_bits=frac_bits, ring_bits=ring_bits)
        result.check_capacity(round_size)
    except ConfigError as exc:
        raise ConfigError(f"privacy=secagg: {str(exc).replace('secagg.', 'privacy.')}") from None
    return result


# --------------------------------------------------------------------------------------------
# Signed messages


def _check_key(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _KEY_RE.fullmatch(value):
        raise SerializationError(f"{what}: a client is named by its public key (64 lowercase hex characters)")
    return value


@dataclass(frozen=True)
class SignedMessage:
    """A protocol message and its sender's Ed25519 signature over :data:`SIGNATURE_DOMAIN` + ``body``.

    Attributes:
        body: The message's canonical bytes (a JSON object).
        signature: 128 lowercase hex characters.
    """

    body: bytes
    signature: str

    def verifies(self, signer: str) -> bool:
        """Whether :attr:`signature` is ``signer``'s signature of :attr:`body`."""
        return verify_signature(signer, SIGNATURE_DOMAIN + self.body, self.signature)

    def to_obj(self) -> dict[str, Any]:
        """The JSON form: the body as an embedded object, and the signature."""
        body = parse_json_object(self.body, what="signed message body", max_bytes=len(self.body))
        return {"body": body, "signature": self.signature}

    def to_bytes(self) -> bytes:
        """Canonical JSON of :meth:`to_obj` (what a client sends)."""
        return canonical_json(self.to_obj())

    @classmethod
    def from_obj(cls, obj: Any, *, what: str) -> SignedMessage:
        """The message of a JSON object ``{"body": {...}, "signature": hex}`` (strict).

        Raises:
            SerializationError: Wrong keys or a signature that is not 128 lowercase hex characters.
        """
        if not isinstance(obj, dict) or set(obj) != _SIGNED_KEYS:
            raise SerializationError(f"{what}: a signed message has exactly the keys {sorted(_SIGNED_KEYS)}")
        if not isinstance(obj["body"], dict):
            raise SerializationError(f"{what}: the body of a signed message is a JSON object")
        if not isinstance(obj["signature"], str) or not _SIGNATURE_RE.fullmatch(obj["signature"]):
            raise SerializationError(f"{what}: the signature must be 128 lowercase hex characters")
        return cls(body=canonical_json(obj["body"]), signature=obj["signature"])

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str, max_bytes: int) -> SignedMessage:
        """Parses :meth:`to_bytes` output strictly (size first, canonical form last).

        Raises:
            SerializationError: Oversized, not canonical JSON, or not a signed message.
        """
        obj = parse_json_object(data, what=what, max_bytes=max_bytes, max_depth=4)
        message = cls.from_obj(obj, what=what)
        if message.to_bytes() != bytes(data):
            raise SerializationError(f"{what}: not in canonical form")
        return message


def sign_message(key: SigningKey, body: bytes) -> SignedMessage:
    """Signs a protocol message's canonical bytes with a client's chain key."""
    return SignedMessage(body=bytes(body), signature=key.sign(SIGNATURE_DOMAIN + bytes(body)))


@dataclass(frozen=True)
class DealtShares:
    """A dealer's commitments to the shares it dealt, one pair per holder (signed by the dealer).

    Attributes:
        round: The round.
        dealer: The dealer's public key.
        commitments: Holder -> ``(mask share commitment, self share commitment)``, 32 bytes each,
            exactly as in the headers of the :class:`~torchchain.privacy.secagg.EncryptedShare`
            it sent.
    """

    round: int
    dealer: str
    commitments: dict[str, tuple[bytes, bytes]]

    @classmethod
    def from_bundle(cls, round_number: int, dealer: str, bundle: Sequence[EncryptedShare]) -> DealtShares:
        """The commitments in a share bundle's headers."""
        return cls(
            round=round_number,
            dealer=dealer,
            commitments={s.recipient: (s.mask_commitment, s.self_commitment) for s in bundle},
        )

    def to_bytes(self) -> bytes:
        """Canonical JSON: ``{"commitments": {holder: [mask hex, self hex]}, "dealer", "round", "type", "v"}``."""
        return canonical_json(
            {
                "commitments": {h: [m.hex(), s.hex()] for h, (m, s) in self.commitments.items()},
                "dealer": self.dealer,
                "round": self.round,
                "type": _DEALT_TYPE,
                "v": _VERSION,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DealtShares:
        """Parses :meth:`to_bytes` output strictly.

        Raises:
            SerializationError: Oversized, not canonical, wrong fields, keys or hex.
        """
        what = "secagg share commitments"
        obj = parse_json_object(data, what=what, max_bytes=256 + 220 * MAX_CLIENTS, max_depth=3)
        if set(obj) != _DEALT_KEYS or obj["type"] != _DEALT_TYPE or obj["v"] != _VERSION or type(obj["v"]) is not int:
            raise SerializationError(
                f"{what}: expected the fields {sorted(_DEALT_KEYS)} of type {_DEALT_TYPE!r} v{_VERSION}"
            )
        if type(obj["round"]) is not int or not 0 <= obj["round"] < 2**63:
            raise SerializationError(f"{what}: round must be an integer in [0, 2^63)")
        dealer = _check_key(obj["dealer"], what)
        raw = obj["commitments"]
        if not isinstance(raw, dict) or len(raw) > MAX_CLIENTS:
            raise SerializationError(f"{what}: commitments must be an object of at most {MAX_CLIENTS} holders")
        commitments: dict[str, tuple[bytes, bytes]] = {}
        for holder, pair in raw.items():
            _check_key(holder, what)
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(c, str) and _KEY_RE.fullmatch(c) for c in pair)
            ):
                raise SerializationError(f"{what}: each holder's commitments are two 64-character lowercase hex strings")
            commitments[holder] = (bytes.fromhex(pair[0]), bytes.fromhex(pair[1]))
        message = cls(round=obj["round"], dealer=dealer, commitments=commitments)
        if message.to_bytes() != bytes(data):
            raise SerializationError(f"{what}: not in canonical form")
        return message


# --------------------------------------------------------------------------------------------
# The transcript


def transcript_max_bytes(round_size: int) -> int:
    """The largest transcript a round of ``round_size`` sampled clients can produce (bounded by the blob limit)."""
    k = max(int(round_size), 2)
    return min(_MAX_BLOB_BYTES, 8192 + k * 3 * 1024 + k * k * 400)


@dataclass(frozen=True)
class Transcript:
    """Everything a secagg round's outcome depends on besides the masked inputs.

    Attributes:
        round: The round.
        keys: Each roster client's signed :class:`~torchchain.privacy.secagg.PublicKeys`, by client.
        dealt: Each participant's signed :class:`DealtShares`, by dealer.
        request: The reveal request, or ``None`` when the round failed before it (too few
            participants or survivors).
        reveals: Each revealing survivor's signed
            :class:`~torchchain.privacy.secagg.RevealedShares`, by holder.
    """

    round: int
    keys: tuple[SignedMessage, ...] = ()
    dealt: tuple[SignedMessage, ...] = ()
    request: RevealRequest | None = None
    reveals: tuple[SignedMessage, ...] = ()

    def to_bytes(self) -> bytes:
        """Canonical JSON of the transcript (the blob the round record names)."""
        return canonical_json(
            {
                "dealt": [m.to_obj() for m in self.dealt],
                "keys": [m.to_obj() for m in self.keys],
                "request": None
                if self.request is None
                else parse_json_object(self.request.to_bytes(), what="request", max_bytes=1 << 30),
                "reveals": [m.to_obj() for m in self.reveals],
                "round": self.round,
                "type": _TRANSCRIPT_TYPE,
                "v": _VERSION,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int) -> Transcript:
        """Parses :meth:`to_bytes` output strictly: size first, exact fields, canonical form.

        The messages' bodies are parsed by :func:`check_transcript`, which knows the round.

        Raises:
            SerializationError: What is wrong, naming the field.
        """
        what = "secagg transcript"
        obj = parse_json_object(data, what=what, max_bytes=max_bytes, max_depth=_TRANSCRIPT_DEPTH)
        if set(obj) != _TRANSCRIPT_KEYS:
            raise SerializationError(f"{what}: expected exactly the fields {sorted(_TRANSCRIPT_KEYS)}")
        if obj["type"] != _TRANSCRIPT_TYPE or obj["v"] != _VERSION or type(obj["v"]) is not int:
            raise SerializationError(f"{what}: expected type {_TRANSCRIPT_TYPE!r} version {_VERSION}")
        if type(obj["round"]) is not int or not 0 <= obj["round"] < 2**63:
            raise SerializationError(f"{what}: round must be an integer in [0, 2^63)")
        lists = {}
        for name in ("keys", "dealt", "reveals"):
            value = obj[name]
            if not isinstance(value, list) or len(value) > MAX_CLIENTS:
                raise SerializationError(f"{what}: {name} must be a list of at most {MAX_CLIENTS} signed messages")
            lists[name] = tuple(SignedMessage.from_obj(item, what=f"{what}: {name}[{i}]") for i, item in enumerate(value))
        request = None
        if obj["request"] is not None:
            if not isinstance(obj["request"], dict):
                raise SerializationError(f"{what}: request must be null or a reveal request")
            try:
                request = RevealRequest.from_bytes(canonical_json(obj["request"]))
            except SecAggError as exc:
                raise SerializationError(f"{what}: request: {exc.reason}") from None
        transcript = cls(
            round=obj["round"], keys=lists["keys"], dealt=lists["dealt"], request=request, reveals=lists["reveals"]
        )
        if transcript.to_bytes() != bytes(data):
            raise SerializationError(f"{what}: not in canonical form")
        return transcript


def _bad(reason: str) -> SecAggError:
    return SecAggError("bad_transcript", reason)


def _signed_by_client(
    messages: Sequence[SignedMessage], parse: Any, signer_of: Any, what: str
) -> list[tuple[str, Any]]:
    """Parses each message, checks it is signed by the client it names, in client order, once each."""
    out: list[tuple[str, Any]] = []
    for i, message in enumerate(messages):
        try:
            body = parse(message.body)
        except (SerializationError, SecAggError) as exc:
            raise _bad(f"{what}[{i}] is malformed: {exc}") from None
        signer = signer_of(body)
        if not _KEY_RE.fullmatch(signer):
            raise _bad(f"{what}[{i}] names {signer[:64]!r}, which is not a client key")
        if not message.verifies(signer):
            raise _bad(f"{what}[{i}] is not signed by the client it names ({signer[:12]})")
        if out and out[-1][0] >= signer:
            raise _bad(f"{what} must be sorted by client, one message each")
        out.append((signer, body))
    return out


@dataclass(frozen=True)
class CheckedTranscript:
    """A transcript whose every signature, round and client was checked against the round.

    Attributes:
        transcript: The transcript.
        data: Its canonical bytes (the blob).
        config: The chain's secure-aggregation parameters.
        roster: The round's roster, or ``None`` when fewer than two clients advertised keys.
        participants: The clients that dealt shares, sorted.
        commitments: ``(dealer, holder)`` -> the dealer's commitments.
        reveals: Holder -> its revealed shares.
    """

    transcript: Transcript
    data: bytes
    config: SecAggConfig
    roster: Roster | None
    participants: tuple[str, ...]
    commitments: dict[tuple[str, str], tuple[bytes, bytes]] = field(default_factory=dict)
    reveals: dict[str, RevealedShares] = field(default_factory=dict)


def check_transcript(
    transcript: Transcript, *, round_number: int, sample: Iterable[str], config: SecAggConfig
) -> CheckedTranscript:
    """Checks a transcript against its round: rounds, clients, signatures and the dealers' commitments.

    Every keys message must be signed by the sampled member it names, every commitments message by
    a roster client and cover exactly the roster, every reveal by a roster client; all for
    ``round_number``. Whether the reveals' shares are right is :func:`unmask_round`'s to judge
    (a wrong share is a client's fault, recorded in the block; a bad signature is the miner's).

    Raises:
        SecAggError: ``code="bad_transcript"``, saying what is wrong.
    """
    sample = frozenset(sample)
    if transcript.round != round_number:
        raise _bad(f"the transcript is for round {transcript.round}, the block for round {round_number}")
    keys = _signed_by_client(transcript.keys, PublicKeys.from_bytes, lambda body: body.client, "keys")
    for client, body in keys:
        if client not in sample:
            raise _bad(f"keys of {client[:12]}, which is not sampled for round {round_number}")
        if body.round != round_number:
            raise _bad(f"keys of {client[:12]} are for round {body.round}")
    roster = None
    if len(keys) >= 2:
        try:
            roster = Roster([body for _, body in keys], round_number=round_number)
        except SecAggError as exc:
            raise _bad(f"the advertised keys do not form a roster: {exc.reason}") from None
    dealt = _signed_by_client(transcript.dealt, DealtShares.from_bytes, lambda body: body.dealer, "dealt")
    commitments: dict[tuple[str, str], tuple[bytes, bytes]] = {}
    for dealer, body in dealt:
        if roster is None or dealer not in roster:
            raise _bad(f"share commitments of {dealer[:12]}, which advertised no keys in the roster")
        if body.round != round_number:
            raise _bad(f"share commitments of {dealer[:12]} are for round {body.round}")
        if set(body.commitments) != set(roster.clients):
            raise _bad(f"share commitments of {dealer[:12]} do not cover every roster client exactly once")
        for holder, pair in body.commitments.items():
            commitments[(dealer, holder)] = pair
    reveals = _signed_by_client(transcript.reveals, RevealedShares.from_bytes, lambda body: body.holder, "reveals")
    for holder, body in reveals:
        if roster is None or holder not in roster:
            raise _bad(f"revealed shares of {holder[:12]}, which is not in the roster")
        if body.round != round_number:
            raise _bad(f"revealed shares of {holder[:12]} are for round {body.round}")
    if transcript.request is not None and transcript.request.round != round_number:
        raise _bad(f"the reveal request is for round {transcript.request.round}")
    return CheckedTranscript(
        transcript=transcript,
        data=transcript.to_bytes(),
        config=config,
        roster=roster,
        participants=tuple(dealer for dealer, _ in dealt),
        commitments=commitments,
        reveals=dict(reveals),
    )


# --------------------------------------------------------------------------------------------
# The outcome


@dataclass(frozen=True)
class SecureOutcome:
    """What a secagg round's unmasking gives.

    Attributes:
        sum: The decoded float64 sum of the survivors' updates (flat, in the order of
            :func:`~torchchain.updates.delta.flatten`), or ``None`` when the round failed.
        survivors: Clients whose updates are in the sum (the accepted transactions' clients).
        dropped: Participants whose masked input is missing or was refused; their masks were
            removed with the survivors' shares.
        rejected: Survivor -> why its revealed shares were refused (its update still counts).
        failure: ``(code, reason)`` when the round keeps the parent's model (codes in
            :data:`FAILURE_CODES`), else ``None``.
    """

    sum: torch.Tensor | None
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    rejected: dict[str, str]
    failure: tuple[str, str] | None


def unmask_round(checked: CheckedTranscript, masked: Mapping[str, torch.Tensor], *, dim: int) -> SecureOutcome:
    """Unmasks a round's sum from its checked transcript and the accepted masked inputs.

    Args:
        checked: From :func:`check_transcript`.
        masked: Survivor (accepted transaction's client) -> its masked input (``int64``, checked
            by the submission rule).
        dim: The update length (the model's float parameter count).

    Raises:
        SecAggError: ``code="bad_transcript"``: a masked input from a client that dealt no
            shares, a request that does not name exactly the survivors and dropped participants
            (or one where the round cannot reveal), or reveals without a request.
    """
    config = checked.config
    participants = checked.participants
    survivors = tuple(sorted(masked))
    outsiders = sorted(set(survivors) - set(participants))
    if outsiders:
        raise _bad(f"a masked input from {outsiders[0][:12]}, which dealt no shares")
    dropped = tuple(sorted(set(participants) - set(survivors)))
    request = checked.transcript.request
    failure = None
    if len(participants) < config.threshold:
        failure = (
            "too_few_participants",
            f"only {len(participants)} clients dealt valid shares; threshold is {config.threshold}",
        )
    elif len(survivors) < config.threshold:
        failure = (
            "too_few_survivors",
            f"only {len(survivors)} valid masked inputs; threshold is {config.threshold}",
        )
    if failure is not None:
        if request is not None or checked.reveals:
            raise _bad(f"the round cannot reveal shares ({failure[1]}), but the transcript holds a request or reveals")
        return SecureOutcome(sum=None, survivors=survivors, dropped=dropped, rejected={}, failure=failure)
    expected = RevealRequest(round=checked.transcript.round, survivors=survivors, dropped=dropped)
    if request != expected:
        raise _bad(
            "the reveal request does not name exactly the accepted clients as survivors and the other participants "
            "as dropped"
        )
    assert checked.roster is not None  # at least threshold >= 2 participants, all in the roster
    collected = CollectedInputs(request=request, inputs=dict(masked), rejected={}, dim=dim)
    routed = RoutedShares(participants=participants, inbox={}, commitments=checked.commitments, rejected={})
    try:
        result = unmask_sum(collected, checked.reveals, checked.roster, routed, config)
    except ReconstructionError as exc:
        return SecureOutcome(sum=None, survivors=survivors, dropped=dropped, rejected={}, failure=(exc.code, exc.reason))
    except SecAggError as exc:
        raise _bad(f"unmasking refuses the round: {exc}") from None
    return SecureOutcome(
        sum=result.sum, survivors=survivors, dropped=dropped, rejected=dict(sorted(result.rejected.items())), failure=None
    )
