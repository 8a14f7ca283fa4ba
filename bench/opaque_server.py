"""Server-side cost of one login: our fleet's OPRF work against opaque-ke's OPAQUE server
(opaque-snake), same run. Our single-server OPAQUE (3DH) went with the single-seed flow
(issue 9); what our nodes compute per recovery is one partial evaluation each.

Measured per login, in microseconds, median over many iterations:
- ours: the N = 5 node answers to one evaluate (`threshold.evaluate_partial`: k_i·B and
  its RFC 9497 proof), as every node answers each copy of the request;
- opaque-ke: KE2 (`create_credential_response`: OPRF evaluation, masking, 3DH) plus KE3
  (`finish_login`).

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

from backupvault.crypto import oprf, threshold
from backupvault.crypto.ksf import DEFAULT_ARGON2ID, OPAQUE_KE_ARGON2ID

PASSWORD = "benchmark password"
USER_ID = "bench-user"
NODES = 5


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


def _ours(iterations: int) -> list[int]:
    """Our fleet's server-side OPRF work for one login: every node's answer to an evaluate
    (k_i·B and its RFC 9497 proof), N of them, from the bytes of B."""
    dealt = threshold.deal(NODES // 2 + 1, NODES)
    _, blinded = oprf.blind(PASSWORD.encode())

    def answers() -> None:
        for share in dealt.shares:
            threshold.evaluate_partial(share, blinded)

    return _time_each([answers] * iterations)


def opaque_ke_login_us(iterations: int) -> float:
    """opaque-ke's server CPU for one login (KE2 + KE3 medians), in microseconds."""
    ke2, ke3 = _theirs(iterations, max(2, iterations // 10))
    return _median_us(ke2) + _median_us(ke3)


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
    _ours(5)
    _theirs(20, 2)
    ours = _ours(ke2_iterations // 5)
    their_ke2, their_ke3 = _theirs(ke2_iterations, ke3_iterations)
    default_ms, interop_ms = _ksf_ms(3 if quick else 7)

    our_us = _median_us(ours)
    their_us = _median_us(their_ke2) + _median_us(their_ke3)
    return [
        {
            "name": f"server OPRF work per login: {NODES} node answers (k_i·B + proof) vs "
            "opaque-ke KE2 + KE3",
            "value": our_us,
            "unit": "µs",
            "reference": f"opaque-ke {their_us:.1f} µs (KE2 {_median_us(their_ke2):.1f} + "
            f"KE3 {_median_us(their_ke3):.1f}, medians)",
            "ratio": our_us / their_us,
            "goal": f"printed: {NODES} proofs in Python over libsodium against one Rust server",
        },
        {
            "name": "Argon2id client KSF, default (64 MiB, t=3, p=1)",
            "value": default_ms,
            "unit": "ms",
            "reference": f"opaque-ke KSF (19 MiB, t=2, p=1) {interop_ms:.1f} ms",
            "ratio": default_ms / interop_ms,
            "goal": "0.1-1 s per login on a client",
        },
    ]
