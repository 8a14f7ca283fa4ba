"""Deterministic simulation of a vault fleet: the real node code under a seeded scheduler
with a faulty network, crashes, disk faults, concurrent clients and a replaying relay,
checked against the vault's invariants after every step (docs/simulation.md)."""

from backupvault.sim.observer import InvariantViolation
from backupvault.sim.world import Plan, RunResult, SimConfig, Simulation, make_plan, run_seed

__all__ = [
    "InvariantViolation",
    "Plan",
    "RunResult",
    "SimConfig",
    "Simulation",
    "make_plan",
    "run_seed",
]
