"""One node's store at N entries: `python -m bench.store --entries N [--json FILE]`.

The node's part of issue 10's "millions of entries per node", without the fleet around
it (a full fleet at N entries needs five such stores: `bench.fill`). One store is filled
through `NodeStore.save` with entries as `bench.fill` makes them (replicated value and
share row each, 5,000 per transaction). Then a fresh process does what a node does with
it and prints what it measured:

- opens it (the counter row, the bucket rows checked against it, the bucket keys);
- reads 1,000 random entries, each in a bucket not checked yet (a node's first reads);
- checks every bucket (`verify_all`: the node's background check after start);
- reads 1,000 random entries again, buckets checked;
- serves 3 catch-up pages of `PAGE` records from different places of the store (what
  a peer answers a node that catches up: `changed_since`, which checks every record);
- erases 9 shares, one at a time, each through `save` and its key rotation (docs/pkcs11.md,
  "Erasure by key rotation"), against the same on a store of 20,000 entries.

Resident memory is the fresh process's, before it opens the store and after all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.hsm.state import EntryId
from backupvault.node.store import NodeStore, share_record
from bench.fill import BATCH, THRESHOLD, _records, commit_acks, dealing, report

ERASURES = 9
READS = 1_000
PAGE = 2_000  # records per catch-up page, as nodes ask for them
REFERENCE_ENTRIES = 20_000  # every bucket holds entries (a smaller store has fewer keys to wrap)
_KEYS = "keys.bin"  # the bench's storage and row keys, beside its store


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


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _entry_key(entry: int) -> bytes:
    return EntryId(f"fill{entry:08d}", "root-key").to_bytes()  # as bench.fill names them


def fill(folder: Path, entries: int) -> float:
    """Fill a store in `folder`; the seconds it took."""
    storage_key, row_key = os.urandom(32), os.urandom(32)
    (folder / _KEYS).write_bytes(storage_key + row_key)
    registration = dealing(b"bench-store")
    signers = [Ed25519PrivateKey.generate() for _ in range(THRESHOLD)]  # no fleet here
    acks = commit_acks(b"bench-store", registration, signers)
    store = NodeStore(folder / "store.sqlite", 0, storage_key, row_key, 1)
    started = time.perf_counter()
    for start in range(0, entries, BATCH):
        store.save(
            record
            for i in range(start, min(entries, start + BATCH))
            for record in _records(0, i, registration, acks)
        )
        if start and start % (50 * BATCH) == 0:
            print(f"  filled {start:,} / {entries:,}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    store.close()
    return seconds


def _reads_p50_ms(store: NodeStore, entries: int, rng: random.Random) -> float:
    times = []
    for _ in range(READS):
        key = _entry_key(rng.randrange(entries))
        started = time.perf_counter()
        found = store.get(key)
        times.append(time.perf_counter() - started)
        assert found is not None
    return statistics.median(times) * 1000


def probe(folder: Path, entries: int) -> dict[str, float]:
    """What a fresh process measures on the filled store (see the module docstring)."""
    keys = (folder / _KEYS).read_bytes()
    rng = random.Random(entries)
    figures = {"rss_before_mb": _rss_mb()}
    started = time.perf_counter()
    store = NodeStore(folder / "store.sqlite", 0, keys[:32], keys[32:], 1)
    figures["open_s"] = time.perf_counter() - started
    figures["rss_open_mb"] = _rss_mb()
    figures["read_unchecked_p50_ms"] = _reads_p50_ms(store, entries, rng)
    started = time.perf_counter()
    store.verify_all()
    figures["check_all_s"] = time.perf_counter() - started
    figures["read_checked_p50_ms"] = _reads_p50_ms(store, entries, rng)
    pages = []
    for since in (1, entries // 2, entries):  # versions: two rows an entry
        started = time.perf_counter()
        page = store.changed_since(store.store_id, since, PAGE)
        pages.append(time.perf_counter() - started)
        assert page.records  # a page from inside the store, not past its end
    figures["page_p50_ms"] = statistics.median(pages) * 1000
    store.key_rotation = _Ring()
    times = []
    for number in range(ERASURES):
        key = _entry_key(number * (entries // ERASURES))
        row = store.get_share(key)
        assert row is not None
        started = time.perf_counter()
        store.save([share_record(key, row.with_(share=b""))])
        times.append(time.perf_counter() - started)
    figures["erasure_p50_ms"] = statistics.median(times) * 1000
    figures["rss_end_mb"] = _rss_mb()
    store.close()
    return figures


def measure(entries: int) -> dict[str, float]:
    """Fill a store of `entries`, then probe it in a fresh process."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as name:
        folder = Path(name)
        fill_s = fill(folder, entries)
        size = sum(f.stat().st_size for f in folder.glob("store.sqlite*"))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.store",
                "--probe",
                str(folder),
                "--entries",
                str(entries),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        figures: dict[str, float] = json.loads(done.stdout)
        return {**figures, "fill_s": fill_s, "bytes_per_entry": size / entries}


def rows(entries: int) -> list[dict[str, object]]:
    small, large = measure(REFERENCE_ENTRIES), measure(entries)
    n = f"{entries:,} entries"
    rss = large["rss_end_mb"] - large["rss_before_mb"]
    return [
        {
            "name": f"one erasure, {n} (median of {ERASURES})",
            "value": large["erasure_p50_ms"],
            "unit": "ms",
            "reference": f"{REFERENCE_ENTRIES:,} entries {small['erasure_p50_ms']:.1f} ms",
            "ratio": large["erasure_p50_ms"] / small["erasure_p50_ms"],
            "goal": "ratio ≤ 2 (flat)",
        },
        {
            "name": f"store memory after open, reads, check and erasures, {n}",
            "value": rss,
            "unit": "MB",
            "reference": f"{REFERENCE_ENTRIES:,} entries "
            f"{small['rss_end_mb'] - small['rss_before_mb']:.1f} MB; at open "
            f"{large['rss_open_mb'] - large['rss_before_mb']:.1f} MB",
            "ratio": None,
            "goal": "≤ 300 MB per node, flat",
        },
        {
            "name": f"open to ready, {n}",
            "value": large["open_s"],
            "unit": "s",
            "reference": f"{REFERENCE_ENTRIES:,} entries {small['open_s']:.2f} s",
            "ratio": None,
            "goal": "≤ 5 s (the store's part)",
        },
        {
            "name": f"bytes per entry on disk, {n}",
            "value": large["bytes_per_entry"],
            "unit": "B",
            "reference": f"filled in {large['fill_s']:.0f} s",
            "ratio": large["bytes_per_entry"] / 600,
            "goal": "≤ 600 B",
        },
        {
            "name": f"read p50, bucket not checked / checked, {n}",
            "value": large["read_unchecked_p50_ms"],
            "unit": "ms",
            "reference": f"checked {large['read_checked_p50_ms']:.3f} ms; "
            f"check of every bucket {large['check_all_s']:.1f} s",
            "ratio": None,
            "goal": "printed",
        },
        {
            "name": f"catch-up page of {PAGE:,} records, median of 3, {n}",
            "value": large["page_p50_ms"],
            "unit": "ms",
            "reference": f"{REFERENCE_ENTRIES:,} entries {small['page_p50_ms']:.0f} ms",
            "ratio": None,
            "goal": "printed",
        },
    ]


def run(quick: bool) -> list[dict[str, object]]:
    return rows(40_000 if quick else 200_000)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)  # the fresh process
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.entries)))
        return
    report(rows(args.entries), args.json, {"entries": args.entries})


if __name__ == "__main__":
    main()
