"""Simulated vault clients: each flow is the real client-side OPAQUE (backupvault.crypto)
speaking protocol messages, written as a generator that yields `Call`s and receives the
answer (or None when the request gave up after its retries)."""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backupvault.client.vault import unwrap_root_key, wrap_root_key
from backupvault.codec import Message
from backupvault.crypto import ksf, opaque
from backupvault.errors import AuthenticationFailed
from backupvault.protocol import (
    DeleteRequest,
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
    opaque_context,
    release_key,
)

# Argon2id at its cheapest: the fleet stores and hands back real KSF parameters.
SIM_KSF = ksf.Argon2idParams(
    memory_kib=8, iterations=1, parallelism=1, salt=ksf.ZERO_SALT, output_len=64
)

OPS = ("register", "recover_right", "recover_wrong", "change_password", "delete", "status")


@dataclass(frozen=True)
class Call:
    op: Op
    request: Message


Flow = Generator[Call, Message | None, str]


class ClientViolation(Exception):
    """A client saw something the vault must never do (a wrong key released)."""


@dataclass
class Credentials:
    """Ghost knowledge: which password and root key each registration record holds."""

    by_record: dict[bytes, tuple[str, bytes]] = field(default_factory=dict)
    by_password: dict[str, bytes] = field(default_factory=dict)

    def add(self, record: bytes, password: str, root_key: bytes) -> None:
        self.by_record[record] = (password, root_key)
        self.by_password[password] = root_key


@dataclass
class FlowContext:
    account: str
    entry: str
    fleet_id: bytes
    server_public_key: bytes
    credentials: Credentials
    rng: random.Random
    current_password: Callable[[], str | None]  # from the committed record, if live
    now_ms: Callable[[], int]  # the client's clock (recover-start carries it)
    guess_limit: int = 3

    def fresh_password(self) -> str:
        return f"pw-{self.rng.getrandbits(40):010x}"


def _outcome(answer: Message | None) -> str:
    if answer is None:
        return "gave up"
    if isinstance(answer, ErrorResponse):
        return answer.code
    return "ok"


def register(ctx: FlowContext, grant: bytes = b"", root_key: bytes | None = None) -> Flow:
    password = ctx.fresh_password()
    root_key = root_key if root_key is not None else ctx.rng.randbytes(32)
    state, request = opaque.client_registration_start(password.encode())
    started = yield Call(
        Op.REGISTER_START, RegisterStartRequest(ctx.account, ctx.entry, request.to_bytes())
    )
    if not isinstance(started, RegisterStartResponse):
        return _outcome(started)
    result = opaque.client_registration_finish(
        state,
        opaque.RegistrationResponse.from_bytes(started.registration_response),
        ksf=SIM_KSF,
        expected_server_public_key=ctx.server_public_key,
    )
    record = result.record.to_bytes()
    ctx.credentials.add(record, password, root_key)
    finish = RegisterFinishRequest(
        ctx.account,
        ctx.entry,
        started.registration_ticket,
        record,
        SIM_KSF.to_bytes(),
        wrap_root_key(result.export_key, ctx.account, ctx.entry, root_key),
        ctx.guess_limit,
        grant,
    )
    done = yield Call(Op.CHANGE_PASSWORD if grant else Op.REGISTER_FINISH, finish)
    if isinstance(done, RegisterFinishResponse):
        return "registered"
    return _outcome(done)


def recover(ctx: FlowContext, password: str, result: list[bytes] | None = None) -> Flow:
    """Full OPAQUE login. On success appends (root key, grant) to `result`."""
    state, ke1 = opaque.client_login_start(password.encode())
    started = yield Call(
        Op.RECOVER_START,
        RecoverStartRequest(ctx.account, ctx.entry, ke1.to_bytes(), ctx.now_ms()),
    )
    if not isinstance(started, RecoverStartResponse):
        return _outcome(started)
    try:
        login: opaque.ClientLoginResult | None = opaque.client_login_finish(
            state,
            opaque.KE2.from_bytes(started.ke2),
            ksf=ksf.Argon2idParams.from_bytes(started.ksf_params),
            context=opaque_context(ctx.fleet_id),
            expected_server_public_key=ctx.server_public_key,
        )
    except AuthenticationFailed:
        login = None
    if login is None:
        # Wrong password: tell the fleet with a KE3 of zeros, as the SDK does.
        zeros = RecoverFinishRequest(
            ctx.account, ctx.entry, started.recovery_ticket, opaque.KE3(bytes(64)).to_bytes()
        )
        answer = yield Call(Op.RECOVER_FINISH, zeros)
        if isinstance(answer, RecoverFinishResponse):
            raise ClientViolation("the vault released a key for a failed login")
        return f"wrong: {_outcome(answer)}"
    finish = RecoverFinishRequest(
        ctx.account, ctx.entry, started.recovery_ticket, login.ke3.to_bytes()
    )
    answer = yield Call(Op.RECOVER_FINISH, finish)
    if not isinstance(answer, RecoverFinishResponse):
        return _outcome(answer)
    sealed = answer.sealed_wrapped_root_key
    try:
        wrapped = AESGCM(release_key(login.session_key, ctx.account, ctx.entry)).decrypt(
            sealed[:12], sealed[12:], None
        )
        root_key = unwrap_root_key(login.export_key, ctx.account, ctx.entry, wrapped)
    except (InvalidTag, Exception) as err:
        raise ClientViolation(f"the released key does not open: {err}") from None
    if root_key != ctx.credentials.by_password.get(password):
        raise ClientViolation("the vault released a root key other than the one registered")
    if result is not None:
        result += [root_key, answer.grant]
    return "recovered"


def run_op(ctx: FlowContext, name: str) -> Flow:
    if name == "register":
        return (yield from register(ctx))
    if name in ("recover_right", "change_password"):
        password = ctx.current_password()
        if password is None:
            name = "recover_wrong"
        else:
            got: list[bytes] = []
            outcome = yield from recover(ctx, password, got)
            if name == "recover_right" or not got:
                return outcome
            changed = yield from register(ctx, grant=got[1], root_key=got[0])
            return f"password changed: {changed}"
    if name == "recover_wrong":
        return (yield from recover(ctx, f"wrong-{ctx.rng.getrandbits(32):08x}"))
    if name == "delete":
        # A live key is deleted with the grant of a recovery just made; without one (the
        # password is not known, or the recovery failed) a live key refuses, a destroyed
        # one is cleared.
        grant = b""
        password = ctx.current_password()
        if password is not None:
            got = []
            yield from recover(ctx, password, got)
            grant = got[1] if got else b""
        return _outcome((yield Call(Op.DELETE, DeleteRequest(ctx.account, ctx.entry, grant))))
    return _outcome((yield Call(Op.STATUS, StatusRequest(ctx.account, ctx.entry))))
