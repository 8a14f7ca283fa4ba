"""Evaluate, reset and delete-share for an entry a node holds nothing of (no value but the
empty one, no row of its own) are answered `not_registered` with no consensus round and
nothing written (review r1, finding 2). Before, each such request for a made-up entry
name ran a full round on every node and left a record row on each for good: about 300
rows a minute per node from one account, at about 10 times the CPU of a read.

And what must not change: a node that holds nothing of an entry that is live elsewhere
(it missed the registration) does not keep the owner from recovering or deleting it, nor
make the client say the entry is not registered."""

from __future__ import annotations

import os
from typing import Any

from inprocess_fleet import FAST_KSF, InProcessFleet

from backupvault.client.errors import NotRegistered
from backupvault.client.vault import NodeOutcome
from backupvault.codec import Message
from backupvault.crypto import oprf
from backupvault.hsm.state import EntryId
from backupvault.protocol import (
    DeleteShareRequest,
    EntryStatus,
    ErrorCode,
    EvaluateRequest,
    EvaluateResponse,
    Op,
    ResetRequest,
    ResetResponse,
    ShareAck,
)

ROOT_KEY = bytes(range(32))


def _made_up(op: Op, entry: str, clock_ms: int) -> Message:
    if op is Op.EVALUATE:
        return EvaluateRequest("alice", entry, 1, oprf.blind(b"guess")[1], clock_ms)
    if op is Op.RESET:
        return ResetRequest("alice", entry, 1, 1, os.urandom(64))
    return DeleteShareRequest("alice", entry, 1, clock_ms, os.urandom(64))


def test_requests_for_made_up_entries_run_no_round_and_write_no_row(
    fleet: InProcessFleet,
) -> None:
    rounds = {n: fleet.replicas[n].pending() for n in fleet.replicas}
    for number, op in enumerate([Op.EVALUATE, Op.RESET, Op.DELETE_SHARE] * 3):
        entry = f"made-up-{number}"
        vault = fleet.client(entry=entry).vault
        requests = [_made_up(op, entry, 1_000 + number)] * 5
        if op is Op.EVALUATE:
            outcomes: list[NodeOutcome[Any]] = vault.call_each(op, requests, EvaluateResponse)
        elif op is Op.RESET:
            outcomes = vault.call_each(op, requests, ResetResponse)
        else:
            outcomes = vault.call_each(op, requests, ShareAck)
        codes = [o.error.code if o.error else None for o in outcomes]
        assert codes == [ErrorCode.NOT_REGISTERED] * 5, op
        key = EntryId.of("alice", entry).to_bytes()
        assert all(key not in fleet.disk[n] for n in fleet.replicas), op
        assert all(key not in fleet.shares[n] for n in fleet.replicas), op
    assert all(not fleet.disk[n] for n in fleet.replicas)  # not one record anywhere
    assert {n: fleet.replicas[n].pending() for n in fleet.replicas} == rounds


def test_a_node_that_missed_the_registration_does_not_stop_recovery_or_delete(
    fleet: InProcessFleet,
) -> None:
    """Node 4 was down for the whole registration: it holds no value and no row of the
    entry, so it answers without a round; the other four hold it, count the attempt once,
    evaluate, and commit the delete. The client never hears "not registered"."""
    key = EntryId.of("alice", "backup-root-key").to_bytes()
    fleet.down.add(4)
    registered = fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    assert 4 not in registered.acknowledged
    fleet.down.discard(4)  # back, and never caught up (no restart)
    assert key not in fleet.disk[4] and key not in fleet.shares[4]
    fresh = fleet.client()  # a device that owes node 4 nothing: no delivery first
    assert fresh.status().status == EntryStatus.LIVE
    recovered = fresh.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == ROOT_KEY
    assert fleet.state(0, key).attempt == 1  # one attempt, however many nodes proposed
    fresh.delete(recovered)
    try:
        status = fresh.status().status
    except NotRegistered:
        status = EntryStatus.EMPTY
    assert status == EntryStatus.EMPTY
    assert all(fleet.state(n, key).status == EntryStatus.EMPTY for n in range(4))
