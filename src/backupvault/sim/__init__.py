"""Deterministic simulation of a vault fleet: the real node code under a seeded scheduler
with a faulty network, crashes, disk faults, concurrent clients and a replaying relay,
checked against the vault's invariants after every step (docs/simulation.md).

Nothing is imported here: `backupvault.sim.options` is read as the CLI starts, and the
simulator (`backupvault.sim.world`) is loaded only when it runs."""
