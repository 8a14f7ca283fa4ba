"""The core's invariant checks stay on under `python -O` (backupvault/invariants.py): a
step that would break one stops there, with nothing written, as in the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import backupvault

# Run under -O: a planted bug makes the replica lower a promise it persisted, and the keeper
# write a count above L. Each must stop at that step and leave the stored state as it was.
UNDER_O = """
import json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from backupvault.fleet.messages import AcceptorRecord, Prepare
from backupvault.fleet.records import MemoryRecords
from backupvault.fleet.replica import Replica
from backupvault.hsm.shares import FleetShape, ShareKeeper
from backupvault.hsm.state import Evaluation, NodeShare
from backupvault.invariants import BrokenInvariant

seen = {"optimize": sys.flags.optimize}
try:
    assert False, "a plain assert"
    seen["plain_assert"] = "stripped"
except AssertionError:
    seen["plain_assert"] = "raised"

replica = Replica(0, range(3), lambda n: bytes(n), MemoryRecords())
replica.start(0.0, intact=True)
replica.receive(1, Prepare(b"op", b"k", 5, 1), 0.0)
try:
    replica._store(AcceptorRecord(b"k", 2, 1))  # the planted bug: a promise going down
    seen["replica"] = "wrote it"
except BrokenInvariant as err:
    seen["replica"] = str(err)
seen["promised"] = replica.source.get(b"k").promised_round

keeper = ShareKeeper(b"fleet", 0, FleetShape(1, 3, 2, 2), Ed25519PrivateKey.generate(),
                     lambda key: None)
three = NodeShare(1, b"", b"", [Evaluation(a, bytes(32)) for a in (1, 2, 3)])
try:
    keeper._write(b"k", three)  # the planted bug: a third evaluation with L = 2
    seen["keeper"] = "wrote it"
except BrokenInvariant as err:
    seen["keeper"] = str(err)
seen["row"] = keeper.row(b"k") is not None
print(json.dumps(seen))
"""


def test_a_broken_invariant_still_stops_the_core_under_python_O() -> None:
    src = str(Path(backupvault.__file__).resolve().parents[1])  # this checkout's code
    env = {**os.environ, "PYTHONPATH": src, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-O", "-c", UNDER_O],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout)
    assert seen["optimize"] == 1 and seen["plain_assert"] == "stripped"  # -O is in force
    assert seen["replica"] == "promise went backwards"
    assert seen["promised"] == 5  # the lower promise was never stored
    assert seen["keeper"] == "count above L"
    assert seen["row"] is False  # nothing to persist was handed out
