"""The threshold vault end to end against the single-key flow, on one local 5-node fleet
(node processes with SoftHSM2 tokens and SQLite stores, behind the relay, on loopback).

One client per flow, each on its own entry, recovering with the right password in blocks
that alternate (threshold, single-key, threshold, …) so that both see the same machine
load. Per block: the wall time of each recovery as the client sees it (every request,
the client's own work included, with the cheap test KSF so that Argon2id does not hide the
difference), the client's CPU time, and the CPU time of every fleet process (5 nodes and
the relay). The threshold recovery is four fan-outs (manifest, evaluate, reset: every node
answers each) where the single-key one is two requests to one node (recover-start,
recover-finish); the figures say what that costs.

    python -m bench --only threshold_e2e            # 6 blocks of 20 recoveries per flow
    python -m bench --only threshold_e2e --quick    # 2 blocks of 5
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from backupvault.client.threshold import FleetKeys, ThresholdVault
from backupvault.client.vault import VaultClient
from bench.etcd_reference import cpu_seconds
from bench.vault_e2e import FAST_KSF, Fleet, _fleet_pids

PASSWORD = "benchmark password"


def _threshold(fleet: Fleet, client: VaultClient) -> ThresholdVault:
    config = fleet.config
    assert config is not None and config.node_signing_keys is not None
    nodes = len(config.node_signing_keys)
    return ThresholdVault(client, FleetKeys(config.node_signing_keys, nodes // 2 + 1, config.epoch))


def _block(
    recover: Callable[[], None], count: int, pids: list[int]
) -> tuple[list[float], float, float]:
    """(wall seconds per recovery, client CPU seconds, fleet CPU seconds) for `count`."""
    walls = []
    fleet_before, client_before = cpu_seconds(pids), time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        recover()
        walls.append(time.perf_counter() - started)
    return walls, time.process_time() - client_before, cpu_seconds(pids) - fleet_before


def run(quick: bool) -> list[dict[str, object]]:
    blocks, per_block = (2, 5) if quick else (6, 20)
    with tempfile.TemporaryDirectory(prefix="bv-bench-threshold-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            fleet.up()
            root_key = os.urandom(32)
            single = fleet.client("bench-single", "single")
            single.register(PASSWORD, root_key)
            threshold = _threshold(fleet, fleet.client("bench-threshold", "threshold"))
            threshold.register(PASSWORD, root_key, ksf=FAST_KSF)

            def single_recovery() -> None:
                assert single.recover(PASSWORD).root_key == root_key

            def threshold_recovery() -> None:
                found = threshold.recover(PASSWORD, ksf_floor=FAST_KSF)
                assert found.root_key == root_key

            pids = _fleet_pids(fleet)
            for recover in (single_recovery, threshold_recovery):  # warm up
                _block(recover, 3, pids)
            figures: dict[str, tuple[list[float], float, float]] = {
                "threshold": ([], 0.0, 0.0),
                "single": ([], 0.0, 0.0),
            }
            for _ in range(blocks):
                for name, recover in (
                    ("threshold", threshold_recovery),
                    ("single", single_recovery),
                ):
                    walls, client_cpu, fleet_cpu = _block(recover, per_block, pids)
                    old = figures[name]
                    figures[name] = (old[0] + walls, old[1] + client_cpu, old[2] + fleet_cpu)
        finally:
            fleet.down()

    count = blocks * per_block
    t_walls, t_client, t_fleet = figures["threshold"]
    s_walls, s_client, s_fleet = figures["single"]
    t_p50, s_p50 = statistics.median(t_walls) * 1000, statistics.median(s_walls) * 1000
    rows: list[dict[str, object]] = [
        {
            "name": "threshold recovery p50 (client wall time, test KSF)",
            "value": t_p50,
            "unit": "ms",
            "reference": f"single-key flow {s_p50:.1f} ms",
            "ratio": t_p50 / s_p50,
            "goal": "≤ 2× single-key",
        },
        {
            "name": "threshold fleet CPU per recovery (5 nodes + relay)",
            "value": t_fleet / count * 1000,
            "unit": "ms",
            "reference": f"single-key flow {s_fleet / count * 1000:.1f} ms",
            "ratio": t_fleet / s_fleet,
            "goal": "≤ 2× single-key",
        },
        {
            "name": "threshold client CPU per recovery (test KSF)",
            "value": t_client / count * 1000,
            "unit": "ms",
            "reference": f"single-key flow {s_client / count * 1000:.1f} ms",
            "ratio": t_client / s_client,
            "goal": "measured (client work is dominated by Argon2id in production)",
        },
    ]
    return rows
