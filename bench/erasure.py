"""What one erasure costs a node's store as the store grows: `python -m bench.erasure
[--entries N] [--json FILE]`.

An erasure (a share erased at its guess limit, a delete, a password change) has the node
rotate its store's keys before it answers (docs/pkcs11.md, "Erasure by key rotation").
One store is filled with N entries as `bench.fill` makes them (replicated value and share
row each), then shares are erased one at a time through `NodeStore.save`, each followed
by its rotation; the same is done on a store of 20,000 entries as the reference. Figures:
the median time of an erasure, against the small store's (goal: flat, ratio ≤ 2), and
how much the process's peak memory grew during the erasures.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from backupvault.hsm.state import NodeShare
from backupvault.node.store import SHARE_PREFIX, NodeStore, share_record
from bench.fill import BATCH, _records, dealing, report

ERASURES = 9
REFERENCE_ENTRIES = 20_000  # every bucket holds entries (a smaller store has fewer keys to wrap)


class _Ring:
    """A row key ring without a token: the store's part of a rotation is what grows
    with the store; the token's part (one key made, one destroyed) does not."""

    def __init__(self) -> None:
        self.generation = 1

    def begin_rotation(self) -> tuple[int, bytes]:
        self.generation += 1
        return self.generation, os.urandom(32)

    def finish_rotation(self, generation: int) -> None:
        del generation


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(entries: int) -> dict[str, float]:
    """Median seconds per erasure and peak memory growth (MB) on a store of `entries`."""
    registration = dealing(b"bench-erasure")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        store = NodeStore(Path(folder) / "store.sqlite", 0, os.urandom(32), os.urandom(32), 1)
        for start in range(0, entries, BATCH):
            store.save(
                record
                for i in range(start, min(entries, start + BATCH))
                for record in _records(0, i, registration)
            )
        store.key_rotation = _Ring()
        before = _peak_mb()
        times = []
        for entry in range(ERASURES):
            _value, share = _records(0, entry * (entries // ERASURES), registration)
            erased = NodeShare.from_bytes(share.value).with_(share=b"")
            started = time.perf_counter()
            store.save([share_record(share.key[len(SHARE_PREFIX) :], erased)])
            times.append(time.perf_counter() - started)
        store.close()
        return {"seconds": statistics.median(times), "memory_mb": _peak_mb() - before}


def rows(entries: int) -> list[dict[str, object]]:
    small = measure(REFERENCE_ENTRIES)
    large = measure(entries)
    return [
        {
            "name": f"one erasure, store of {entries:,} entries (median of {ERASURES})",
            "value": large["seconds"] * 1000,
            "unit": "ms",
            "reference": f"{REFERENCE_ENTRIES:,} entries {small['seconds'] * 1000:.1f} ms",
            "ratio": large["seconds"] / small["seconds"],
            "goal": "ratio ≤ 2 (flat)",
        },
        {
            "name": f"peak memory growth over {ERASURES} erasures, {entries:,} entries",
            "value": large["memory_mb"],
            "unit": "MB",
            "reference": f"{REFERENCE_ENTRIES:,} entries {small['memory_mb']:.1f} MB",
            "ratio": None,
            "goal": "≤ 10 MB (flat)",
        },
    ]


def run(quick: bool) -> list[dict[str, object]]:
    return rows(40_000 if quick else 200_000)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.erasure", description=__doc__)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    report(rows(args.entries), args.json, {"entries": args.entries})


if __name__ == "__main__":
    main()
