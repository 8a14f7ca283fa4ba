"""Chaos with real processes: a local fleet behind fault-injecting proxies, a chaos driver,
a concurrent client workload, and end-of-run checks of the vault's invariants.

    python -m backupvault.chaos --seconds 600 --clients 16 --json-out soak.json

See `soak.py` and docs/soak.md.
"""
