"""Acceptors check what they are asked to accept instead of taking a proposer's word
(docs/threshold.md): a value a hostile node forges, and a ballot round far above any
seen, are refused by the honest nodes, so they never reach a majority; every value the
honest firmware makes passes. All through the real firmware and replicas."""

from __future__ import annotations

import dataclasses
import os

import pytest
from inprocess_fleet import FAST_KSF, InProcessFleet

from backupvault.client.errors import WrongPassword
from backupvault.fleet.messages import Prepare, Promise, payload_of
from backupvault.fleet.replica import CLIMB_BURST_STEPS, MAX_ROUND_STEP, Committed, Persist
from backupvault.hsm.state import SINGLE_SEED_ENTRY_TAG, EntryId, ThresholdState
from backupvault.protocol import EntryStatus

ROOT_KEY = bytes(range(32))
KEY = EntryId("alice", "backup-root-key").to_bytes()


def _live(fleet: InProcessFleet, wrong: int = 0) -> ThresholdState:
    client = fleet.client()
    client.register("pw", ROOT_KEY, ksf=FAST_KSF)
    for _ in range(wrong):
        with pytest.raises(WrongPassword):
            client.recover("wrong", ksf_floor=FAST_KSF)
    return fleet.state(0, KEY)


def test_every_value_the_honest_firmware_makes_passes(fleet: InProcessFleet) -> None:
    client = fleet.client()
    values: set[bytes] = set()

    def seen() -> None:
        values.update(payload_of(r.value) for d in fleet.disk.values() for r in d.values())

    client.register("pw", ROOT_KEY, ksf=FAST_KSF)
    seen()
    with pytest.raises(WrongPassword):
        client.recover("wrong", ksf_floor=FAST_KSF)
    seen()
    recovered = client.recover("pw", ksf_floor=FAST_KSF)
    seen()
    client.change_password(recovered, "new pw", ksf=FAST_KSF)
    seen()
    client.delete(client.recover("new pw", ksf_floor=FAST_KSF))
    seen()
    values.discard(b"")
    assert len(values) >= 5
    for value in values:
        assert fleet.firmware[0].check_value(KEY, value) is None


FORGERIES = {
    "a reset for an attempt never made": {"reset_attempt": 99},
    "more attempts than the limit": {"attempt": 11},
    "a live entry without its manifest": {"manifest": b""},
    "a manifest for another version": {"version": 7},
    "a reset the owner did not sign": {"reset_signature": b"\x01" * 64},
    "a tombstone still holding a manifest": {"status": EntryStatus.DESTROYED},
    "not an entry state's status": {"status": 7},
    "a malformed attempt hash": {"attempt_hash": b"x"},
}


