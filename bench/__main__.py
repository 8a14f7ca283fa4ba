"""`make bench`: run every benchmark module, print one table, write JSON.

Each module has `run(quick: bool) -> list[dict]`; a row is
{"name", "value", "unit", "reference", "ratio", "goal"}. Figures that matter are ratios
against a reference measured in the same run, so they compare across machines.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MODULES = [
    "stream_throughput",
    "opaque_server",
    "vault_e2e",
    "fleet_rounds",
    "token_counter",
    "threshold_oprf",
    "threshold_e2e",
    "fill",
    "store",
    "backup_vs_restic",
]
RESULTS = Path(__file__).parent / "results"


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # As SystemExit, so each module's `finally` stops the deployment it started: a killed
    # bench left its relay and witnesses running, and the next run's ports clashed.
    raise SystemExit(128 + signum)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _python_loop_seconds() -> float:
    """A fixed pure-Python loop (best of 3): how fast this machine runs the interpreter.
    Runs on other machines differ mostly by this (the fleet's rows are CPU-bound Python,
    etcd's and restic's are Go), so the JSON keeps it beside the figures."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(5_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return best


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "python_loop_5M_seconds": round(_python_loop_seconds(), 3),
    }


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", action="append", choices=MODULES, help="run only these")
    args = parser.parse_args()

    console = Console(width=max(Console().width, 140))
    host = machine()
    console.print(
        f"machine: {host['cpu']}, {host['cores']} cores, Python {host['python']};"
        f" a 5,000,000-step Python loop takes {host['python_loop_5M_seconds']:.2f} s"
    )
    rows: list[dict[str, Any]] = []
    for name in args.only or MODULES:
        console.print(f"[bold]bench[/]: {name} …")
        module = importlib.import_module(f"bench.{name}")
        started = time.perf_counter()
        for row in module.run(args.quick):
            rows.append({"module": name, **row})
        console.print(f"  done in {time.perf_counter() - started:.1f} s")

    table = Table(title="backupvault benchmarks")
    for column in ("benchmark", "value", "unit", "reference", "ratio", "goal"):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left")
    for row in rows:
        ratio = row.get("ratio")
        table.add_row(
            str(row["name"]),
            f"{row['value']:.2f}",
            str(row["unit"]),
            str(row.get("reference") or ""),
            "" if ratio is None else f"{ratio:.3f}",
            str(row.get("goal") or ""),
        )
    console.print(table)

    RESULTS.mkdir(exist_ok=True)
    report = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "machine": host,
        "rows": rows,
    }
    stamp = report["time"].replace(":", "")
    for path in (RESULTS / f"bench-{stamp}.json", RESULTS / "latest.json"):
        path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"written: {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()
