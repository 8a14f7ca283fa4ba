"""CPU cost of the threshold OPRF (crypto/threshold.py) per recovery, against the
single-key OPRF of today's flow, same run. N = 5, t = 3.

- node: one node's answer, k_i·B plus its RFC 9497 proof (`evaluate_partial`), against
  the single-key BlindEvaluate (one scalar multiplication).
- client: checking t proofs against keys from the commitments, the Lagrange combination
  and Finalize (`combine` + `oprf.finalize`), against Finalize alone.
- recovery: all CPU of one recovery summed over client and nodes (blind, t node answers,
  combine, finalize) with the production Argon2id and the envelope opened, against the
  single-key OPRF with the same Argon2id and envelope. Network and consensus are not in
  either: the end-to-end p50 through real processes belongs to the integration.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

from backupvault.crypto import manifest, oprf, threshold
from backupvault.crypto.ksf import DEFAULT_ARGON2ID
from backupvault.errors import WrongKey

PASSWORD = b"benchmark password"
NODES, T = 5, 3


def _medians_us(
    call: Callable[[], object], reference: Callable[[], object], iterations: int
) -> tuple[float, float]:
    """Median time of `call` and of `reference`, interleaved so that drift in the machine's
    load hits both alike, with the collector off."""
    samples: tuple[list[int], list[int]] = ([], [])
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(iterations):
            for which, function in enumerate((call, reference)):
                start = time.perf_counter_ns()
                function()
                samples[which].append(time.perf_counter_ns() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return statistics.median(samples[0]) / 1000.0, statistics.median(samples[1]) / 1000.0


def run(quick: bool) -> list[dict[str, object]]:
    fast_iterations = 50 if quick else 500
    slow_iterations = 3 if quick else 15
    reg = manifest.register(
        PASSWORD,
        bytes(32),
        fleet_id=bytes(32),
        account="bench",
        entry="bench",
        epoch=1,
        nodes=NODES,
        threshold_count=T,
        ksf=DEFAULT_ARGON2ID,
    )
    commitments = reg.manifest.commitments
    single_key = oprf.random_scalar()
    blind, blinded = oprf.blind(PASSWORD)
    partials = [threshold.evaluate_partial(share, blinded) for share in reg.shares[:T]]
    single_evaluated = oprf.blind_evaluate(single_key, blinded)

    node, node_ref = _medians_us(
        lambda: threshold.evaluate_partial(reg.shares[0], blinded),
        lambda: oprf.blind_evaluate(single_key, blinded),
        fast_iterations,
    )

    def client_threshold() -> bytes:
        combined = threshold.combine(commitments, blinded, partials)
        return oprf.finalize(PASSWORD, blind, combined.evaluated)

    client, client_ref = _medians_us(
        client_threshold, lambda: oprf.finalize(PASSWORD, blind, single_evaluated), fast_iterations
    )

    def recovery_threshold() -> bytes:
        r, b = oprf.blind(PASSWORD)
        answers = [threshold.evaluate_partial(share, b) for share in reg.shares[:T]]
        combined = threshold.combine(commitments, b, answers)
        return manifest.open_entry(reg.manifest, oprf.finalize(PASSWORD, r, combined.evaluated))[1]

    def recovery_single() -> bytes:
        r, b = oprf.blind(PASSWORD)
        output = oprf.finalize(PASSWORD, r, oprf.blind_evaluate(single_key, b))
        # The same KSF and envelope work; the envelope does not open under this key, which
        # costs the same as opening it.
        try:
            return manifest.open_entry(reg.manifest, output)[1]
        except WrongKey:
            return b""

    recovery, recovery_ref = _medians_us(recovery_threshold, recovery_single, slow_iterations)
    return [
        {
            "name": "threshold node answer (k_i·B + proof)",
            "value": node,
            "unit": "µs",
            "reference": f"single-key BlindEvaluate {node_ref:.0f} µs",
            "ratio": node / node_ref,
            "goal": "informational",
        },
        {
            "name": f"threshold client: {T} proofs + combine + finalize",
            "value": client,
            "unit": "µs",
            "reference": f"single-key Finalize {client_ref:.0f} µs",
            "ratio": client / client_ref,
            "goal": "informational",
        },
        {
            "name": f"recovery CPU, t={T} of {NODES}, default Argon2id",
            "value": recovery / 1000.0,
            "unit": "ms",
            "reference": f"single-key {recovery_ref / 1000.0:.1f} ms",
            "ratio": recovery / recovery_ref,
            "goal": "≤ 1.10",
        },
    ]
