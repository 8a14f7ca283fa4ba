"""Many entries per node: a local 5-node fleet whose stores are filled with N live
entries (written straight into each node's store, as the fleet would have written them,
with the token's counter to match), then started. Reported, beside an empty fleet
running at the same time (their recoveries alternate): each node's resident memory,
bytes per entry on disk (and what they are made of), the whole fleet's start-to-ready
time, one node's restart-to-ready time, and recovery p50.

    .venv/bin/python -m bench.fill --entries 1000000      # the documented long run
    .venv/bin/python -m bench.fill --entries 10000000     # 10 M (about 12 GB per node)
    make bench                                            # 20,000 entries (quick: 2,000)

Goals (issue "The fleet at etcd's pace"): RSS ≤ 300 MB per node, ≤ 600 B per entry,
restart-to-ready ≤ 5 s, recovery p50 within 1.2× of the empty fleet's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.crypto import manifest
from backupvault.deploy.local import LocalDeployment
from backupvault.files import write_new_file
from backupvault.fleet.messages import AcceptorRecord, AppliedOp, ReplicatedValue
from backupvault.hsm.shares import kept_at_limit
from backupvault.hsm.state import EntryId, NodeShare, ThresholdState
from backupvault.node.config import FleetDescription, NodeConfig
from backupvault.node.main import SINGLE_SEED_CHECKED, load_keys
from backupvault.node.store import NodeStore, share_record
from backupvault.node.token import TokenSealer
from backupvault.protocol import (
    AckKind,
    CommitAck,
    EntryStatus,
    encode_commit_acks,
    share_ack_message,
)
from bench.etcd_reference import TimingTransport
from bench.vault_e2e import FAST_KSF, NODES, PASSWORD, Fleet, timed_recoveries

BATCH = 5_000
THRESHOLD = NODES // 2 + 1


def _records(
    index: int, entry: int, registration: manifest.Registration, acks: bytes
) -> tuple[AcceptorRecord, AcceptorRecord]:
    """A live threshold entry as node `index` keeps it once registered: the replicated
    value (state with its manifest and the t acknowledgements its commit carried, as a
    real registration leaves it) and the node's own share row. Every filled entry carries
    the same dealing (names differ); only the sizes matter here."""
    encoded = registration.manifest.to_bytes()
    state = ThresholdState(status=EntryStatus.LIVE, version=1, manifest=encoded, acks=acks)
    key = EntryId(f"fill{entry:08d}", "root-key").to_bytes()
    value = ReplicatedValue([AppliedOp(entry.to_bytes(16, "big"), 1)], state.to_bytes())
    row = NodeShare(1, registration.shares[index].to_bytes(), encoded, [])
    return AcceptorRecord(key, 1, 0, 1, 0, value.to_bytes()), share_record(key, row)


def dealing(fleet_id: bytes) -> manifest.Registration:
    """One registration whose manifest and shares every filled entry carries."""
    return manifest.register(
        PASSWORD.encode(),
        os.urandom(32),
        fleet_id=fleet_id,
        account="fill",
        entry="root-key",
        epoch=0,
        nodes=NODES,
        threshold_count=THRESHOLD,
        ksf=FAST_KSF,
        version=1,
    )


def commit_acks(
    fleet_id: bytes, registration: manifest.Registration, signing: list[Ed25519PrivateKey]
) -> bytes:
    """The acknowledgements a registration's commit leaves in the value: nodes 1..t's
    signed word that they staged their share of M (`signing`, their keys). A registered
    entry carries t of them, 66 bytes each; without them a filled entry weighed about 200
    bytes less than a registered one."""
    m = registration.manifest
    acks = []
    for index, key in enumerate(signing, start=1):  # share indices start at 1
        signed = share_ack_message(
            AckKind.STAGED,
            fleet_id,
            m.account,
            m.entry,
            m.version,
            m.commitments.node_public_key(index),
            m.to_bytes(),
        )
        acks.append(CommitAck(index, AckKind.STAGED, key.sign(signed)))
    return encode_commit_acks(acks)


def _signing_keys(root: Path, description: FleetDescription) -> list[Ed25519PrivateKey]:
    """The signing keys of the fleet's first t nodes, from their tokens."""
    keys = []
    for slot in range(THRESHOLD):
        config = NodeConfig.load(LocalDeployment(root).node_config(slot))
        keys.append(Ed25519PrivateKey.from_private_bytes(load_keys(config, description).signing))
    return keys


