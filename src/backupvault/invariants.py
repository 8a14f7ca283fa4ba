"""Always-on checks of the trusted core's own invariants (docs/fleet.md, "Invariant checks").

`assert` is stripped by `python -O`. The checks a guess count, a ballot or a durable write
rests on use `require` instead, as TigerBeetle keeps its assertions on in production: a
node about to break one stops at that step, whatever flags Python runs with. Plain
`assert` stays for consistency a check just above already guarantees (and for mypy).

A leaf: it imports nothing from backupvault, so the core (`hsm`, `fleet`) may use it.
"""

from __future__ import annotations


class BrokenInvariant(AssertionError):
    """The core was about to break one of its own invariants: a bug in this code (or
    corrupted memory), never bad input, which the core answers with an error instead.

    An AssertionError, so whatever treats a failed assertion as a bug (the simulator's
    `core-assertion`, tests) treats this one alike; not a `BackupVaultError`, so no handler
    of a user's error answers it and carries on."""


def require(condition: bool, what: str) -> None:
    """Raise `BrokenInvariant(what)` unless `condition` holds. Cheap by design: callers
    pass a comparison they already have at hand, never a computation of its own."""
    if not condition:
        raise BrokenInvariant(what)