@pytest.mark.parametrize("changes", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_forged_value_is_refused(fleet: InProcessFleet, changes: dict[str, object]) -> None:
    forged = dataclasses.replace(_live(fleet), **changes)  # type: ignore[arg-type]
    assert fleet.firmware[1].check_value(KEY, forged.to_bytes()) is not None


def test_garbage_and_single_seed_values_are_refused(fleet: InProcessFleet) -> None:
    firmware = fleet.firmware[0]
    assert firmware.check_value(KEY, b"\x00garbage") == "not an entry state"
    assert firmware.check_value(b"not an entry id", ThresholdState().to_bytes()) is not None
    # A value of the removed single-seed flow (tag 41, status live), however well formed.
    single_seed = bytes([SINGLE_SEED_ENTRY_TAG]) + (1).to_bytes(8, "big") + bytes(40)
    assert "single-seed" in (firmware.check_value(KEY, single_seed) or "")


def test_a_hostile_proposer_cannot_reset_the_count(fleet: InProcessFleet) -> None:
    """Node 0 is hostile: it runs the consensus protocol correctly but proposes a value
    that forgets the wrong guesses without the owner's signature. The honest acceptors
    refuse it, so nothing commits and the count stays."""
    state = _live(fleet, wrong=2)
    assert state.attempts_used == 2
    forged = state.with_(reset_attempt=state.attempt).to_bytes()
    op_id = os.urandom(8)
    effects = fleet.replicas[0].propose(op_id, KEY, lambda _value: (forged, None), fleet.now)
    fleet._run(0, effects)
    fleet._settle(until=op_id)
    assert not isinstance(fleet.results.get(op_id), Committed)
    for node in range(1, 5):
        assert fleet.state(node, KEY).attempts_used == 2
    assert fleet.client().status().guesses_remaining == 8


def test_a_round_far_above_any_seen_is_refused(fleet: InProcessFleet) -> None:
    """Ballot inflation: a round near 2^64 would leave no higher round for honest
    proposers. An acceptor promises nothing for it and writes nothing; a round further
    above its rounds than the sender's climbing budget reaches is refused too, the entry
    climbing only as far as the budget goes (docs/fleet.md, "Rounds walked up by a
    hostile node"); the fleet goes on."""
    client = fleet.client()
    client.register("pw", ROOT_KEY, ksf=FAST_KSF)
    replica = fleet.replicas[1]
    highest = max(r.promised_round for r in fleet.disk[1].values())
    effects = replica.receive(0, Prepare(os.urandom(8), KEY, (1 << 64) - 1, 0), fleet.now)
    assert not any(isinstance(e, Persist) for e in effects)
    [answer] = [e.message for e in effects if isinstance(getattr(e, "message", None), Promise)]
    assert isinstance(answer, Promise) and not answer.ok
    far = highest + (CLIMB_BURST_STEPS + 2) * MAX_ROUND_STEP
    effects = replica.receive(0, Prepare(os.urandom(8), KEY, far, 0), fleet.now)
    [answer] = [e.message for e in effects if isinstance(getattr(e, "message", None), Promise)]
    assert isinstance(answer, Promise) and not answer.ok
    assert highest < answer.promised_round < far
    # A round within the step is an ordinary higher ballot and is promised.
    top = answer.promised_round
    effects = replica.receive(0, Prepare(os.urandom(8), KEY, top + 5, 0), fleet.now)
    assert any(isinstance(e, Persist) for e in effects)
    assert client.recover("pw", ksf_floor=FAST_KSF).root_key == ROOT_KEY


PADDED_FIELDS = {
    "reset hash": {"reset_hash": b"x" * 200_000},
    "reset signature": {"reset_signature": b"x" * 200_000},
    "change signature": {"change_signature": b"x" * 200_000},
}


@pytest.mark.parametrize("status", [EntryStatus.EMPTY, EntryStatus.DESTROYED])
@pytest.mark.parametrize("padding", PADDED_FIELDS.values(), ids=PADDED_FIELDS.keys())
def test_a_made_up_entry_s_value_padded_through_its_signature_fields_is_refused(
    fleet: InProcessFleet, status: EntryStatus, padding: dict[str, bytes]
) -> None:
    """An empty or destroyed value for an entry nobody registered needs no signature
    that verifies, and its hash and signature fields were not measured: a hostile node's
    Accept of one with a 200 KB "signature" passed every honest acceptor's check, and
    each such Accept wrote a row of up to 256 KiB on every honest node. A hash is 32
    bytes and an owner's signature 64, in every state."""
    made_up = EntryId.of("nobody", "made-up").to_bytes()
    limit = fleet.firmware[1].shape.guess_limit
    plain = ThresholdState(status=status, attempt=limit if status == EntryStatus.DESTROYED else 0)
    assert fleet.firmware[1].check_value(made_up, plain.to_bytes()) is None
    padded = dataclasses.replace(plain, **padding)  # type: ignore[arg-type]
    assert fleet.firmware[1].check_value(made_up, padded.to_bytes()) is not None


def test_word_of_a_live_entry_is_worth_fetching_and_of_any_other_value_is_not(
    fleet: InProcessFleet,
) -> None:
    """A node that holds nothing for an entry runs a round of its own on a stand-in's word
    only for a live entry's value, which it takes only on t nodes' acknowledgements: an
    empty value or a tombstone needs none, and a hostile node can name any name with one
    (docs/fleet.md, "A ballot is taken only from its own node")."""
    live = _live(fleet)
    firmware = fleet.firmware[0]
    assert firmware.worth_fetching(KEY, live.to_bytes())
    destroyed = live.with_(status=EntryStatus.DESTROYED, manifest=b"", acks=b"")
    for value in (ThresholdState().to_bytes(), destroyed.to_bytes(), b"", b"\x2a"):
        assert not firmware.worth_fetching(KEY, value)