def _fill_node(
    root: Path, index: int, entries: int, registration: manifest.Registration, acks: bytes
) -> None:
    """Write `entries` entries into one node's store, through `NodeStore.save` as the
    node's group commit does, and record its counter in the node's token."""
    description = FleetDescription.load(root / "fleet.toml")
    config = NodeConfig.load(LocalDeployment(root).node_config(index))
    keys = load_keys(config, description)
    store = NodeStore(
        config.data_dir / "store.sqlite", index, keys.storage, keys.row_key, keys.generation
    )
    # As the node judges its rows (none of these is at L): the store stays format 3, and
    # the node starts without scanning it (a store written without it would be scanned).
    store.at_limit = functools.partial(kept_at_limit, guess_limit=description.guess_limit)
    for start in range(0, entries, BATCH):
        store.save(
            record
            for i in range(start, min(entries, start + BATCH))
            for record in _records(index, i, registration, acks)
        )
        if index == 0 and start % (20 * BATCH) == 0:
            print(f"  node0 filled {start:,} / {entries:,}", flush=True)
    with TokenSealer(config.token) as sealer:
        sealer.advance_store_counter(store.counter)
    store.close()
    # A node of this version started on this folder when it was empty, and so marked it
    # as holding no single-seed key (node/main.py): its later starts read no row for it.
    write_new_file(config.data_dir / SINGLE_SEED_CHECKED, b"no key on the single-seed flow\n")


def _fill(fleet: Fleet, entries: int) -> None:
    """Two stores at a time (the machine has two cores), every node with the same values."""
    description = FleetDescription.load(fleet.root / "fleet.toml")
    registration = dealing(description.fleet_id)
    acks = commit_acks(description.fleet_id, registration, _signing_keys(fleet.root, description))
    with ProcessPoolExecutor(2) as pool:
        list(
            pool.map(
                _fill_node,
                [fleet.root] * NODES,
                range(NODES),
                [entries] * NODES,
                [registration] * NODES,
                [acks] * NODES,
            )
        )


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _node_pids(fleet: Fleet) -> list[int]:
    processes = fleet.deployment._processes()
    return [int(processes[fleet.deployment.node_name(i, 1)]["pid"]) for i in range(NODES)]


def _disk(root: Path, entries: int) -> dict[str, float]:
    """Bytes per entry of node0's store (WAL included, as a reader sees it), in all and
    per table or index (SQLite's dbstat)."""
    db = root / "node0" / "store.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        parts = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
        (row,) = conn.execute("SELECT avg(length(row)) FROM record").fetchone()  # 2 per entry
    per = max(1, entries)
    found = {"total": int(pages) * int(page_size) / per, "sealed row": float(row or 0)}
    found.update({str(name): int(size) / per for name, size in parts})
    return found


def _recovery_p50s(
    fleets: list[Fleet], recoveries: int, batch: int = 10, register: bool = True
) -> list[float]:
    """Recovery p50 (ms) of each fleet, measured in alternating batches: the fleets are
    measured over the same minutes, so the machine's load drifting (it moved one fleet's
    p50 from 37 to 57 ms within ten minutes, run 25) moves them alike."""
    clients = []
    for fleet in fleets:
        transport = TimingTransport(httpx.HTTPTransport())
        vault = fleet.client("bench-fill", "latency", transport)
        if register:
            vault.register(PASSWORD, os.urandom(32), ksf=FAST_KSF)
        timed_recoveries(vault, transport, 0, warm_up=3)
        clients.append((vault, transport))
    times: list[list[float]] = [[] for _ in fleets]
    while len(times[-1]) < recoveries:
        for (vault, transport), found in zip(clients, times, strict=True):
            found += timed_recoveries(vault, transport, batch, warm_up=0)
    return [statistics.median(found[:recoveries]) * 1000 for found in times]


def _wait_checked(fleet: Fleet, since: float) -> float:
    """Seconds from `since` until every node has checked all of its store in the
    background (its `store_checked` metric)."""
    while True:
        metrics = fleet.deployment.metrics()
        if len(metrics) == NODES and all(m.get("store_checked") for m in metrics.values()):
            return time.perf_counter() - since
        time.sleep(0.2)


def _restart_to_ready(fleet: Fleet, index: int) -> float:
    """Stop one node and start it again: seconds from the start until it serves (its
    store matches the token's counter, so it is ready without catching up)."""
    deployment = fleet.deployment
    deployment.stop_process(deployment.node_name(index, 1))
    started = time.perf_counter()
    deployment.start_node(index)
    deployment.wait_ready(timeout=120, nodes=[index])
    return time.perf_counter() - started


@contextlib.contextmanager
def _filled_fleet(entries: int) -> Iterator[tuple[Fleet, dict[str, float]]]:
    """A fleet filled with `entries`, up and done checking its stores, with its fill and
    start times; stopped afterwards. Its folder (stores, logs) is removed only when all
    went well, so a failure's logs are still there to read."""
    tmp = tempfile.mkdtemp(prefix="bench-fill-", dir=os.environ.get("BENCH_TMP"))
    with _kept_on_failure(Path(tmp)):
        fleet = Fleet(Path(tmp) / "deployment")
        try:
            times: dict[str, float] = {}

            def fill_then_start_clock() -> None:
                started = time.perf_counter()
                _fill(fleet, entries)
                times["filled"] = time.perf_counter() - started
                times["start"] = time.perf_counter()

            fleet.up(before_start=fill_then_start_clock, timeout=120)
            times["ready"] = time.perf_counter() - times["start"]
            # Recoveries are measured in the steady state, once the background check is done.
            times["checked"] = _wait_checked(fleet, times["start"])
            yield fleet, times
        finally:
            fleet.deployment.down()


