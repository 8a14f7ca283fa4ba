"""What a group commit waits for besides its fsync: one advance of the token's store
counter (node/token.py), on a fresh SoftHSM2 token, against an fsync'ed SQLite commit of
one small row in the same directory, in the same run. Every group commit makes the two one
after the other, the store first (docs/fleet.md, "Restarts": so a crash between them
never looks like a rollback), so each advance adds its time to every commit's: the goal,
a ratio of at most 1, keeps it below the fsync it follows.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from backupvault.node.softhsm import init_softhsm_token
from backupvault.node.token import TokenSealer


def _percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def _advances(root: Path, count: int) -> list[float]:
    config = init_softhsm_token(
        root / "softhsm", "bench-counter", "bench-pin-4811", "bench-so-9924"
    )
    samples = []
    with TokenSealer(config) as sealer:
        sealer.advance_store_counter(0)
        for value in range(1, count + 1):
            started = time.perf_counter()
            sealer.advance_store_counter(value)
            samples.append(time.perf_counter() - started)
    return samples


def _commits(root: Path, count: int) -> list[float]:
    db = sqlite3.connect(root / "fsync.sqlite", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        samples = []
        for value in range(count):
            started = time.perf_counter()
            db.execute("BEGIN")
            db.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (value % 64, bytes(512)))
            db.execute("COMMIT")
            samples.append(time.perf_counter() - started)
        return samples
    finally:
        db.close()


def run(quick: bool) -> list[dict[str, Any]]:
    count = 50 if quick else 300
    with tempfile.TemporaryDirectory(prefix="bv-bench-counter-") as tmp:
        root = Path(tmp)
        advances = _advances(root, count)
        commits = _commits(root, count)
    rows = []
    for name, share in (("p50", 0.5), ("p90", 0.9)):
        ours = _percentile(advances, share) * 1e3
        fsync = _percentile(commits, share) * 1e3
        rows.append(
            {
                "name": f"token counter advance {name}",
                "value": ours,
                "unit": "ms",
                "reference": f"SQLite fsync'ed commit {name} {fsync:.2f} ms",
                "ratio": ours / fsync,
                "goal": "ratio <= 1.0 (adds at most an fsync to a commit)",
            }
        )
    return rows
