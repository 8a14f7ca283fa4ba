"""Acceptors check what they are asked to accept instead of taking a proposer's word
(docs/threshold.md): a value a hostile node forges, and a ballot round far above any
seen, are refused by the honest nodes, so they never reach a majority; every value the
honest firmware makes passes."""

from __future__ import annotations

import dataclasses
import os

import pytest
from conftest import InProcessFleet

from backupvault.client.errors import WrongPassword
from backupvault.fleet.messages import Prepare, Promise, payload_of
from backupvault.fleet.replica import MAX_ROUND_STEP, Committed, Persist
from backupvault.hsm.state import EntryId, EntryState
from backupvault.protocol import EntryStatus

ROOT_KEY = bytes(range(32))
KEY = EntryId("alice", "backup-root-key").to_bytes()


def _live(fleet: InProcessFleet) -> EntryState:
    client = fleet.client()
    client.register("pw", ROOT_KEY)
    return fleet.state(0, KEY)


def test_every_value_the_honest_firmware_makes_passes(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("pw", ROOT_KEY)
    with pytest.raises(WrongPassword):
        client.recover("wrong")
    grant = client.recover("pw").grant
    client.register("new pw", ROOT_KEY, grant=grant)
    client.delete(client.recover("new pw").grant)
    client.status()
    values = [r.value for disk in fleet.disk.values() for r in disk.values() if r.value]
    assert values
    for value in values:
        assert fleet.firmware[0].check_value(KEY, payload_of(value)) is None


FORGERIES = {
    "a guess limit above the fleet's": {"guess_limit": 11},
    "more guesses used than the limit": {"attempts_used": 11},
    "a success for an attempt never made": {"success_seq": 99},
    "a live entry without its record": {"record": b""},
    "a live entry with a short wrapped key": {"wrapped_root_key": b"\x00" * 59},
    "a live entry with malformed KSF parameters": {"ksf_params": b"\x00"},
    "a tombstone still holding a key": {"status": EntryStatus.DESTROYED},
    "not an entry state's status": {"status": 7},
    "a guess limit of zero": {"guess_limit": 0, "attempts_used": 0},
}


@pytest.mark.parametrize("changes", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_forged_value_is_refused(fleet: InProcessFleet, changes: dict[str, object]) -> None:
    for firmware in fleet.firmware.values():
        firmware.guess_limit = 10
    forged = dataclasses.replace(_live(fleet), **changes)  # type: ignore[arg-type]
    assert fleet.firmware[1].check_value(KEY, forged.to_bytes()) is not None


def test_garbage_is_refused(fleet: InProcessFleet) -> None:
    firmware = fleet.firmware[0]
    assert firmware.check_value(KEY, b"\x00garbage") == "not an entry state"
    assert firmware.check_value(b"not an entry id", EntryState().to_bytes()) is not None


def test_a_hostile_proposer_cannot_commit_a_raised_guess_limit(fleet: InProcessFleet) -> None:
    """Node 0 is hostile: it runs the consensus protocol correctly but proposes a value
    that gives the entry 100 guesses. The honest acceptors refuse it, so nothing commits
    and the entry keeps its limit of 10."""
    for firmware in fleet.firmware.values():
        firmware.guess_limit = 10
    state = _live(fleet)
    forged = dataclasses.replace(state, guess_limit=100, attempts_used=0).to_bytes()
    op_id = os.urandom(8)
    effects = fleet.replicas[0].propose(op_id, KEY, lambda _value: (forged, None), fleet.now)
    fleet._run(0, effects)
    fleet._settle(until=op_id)
    assert not isinstance(fleet.results.get(op_id), Committed)
    for node in range(5):
        assert fleet.state(node, KEY).guess_limit == 10
    assert fleet.client().status().guess_limit == 10


def test_a_round_far_above_any_seen_is_refused(fleet: InProcessFleet) -> None:
    """Ballot inflation: a round near 2^64 would leave no higher round for honest
    proposers. An acceptor promises nothing for it and writes nothing; the fleet goes on."""
    client = fleet.client()
    client.register("pw", ROOT_KEY)
    replica = fleet.replicas[1]
    highest = max(r.promised_round for r in fleet.disk[1].values())
    for round_ in (highest + MAX_ROUND_STEP + 1, (1 << 64) - 1):
        effects = replica.receive(0, Prepare(os.urandom(8), KEY, round_, 0), fleet.now)
        assert not any(isinstance(e, Persist) for e in effects)
        [answer] = [e.message for e in effects if isinstance(getattr(e, "message", None), Promise)]
        assert isinstance(answer, Promise) and not answer.ok
    # A round within the step is an ordinary higher ballot and is promised.
    effects = replica.receive(0, Prepare(os.urandom(8), KEY, highest + 5, 0), fleet.now)
    assert any(isinstance(e, Persist) for e in effects)
    assert client.recover("pw").root_key == ROOT_KEY
