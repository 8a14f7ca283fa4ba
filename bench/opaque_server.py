"""Server-side cost of one OPAQUE login: ours against opaque-ke (opaque-snake), same run.

Measured per login, in microseconds, median over many iterations:
- KE2: KE1 bytes and stored record bytes in, KE2 bytes out (deserialization, OPRF
  evaluation, masking, 3DH) — `server_login_start` and opaque-ke's
  `create_credential_response`.
- KE3: KE3 bytes in, session key out — `server_login_finish` and opaque-ke's `finish_login`.

Client work (Argon2id above all) is done beforehand and not timed. Also reported: what the
production default KSF costs a client here (it bounds how fast anyone can guess offline
after stealing a node's secrets).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import opaque_snake as snake

from backupvault.crypto import opaque
from backupvault.crypto.ksf import DEFAULT_ARGON2ID, IDENTITY_KSF, OPAQUE_KE_ARGON2ID

PASSWORD = "benchmark password"
USER_ID = "bench-user"


def _median_us(samples_ns: list[int]) -> float:
    return statistics.median(samples_ns) / 1000.0


def _time_each(calls: list[Callable[[], object]]) -> list[int]:
    """Time each call once, with the collector off so a GC pause does not land in one."""
    samples: list[int] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for call in calls:
            start = time.perf_counter_ns()
            call()
            samples.append(time.perf_counter_ns() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def _ours(ke2_iterations: int, ke3_iterations: int) -> tuple[list[int], list[int], list[int]]:
    setup = opaque.create_server_setup()
    cred_id = USER_ID.encode()
    # The server's work does not depend on the client's KSF, so the identity KSF keeps the
    # client-side preparation cheap here.
    state, request = opaque.client_registration_start(PASSWORD.encode())
    response = opaque.server_registration_response(setup, request, cred_id)
    record_bytes = opaque.client_registration_finish(
        state, response, ksf=IDENTITY_KSF
    ).record.to_bytes()
    _, ke1 = opaque.client_login_start(PASSWORD.encode())
    ke1_bytes = ke1.to_bytes()

    def ke2() -> bytes:
        record = opaque.RegistrationRecord.from_bytes(record_bytes)
        ke1 = opaque.KE1.from_bytes(ke1_bytes)
        _, message = opaque.server_login_start(setup, record, ke1, cred_id)
        return message.to_bytes()

    def ke2_unknown_user() -> bytes:
        # The caller found no record: the fake one is derived instead of loaded.
        ke1 = opaque.KE1.from_bytes(ke1_bytes)
        _, message = opaque.server_login_start(setup, None, ke1, b"unknown-user")
        return message.to_bytes()

    # Interleaved so that drift in the machine's load hits both alike.
    samples = _time_each([ke2, ke2_unknown_user] * ke2_iterations)
    ke2_samples, fake_samples = samples[0::2], samples[1::2]

    pairs: list[tuple[opaque.ServerLoginState, bytes]] = []
    for _ in range(ke3_iterations):
        client_state, fresh_ke1 = opaque.client_login_start(PASSWORD.encode())
        server_state, message = opaque.server_login_start(
            setup, opaque.RegistrationRecord.from_bytes(record_bytes), fresh_ke1, cred_id
        )
        result = opaque.client_login_finish(client_state, message, ksf=IDENTITY_KSF)
        pairs.append((server_state, result.ke3.to_bytes()))

    def ke3_call(server_state: opaque.ServerLoginState, ke3_bytes: bytes) -> Callable[[], bytes]:
        return lambda: opaque.server_login_finish(server_state, opaque.KE3.from_bytes(ke3_bytes))

    ke3_samples = _time_each([ke3_call(s, b) for s, b in pairs])
    return ke2_samples, ke3_samples, fake_samples


def _theirs(ke2_iterations: int, ke3_iterations: int) -> tuple[list[int], list[int]]:
    server = snake.OpaqueServer()
    client = snake.OpaqueClient()
    request, reg_state = client.start_registration(PASSWORD)
    response = server.create_registration_response(request, USER_ID)
    upload = client.finish_registration(response, reg_state, PASSWORD).upload
    file_bytes = server.finish_registration(upload).to_bytes()
    ke1, _ = client.start_login(PASSWORD)
    ke1_bytes = ke1.to_bytes()

    def ke2() -> bytes:
        password_file = snake.PasswordFile.from_bytes(file_bytes)
        request = snake.CredentialRequest.from_bytes(ke1_bytes)
        message, _ = server.create_credential_response(request, USER_ID, password_file)
        return message.to_bytes()

    ke2_samples = _time_each([ke2] * ke2_iterations)

    # Each opaque-ke server state is single-use, so every KE3 needs a full client login
    # (with its Argon2id) beforehand; that is why KE3 runs fewer iterations.
    pairs: list[tuple[snake.ServerLoginState, bytes]] = []
    for _ in range(ke3_iterations):
        fresh_ke1, client_state = client.start_login(PASSWORD)
        message, server_state = server.create_credential_response(
            fresh_ke1, USER_ID, snake.PasswordFile.from_bytes(file_bytes)
        )
        result = client.finish_login(message, client_state, PASSWORD)
        pairs.append((server_state, result.finalization.to_bytes()))

    def ke3_call(server_state: snake.ServerLoginState, ke3_bytes: bytes) -> Callable[[], object]:
        return lambda: server.finish_login(
            snake.CredentialFinalization.from_bytes(ke3_bytes), server_state
        )

    ke3_samples = _time_each([ke3_call(s, b) for s, b in pairs])
    return ke2_samples, ke3_samples


def _ksf_ms(params_iterations: int) -> tuple[float, float]:
    default = [0.0] * params_iterations
    interop = [0.0] * params_iterations
    for i in range(params_iterations):
        start = time.perf_counter()
        DEFAULT_ARGON2ID.stretch(bytes(64))
        default[i] = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        OPAQUE_KE_ARGON2ID.stretch(bytes(64))
        interop[i] = (time.perf_counter() - start) * 1000
    return statistics.median(default), statistics.median(interop)


def run(quick: bool) -> list[dict[str, object]]:
    ke2_iterations = 200 if quick else 2000
    ke3_iterations = 20 if quick else 200
    # Warm up both (imports, libsodium init, allocator) before anything is timed.
    _ours(20, 2)
    _theirs(20, 2)
    our_ke2, our_ke3, our_fake_ke2 = _ours(ke2_iterations, ke3_iterations)
    their_ke2, their_ke3 = _theirs(ke2_iterations, ke3_iterations)
    default_ms, interop_ms = _ksf_ms(3 if quick else 7)

    rows: list[dict[str, object]] = []
    for step, ours, theirs, goal in (
        ("KE2", our_ke2, their_ke2, "ratio ≤ 2 (pure Python over libsodium vs Rust)"),
        ("KE3", our_ke3, their_ke3, "ratio ≤ 3 (one HMAC compare; Python call overhead)"),
    ):
        our_us = _median_us(ours)
        their_us = _median_us(theirs)
        rows.append(
            {
                "name": f"OPAQUE server {step} (ours/opaque-ke)",
                "value": our_us,
                "unit": "µs",
                "reference": f"opaque-ke {their_us:.1f} µs (median of {len(theirs)})",
                "ratio": our_us / their_us,
                "goal": goal,
            }
        )
    real_us, fake_us = _median_us(our_ke2), _median_us(our_fake_ke2)
    rows.append(
        {
            "name": "OPAQUE server KE2, unknown user (fake record / real record)",
            "value": fake_us,
            "unit": "µs",
            "reference": f"ours, known user {real_us:.1f} µs",
            "ratio": fake_us / real_us,
            "goal": "ratio ≈ 1: the answer time must not tell unknown users apart",
        }
    )
    rows.append(
        {
            "name": "Argon2id client KSF, default (64 MiB, t=3, p=1)",
            "value": default_ms,
            "unit": "ms",
            "reference": f"opaque-ke KSF (19 MiB, t=2, p=1) {interop_ms:.1f} ms",
            "ratio": default_ms / interop_ms,
            "goal": "0.1-1 s per login on a client",
        }
    )
    return rows
