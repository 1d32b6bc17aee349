"""Both sides of a secure-aggregation round (``privacy.kind: secagg``), over signed messages in bytes.

:class:`SecureClient` is one client: it makes its keys for the round, signs and sends them, deals
Shamir shares of its mask secrets to the roster, masks its update and, if it survives, reveals
the shares the node asks for. :class:`SecureRound` is the node's side: it checks and collects the
keys, routes the shares, and gathers the reveals into the round's
:class:`~torchchain.protocol.secure_round.Transcript` (it is the node's
:class:`~torchchain.runtime.node.SecureSession`).

Every message is bytes and every check is strict: the node refuses a message that does not
parse, is not signed by the member it names, is for another round or comes from a client outside
the round's sample, and records why (``refused`` in the block's ``secagg`` entry). A client checks
what the node forwards it (the roster's signed keys and the participants' signed commitments)
with :func:`~torchchain.protocol.secure_round.check_transcript`, the function the auditor uses,
so a node cannot slip it keys that no member signed.

The cryptography is :mod:`torchchain.privacy.secagg`; the chain's rules around it are
:mod:`torchchain.protocol.secure_round`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

from torchchain.chain.crypto import SigningKey
from torchchain.errors import SerializationError
from torchchain.privacy.secagg import (
    MAX_CLIENTS,
    EncryptedShare,
    HeldShares,
    PublicKeys,
    RevealedShares,
    RevealRequest,
    Roster,
    SecAggConfig,
    SecAggError,
    encode_masked_input,
    mask_update,
    receive_shares,
    reveal_shares,
    route_shares,
    setup_client,
    share_secrets,
)
from torchchain.protocol.secure_round import (
    DealtShares,
    SignedMessage,
    Transcript,
    check_transcript,
    sign_message,
)

__all__ = ["SecureClient", "SecureRound"]

_KEY_RE = re.compile(r"[0-9a-f]{64}")
_MESSAGE_BYTES = 4096
_MAX_REASON = 240


class SecureClient:
    """One client's side of one secure-aggregation round.

    Args:
        key: The client's chain key: it names the client and signs every message.
        round_number: The round.
        seed: 16 to 1024 private bytes every secret of the round derives from (reproducible
            runs), or ``None`` for fresh randomness.
    """

    def __init__(self, key: SigningKey, round_number: int, *, seed: bytes | None = None) -> None:
        self.key = key
        self.client = key.public_key
        self.round = round_number
        self.keys = setup_client(self.client, round_number, seed=seed)
        self.roster: Roster | None = None
        self.participants: tuple[str, ...] = ()
        self.held: HeldShares | None = None
        self._revealed = False

    def advertise(self) -> bytes:
        """The signed public keys (Bonawitz round 0)."""
        return sign_message(self.key, self.keys.public.to_bytes()).to_bytes()

    def _check_view(self, view: Transcript, sample: Iterable[str], config: SecAggConfig) -> Roster:
        checked = check_transcript(view, round_number=self.round, sample=sample, config=config)
        if checked.roster is None or self.client not in checked.roster or checked.roster[self.client] != self.keys.public:
            raise SecAggError("not_in_roster", "the forwarded roster does not hold this client's keys", client=self.client)
        return checked.roster

    def deal(self, view: Transcript, *, sample: Iterable[str], config: SecAggConfig) -> tuple[bytes, list[bytes]]:
        """Checks the forwarded roster and deals shares to it (Bonawitz round 1).

        Args:
            view: The node's :meth:`SecureRound.view` (the roster's signed keys).
            sample: The round's sampled members.
            config: The chain's parameters.

        Returns:
            The signed share commitments and the encrypted shares, one per roster client.

        Raises:
            SecAggError: The view is not signed by the members it names, or lacks this client.
        """
        self.roster = self._check_view(view, sample, config)
        shares = share_secrets(self.keys, self.roster, config)
        bundle = [shares[recipient] for recipient in self.roster.clients]
        dealt = DealtShares.from_bundle(self.round, self.client, bundle)
        return sign_message(self.key, dealt.to_bytes()).to_bytes(), [share.to_bytes() for share in bundle]

    def mask(
        self,
        update: torch.Tensor,
        inbox: Sequence[bytes],
        view: Transcript,
        *,
        sample: Iterable[str],
        config: SecAggConfig,
    ) -> bytes:
        """Decrypts the shares held for others and masks the update (Bonawitz round 2).

        Args:
            update: The client's flat float update.
            inbox: The encrypted shares the node forwarded to this client.
            view: The node's :meth:`SecureRound.view` after routing (keys and the participants'
                signed commitments): the participants are the dealers it names.
            sample: The round's sampled members.
            config: The chain's parameters.

        Returns:
            The masked input's canonical bytes (the transaction's payload).
        """
        checked = check_transcript(view, round_number=self.round, sample=sample, config=config)
        if checked.roster is None or self.roster is None or checked.roster.clients != self.roster.clients:
            raise SecAggError("not_in_roster", "the roster changed between dealing and masking", client=self.client)
        self.participants = checked.participants
        self.held = receive_shares(self.keys, self.roster, inbox, participants=self.participants)
        masked = mask_update(self.keys, update, self.roster, config, participants=self.participants)
        return encode_masked_input(masked, client=self.client, round_number=self.round, config=config)

    def reveal(self, request: RevealRequest, config: SecAggConfig) -> bytes:
        """The signed shares a survivor reveals (Bonawitz round 3); at most once per round.

        Raises:
            SecAggError: ``code="bad_request"``: a second request, or one that names clients
                outside this client's participants; what :func:`~torchchain.privacy.secagg.reveal_shares`
                refuses.
        """
        if self._revealed:
            raise SecAggError("bad_request", "this client already revealed its shares for the round", client=self.client)
        if self.roster is None or self.held is None:
            raise SecAggError("bad_request", "this client has not masked an input this round", client=self.client)
        if not set(request.survivors) | set(request.dropped) <= set(self.participants):
            raise SecAggError("bad_request", "the request names clients that are not participants", client=self.client)
        answer = reveal_shares(self.keys, self.held, request, self.roster, config)
        self._revealed = True
        return sign_message(self.key, answer.to_bytes()).to_bytes()


class SecureRound:
    """The node's side of one secure-aggregation round (a :class:`~torchchain.runtime.node.SecureSession`).

    Call :meth:`collect_keys`, then :meth:`route`; the node then selects the masked inputs of
    :attr:`participants` and calls :meth:`finish` with the survivors.

    Args:
        round_number: The round.
        sample: The members sampled for the round.
        config: The chain's parameters.
        reveal: Asks the survivors named in a request for their answers: returns sender ->
            signed reveal bytes (as the transport authenticated the sender).
    """

    def __init__(
        self,
        *,
        round_number: int,
        sample: Iterable[str],
        config: SecAggConfig,
        reveal: Callable[[RevealRequest], Mapping[str, bytes]],
    ) -> None:
        self.round = round_number
        self.sample = frozenset(sample)
        self.config = config
        self._reveal = reveal
        self.refused: dict[str, str] = {}
        self.keys: tuple[SignedMessage, ...] = ()
        self.dealt: tuple[SignedMessage, ...] = ()
        self.roster: Roster | None = None
        self.participants: frozenset[str] = frozenset()

    def _refuse(self, sender: str, reason: str) -> None:
        if isinstance(sender, str) and _KEY_RE.fullmatch(sender) and len(self.refused) < MAX_CLIENTS:
            self.refused[sender] = reason[:_MAX_REASON]

    def _signed(self, sender: str, data: bytes, what: str) -> SignedMessage | None:
        if sender not in self.sample:
            self._refuse(sender, f"sent {what} but is not sampled for round {self.round}")
            return None
        try:
            return SignedMessage.from_bytes(data, what=what, max_bytes=_MESSAGE_BYTES + 240 * MAX_CLIENTS)
        except SerializationError as exc:
            self._refuse(sender, f"malformed {what}: {exc}")
            return None

    def view(self) -> Transcript:
        """What the node forwards to the clients: the roster's signed keys and, after routing,
        the participants' signed commitments."""
        return Transcript(round=self.round, keys=self.keys, dealt=self.dealt)

    def collect_keys(self, messages: Mapping[str, bytes]) -> Transcript:
        """Checks each sender's signed keys; returns :meth:`view`.

        Clients that advertise an encryption or mask key another client also advertises are all
        refused (nobody can tell the copy from the original).
        """
        accepted: dict[str, tuple[SignedMessage, PublicKeys]] = {}
        for sender, data in messages.items():
            message = self._signed(sender, data, "keys")
            if message is None:
                continue
            try:
                keys = PublicKeys.from_bytes(message.body)
            except SerializationError as exc:
                self._refuse(sender, f"malformed keys: {exc}")
                continue
            if keys.client != sender or keys.round != self.round:
                self._refuse(sender, "keys name another client or round")
            elif not message.verifies(sender):
                self._refuse(sender, "keys not signed by the client's chain key")
            else:
                accepted[sender] = (message, keys)
        for attribute in ("enc_public", "mask_public"):
            seen: dict[bytes, list[str]] = {}
            for sender, (_, keys) in accepted.items():
                seen.setdefault(getattr(keys, attribute), []).append(sender)
            for holders in seen.values():
                if len(holders) > 1:
                    for sender in holders:
                        self._refuse(sender, f"advertises the same {attribute} key as another client")
                        accepted.pop(sender, None)
        self.keys = tuple(accepted[sender][0] for sender in sorted(accepted))
        if len(accepted) >= 2:
            self.roster = Roster([accepted[sender][1] for sender in sorted(accepted)], round_number=self.round)
        return self.view()

    def route(self, messages: Mapping[str, tuple[bytes, Sequence[bytes]]]) -> dict[str, list[bytes]]:
        """Checks each sender's signed commitments and share bundle; returns each client's inbox.

        A bundle is accepted whole or not at all: one well-formed share for every roster client,
        dealt by the sender for this round, whose header commitments are exactly the signed ones.
        """
        accepted: dict[str, tuple[SignedMessage, list[EncryptedShare]]] = {}
        roster = self.roster
        for sender, (signed, bundle) in messages.items():
            if roster is None or sender not in roster:
                self._refuse(sender, "sent shares but is not in the roster")
                continue
            message = self._signed(sender, signed, "share commitments")
            if message is None:
                continue
            try:
                dealt = DealtShares.from_bytes(message.body)
                if not isinstance(bundle, (list, tuple)) or len(bundle) != len(roster):
                    raise SerializationError(f"a share bundle must hold exactly {len(roster)} shares")
                shares = [EncryptedShare.from_bytes(item) for item in bundle]
            except SerializationError as exc:
                self._refuse(sender, f"malformed shares: {exc}")
                continue
            if dealt.dealer != sender or dealt.round != self.round or not message.verifies(sender):
                self._refuse(sender, "share commitments not signed by the dealer for this round")
            elif any(s.dealer != sender or s.round != self.round for s in shares) or {
                s.recipient for s in shares
            } != set(roster.clients):
                self._refuse(sender, "the shares do not go from the sender to each roster client exactly once")
            elif DealtShares.from_bundle(self.round, sender, shares) != dealt:
                self._refuse(sender, "the signed commitments are not those of the shares sent")
            else:
                accepted[sender] = (message, shares)
        self.dealt = tuple(accepted[sender][0] for sender in sorted(accepted))
        self.participants = frozenset(accepted)
        if roster is None or len(accepted) < self.config.threshold:
            return {}
        routed = route_shares({sender: shares for sender, (_, shares) in accepted.items()}, roster, self.config)
        return {client: [share.to_bytes() for share in shares] for client, shares in routed.inbox.items()}

    def finish(self, survivors: Sequence[str]) -> Transcript:
        """Asks the survivors for their shares when the round can unmask, and returns the transcript."""
        survivors = tuple(sorted(survivors))
        dropped = tuple(sorted(self.participants - set(survivors)))
        threshold = self.config.threshold
        if len(self.participants) < threshold or len(survivors) < threshold:
            return self.view()
        request = RevealRequest(round=self.round, survivors=survivors, dropped=dropped)
        reveals: dict[str, SignedMessage] = {}
        for sender, data in self._reveal(request).items():
            if sender not in survivors:
                self._refuse(sender, "revealed shares but is not a survivor")
                continue
            message = self._signed(sender, data, "revealed shares")
            if message is None:
                continue
            try:
                answer = RevealedShares.from_bytes(message.body)
            except SerializationError as exc:
                self._refuse(sender, f"malformed revealed shares: {exc}")
                continue
            if answer.holder != sender or answer.round != self.round or not message.verifies(sender):
                self._refuse(sender, "revealed shares not signed by the holder for this round")
                continue
            reveals[sender] = message
        return Transcript(
            round=self.round,
            keys=self.keys,
            dealt=self.dealt,
            request=request,
            reveals=tuple(reveals[sender] for sender in sorted(reveals)),
        )
