"""`backupvault sim`: the deterministic fleet simulation (docs/simulation.md).

Registered on the `backupvault` group when the CLI starts.
"""

from __future__ import annotations

import sys

import click

from backupvault.cli.main import cli


@cli.command("sim", cls=click.Command)
@click.option("--seeds", type=int, default=1000, show_default=True, help="How many seeds to run.")
@click.option("--start", type=int, default=0, show_default=True, help="First seed.")
@click.option("--seed", type=int, default=None, help="Run one seed and print its trace.")
@click.option("--shrink", is_flag=True, help="Shrink a failing --seed to a short trace.")
@click.option("--workers", type=int, default=1, show_default=True, help="Processes.")
@click.option("--nodes", type=int, default=0, help="Fleet size (default: 3 or 5 by seed).")
@click.option(
    "--max-faulty", type=int, default=-1, help="Nodes faulty at once (default: minority)."
)
@click.option("--leaderless", is_flag=True, help="No leader path: every change is CASPaxos.")
@click.option("--hostile", type=int, default=0, help="The last N nodes are the attacker's.")
@click.option(
    "--stale-catch-up",
    is_flag=True,
    help="Hostile nodes hand a node catching up stale values at high ballots.",
)
@click.option(
    "--no-walks",
    is_flag=True,
    help="Hostile nodes walk no rounds up (hostile seeds' plans before session 49).",
)
@click.option(
    "--eager-wait",
    is_flag=True,
    help="Followers' copies wait for the leader's round early and long (up to 1 s).",
)
@click.option(
    "--no-strips",
    is_flag=True,
    help="Hostile nodes clear no owner's reset (hostile seeds' plans before session 56).",
)
@click.option(
    "--strip-changes",
    is_flag=True,
    help="Hostile nodes also clear the owner's password change (a known limit).",
)
@click.option(
    "--calm-network",
    is_flag=True,
    help="No drops, duplicates or long delays: every operation t honest nodes can serve"
    " is held to completing, during the faults too.",
)
def sim(
    seeds: int,
    start: int,
    seed: int | None,
    shrink: bool,
    workers: int,
    nodes: int,
    max_faulty: int,
    leaderless: bool,
    hostile: int,
    stale_catch_up: bool,
    no_walks: bool,
    eager_wait: bool,
    no_strips: bool,
    strip_changes: bool,
    calm_network: bool,
) -> None:
    """Run the real node code under a seeded scheduler with faults; check the invariants."""
    from backupvault.sim.__main__ import main

    argv = ["--seeds", str(seeds), "--start", str(start), "--workers", str(workers)]
    argv += ["--nodes", str(nodes), "--max-faulty", str(max_faulty)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if shrink:
        argv.append("--shrink")
    if leaderless:
        argv.append("--leaderless")
    if hostile:
        argv += ["--hostile", str(hostile)]
    if stale_catch_up:
        argv.append("--stale-catch-up")
    if no_walks:
        argv.append("--no-walks")
    flags = {
        "--eager-wait": eager_wait,
        "--no-strips": no_strips,
        "--strip-changes": strip_changes,
        "--calm-network": calm_network,
    }
    argv += [flag for flag, given in flags.items() if given]
    sys.exit(main(argv))
