"""Many entries per node: a local 5-node fleet whose stores are filled with N live
entries (written straight into each node's store, as the fleet would have written them,
with the token's counter to match), then started. Reported: each node's resident memory,
bytes per entry on disk, start-to-ready time, and recovery p50 against an empty fleet
measured in the same run.

    .venv/bin/python -m bench.fill --entries 1000000      # the documented long run
    make bench                                            # 20,000 entries (quick: 2,000)

Goals (issue "The fleet at etcd's pace"): RSS ≤ 300 MB per node, ≤ 600 B per entry,
start-to-ready ≤ 5 s, recovery p50 within 1.2× of the empty fleet's.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from backupvault.fleet.messages import AcceptorRecord, AppliedOp, ReplicatedValue
from backupvault.hsm.state import EntryId, EntryState
from backupvault.node.config import FleetDescription, NodeConfig
from backupvault.node.main import load_keys
from backupvault.node.store import NodeStore
from backupvault.node.token import TokenSealer
from backupvault.protocol import EntryStatus
from bench.vault_e2e import NODES, PASSWORD, Fleet, TimingTransport, _recovery_times

BATCH = 5_000


def _entry_value(i: int) -> bytes:
    """A live entry of realistic size (OPAQUE record, wrapped key, KSF parameters)."""
    state = EntryState(
        status=EntryStatus.LIVE,
        generation=1,
        registration_nonce=os.urandom(32),
        record=os.urandom(192),
        ksf_params=os.urandom(24),
        wrapped_root_key=os.urandom(60),
        guess_limit=10,
        version=2,
    )
    return ReplicatedValue([AppliedOp(i.to_bytes(16, "big"), 1)], state.to_bytes()).to_bytes()


def _fill(fleet: Fleet, entries: int) -> None:
    description = FleetDescription.load(fleet.root / "fleet.toml")
    values = [_entry_value(i) for i in range(min(entries, 1000))]
    for index in range(NODES):
        config = NodeConfig.load(fleet.deployment.node_config(index))
        keys = load_keys(config, description)
        store = NodeStore(config.data_dir / "store.sqlite", index, keys.storage)
        for start in range(0, entries, BATCH):
            store.save(
                AcceptorRecord(
                    EntryId(f"fill{i:08d}", "root-key").to_bytes(),
                    1,
                    0,
                    1,
                    0,
                    values[i % len(values)],
                )
                for i in range(start, min(entries, start + BATCH))
            )
        with TokenSealer(config.token) as sealer:
            sealer.advance_store_counter(store.counter)
        store.close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _bytes_per_entry(root: Path, entries: int) -> float:
    db = root / "node0" / "store.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    return int(pages) * int(page_size) / max(1, entries)


def _recovery_p50(fleet: Fleet, recoveries: int) -> float:
    transport = TimingTransport(httpx.HTTPTransport())
    client = fleet.client("bench-fill", "latency", transport)
    client.register(PASSWORD, os.urandom(32))
    for _ in range(3):
        client.recover(PASSWORD)
    transport.seconds.clear()
    for _ in range(recoveries):
        client.recover(PASSWORD)
    return statistics.median(_recovery_times(transport)) * 1000


def measure(entries: int, recoveries: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-fill-") as tmp:
        fleet = Fleet(Path(tmp) / "deployment")
        try:
            times: dict[str, float] = {}

            def fill_then_start_clock() -> None:
                started = time.perf_counter()
                _fill(fleet, entries)
                times["filled"] = time.perf_counter() - started
                times["start"] = time.perf_counter()

            # Every node still reads all its records at start: allow for it.
            fleet.up(before_start=fill_then_start_clock, timeout=90 + entries / 2_000)
            ready = time.perf_counter() - times["start"]
            filled = times["filled"]
            pids = [
                int(p["pid"])
                for name, p in fleet.deployment._processes().items()
                if name.startswith("node")
            ]
            p50 = _recovery_p50(fleet, recoveries)
            return {
                "fill_seconds": filled,
                "start_to_ready_seconds": ready,
                "rss_mb_max": max(_rss_mb(pid) for pid in pids),
                "bytes_per_entry": _bytes_per_entry(fleet.root, entries),
                "recovery_p50_ms": p50,
            }
        finally:
            fleet.deployment.down()


def rows(entries: int, recoveries: int) -> list[dict[str, object]]:
    empty = measure(0, recoveries)
    full = measure(entries, recoveries)
    n = f"{entries:,} entries"
    return [
        {
            "name": f"node resident memory, largest of 5, {n}",
            "value": full["rss_mb_max"],
            "unit": "MB",
            "reference": f"empty fleet {empty['rss_mb_max']:.0f} MB",
            "ratio": full["rss_mb_max"] / empty["rss_mb_max"],
            "goal": "≤ 300 MB per node (at 1,000,000 entries)",
        },
        {
            "name": f"bytes per entry on disk (node0 pages / entries), {n}",
            "value": full["bytes_per_entry"],
            "unit": "B",
            "reference": f"fill took {full['fill_seconds']:.0f} s for 5 nodes",
            "ratio": None,
            "goal": "≤ 600 B",
        },
        {
            "name": f"start to ready (processes started → all ready), {n}",
            "value": full["start_to_ready_seconds"],
            "unit": "s",
            "reference": f"empty fleet {empty['start_to_ready_seconds']:.1f} s",
            "ratio": full["start_to_ready_seconds"] / empty["start_to_ready_seconds"],
            "goal": "≤ 5 s (at 1,000,000 entries)",
        },
        {
            "name": f"recovery p50, {n} vs an empty fleet",
            "value": full["recovery_p50_ms"],
            "unit": "ms",
            "reference": f"empty fleet {empty['recovery_p50_ms']:.1f} ms",
            "ratio": full["recovery_p50_ms"] / empty["recovery_p50_ms"],
            "goal": "ratio ≤ 1.2",
        },
    ]


def run(quick: bool) -> list[dict[str, object]]:
    return rows(2_000 if quick else 20_000, 20 if quick else 100)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fill", description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--recoveries", type=int, default=100)
    args = parser.parse_args()
    for row in rows(args.entries, args.recoveries):
        ratio = row["ratio"]
        shown = "" if ratio is None else f"  ratio {ratio:.2f}"
        print(
            f"{row['name']}: {row['value']:.1f} {row['unit']}{shown}  ({row['reference']}; "
            f"goal {row['goal']})"
        )


if __name__ == "__main__":
    main()
