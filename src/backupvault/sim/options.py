"""The simulation's options, one list for both ways to run it: `python -m backupvault.sim`
(argparse) and `backupvault sim` (click), which took them twice and drifted apart (the
strip options were missing from the command until session 58). Light on purpose: the CLI
imports it as it starts, and the simulator itself only when the command runs."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SimOption:
    flag: str
    help: str
    number: bool = False  # an int option; otherwise an on/off flag
    default: int | None = None  # an int option's default (None: not given)

    @property
    def name(self) -> str:
        """The keyword a parser gives it: `--max-faulty` is `max_faulty`."""
        return self.flag.removeprefix("--").replace("-", "_")


OPTIONS = (
    SimOption("--seeds", "how many seeds to run", number=True, default=1000),
    SimOption("--start", "first seed", number=True, default=0),
    SimOption("--seed", "run this one seed and print its trace", number=True),
    SimOption("--shrink", "shrink a failing --seed to a short trace"),
    SimOption("--workers", "processes to run seeds in", number=True, default=1),
    SimOption("--nodes", "fleet size (default: 3 or 5 by seed)", number=True, default=0),
    SimOption(
        "--max-faulty", "nodes faulty at once (default: a minority)", number=True, default=-1
    ),
    SimOption("--leaderless", "no leader path: every change is CASPaxos"),
    SimOption("--hostile", "the last HOSTILE nodes are the attacker's", number=True, default=0),
    SimOption(
        "--stale-catch-up",
        "hostile nodes hand a node catching up stale values at high ballots",
    ),
    SimOption(
        "--no-walks",
        "hostile nodes walk no rounds up (the plans of hostile seeds before session 49)",
    ),
    SimOption(
        "--no-strips",
        "hostile nodes clear no owner's reset (the plans of hostile seeds before session 56)",
    ),
    SimOption(
        "--strip-changes",
        "hostile nodes also clear the owner's password change (a known limit)",
    ),
    SimOption(
        "--eager-wait",
        "followers' copies wait for the leader's round early and long (up to 1 s)",
    ),
    SimOption(
        "--calm-network",
        "no drops, duplicates or long delays: every operation is held to completing while"
        " t honest nodes can serve it (crashes, partitions and disk faults go on)",
    ),
)


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(prog=prog, description=description)
    for option in OPTIONS:
        if option.number:
            made.add_argument(option.flag, type=int, default=option.default, help=option.help)
        else:
            made.add_argument(option.flag, action="store_true", help=option.help)
    return made


def argv_of(values: Mapping[str, object]) -> list[str]:
    """The command line that gives `values` (by `SimOption.name`; a number left at None or
    a flag left off is not given)."""
    argv: list[str] = []
    for option in OPTIONS:
        value = values[option.name]
        if option.number and value is not None:
            argv += [option.flag, str(value)]
        elif not option.number and value:
            argv.append(option.flag)
    return argv
