"""Where a node's time goes under load: py-spy samples node0 (and the relay) while 16
clients send wrong-guess recover-starts, then prints the top functions by their own
samples and the backupvault functions by the samples inside them (docs/performance.md).
py-spy leaves out samples of idle threads (blocked in a system call).

    .venv/bin/python -m bench.profile_fleet [--seconds 12] [--top 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench.vault_e2e import Fleet, _guess_rate


def _collapsed(path: Path) -> Counter[str]:
    """py-spy's raw output: one `frame;frame;... count` line per stack."""
    stacks: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def _function(frame: str) -> str:
    """`name (path/to/module.py:12)` -> `name (path/to/module.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({path})" if path else name


def top(path: Path, n: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The n functions with the most samples of their own (the code running), and the n
    functions of backupvault with the most samples inside them (their callees included),
    each with its share of all samples."""
    stacks = _collapsed(path)
    total = sum(stacks.values()) or 1
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = [_function(f) for f in stack.split(";") if f]
        for function in set(frames):
            if "backupvault/" in function:
                inclusive[function] += count
        if frames:
            own[frames[-1]] += count
    return (
        [(f, c / total) for f, c in own.most_common(n)],
        [(f, c / total) for f, c in inclusive.most_common(n)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_fleet")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        fleet = Fleet(Path(tmp) / "deployment")
        try:
            fleet.up()
            processes = fleet.deployment._processes()
            targets = {name: int(processes[name]["pid"]) for name in ("node0", "relay")}
            load = threading.Thread(target=_guess_rate, args=(fleet, args.seconds + 4))
            load.start()
            threading.Event().wait(2)  # the clients are registered and running
            records = {}
            for name, pid in targets.items():
                out = Path(tmp) / f"{name}.txt"
                records[name] = (
                    subprocess.Popen(
                        [
                            str(Path(sys.executable).with_name("py-spy")),
                            "record",
                            "-p",
                            str(pid),
                            "-d",
                            str(int(args.seconds)),
                            "-r",
                            "50",
                            "-f",
                            "raw",
                            "--threads",
                            "-o",
                            str(out),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    ),
                    out,
                )
            for process, _ in records.values():
                process.wait()
            load.join()
            for name, (_, out) in records.items():
                own, inside = top(out, args.top)
                print(f"\n{name}: share of samples running the function itself")
                for function, share in own:
                    print(f"{share:6.1%}  {function}")
                print(f"\n{name}: share of samples inside backupvault functions")
                for function, share in inside:
                    print(f"{share:6.1%}  {function}")
        finally:
            fleet.down()


if __name__ == "__main__":
    main()
