"""The vault node's firmware: OPAQUE server, guess counting, key release, destruction.

Pure: requests in, responses or state changes out. `handle` answers a request either at
once (`Reply`) or with an `Update`: a change to one entry that the fleet must commit by
majority before the reply it carries may be built. Building that reply is where the OPRF
is evaluated and the wrapped root key released, so neither can happen before the change
that pays for it (the guess) is durable on a majority.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backupvault.codec import Message
from backupvault.crypto import ksf, opaque
from backupvault.crypto.seal import NodePrivateKey, ResponseKey, open_request
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.hsm.shares import (
    FleetShape,
    ShareKeeper,
    ThresholdRead,
    ThresholdUpdate,
    check_threshold_value,
    decode_threshold,
)
from backupvault.hsm.state import (
    DEFAULT_GUESS_LIMIT,
    MAX_GUESS_LIMIT,
    EntryId,
    EntryState,
    NodeShare,
    ThresholdState,
)
from backupvault.hsm.tickets import (
    GRANT_LIFETIME_SECONDS,
    TICKET_LIFETIME_SECONDS,
    Grant,
    RecoveryTicket,
    RegistrationTicket,
    TicketExpired,
    TicketSealer,
)
from backupvault.protocol import (
    MAX_ERROR_DETAIL,
    REQUEST_TYPES,
    AuthorizedRequest,
    DeleteRequest,
    DeleteResponse,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    Op,
    RecoverFinishRequest,
    RecoverFinishResponse,
    RecoverStartRequest,
    RecoverStartResponse,
    RegisterFinishRequest,
    RegisterFinishResponse,
    RegisterStartRequest,
    RegisterStartResponse,
    StatusRequest,
    StatusResponse,
    is_valid_name,
    opaque_context,
    release_key,
)
from backupvault.tokens import TokenRejected, TokenVerifier, fleet_audience

WRAPPED_ROOT_KEY_LEN = 12 + 32 + 16  # nonce || AES-256-GCM(root key)
RECORD_LEN = 192  # RFC 9807 RegistrationRecord


@dataclass(frozen=True, repr=False)
class FleetSecrets(Message):
    """What every node of a fleet still shares, made once at the key ceremony: the
    single-seed OPAQUE flow's keys (docs/threshold.md replaces them with per-entry
    shares). There is no fleet-wide HPKE key: each node has its own (`NodeKey`)."""

    TAG = 71
    fleet_id: bytes
    oprf_seed: bytes = field(repr=False)
    server_private_key: bytes = field(repr=False)
    server_public_key: bytes
    ticket_key: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"FleetSecrets(fleet_id={self.fleet_id!r})"


@dataclass(frozen=True)
class NodeKey:
    """This node's own slot and HPKE private key (made by the node, sealed by its token):
    only requests sealed to this node open here."""

    index: int
    hpke: NodePrivateKey
    #: Signs share acknowledgements (the threshold flow); listed in the deployment record.
    signing: Ed25519PrivateKey | None = None


@dataclass(frozen=True)
class Reply:
    response: Message


@dataclass(frozen=True)
class Update:
    """Commit `apply(current)`'s new state, then answer with the reply it returned."""

    key: bytes
    apply: Callable[[EntryState], tuple[EntryState, Callable[[], Message]]]

    def change(self, payload: bytes) -> tuple[bytes, Callable[[], Message], bool]:
        """The replica's change function on a record's payload, and whether it charged a
        new attempt. An entry already on the threshold flow is left as it is: there is no
        way back to the single-seed flow."""
        if payload[:1] == bytes([ThresholdState.TAG]):
            return payload, _threshold_entry, False
        state = EntryState.from_bytes(payload) if payload else EntryState()
        new, build = self.apply(state)
        return new.to_bytes(), build, new.attempt_seq > state.attempt_seq


def _error(code: ErrorCode, detail: str, remaining: int = 0) -> ErrorResponse:
    return ErrorResponse(str(code), detail[:MAX_ERROR_DETAIL], remaining)


def credential_identifier(account: str, entry: str, nonce: bytes) -> bytes:
    """Names the OPRF key of one registration. The nonce is chosen by the fleet at
    register-start, so no one can ask for evaluations under a live record's key except
    through a counted recovery."""
    return EntryId(account, entry).to_bytes() + nonce


