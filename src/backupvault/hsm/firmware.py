"""The vault node's firmware: OPAQUE server, guess counting, key release, destruction.

Pure: requests in, responses or state changes out. `handle` answers a request either at
once (`Reply`) or with an `Update`: a change to one entry that the fleet must commit by
majority before the reply it carries may be built. Building that reply is where the OPRF
is evaluated and the wrapped root key released, so neither can happen before the change
that pays for it (the guess) is durable on a majority.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backupvault.codec import Message
from backupvault.crypto import ksf, opaque
from backupvault.crypto.seal import FleetPrivateKey, ResponseKey, open_request
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.hsm.state import MAX_GUESS_LIMIT, EntryId, EntryState
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
    REQUEST_TYPES,
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
    opaque_context,
    release_key,
)

WRAPPED_ROOT_KEY_LEN = 12 + 32 + 16  # nonce || AES-256-GCM(root key)


@dataclass(frozen=True, repr=False)
class FleetSecrets(Message):
    """What every node of a fleet shares, made once at the key ceremony."""

    TAG = 70
    fleet_id: bytes
    oprf_seed: bytes = field(repr=False)
    server_private_key: bytes = field(repr=False)
    server_public_key: bytes
    hpke_private_key: bytes = field(repr=False)
    ticket_key: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"FleetSecrets(fleet_id={self.fleet_id!r})"


@dataclass(frozen=True)
class Reply:
    response: Message


@dataclass(frozen=True)
class Update:
    """Commit `apply(current)`'s new state, then answer with the reply it returned."""

    key: bytes
    apply: Callable[[EntryState], tuple[EntryState, Callable[[], Message]]]


def _error(code: ErrorCode, detail: str, remaining: int = 0) -> ErrorResponse:
    return ErrorResponse(str(code), detail, remaining)


def credential_identifier(account: str, entry: str, nonce: bytes) -> bytes:
    """Names the OPRF key of one registration. The nonce is chosen by the fleet at
    register-start, so no one can ask for evaluations under a live record's key except
    through a counted recovery."""
    return EntryId(account, entry).to_bytes() + nonce


class VaultFirmware:
    def __init__(self, secrets: FleetSecrets, rng: Callable[[int], bytes]) -> None:
        self.fleet_id = secrets.fleet_id
        self._rng = rng
        self._hpke_key = FleetPrivateKey.from_bytes(secrets.hpke_private_key)
        self._setup = opaque.ServerSetup(
            oprf_seed=secrets.oprf_seed,
            server_private_key=secrets.server_private_key,
            server_public_key=secrets.server_public_key,
        )
        self._tickets = TicketSealer(secrets.ticket_key, rng)
        self._context = opaque_context(secrets.fleet_id)

    # ---- the sealed channel ------------------------------------------------------------

    def open(
        self, op: Op, account: str, entry: str, sealed: bytes
    ) -> tuple[Message, ResponseKey] | ErrorResponse:
        """Open a sealed request. The relay asserts (account, entry); a request whose
        sealed names differ is refused, so a relay cannot point one account's request
        at another's entry."""
        body, response_key = open_request(self._hpke_key, self.fleet_id, str(op), sealed)
        request = REQUEST_TYPES[op].from_bytes(body)
        inner = (getattr(request, "account"), getattr(request, "entry"))  # noqa: B009
        if not (hmac.compare_digest(inner[0], account) and hmac.compare_digest(inner[1], entry)):
            return _error(ErrorCode.MISMATCH, "sealed account/entry differ from the relay's")
        return request, response_key

    # ---- operations ------------------------------------------------------------------

    def handle(self, op: Op, request: Message, now: float) -> Reply | Update:
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
                    return self._delete(request)
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
        if not 1 <= request.guess_limit <= MAX_GUESS_LIMIT:
            raise InvalidInput(f"guess limit must be between 1 and {MAX_GUESS_LIMIT}")
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
            if grant is not None and not (
                state.status == EntryStatus.LIVE
                and state.generation == grant.generation
                and state.success_seq == grant.success_seq == state.attempt_seq
            ):
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
        account, entry = request.account, request.entry

        def apply(state: EntryState) -> tuple[EntryState, Callable[[], Message]]:
            if state.status == EntryStatus.EMPTY:
                return state, lambda: _error(ErrorCode.NOT_REGISTERED, "no key is stored here")
            if state.status == EntryStatus.DESTROYED:
                return state, _destroyed
            if state.attempts_used >= state.guess_limit:
                # Every guess was spent without a success: destroy instead of evaluating.
                return state.destroyed(), _destroyed
            counted = state.changed(
                attempts_used=state.attempts_used + 1, attempt_seq=state.attempt_seq + 1
            )
            return counted, lambda: self._evaluate(account, entry, ke1, counted, now)

        return Update(EntryId.of(account, entry).to_bytes(), apply)

    def _evaluate(
        self, account: str, entry: str, ke1: opaque.KE1, state: EntryState, now: float
    ) -> RecoverStartResponse:
        """Runs only after the guess that pays for it is committed."""
        # Only a live state with this very attempt counted (and not yet answered) evaluates.
        assert state.status == EntryStatus.LIVE and state.success_seq < state.attempt_seq
        assert 0 < state.attempts_used <= state.guess_limit, "an evaluation without its guess"
        server_state, ke2 = opaque.server_login_start(
            self._setup,
            opaque.RegistrationRecord.from_bytes(state.record),
            ke1,
            credential_identifier(account, entry, state.registration_nonce),
            context=self._context,
        )
        ticket = RecoveryTicket(
            account,
            entry,
            state.attempt_seq,
            server_state.expected_client_mac,
            server_state.session_key,
            int(now) + TICKET_LIFETIME_SECONDS,
        )
        return RecoverStartResponse(
            ke2.to_bytes(), state.ksf_params, self._tickets.seal(ticket), state.guesses_remaining
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

    def _delete(self, request: DeleteRequest) -> Update:
        def apply(state: EntryState) -> tuple[EntryState, Callable[[], Message]]:
            # Secrets overwritten as for a destroyed entry, but the owner may register anew.
            new = state
            if state.status == EntryStatus.LIVE:
                new = state.destroyed().changed(status=EntryStatus.EMPTY, attempts_used=0)
            return new, lambda: DeleteResponse(new.version)

        return Update(EntryId.of(request.account, request.entry).to_bytes(), apply)

    def _status(self, request: StatusRequest) -> Update:
        def apply(state: EntryState) -> tuple[EntryState, Callable[[], Message]]:
            return state, lambda: StatusResponse(
                state.status, state.guess_limit, state.guesses_remaining, state.version
            )

        return Update(EntryId.of(request.account, request.entry).to_bytes(), apply)


def _destroyed() -> ErrorResponse:
    return _error(
        ErrorCode.DESTROYED,
        "too many wrong passwords: the key was destroyed and cannot be recovered",
    )
