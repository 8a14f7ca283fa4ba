"""The vault client: register, recover, change the password, delete, status.

Speaks only the wire protocol (`backupvault.protocol`) through the relay. The password,
export_key and root key never leave this process: the fleet gets OPAQUE messages and a
root key wrapped under a key derived from export_key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

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
from backupvault.crypto.seal import FleetPublicKey, seal_request
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.protocol import (
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
    check_name,
    decode_response,
    opaque_context,
    release_key,
)

T = TypeVar("T", bound=Message)

DEFAULT_ENTRY = "backup-root-key"
DEFAULT_GUESS_LIMIT = 10


@dataclass(frozen=True)
class VaultStatus:
    status: EntryStatus
    guess_limit: int
    guesses_remaining: int
    version: int


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


class VaultClient:
    def __init__(
        self,
        relay_url: str,
        token: str,
        account: str,
        fleet_id: bytes,
        fleet_key: FleetPublicKey,
        opaque_server_key: bytes,
        entry: str = DEFAULT_ENTRY,
        ksf_params: ksf.Argon2idParams = ksf.DEFAULT_ARGON2ID,
        http: httpx.Client | None = None,
        epoch: int | None = None,
    ) -> None:
        """`epoch`: send to that epoch of the fleet (the relay's
        /v1/epochs/{epoch}/vault/... route, as OTA clients do); None: the relay's current
        fleet (/v1/vault/..., for pinned keys)."""
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
        self.fleet_key = fleet_key
        self.opaque_server_key = opaque_server_key
        self.ksf_params = ksf_params
        self._token = token
        self._http = http or httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))

    # ---- transport ---------------------------------------------------------------------

    def _call(self, op: Op, request: Message, kind: type[T]) -> T:
        sealed, response_key = seal_request(
            self.fleet_key, self.fleet_id, str(op), request.to_bytes()
        )
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
            raise FleetUnavailable(
                f"no answer from the relay at {self.relay_url} ({err})"
            ) from None
        if answer.status_code != 200:
            self._raise_http_error(answer)
        try:
            response = decode_response(op, response_key.open(answer.content))
        except (InvalidInput, AuthenticationFailed) as err:
            raise VaultError(f"the vault's answer did not verify: {err.message}") from None
        if isinstance(response, ErrorResponse):
            self._raise_vault_error(response)
        if not isinstance(response, kind):
            raise VaultError(f"unexpected answer from the vault: {type(response).__name__}")
        return response

    @staticmethod
    def _raise_http_error(answer: httpx.Response) -> None:
        try:
            body = answer.json()
            detail = str(body.get("detail") or body.get("error"))
        except ValueError:
            detail = answer.reason_phrase
        if answer.status_code == 401 or answer.status_code == 403:
            raise Unauthorized(detail)
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

    def recover(self, password: str) -> tuple[bytes, bytes]:
        """The root key and a grant (for a password change in the next minutes)."""
        state, ke1 = opaque.client_login_start(password.encode())
        started = self._call(
            Op.RECOVER_START,
            RecoverStartRequest(self.account, self.entry, ke1.to_bytes()),
            RecoverStartResponse,
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
        return root_key, finished.grant

    def _finish(self, started: RecoverStartResponse, ke3: opaque.KE3) -> RecoverFinishResponse:
        finished = self._call(
            Op.RECOVER_FINISH,
            RecoverFinishRequest(self.account, self.entry, started.recovery_ticket, ke3.to_bytes()),
            RecoverFinishResponse,
        )
        return finished

    def change_password(self, old_password: str, new_password: str) -> int:
        root_key, grant = self.recover(old_password)
        status = self.status()
        return self.register(new_password, root_key, status.guess_limit, grant=grant)

    def delete(self) -> int:
        done = self._call(Op.DELETE, DeleteRequest(self.account, self.entry), DeleteResponse)
        return done.version

    def status(self) -> VaultStatus:
        answer = self._call(Op.STATUS, StatusRequest(self.account, self.entry), StatusResponse)
        return VaultStatus(
            EntryStatus(answer.status), answer.guess_limit, answer.guesses_remaining, answer.version
        )
