"""The vault node's firmware: opens the sealed requests sent to this node, checks who
asked, and answers the threshold flow's operations with this node's `ShareKeeper`
(hsm/shares.py); as an acceptor, it checks every value proposed for an entry.

Pure: requests in, answers or changes out. `handle` answers a request at once (`Reply`),
from the value this node holds (`ThresholdRead`), or with a change to one entry that the
fleet must commit by majority before the answer it carries may be built
(`ThresholdUpdate`): building that answer is where a partial evaluation is made, so none
can happen before the attempt that pays for it is durable on a majority.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.codec import Message
from backupvault.crypto.seal import NodePrivateKey, ResponseKey, open_request, open_share
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.hsm.shares import (
    FleetShape,
    ShareKeeper,
    ThresholdRead,
    ThresholdUpdate,
    check_threshold_value,
    is_live_payload,
)
from backupvault.hsm.state import (
    SINGLE_SEED_ENTRY_TAG,
    EntryId,
    NodeShare,
    ThresholdState,
)
from backupvault.protocol import (
    MAX_ERROR_DETAIL,
    REQUEST_TYPES,
    AuthorizedRequest,
    DeliverShareRequest,
    ErrorCode,
    ErrorResponse,
    Op,
    RegisterShareRequest,
    is_valid_name,
)
from backupvault.tokens import SeenProofs, TokenRejected, TokenVerifier, fleet_audience


def delivered_share(
    hpke_key: NodePrivateKey, fleet_id: bytes, index: int, request: DeliverShareRequest
) -> RegisterShareRequest:
    """A late delivery to node `index`, opened: the share inside was sealed to this node
    alone, for this manifest, when it was dealt (docs/threshold.md, "Finishing later").
    What it carries is then taken as a register-share of that manifest, with every check
    of one (the manifest must be the entry's committed one, the share must pass the
    Feldman check against its commitments). The simulator's nodes open deliveries with it
    too (sim/world.py)."""
    share = open_share(
        hpke_key, fleet_id, index, hashlib.sha256(request.manifest).digest(), request.sealed_share
    )
    return RegisterShareRequest(request.account, request.entry, request.manifest, share, b"", 0)


@dataclass(frozen=True)
class NodeKey:
    """This node's own slot, HPKE private key (made by the node, sealed by its token: only
    requests sealed to this node open here) and signing key (share acknowledgements;
    listed in the deployment record)."""

    index: int
    hpke: NodePrivateKey
    signing: Ed25519PrivateKey


@dataclass(frozen=True)
class Reply:
    response: Message


def _error(code: ErrorCode, detail: str, remaining: int = 0) -> ErrorResponse:
    return ErrorResponse(str(code), detail[:MAX_ERROR_DETAIL], remaining)


class VaultFirmware:
    """`accounts` checks fleet tokens: the account issuer's key, and the audience
    `fleet_audience(fleet_id)`. `shape`: the fleet's node set, threshold and per-node
    limit, from its deployment record; `load_share`: this node's persisted share rows;
    `peer_signing_keys`: every node's signing key by share index (count reports)."""

    def __init__(
        self,
        fleet_id: bytes,
        node_key: NodeKey,
        accounts: TokenVerifier,
        shape: FleetShape,
        load_share: Callable[[bytes], NodeShare | None],
        peer_signing_keys: dict[int, Ed25519PublicKey] | None = None,
    ) -> None:
        if accounts.audience != fleet_audience(fleet_id):
            raise InvalidInput("the fleet token verifier must expect this fleet's audience")
        self.fleet_id = fleet_id
        self._accounts = accounts
        #: The request proofs this node accepted and that have not expired (each is good
        #: once, so a replayed copy is refused before anything counts).
        self._seen_proofs = SeenProofs()
        self._node_key = node_key
        #: What request proofs name this node by, besides its index (tokens.proof_message).
        self._public_key = node_key.hpke.public_key().to_bytes()
        self.shape = shape
        self.shares = ShareKeeper(
            fleet_id,
            node_key.index,
            shape,
            node_key.signing,
            load_share,
            peer_signing_keys=peer_signing_keys,
        )

    def announce(self, key: bytes, payload: bytes) -> bool:
        """The replica's hook: an entry's value is told to every node as it is taken, since
        the N copies of one request join it (docs/fleet.md, "Joining")."""
        return payload[:1] == bytes([ThresholdState.TAG])

    def worth_fetching(self, key: bytes, payload: bytes) -> bool:
        """The replica's hook: word that a live entry's value was chosen has a node that
        holds nothing for the entry fetch it (a live value of a version this node does not
        hold is taken only on t nodes' acknowledgements, `check_value`; an empty value or a
        tombstone, which anyone can name, never). Those acknowledgements show the entry was
        staged, not committed: a staged name's round finds nothing to write and ends."""
        return is_live_payload(payload)

    def on_accept(self, key: bytes, payload: bytes) -> None:
        """The replica's hook: this node is durably accepting `payload` for `key`."""
        self.shares.on_accept(key, payload)

    def tick(self, now: float) -> list[ThresholdUpdate]:
        """Rounds this node proposes on its own (`now`: the shell's monotonic clock): a
        share left at this node's own count of L past the grace is erased
        (`ShareKeeper.tick`)."""
        return self.shares.tick(now)

    # ---- the sealed channel ------------------------------------------------------------

    def open(
        self, op: Op, account: str, entry: str, sealed: bytes, now: float
    ) -> tuple[Message, ResponseKey] | ErrorResponse:
        """Open a sealed request and check who asked. The relay asserts (account, entry);
        the seal carries the account's fleet token, which the relay never sees: the
        request goes ahead only if that token verifies, names `account`, and the sealed
        names match the relay's (so a relay can neither act for an account on its own
        nor point one account's request at another's entry). Only a request sealed to this
        node's own key, for this node's index, opens. The token must be bound to a device
        key and come with that device's proof for this node and this request, not seen
        before, so a node cannot replay a token it opened to the others, nor to the node of
        its index in another epoch of the fleet (the proof names this node's key)."""
        if not (is_valid_name(account) and is_valid_name(entry)):
            raise InvalidInput("account and entry must be valid names")
        body, response_key = open_request(
            self._node_key.hpke, self.fleet_id, self._node_key.index, str(op), sealed
        )
        authorized = AuthorizedRequest.from_bytes(body)
        try:
            token_account = self._accounts.verify_bound(
                authorized.fleet_token,
                authorized.proof,
                request=authorized.request,
                fleet_id=self.fleet_id,
                node_index=self._node_key.index,
                node_key=self._public_key,
                seen=self._seen_proofs,
                now=now,
            )
        except TokenRejected as err:
            return _error(ErrorCode.UNAUTHORIZED, f"fleet token refused: {err.message}")
        request = REQUEST_TYPES[op].from_bytes(authorized.request)
        inner = (getattr(request, "account"), getattr(request, "entry"))  # noqa: B009
        if not (is_valid_name(inner[0]) and is_valid_name(inner[1])):
            raise InvalidInput("sealed account and entry must be valid names")
        same = hmac.compare_digest(inner[0].encode(), account.encode())
        same &= hmac.compare_digest(inner[1].encode(), entry.encode())
        same &= hmac.compare_digest(token_account.encode(), account.encode())
        if not same:
            return _error(
                ErrorCode.MISMATCH,
                "the sealed account/entry or the fleet token differ from the relay's",
            )
        return request, response_key

    # ---- what an acceptor checks itself -----------------------------------------------

    def check_value(self, key: bytes, payload: bytes, held: bytes = b"") -> str | None:
        """Why this node, as an acceptor, refuses a proposed entry value, or None: the
        value's own checks and, against the value this acceptor holds (`held`), the owner's
        signatures (`shares.check_threshold_value`). A value of the removed single-seed
        flow is refused. The replica checks a peer's answer to this node catching up with
        it too."""
        if payload[:1] == bytes([SINGLE_SEED_ENTRY_TAG]):
            return "a single-seed value (that flow was removed)"
        try:
            EntryId.from_bytes(key)
            proposed = ThresholdState.from_bytes(payload)
        except (InvalidInput, ValueError):
            return "not an entry state"
        try:
            return check_threshold_value(
                self.fleet_id,
                key,
                self.shape,
                proposed,
                held,
                node_keys=self.shares.node_keys,
            )
        except InvalidInput as err:
            # A peer's value is input: the replica asks for a reason, and an exception in
            # its step stopped the node, or answered a client 500 (review s48).
            return f"a value this node cannot check: {err.message}"

    # ---- operations ------------------------------------------------------------------

    def handle(self, op: Op, request: Message) -> Reply | ThresholdUpdate | ThresholdRead:
        try:
            if op is Op.DELIVER_SHARE and isinstance(request, DeliverShareRequest):
                # Opened here, then taken as a register-share of the committed M (the
                # keeper's `late` path: a node behind on the entry catches up on it first).
                key = self._node_key
                request = delivered_share(key.hpke, self.fleet_id, key.index, request)
            return self.shares.handle(op, request)
        except (InvalidInput, AuthenticationFailed) as err:
            return Reply(_error(ErrorCode.BAD_REQUEST, err.message))
