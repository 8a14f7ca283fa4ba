"""The SDK's resends against a hostile proposer that renumbers the latest attempt (review
s60): the same H(B) committed again one number on between the client's rounds. Before the
fix every honest node counted each resend of the owner's B as a new guess: one recovery
with the right password left 7 of 10 guesses used on every honest node, and the third found
the key destroyed, the shares erased. Now a node counts a B once a window
(tests/hsm/test_renumbered_attempts.py holds the firmware's rules one by one).

Everything here is the real SDK (its own timing), firmware and replicas
(tests/hsm/inprocess_fleet.py). What makes the SDK resend: `relay`, node 4 hostile and a
relay that loses two honest answers of each recovery's first fan-out; `split`, node 2
hostile with an honest relay, its renumbering landing between nodes 0-1 and 3-4 of the
first fan-out (two honest nodes count the B at a, two at a + 1: no t numbers agree, so no
reset is signed, as docs/threshold.md says of attempt numbers that do not agree).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hsm"))

from inprocess_fleet import FAST_KSF, LIMIT, InProcessFleet, _error

from backupvault.client.errors import Destroyed
from backupvault.fanout import FanoutReply
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.protocol import EntryStatus, Op

ROOT_KEY = bytes(range(32))
KEY = EntryId("alice", "backup-root-key").to_bytes()
HOSTILE = 2


def _renumber_latest_attempt(fleet: InProcessFleet, hostile: int) -> None:
    """The hostile node's round: the latest attempt again, one number on, same H(B)."""

    def bump(payload: bytes) -> tuple[bytes, Any]:
        state = ThresholdState.from_bytes(payload)
        if (
            state.status != EntryStatus.LIVE
            or state.attempt <= state.reset_attempt
            or state.attempts_used >= LIMIT
        ):
            return payload, None
        bumped = state.with_(
            attempt=state.attempt + 1,
            attempt_client_time_ms=state.attempt_client_time_ms + 1,
        )
        return bumped.to_bytes(), None

    op_id = os.urandom(8)
    fleet._run(hostile, fleet.replicas[hostile].propose(op_id, KEY, bump, fleet.now))
    fleet._settle(until=op_id)


def _hostile(fleet: InProcessFleet, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """`split`: hostile node 2, honest relay; node 2 is visited between nodes 0-1 and 3-4.
    `relay`: hostile node 4 (visited last) and a hostile relay that loses the answers of
    nodes 2 and 3 to each recovery's first evaluate fan-out (they act on it all the same)."""
    answer = fleet._answer
    hostile_node = HOSTILE if how == "split" else 4
    first: set[int] = set()

    def hostile(node: int, op: Op, copy: bytes) -> FanoutReply:
        if node == hostile_node and op is Op.EVALUATE:
            _renumber_latest_attempt(fleet, hostile_node)
            # "not yet": a node the client waits for and resends to
            return FanoutReply(node, 503, _error("fleet_unavailable", "no majority"))
        if how == "relay" and op is Op.EVALUATE and node in (2, 3) and node not in first:
            first.add(node)
            answer(node, op, copy)  # the node counts it; the relay loses the answer
            return FanoutReply(node, 0, _error("node_slow", "cut off"))
        return answer(node, op, copy)

    handle = fleet.handle

    def relay(request: Any) -> Any:
        if request.url.path.endswith("/manifest"):
            first.clear()  # a new recovery: the relay loses two answers of its first evaluate
        return handle(request)

    monkeypatch.setattr(fleet, "_answer", hostile)
    monkeypatch.setattr(fleet, "handle", relay)
    fleet.hostile_node = hostile_node  # type: ignore[attr-defined]


def _honest_counts(fleet: InProcessFleet) -> list[int]:
    hostile = fleet.hostile_node  # type: ignore[attr-defined]
    return [fleet.shares[i][KEY].count for i in range(5) if i != hostile]


def test_a_right_password_recovery_leaves_no_guess_used_on_the_honest_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = InProcessFleet()
    client = fleet.client()
    client.register("pw", ROOT_KEY, ksf=FAST_KSF)
    _hostile(fleet, monkeypatch, "relay")
    client = fleet.client()
    for _ in range(LIMIT + 2):  # more recoveries than the limit: none ends the entry
        recovered = client.recover("pw", ksf_floor=FAST_KSF)
        assert recovered.root_key == ROOT_KEY and recovered.reset_confirmed
        assert _honest_counts(fleet) == [0, 0, 0, 0]  # was [7, 7, 7, 7] after the first


def test_a_split_numbering_costs_each_honest_node_one_guess_a_recovery_and_erases_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no reset signed, the owner's guess stays counted, once a node; the hostile
    node's renumberings end the entry (the threat table's invented attempts) before any
    honest node's count reaches L, and every honest node keeps its share."""
    fleet = InProcessFleet()
    client = fleet.client()
    client.register("pw", ROOT_KEY, ksf=FAST_KSF)
    _hostile(fleet, monkeypatch, "split")
    client = fleet.client()
    recoveries = 0
    with pytest.raises(Destroyed):
        for _ in range(LIMIT):
            assert client.recover("pw", ksf_floor=FAST_KSF).root_key == ROOT_KEY
            recoveries += 1
            assert _honest_counts(fleet) == [recoveries] * 4
    assert recoveries < LIMIT and max(_honest_counts(fleet)) < LIMIT
    honest = [i for i in range(5) if i != HOSTILE]
    assert all(fleet.shares[i][KEY].share for i in honest)  # ended, not erased