@contextlib.contextmanager
def _kept_on_failure(folder: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        print(f"bench.fill: the failed fleet's stores and logs are kept in {folder}")
        raise
    shutil.rmtree(folder, ignore_errors=True)


def measure(entries: int, recoveries: int) -> tuple[dict[str, object], dict[str, object]]:
    """The empty fleet's figures and those of a fleet filled with `entries`. The filled
    fleet starts first, alone; the empty one starts beside it, and their recoveries
    alternate (`_recovery_p50s`)."""
    with _filled_fleet(entries) as (full, full_times), _filled_fleet(0) as (empty, empty_times):
        p50s = _recovery_p50s([empty, full], recoveries)
        found = []
        for fleet, times, p50 in ((empty, empty_times, p50s[0]), (full, full_times, p50s[1])):
            restart = _restart_to_ready(fleet, 0)
            _recovery_p50s([fleet], 5, register=False)  # node0 serves again, using its cache
            found.append(
                {
                    "fill_seconds": times["filled"],
                    "start_to_ready_seconds": times["ready"],
                    "restart_to_ready_seconds": restart,
                    "checked_seconds": times["checked"],
                    "rss_mb": [_rss_mb(pid) for pid in _node_pids(fleet)],
                    "disk": _disk(fleet.root, entries if fleet is full else 0),
                    "recovery_p50_ms": p50,
                }
            )
        return found[0], found[1]


def rows(entries: int, recoveries: int) -> list[dict[str, object]]:
    empty, full = measure(entries, recoveries)
    n = f"{entries:,} entries"
    rss, rss_empty = full["rss_mb"], empty["rss_mb"]
    assert isinstance(rss, list) and isinstance(rss_empty, list)
    disk = full["disk"]
    assert isinstance(disk, dict)
    parts = ", ".join(f"{k} {v:.0f}" for k, v in disk.items() if k != "total" and v >= 0.5)

    def number(run: dict[str, object], key: str) -> float:
        value = run[key]
        assert isinstance(value, float)
        return value

    return [
        {
            "name": f"node resident memory, largest of 5, {n}",
            "value": max(rss),
            "unit": "MB",
            "reference": f"each node {', '.join(f'{r:.0f}' for r in rss)} MB; "
            f"empty fleet largest {max(rss_empty):.0f} MB",
            "ratio": max(rss) / max(rss_empty),
            "goal": "≤ 300 MB per node, flat as entries grow",
            "per_node": rss,
            "empty_per_node": rss_empty,
        },
        {
            "name": f"bytes per entry on disk (node0 pages / entries), {n}",
            "value": disk["total"],
            "unit": "B",
            "reference": f"per entry: {parts}; fill took {number(full, 'fill_seconds'):.0f} s",
            "ratio": disk["total"] / 600,
            "goal": "≤ 600 B (ratio to the goal ≤ 1)",
            "parts": disk,
        },
        {
            "name": f"restart to ready, one node, {n}",
            "value": number(full, "restart_to_ready_seconds"),
            "unit": "s",
            "reference": f"empty fleet {number(empty, 'restart_to_ready_seconds'):.1f} s",
            "ratio": number(full, "restart_to_ready_seconds")
            / number(empty, "restart_to_ready_seconds"),
            "goal": "≤ 5 s",
        },
        {
            "name": f"start to ready, whole fleet, {n}",
            "value": number(full, "start_to_ready_seconds"),
            "unit": "s",
            "reference": f"empty fleet {number(empty, 'start_to_ready_seconds'):.1f} s",
            "ratio": number(full, "start_to_ready_seconds")
            / number(empty, "start_to_ready_seconds"),
            "goal": "printed",
        },
        {
            "name": f"start until every store is checked (background), {n}",
            "value": number(full, "checked_seconds"),
            "unit": "s",
            "reference": f"empty fleet {number(empty, 'checked_seconds'):.1f} s",
            "ratio": None,
            "goal": "printed (nodes serve meanwhile)",
        },
        {
            "name": f"recovery p50, {n} vs an empty fleet",
            "value": number(full, "recovery_p50_ms"),
            "unit": "ms",
            "reference": f"empty fleet {number(empty, 'recovery_p50_ms'):.1f} ms",
            "ratio": number(full, "recovery_p50_ms") / number(empty, "recovery_p50_ms"),
            "goal": "ratio ≤ 1.2",
        },
    ]


def run(quick: bool) -> list[dict[str, object]]:
    return rows(2_000 if quick else 20_000, 20 if quick else 100)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fill", description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--recoveries", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    report(rows(args.entries, args.recoveries), args.json, {"entries": args.entries})


def report(found: list[dict[str, object]], path: Path | None, about: dict[str, object]) -> None:
    """A command's rows, one line each (goal beside the figure), and as JSON in `path`."""
    for row in found:
        ratio = row["ratio"]
        shown = "" if ratio is None else f"  ratio {ratio:.2f}"
        value = row["value"]
        assert isinstance(value, float)
        print(
            f"{row['name']}: {value:.1f} {row['unit']}{shown}  ({row['reference']}; "
            f"goal {row['goal']})"
        )
    if path:
        path.write_text(json.dumps({**about, "rows": found}, indent=2))


if __name__ == "__main__":
    main()
