"""`python -m backupvault.sim`: run many seeds, or one seed with its trace.

python -m backupvault.sim --seeds 10000 --start 0 --workers 2
python -m backupvault.sim --seed 1481            # reproduce one run, print its trace
python -m backupvault.sim --seed 1481 --shrink   # and shrink it to a short trace
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor

from backupvault.sim import options
from backupvault.sim.shrink import report, shrink
from backupvault.sim.world import SimConfig, run_seed


def _run_range(args: tuple[int, int, SimConfig]) -> list[tuple[int, str]]:
    start, stop, config = args
    failures = []
    for seed in range(start, stop):
        result = run_seed(seed, config, keep_trace=False)
        if result.violation is not None:
            failures.append((seed, str(result.violation)))
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = options.parser("python -m backupvault.sim", __doc__)
    args = parser.parse_args(argv)
    if args.eager_wait and args.leaderless:
        parser.error("--eager-wait: copies wait for a leader, and --leaderless has none")
    if not 0 <= args.hostile < (args.nodes or 3) // 2 + 1:
        parser.error("--hostile: fewer than a majority of --nodes (give --nodes 5 for 2)")
    config = SimConfig(
        nodes=args.nodes,
        max_faulty=args.max_faulty,
        leader=not args.leaderless,
        hostile=args.hostile,
        stale_catch_up=args.stale_catch_up,
        walks=not args.no_walks,
        strips=not args.no_strips,
        strip_changes=args.strip_changes,
        eager_wait=args.eager_wait,
        network_faults=not args.calm_network,
    )
    if args.seed is not None:
        result = run_seed(args.seed, config)
        if result.violation is not None and args.shrink:
            result = shrink(result, config)
        print(report(result, f"seed {args.seed}: {result.violation or 'all invariants held'}"))
        print(f"  stats: {result.stats}")
        return 1 if result.violation is not None else 0
    started = time.monotonic()
    chunk = 50  # a progress line every 100 seeds
    ranges = [
        (s, min(s + chunk, args.start + args.seeds), config)
        for s in range(args.start, args.start + args.seeds, chunk)
    ]
    failures: list[tuple[int, str]] = []
    done = 0
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        for found in pool.map(_run_range, ranges):
            done += chunk
            failures += found
            for seed, violation in found:
                print(f"seed {seed}: {violation}", flush=True)
            if done % 100 == 0:
                print(f"... {done} seeds, {time.monotonic() - started:.0f}s", flush=True)
    elapsed = time.monotonic() - started
    print(
        f"{args.seeds} seeds from {args.start}: {len(failures)} failing, {elapsed:.1f}s "
        f"({args.workers} workers)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
