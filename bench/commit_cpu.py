"""Where one commit's time goes: one client sends wrong-guess evaluate fan-outs one after
another to a local fleet (5 nodes + relay), and this prints each process's CPU per
fan-out, split by thread and into user and system time (from /proc), beside the
fan-out's p50 (docs/performance.md, "Not done"). With five node processes on two cores,
a fan-out whose processes together spend C ms of CPU cannot take much less than C/2 ms.
A node's other busy thread is its group-commit writer (SQLite, fsync, the token's
counter).

    .venv/bin/python -m bench.commit_cpu [--fan-outs 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.etcd_reference import CLOCK_TICKS
from bench.vault_e2e import FAST_KSF, PASSWORD, Fleet, _wrong_guess, fleet_pids

ThreadTimes = dict[tuple[str, str], tuple[float, float]]


def thread_times(pid: int) -> ThreadTimes:
    """(thread id, name) -> (user, system) CPU seconds so far, for each thread of `pid`."""
    times: ThreadTimes = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        name, fields = stat.split("(", 1)[1].rsplit(")", 1)
        values = fields.split()
        times[(tid, name)] = (int(values[11]) / CLOCK_TICKS, int(values[12]) / CLOCK_TICKS)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.commit_cpu")
    parser.add_argument("--fan-outs", type=int, default=300)
    count = parser.parse_args().fan_outs
    with tempfile.TemporaryDirectory(prefix="bench-commit-cpu-") as tmp:
        fleet = Fleet(Path(tmp) / "deployment")
        try:
            fleet.up()
            names = {int(p["pid"]): n for n, p in fleet.deployment._processes().items()}
            pids = fleet_pids(fleet)
            vault = fleet.client("bench-commit-cpu", "one")
            version = vault.register(PASSWORD, os.urandom(32), ksf=FAST_KSF).version
            for _ in range(3):  # warm: connections, caches
                _wrong_guess(vault, version)
            vault.recover(PASSWORD, ksf_floor=FAST_KSF)
            before = {pid: thread_times(pid) for pid in pids}
            seconds = []
            for _ in range(count):
                started = time.perf_counter()
                left = _wrong_guess(vault, version)
                seconds.append(time.perf_counter() - started)
                if left is not None and left <= 2:
                    vault.recover(PASSWORD, ksf_floor=FAST_KSF)  # the count, reset
            after = {pid: thread_times(pid) for pid in pids}
        finally:
            fleet.down()
    p50 = statistics.median(seconds) * 1000
    print(f"{count} fan-outs one after another: p50 {p50:.2f} ms (client included)")
    print("CPU per fan-out, ms (recoveries that reset the count included):")
    total = 0.0
    for pid in pids:
        for thread, (user, system) in sorted(after[pid].items()):
            user_before, system_before = before[pid].get(thread, (0.0, 0.0))
            user_ms = (user - user_before) / count * 1000
            system_ms = (system - system_before) / count * 1000
            total += user_ms + system_ms
            if user_ms + system_ms >= 0.05:
                which = "event loop" if thread[0] == str(pid) else f"thread {thread[0]}"
                label = f"{names[pid]} {which}"
                print(f"  {label:24s} user {user_ms:5.2f}  system {system_ms:5.2f}")
    print(f"  all processes: {total:.1f} ms, so at least {total / 2:.1f} ms on two cores")


if __name__ == "__main__":
    main()
