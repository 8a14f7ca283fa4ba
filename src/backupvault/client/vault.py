"""The vault client: register, recover, change the password, delete, status.

Speaks only the wire protocol (`backupvault.protocol`) through the relay. The password,
export_key and root key never leave this process: the fleet gets OPAQUE messages and a
root key wrapped under a key derived from export_key.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupvault.client.errors import (
    AlreadyRegistered,
    Destroyed,
    FleetUnavailable,
    NotRegistered,
    RateLimited,
    RelayUnreachable,
    Unauthorized,
    VaultError,
    WrongPassword,
)
from backupvault.codec import Message
from backupvault.crypto import ksf, opaque
from backupvault.crypto.seal import NodePublicKey, ResponseKey, seal_request
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fanout import FanoutAnswers, FanoutReply
from backupvault.protocol import (
    NODE_HEADER,
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
    SealedCopies,
    StatusRequest,
    StatusResponse,
    check_name,
    decode_response,
    opaque_context,
    release_key,
)

if TYPE_CHECKING:
    from backupvault.client.threshold import ThresholdRecovery

T = TypeVar("T", bound=Message)

DEFAULT_ENTRY = "backup-root-key"
DEFAULT_GUESS_LIMIT = 10
#: How long the SDK waits, in all, on a relay's Retry-After before giving up.
MAX_RATE_LIMIT_WAIT_SECONDS = 30.0
#: Resends of a recover-start whose answer was lost, or that the fleet could not finish in
#: time (the same KE1: never charged twice), after RESEND_BACKOFF_SECONDS, doubling.
RECOVER_START_RESENDS = 3
RESEND_BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class Recovery:
    """A successful recovery: the root key, a grant for a password change or a delete in
    the next minutes, and how many wrong passwords were tried since the last success."""

    root_key: bytes = field(repr=False)
    grant: bytes = field(repr=False)
    wrong_guesses_before: int
    #: The fleet epoch the entry was migrated from (OTA clients after a rotation), or None.
    migrated_from: int | None = None
    #: The threshold flow's recovery (manifest, export_key, attempt), needed to change the
    #: password or delete; None for a single-seed recovery.
    threshold: ThresholdRecovery | None = field(default=None, repr=False)
    #: The entry was on the single seed and has just been registered with the threshold flow.
    single_seed_migrated: bool = False


@dataclass(frozen=True)
class NodeOutcome(Generic[T]):
    """One node's part of a fan-out: its answer, its refusal, or why there is none."""

    index: int
    response: T | None = None
    error: ErrorResponse | None = None
    failure: str | None = None

    def describe(self) -> str:
        if self.error is not None:
            return f"node {self.index}: {self.error.detail or self.error.code}"
        return f"node {self.index}: {self.failure or 'answered'}"


@dataclass(frozen=True)
class VaultStatus:
    status: EntryStatus
    guess_limit: int
    guesses_remaining: int
    version: int
    #: Threshold entries: the nodes that do not hold the agreed manifest, and why.
    nodes_without: tuple[str, ...] = ()
    #: The entry is still on the single-seed flow (migrated at its next recovery).
    single_seed: bool = False


def _wrap_key(export_key: bytes, account: str, entry: str) -> bytes:
    return HKDF(
        hashes.SHA256(),
        32,
        salt=None,
        info=b"backupvault/v1 wrap root key " + account.encode() + b"\x00" + entry.encode(),
    ).derive(export_key)


