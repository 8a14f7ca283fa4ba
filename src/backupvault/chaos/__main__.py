"""`python -m backupvault.chaos`: run the chaos soak and print its summary (docs/soak.md).

Exit status: 0 when every check passed, 1 when one failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from backupvault.chaos.soak import SoakConfig, run_soak, summary


def _log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backupvault.chaos",
        description="Chaos soak: a local 5-node fleet and relay behind fault-injecting "
        "proxies, concurrent clients, random minority faults; checks the invariants.",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="chaos time (default 60)")
    parser.add_argument("--clients", type=int, default=16, help="client threads (default 16)")
    parser.add_argument(
        "--attackers", type=int, default=None, help="of which attack their entry (default 1/4)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the random choices")
    parser.add_argument(
        "--max-faulty", type=int, default=2, help="nodes faulty at once (default 2 of 5)"
    )
    parser.add_argument(
        "--fault-every", type=float, default=1.5, help="mean seconds between faults"
    )
    parser.add_argument(
        "--availability-goal",
        type=float,
        default=None,
        help="fail unless this share of operations (0-1, e.g. 0.99) is answered within 10 s"
        " (default: report the figure only)",
    )
    parser.add_argument("--json-out", type=Path, default=None, help="write the report here")
    parser.add_argument(
        "--dir", type=Path, default=None, help="keep the deployment (logs, stores) in this folder"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.clients < 1 or not 0 <= args.max_faulty <= 2:
        parser.error("--seconds > 0, --clients >= 1 and 0 <= --max-faulty <= 2 (a minority)")
    if args.availability_goal is not None and not 0 < args.availability_goal <= 1:
        parser.error("--availability-goal is a share of operations: above 0, at most 1")
    config = SoakConfig(
        seconds=args.seconds,
        clients=args.clients,
        attackers=args.attackers,
        seed=args.seed,
        max_faulty=args.max_faulty,
        fault_every=args.fault_every,
        availability_goal=args.availability_goal,
        directory=args.dir,
        log=(lambda _: None) if args.quiet else _log,
    )
    result = run_soak(config)
    print(summary(result), flush=True)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