class VaultFirmware:
    """`accounts` checks fleet tokens: the account issuer's key, and the audience
    `fleet_audience(fleet_id)`. `guess_limit`: the fleet's measured limit, the most an
    entry may ask for."""

    def __init__(
        self,
        secrets: FleetSecrets,
        node_key: NodeKey,
        rng: Callable[[int], bytes],
        accounts: TokenVerifier,
        *,
        guess_limit: int = MAX_GUESS_LIMIT,
        fake_ksf_params: ksf.Argon2idParams = ksf.DEFAULT_ARGON2ID,
        shape: FleetShape | None = None,
        load_share: Callable[[bytes], NodeShare | None] | None = None,
    ) -> None:
        """`shape` and `load_share` (this node's persisted share rows) enable the
        threshold flow; it also needs `node_key.signing`."""
        if accounts.audience != fleet_audience(secrets.fleet_id):
            raise InvalidInput("the fleet token verifier must expect this fleet's audience")
        self.fleet_id = secrets.fleet_id
        self._accounts = accounts
        self._rng = rng
        #: The fleet's measured guess limit (its deployment record): an entry may ask for
        #: fewer guesses, never more.
        self.guess_limit = guess_limit
        self._node_key = node_key
        self._setup = opaque.ServerSetup(
            oprf_seed=secrets.oprf_seed,
            server_private_key=secrets.server_private_key,
            server_public_key=secrets.server_public_key,
        )
        self._tickets = TicketSealer(secrets.ticket_key, rng)
        self._context = opaque_context(secrets.fleet_id)
        # What a fake record's KE2 names: the parameters new registrations use by default
        # (a simulation whose clients register with cheaper ones passes those).
        self._fake_ksf_params = fake_ksf_params.to_bytes()
        self.shape = shape
        self.shares: ShareKeeper | None = None
        if shape is not None and load_share is not None and node_key.signing is not None:
            self.shares = ShareKeeper(
                secrets.fleet_id, node_key.index, shape, node_key.signing, load_share
            )

    def announce(self, key: bytes, payload: bytes) -> bool:
        """The replica's hook: a threshold entry's value is told to every node as it is
        taken, since the N copies of one threshold request join it (docs/fleet.md,
        "Joining"); single-seed entries take one request at one node and need not."""
        return payload[:1] == bytes([ThresholdState.TAG])

    def on_accept(self, key: bytes, payload: bytes) -> None:
        """The replica's hook: this node is durably accepting `payload` for `key`."""
        if self.shares is not None:
            self.shares.on_accept(key, payload)

    # ---- the sealed channel ------------------------------------------------------------

    def open(
        self, op: Op, account: str, entry: str, sealed: bytes, now: float
    ) -> tuple[Message, ResponseKey] | ErrorResponse:
        """Open a sealed request and check who asked. The relay asserts (account, entry);
        the seal carries the account's fleet token, which the relay never sees: the
        request goes ahead only if that token verifies, names `account`, and the sealed
        names match the relay's (so a relay can neither act for an account on its own
        nor point one account's request at another's entry). Only a request sealed to this
        node's own key, for this node's index, opens."""
        if not (is_valid_name(account) and is_valid_name(entry)):
            raise InvalidInput("account and entry must be valid names")
        body, response_key = open_request(
            self._node_key.hpke, self.fleet_id, self._node_key.index, str(op), sealed
        )
        authorized = AuthorizedRequest.from_bytes(body)
        try:
            token_account = self._accounts.verify(authorized.fleet_token, now=now)
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
        """Why this node, as an acceptor, refuses a proposed entry state, or None. Only what
        one value shows on its own: every honest proposer's value passes, a hostile node's
        forged one (a guess limit above the fleet's, more guesses used than allowed, a
        tombstone still holding a key, a malformed record) is not accepted here, so it
        cannot reach a majority of honest nodes. What needs the previous value or the
        owner's signature comes with the threshold protocol (docs/threshold.md).
        `held`: the payload this acceptor holds for the key (a threshold entry's value is
        also checked against it: `shares.check_threshold_value`)."""
        if payload[:1] == bytes([ThresholdState.TAG]):
            try:
                EntryId.from_bytes(key)
                proposed = ThresholdState.from_bytes(payload)
            except (InvalidInput, ValueError):
                return "not an entry state"
            return check_threshold_value(self.fleet_id, key, self.shape, proposed, held)
        try:
            if held[:1] == bytes([ThresholdState.TAG]) and decode_threshold(held) != (
                ThresholdState()
            ):
                return "a threshold entry cannot go back to the single-seed flow"
        except (InvalidInput, ValueError):
            pass
        try:
            EntryId.from_bytes(key)
            state = EntryState.from_bytes(payload)
            status = EntryStatus(state.status)
        except (InvalidInput, ValueError):
            return "not an entry state"
        if not 1 <= state.guess_limit <= MAX_GUESS_LIMIT:
            return "guess limit out of range"
        if state.attempts_used > state.guess_limit:
            return "more guesses used than the limit"
        if state.success_seq > state.attempt_seq:
            return "a success for an attempt never made"
        if status is EntryStatus.LIVE:
            if state.guess_limit > self.guess_limit:
                return "guess limit above the fleet's"
            if len(state.record) != RECORD_LEN or len(state.wrapped_root_key) != (
                WRAPPED_ROOT_KEY_LEN
            ):
                return "a live entry without a well-formed record and wrapped key"
            try:
                ksf.Argon2idParams.from_bytes(state.ksf_params)
            except InvalidInput:
                return "a live entry with malformed KSF parameters"
        elif state.record or state.wrapped_root_key or state.registration_nonce:
            return "an empty or destroyed entry still holding a key"
        return None

    # ---- operations ------------------------------------------------------------------

    def handle(
        self, op: Op, request: Message, now: float
    ) -> Reply | Update | ThresholdUpdate | ThresholdRead:
        if op in THRESHOLD_OPS:
            if self.shares is None:
                return Reply(
                    _error(ErrorCode.BAD_REQUEST, "this node is not set up for the threshold flow")
                )
            try:
                return self.shares.handle(op, request)
            except (InvalidInput, AuthenticationFailed) as err:
                return Reply(_error(ErrorCode.BAD_REQUEST, err.message))
        try:
            match op, request:
                case Op.REGISTER_START, RegisterStartRequest():
                    return self._register_start(request, now)
                case ((Op.REGISTER_FINISH | Op.CHANGE_PASSWORD), RegisterFinishRequest()):
                    return self._register_finish(op, request, now)
                case Op.RECOVER_START, RecoverStartRequest():
                    return self._recover_start(request, now)
                case Op.RECOVER_FINISH, RecoverFinishRequest():
                    return self._recover_finish(request, now)
                case Op.DELETE, DeleteRequest():
                    return self._delete(request, now)
                case Op.STATUS, StatusRequest():
                    return self._status(request)
        except TicketExpired as err:
            return Reply(_error(ErrorCode.EXPIRED, f"{err.message}; start again"))
        except (InvalidInput, AuthenticationFailed) as err:
            return Reply(_error(ErrorCode.BAD_REQUEST, err.message))
        return Reply(_error(ErrorCode.BAD_REQUEST, "request does not match the operation"))

    def _register_start(self, request: RegisterStartRequest, now: float) -> Reply:
        EntryId.of(request.account, request.entry)
        nonce = self._rng(16)
        response = opaque.server_registration_response(
            self._setup,
            opaque.RegistrationRequest.from_bytes(request.registration_request),
            credential_identifier(request.account, request.entry, nonce),
        )
        ticket = RegistrationTicket(
            request.account, request.entry, nonce, int(now) + TICKET_LIFETIME_SECONDS
        )
        return Reply(RegisterStartResponse(response.to_bytes(), self._tickets.seal(ticket)))

    def _register_finish(self, op: Op, request: RegisterFinishRequest, now: float) -> Update:
        ticket = self._tickets.open(RegistrationTicket, request.registration_ticket, now)
        if (ticket.account, ticket.entry) != (request.account, request.entry):
            raise InvalidInput("registration ticket is for another entry")
        opaque.RegistrationRecord.from_bytes(request.record)  # validates every point
        ksf.Argon2idParams.from_bytes(request.ksf_params)
        if len(request.wrapped_root_key) != WRAPPED_ROOT_KEY_LEN:
            raise InvalidInput("wrapped root key has the wrong length")
        if not 1 <= request.guess_limit <= min(self.guess_limit, MAX_GUESS_LIMIT):
            raise InvalidInput(
                f"guess limit must be between 1 and {min(self.guess_limit, MAX_GUESS_LIMIT)}"
                " (this fleet's measured limit)"
            )
        grant = None
        if op is Op.CHANGE_PASSWORD:
            grant = self._tickets.open(Grant, request.grant, now)
            if (grant.account, grant.entry) != (request.account, request.entry):
                raise InvalidInput("grant is for another entry")

        def apply(state: EntryState) -> tuple[EntryState, Callable[[], Message]]:
            if grant is None and state.status == EntryStatus.LIVE:
                return state, lambda: _error(
                    ErrorCode.ALREADY_REGISTERED,
                    "this entry already holds a key; recover it to change the password",
                )
            if grant is not None and not _grant_is_current(grant, state):
                return state, lambda: _error(
                    ErrorCode.STALE_ATTEMPT,
                    "the entry changed since your recovery; recover again, then retry",
                )
            new = state.changed(
                status=EntryStatus.LIVE,
                generation=state.generation + 1,
                registration_nonce=ticket.registration_nonce,
                record=request.record,
                ksf_params=request.ksf_params,
                wrapped_root_key=request.wrapped_root_key,
                guess_limit=request.guess_limit,
                attempts_used=0,
                # Retire every attempt made before this registration: a KE2 evaluated for
                # the previous record must not let its KE3 reset (or unlock) the new one.
                success_seq=state.attempt_seq,
            )
            return new, lambda: RegisterFinishResponse(new.version, new.guess_limit)

        return Update(EntryId.of(request.account, request.entry).to_bytes(), apply)

    def _recover_start(self, request: RecoverStartRequest, now: float) -> Update:
        ke1 = opaque.KE1.from_bytes(request.ke1)
        ke1_hash = hashlib.sha256(request.ke1).digest()
        account, entry, client_time = request.account, request.entry, request.client_time_ms
        if not 0 <= client_time < 1 << 63:
            raise InvalidInput("client time out of range")

        def apply(state: EntryState) -> tuple[EntryState, Callable[[], Message]]:
            if state.status == EntryStatus.EMPTY:
                # Answer as for a registered entry (RFC 9807 §10.9): a fake record's KE2,
                # the same size, so the relay cannot tell; recover-finish says not found.
                return state, lambda: self._evaluate(account, entry, ke1, state, now)
            if state.status == EntryStatus.DESTROYED:
                return state, _destroyed
            if state.attempt_seq > state.success_seq and hmac.compare_digest(
                state.attempt_ke1_hash, ke1_hash
            ):
                # A resend of the latest open attempt's KE1 (its answer was lost): the same
                # evaluation again reveals nothing new, so it is not charged again.
                return state, lambda: self._evaluate(account, entry, ke1, state, now)
            if client_time <= state.attempt_client_time_ms:
                # Older than the latest attempt: a replay (the relay may resend any sealed
                # request it saw), or a device whose clock is behind. Never charged.
                return state, lambda: _error(
                    ErrorCode.STALE_ATTEMPT,
                    "a later attempt was already made; check this device's clock, then retry",
                    state.guesses_remaining,
                )
            if state.attempts_used >= state.guess_limit:
                # Every guess was spent without a success: destroy instead of evaluating.
                return state.destroyed(), _destroyed
            counted = state.changed(
                attempts_used=state.attempts_used + 1,
                attempt_seq=state.attempt_seq + 1,
                attempt_ke1_hash=ke1_hash,
                attempt_client_time_ms=client_time,
            )
            return counted, lambda: self._evaluate(account, entry, ke1, counted, now)

        return Update(EntryId.of(account, entry).to_bytes(), apply)

    def _evaluate(
        self, account: str, entry: str, ke1: opaque.KE1, state: EntryState, now: float
    ) -> RecoverStartResponse:
        """Runs only after the guess that pays for it is committed (or, for a resend of the
        latest attempt's KE1, after the state that already paid for it is read back)."""
        live = state.status == EntryStatus.LIVE
        assert not live or state.attempt_seq > state.success_seq, "evaluating an unpaid attempt"
        server_state, ke2 = opaque.server_login_start(
            self._setup,
            opaque.RegistrationRecord.from_bytes(state.record) if live else None,
            ke1,
            credential_identifier(account, entry, state.registration_nonce if live else b""),
            context=self._context,
        )
        ticket = RecoveryTicket(
            account,
            entry,
            state.attempt_seq if live else 0,
            server_state.expected_client_mac,
            server_state.session_key,
            int(now) + TICKET_LIFETIME_SECONDS,
        )
        ksf_params = state.ksf_params if live else self._fake_ksf_params
        return RecoverStartResponse(
            ke2.to_bytes(),
            ksf_params,
            self._tickets.seal(ticket),
            state.guesses_remaining if live else DEFAULT_GUESS_LIMIT - 1,
            state.guess_limit if live else DEFAULT_GUESS_LIMIT,
        )

    def _recover_finish(self, request: RecoverFinishRequest, now: float) -> Update:
        ticket = self._tickets.open(RecoveryTicket, request.recovery_ticket, now)
        if (ticket.account, ticket.entry) != (request.account, request.entry):
            raise InvalidInput("recovery ticket is for another entry")
        ke3 = opaque.KE3.from_bytes(request.ke3)
        verified = hmac.compare_digest(ke3.client_mac, ticket.expected_client_mac)
        seq = ticket.attempt_seq

        def apply(state: EntryState) -> tuple[EntryState, Callable[[], Message]]:
            if state.status == EntryStatus.DESTROYED:
                return state, _destroyed
            if state.status == EntryStatus.EMPTY or seq == 0:
                # The KE2 came from a fake record (seq 0 is never a real attempt).
                return state, _not_registered
            current = state.status == EntryStatus.LIVE and state.attempt_seq == seq
            if not current or state.success_seq >= seq:
                return state, lambda: _error(
                    ErrorCode.STALE_ATTEMPT,
                    "this attempt is no longer the latest, or was already used; start again",
                    state.guesses_remaining,
                )
            if not verified:
                if state.attempts_used >= state.guess_limit:
                    return state.destroyed(), _destroyed
                return state, lambda: _error(
                    ErrorCode.WRONG_PASSWORD, "wrong password", state.guesses_remaining
                )
            # A success resets only the attempt it answers: the latest, not yet answered.
            assert state.attempt_seq == seq > state.success_seq
            released = state.changed(attempts_used=0, success_seq=seq)
            return released, lambda: self._release(request, ticket, released, now)

        return Update(EntryId.of(request.account, request.entry).to_bytes(), apply)

    def _release(
        self,
        request: RecoverFinishRequest,
        ticket: RecoveryTicket,
        state: EntryState,
        now: float,
    ) -> RecoverFinishResponse:
        key = release_key(ticket.session_key, request.account, request.entry)
        nonce = self._rng(12)
        sealed = nonce + AESGCM(key).encrypt(nonce, state.wrapped_root_key, None)
        grant = Grant(
            request.account,
            request.entry,
            state.generation,
            state.success_seq,
            int(now) + GRANT_LIFETIME_SECONDS,
        )
        return RecoverFinishResponse(sealed, self._tickets.seal(grant))

    def _delete(self, request: DeleteRequest, now: float) -> Update:
        grant = self._tickets.open(Grant, request.grant, now) if request.grant else None
        if grant is not None and (grant.account, grant.entry) != (request.account, request.entry):
            raise InvalidInput("grant is for another entry")

        def apply(state: EntryState) -> tuple[EntryState, Callable[[], Message]]:
            if state.status == EntryStatus.EMPTY:
                return state, _not_registered
            if state.status == EntryStatus.LIVE and not _grant_is_current(grant, state):
                # A live key is deleted only by whoever just proved the password: neither
                # the relay nor anyone holding only the account's tokens can.
                return state, lambda: _error(
                    ErrorCode.STALE_ATTEMPT if grant is not None else ErrorCode.UNAUTHORIZED,
                    "deleting a live key needs a recent successful recovery; recover, then retry",
                    state.guesses_remaining,
                )
            # Secrets overwritten as for a destroyed entry, counters kept, so no stale
            # replica brings the old key back; the owner may register anew. A destroyed
            # entry has nothing left to protect: the fleet token alone clears it.
            new = state.destroyed().changed(status=EntryStatus.EMPTY, attempts_used=0)
            return new, lambda: DeleteResponse(new.version)

        return Update(EntryId.of(request.account, request.entry).to_bytes(), apply)

    def _status(self, request: StatusRequest) -> Update:
        def apply(state: EntryState) -> tuple[EntryState, Callable[[], Message]]:
            return state, lambda: StatusResponse(
                state.status, state.guess_limit, state.guesses_remaining, state.version
            )

        return Update(EntryId.of(request.account, request.entry).to_bytes(), apply)


THRESHOLD_OPS = frozenset(
    {Op.REGISTER_SHARE, Op.CHANGE_SHARE, Op.MANIFEST, Op.EVALUATE, Op.RESET, Op.DELETE_SHARE}
)


def _grant_is_current(grant: Grant | None, state: EntryState) -> bool:
    """The grant answers this registration's latest attempt, and nothing happened since."""
    return (
        grant is not None
        and state.status == EntryStatus.LIVE
        and state.generation == grant.generation
        and state.success_seq == grant.success_seq == state.attempt_seq
    )


def _threshold_entry() -> ErrorResponse:
    return _error(
        ErrorCode.BAD_REQUEST,
        "this entry uses the threshold flow; update the client (docs/threshold.md)",
    )


def _not_registered() -> ErrorResponse:
    return _error(ErrorCode.NOT_REGISTERED, "no key is stored here")


def _destroyed() -> ErrorResponse:
    return _error(
        ErrorCode.DESTROYED,
        "too many wrong passwords: the key was destroyed and cannot be recovered",
    )