def wrap_root_key(export_key: bytes, account: str, entry: str, root_key: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(_wrap_key(export_key, account, entry)).encrypt(nonce, root_key, None)


def unwrap_root_key(export_key: bytes, account: str, entry: str, wrapped: bytes) -> bytes:
    try:
        return AESGCM(_wrap_key(export_key, account, entry)).decrypt(
            wrapped[:12], wrapped[12:], None
        )
    except InvalidTag:
        raise VaultError("the root key the vault returned does not open") from None


def _retry_after(answer: httpx.Response) -> float:
    value = answer.headers.get("retry-after", "1")
    return float(value) if value.isascii() and value.isdigit() else 1.0


class VaultClient:
    def __init__(
        self,
        relay_url: str,
        token: str,
        account: str,
        fleet_id: bytes,
        node_keys: Sequence[NodePublicKey],
        opaque_server_key: bytes,
        entry: str = DEFAULT_ENTRY,
        ksf_params: ksf.Argon2idParams = ksf.DEFAULT_ARGON2ID,
        http: httpx.Client | None = None,
        epoch: int | None = None,
        fleet_token: str = "",
        notify: Callable[[str], None] | None = None,
    ) -> None:
        """`epoch`: send to that epoch of the fleet (the relay's
        /v1/epochs/{epoch}/vault/... route, as OTA clients do); None: the relay's current
        fleet (/v1/vault/..., for pinned keys). `token` goes to the relay; `fleet_token`
        only inside the seal, for the nodes. `node_keys`: each node's HPKE key by index,
        from the pinned config or the verified deployment record (never from the relay).
        `notify` hears about automatic waits."""
        self.relay_url = relay_url.rstrip("/")
        self.epoch = epoch
        self._vault_url = (
            f"{self.relay_url}/v1/vault"
            if epoch is None
            else f"{self.relay_url}/v1/epochs/{epoch}/vault"
        )
        self.account = check_name("account", account)
        self.entry = check_name("entry", entry)
        self.fleet_id = fleet_id
        if not node_keys:
            raise InvalidInput("a fleet has at least one node key")
        self.node_keys = tuple(node_keys)
        self.opaque_server_key = opaque_server_key
        self.ksf_params = ksf_params
        self._token = token
        self._fleet_token = fleet_token
        self._notify = notify or (lambda _message: None)
        self._http = http or httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))

    # ---- transport ---------------------------------------------------------------------

    def _post(
        self,
        op: Op,
        seal: Callable[[], tuple[bytes, list[ResponseKey]]],
        resends: int,
    ) -> tuple[httpx.Response, list[ResponseKey]]:
        """Post a freshly sealed body (`seal` again for every try: a seal is used once). A
        429 is waited out (up to MAX_RATE_LIMIT_WAIT_SECONDS in all). An answer lost on the
        way (a timeout) or a 503 (a node timed out, the fleet could not commit in time; the
        request may still take effect) is sent again up to `resends` times, for requests
        where that cannot cost anything twice."""
        waited = 0.0
        backoff = RESEND_BACKOFF_SECONDS
        while True:
            sealed, response_keys = seal()
            try:
                answer = self._http.post(
                    f"{self._vault_url}/{self.entry}/{op}",
                    content=sealed,
                    headers={
                        "Authorization": f"Bearer {self._token}",
                        "Content-Type": "application/octet-stream",
                    },
                )
            except httpx.ConnectError as err:
                raise RelayUnreachable(self.relay_url, str(err)) from None
            except httpx.HTTPError as err:
                if resends > 0:
                    resends -= 1
                    time.sleep(backoff)
                    backoff *= 2
                    continue
                raise FleetUnavailable(
                    f"the relay at {self.relay_url} did not answer ({type(err).__name__});"
                    " the request may have been counted"
                ) from None
            if answer.status_code == 429:
                wait = _retry_after(answer)
                if waited + wait <= MAX_RATE_LIMIT_WAIT_SECONDS:
                    self._notify(f"the relay asks to slow down: waiting {wait:g} s")
                    time.sleep(wait)
                    waited += wait
                    continue
            if answer.status_code == 503 and resends > 0:
                resends -= 1
                time.sleep(backoff)
                backoff *= 2
                continue
            return answer, response_keys

    def _call(self, op: Op, request: Message, kind: type[T], resends: int = 0) -> T:
        """Seal and send `request` to one node through the relay (retries: `_post`)."""
        body = AuthorizedRequest(self._fleet_token, request.to_bytes()).to_bytes()
        answer, response_keys = self._post(op, lambda: self._seal(op, body), resends)
        if answer.status_code != 200:
            self._raise_http_error(answer)
        try:
            response_key = self._response_key(answer, response_keys)
            response = decode_response(op, response_key.open(answer.content))
        except (InvalidInput, AuthenticationFailed) as err:
            raise VaultError(f"the vault's answer did not verify: {err.message}") from None
        if isinstance(response, ErrorResponse):
            self._raise_vault_error(response)
        if not isinstance(response, kind):
            raise VaultError(f"unexpected answer from the vault: {type(response).__name__}")
        return response

    def call_each(
        self, op: Op, requests: Sequence[Message], kind: type[T], resends: int = 0
    ) -> list[NodeOutcome[T]]:
        """Send `requests[i]` to node i, all at once through the relay's fan-out
        (docs/relay.md), and return every node's outcome by index. A 429 is waited out as
        in `_call`; a lost answer or a 503 (no node answered) is sent again up to
        `resends` times (for requests that cannot cost anything twice)."""
        if len(requests) != len(self.node_keys):
            raise ValueError("one request per node")
        bodies = [AuthorizedRequest(self._fleet_token, r.to_bytes()).to_bytes() for r in requests]
        answer, response_keys = self._post(op, lambda: self._seal_each(op, bodies), resends)
        if answer.status_code != 200:
            self._raise_http_error(answer)
        try:
            replies = FanoutAnswers.for_nodes(answer.content, len(self.node_keys)).replies
        except InvalidInput as err:
            raise VaultError(f"the relay's answer is malformed: {err.message}") from None
        return [self._outcome(op, reply, response_keys[reply.index], kind) for reply in replies]

    @staticmethod
    def _outcome(
        op: Op, reply: FanoutReply, response_key: ResponseKey, kind: type[T]
    ) -> NodeOutcome[T]:
        """One node's reply, opened with its own copy's response key."""
        index = reply.index
        if reply.status != 200:
            code, detail = reply.error()
            if not reply.answered:
                return NodeOutcome(index, failure=detail or "no answer")
            return NodeOutcome(index, failure=f"HTTP {reply.status} {code}: {detail}".strip())
        try:
            response = decode_response(op, response_key.open(reply.body))
        except (InvalidInput, AuthenticationFailed) as err:
            return NodeOutcome(index, failure=f"its answer did not verify: {err.message}")
        if isinstance(response, ErrorResponse):
            return NodeOutcome(index, error=response)
        if not isinstance(response, kind):
            return NodeOutcome(index, failure=f"unexpected answer {type(response).__name__}")
        return NodeOutcome(index, response=response)

    def _seal_each(self, op: Op, bodies: Sequence[bytes]) -> tuple[bytes, list[ResponseKey]]:
        """`bodies[i]` sealed to node i's own key; the response key of each copy."""
        sealed = [
            seal_request(key, self.fleet_id, index, str(op), body)
            for index, (key, body) in enumerate(zip(self.node_keys, bodies, strict=True))
        ]
        return SealedCopies([copy for copy, _ in sealed]).to_bytes(), [key for _, key in sealed]

    def _seal(self, op: Op, body: bytes) -> tuple[bytes, list[ResponseKey]]:
        """`body` sealed to every node's own key (the relay picks the node and gives it only
        its copy); the response key of each copy, by node index."""
        sealed = [
            seal_request(key, self.fleet_id, index, str(op), body)
            for index, key in enumerate(self.node_keys)
        ]
        return SealedCopies([copy for copy, _ in sealed]).to_bytes(), [key for _, key in sealed]

    @staticmethod
    def _response_key(answer: httpx.Response, keys: list[ResponseKey]) -> ResponseKey:
        """The response key of the copy the answering node opened (the relay names it)."""
        named = answer.headers.get(NODE_HEADER, "")
        if not (named.isascii() and named.isdigit() and int(named) < len(keys)):
            raise InvalidInput("the relay's answer names no node of this fleet")
        return keys[int(named)]

    @staticmethod
    def _raise_http_error(answer: httpx.Response) -> None:
        try:
            body = answer.json()
            detail = str(body.get("detail") or body.get("error"))
        except ValueError:
            detail = answer.reason_phrase
        if answer.status_code == 401:
            raise Unauthorized(detail)
        if answer.status_code == 403:
            raise Unauthorized(detail, by_vault=True)
        if answer.status_code == 429:
            raise RateLimited(answer.headers.get("retry-after", "a few"))
        if answer.status_code == 503:
            raise FleetUnavailable(detail)
        raise VaultError(f"the relay answered {answer.status_code}: {detail}")

    @staticmethod
    def _raise_vault_error(error: ErrorResponse) -> None:
        match error.code:
            case ErrorCode.WRONG_PASSWORD:
                raise WrongPassword(error.guesses_remaining)
            case ErrorCode.DESTROYED:
                raise Destroyed()
            case ErrorCode.NOT_REGISTERED:
                raise NotRegistered()
            case ErrorCode.ALREADY_REGISTERED:
                raise AlreadyRegistered(error.detail)
            case ErrorCode.FLEET_UNAVAILABLE:
                raise FleetUnavailable(error.detail)
        raise VaultError(f"the vault refused: {error.detail}")

    # ---- flows ---------------------------------------------------------------------------

    def register(
        self,
        password: str,
        root_key: bytes,
        guess_limit: int = DEFAULT_GUESS_LIMIT,
        grant: bytes = b"",
    ) -> int:
        """Store `root_key` behind `password`; returns the entry's version. With a grant
        from a recovery, replaces the password of a live entry."""
        state, request = opaque.client_registration_start(password.encode())
        started = self._call(
            Op.REGISTER_START,
            RegisterStartRequest(self.account, self.entry, request.to_bytes()),
            RegisterStartResponse,
        )
        registered = opaque.client_registration_finish(
            state,
            opaque.RegistrationResponse.from_bytes(started.registration_response),
            ksf=self.ksf_params,
            expected_server_public_key=self.opaque_server_key,
        )
        record, export_key = registered.record, registered.export_key
        finish = RegisterFinishRequest(
            self.account,
            self.entry,
            started.registration_ticket,
            record.to_bytes(),
            self.ksf_params.to_bytes(),
            wrap_root_key(export_key, self.account, self.entry, root_key),
            guess_limit,
            grant,
        )
        op = Op.CHANGE_PASSWORD if grant else Op.REGISTER_FINISH
        done = self._call(op, finish, RegisterFinishResponse)
        return done.version

    def recover(self, password: str) -> Recovery:
        """The root key, a grant (for a password change or a delete in the next minutes),
        and how many wrong passwords were tried since the last success."""
        state, ke1 = opaque.client_login_start(password.encode())
        client_time_ms = time.time_ns() // 1_000_000
        started = self._call(
            Op.RECOVER_START,
            RecoverStartRequest(self.account, self.entry, ke1.to_bytes(), client_time_ms),
            RecoverStartResponse,
            resends=RECOVER_START_RESENDS,
        )
        params = ksf.Argon2idParams.from_bytes(started.ksf_params)
        floor = self.ksf_params
        if params.memory_kib < floor.memory_kib or params.iterations < floor.iterations:
            # A fleet (or impostor) must not talk this client into weaker stretching.
            raise VaultError("the vault asked for weaker password stretching than allowed")
        try:
            login = opaque.client_login_finish(
                state,
                opaque.KE2.from_bytes(started.ke2),
                ksf=params,
                context=opaque_context(self.fleet_id),
                expected_server_public_key=self.opaque_server_key,
            )
        except AuthenticationFailed:
            # Tell the fleet, so a failed last guess destroys the entry at once: the vault
            # answers a MAC that cannot verify with wrong_password or destroyed, raised here.
            self._finish(started, opaque.KE3(bytes(64)))
            raise VaultError("the vault accepted a login that failed on this device") from None
        finished = self._finish(started, login.ke3)
        release = release_key(login.session_key, self.account, self.entry)
        sealed = finished.sealed_wrapped_root_key
        try:
            wrapped = AESGCM(release).decrypt(sealed[:12], sealed[12:], None)
        except InvalidTag:
            raise VaultError("the vault's key release did not verify") from None
        root_key = unwrap_root_key(login.export_key, self.account, self.entry, wrapped)
        # This attempt used one guess; any other used since the last success was wrong.
        wrong = max(0, started.guess_limit - started.guesses_remaining - 1)
        return Recovery(root_key, finished.grant, wrong)

    def _finish(self, started: RecoverStartResponse, ke3: opaque.KE3) -> RecoverFinishResponse:
        finished = self._call(
            Op.RECOVER_FINISH,
            RecoverFinishRequest(self.account, self.entry, started.recovery_ticket, ke3.to_bytes()),
            RecoverFinishResponse,
        )
        return finished

    def change_password(self, old_password: str, new_password: str) -> int:
        return self.change_password_with(self.recover(old_password), new_password)

    def change_password_with(self, recovery: Recovery, new_password: str) -> int:
        """Replace the password, using a recovery made moments ago with the old one."""
        status = self.status()
        return self.register(new_password, recovery.root_key, status.guess_limit, recovery.grant)

    def delete(self, grant: bytes = b"") -> int:
        """Delete the entry's key: a live key needs the grant of a recovery made moments
        ago; a destroyed entry is cleared without one (so the account may register anew)."""
        done = self._call(Op.DELETE, DeleteRequest(self.account, self.entry, grant), DeleteResponse)
        return done.version

    def status(self) -> VaultStatus:
        answer = self._call(
            Op.STATUS, StatusRequest(self.account, self.entry), StatusResponse, resends=1
        )
        return VaultStatus(
            EntryStatus(answer.status), answer.guess_limit, answer.guesses_remaining, answer.version
        )
