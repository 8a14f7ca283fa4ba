"""The cap on an account's entries (review r1, finding 4), through the real SDK,
firmware and replicas: the user is told what went wrong and what to do, nothing is kept
of the refused entry, an entry the account has goes on working at the cap, and neither
deleting entries nor staging each on only t nodes passes it (review s46). The cap is
made small here to be reached; a node's is ENTRIES_PER_ACCOUNT (256)."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from inprocess_fleet import FAST_KSF, InProcessFleet

from backupvault.client.errors import VaultError
from backupvault.client.threshold import ThresholdVault
from backupvault.codec import Message
from backupvault.crypto import manifest
from backupvault.fleet.messages import Prepare
from backupvault.hsm.shares import FleetShape, ShareKeeper, ThresholdRead
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.protocol import (
    AckKind,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    Op,
    RegisterShareRequest,
    ShareAck,
)
from backupvault.sim.clients import SIM_KSF

CAP = 3


def _capped(fleet: InProcessFleet) -> None:
    for n in fleet.replicas:
        fleet.firmware[n].shares._entries_cap = CAP


def _values_of_alice(fleet: InProcessFleet, n: int) -> int:
    return sum(1 for key in fleet.disk[n] if EntryId.from_bytes(key).account == "alice")


def _rows_of_alice(fleet: InProcessFleet, n: int) -> int:
    return sum(1 for key in fleet.shares[n] if EntryId.from_bytes(key).account == "alice")


def _registered(client: ThresholdVault) -> bool:
    """Registers `client`'s entry; False if the nodes refused it for the account's cap."""
    try:
        client.register("pw", os.urandom(32), ksf=FAST_KSF)
    except VaultError as err:
        assert "as many entry names" in err.message
        return False
    return True


def test_an_account_at_its_cap_is_told_and_nothing_is_kept_of_the_new_entry(
    fleet: InProcessFleet,
) -> None:
    _capped(fleet)
    for n in range(CAP):
        fleet.client(entry=f"entry-{n}").register("pw", os.urandom(32), ksf=FAST_KSF)
    with pytest.raises(VaultError, match="as many entry names of this account") as refused:
        fleet.client(entry="one-more").register("pw", os.urandom(32), ksf=FAST_KSF)
    assert "entry was not registered" in str(refused.value)
    assert "entry name this account had before" in (refused.value.hint or "")
    key = EntryId.of("alice", "one-more").to_bytes()
    for n in fleet.replicas:
        assert key not in fleet.shares[n] and key not in fleet.disk[n]
        assert _values_of_alice(fleet, n) == _rows_of_alice(fleet, n) == CAP


def test_at_the_cap_an_entry_changes_its_password_and_a_deleted_name_registers_again(
    fleet: InProcessFleet,
) -> None:
    """A delete frees no name (its tombstone stays on every node, so the store cannot
    grow by delete and register again: review s46), and the name it leaves registers
    again."""
    _capped(fleet)
    root_keys = {f"entry-{n}": os.urandom(32) for n in range(CAP)}
    for entry, root_key in root_keys.items():
        fleet.client(entry=entry).register("pw", root_key, ksf=FAST_KSF)
    first = fleet.client(entry="entry-0")
    first.change_password(first.recover("pw", ksf_floor=FAST_KSF), "new pw", ksf=FAST_KSF)
    assert first.recover("new pw", ksf_floor=FAST_KSF).root_key == root_keys["entry-0"]
    second = fleet.client(entry="entry-1")
    second.delete(second.recover("pw", ksf_floor=FAST_KSF))
    with pytest.raises(VaultError, match="as many entry names"):
        fleet.client(entry="one-more").register("pw", os.urandom(32), ksf=FAST_KSF)
    root_key = os.urandom(32)  # at the version after the deleted one's
    fleet.client(entry="entry-1").register("pw", root_key, ksf=FAST_KSF, version=2)
    assert fleet.client(entry="entry-1").recover("pw", ksf_floor=FAST_KSF).root_key == root_key
    assert all(_values_of_alice(fleet, n) == CAP for n in fleet.replicas)


def test_registering_and_deleting_fresh_names_never_grows_a_node_past_the_cap(
    fleet: InProcessFleet,
) -> None:
    """Review s46's first attack on the cap as first built (it counted rows that keep a
    share, so a delete made room): register fresh names, delete them, again. Each round
    left every node a tombstone and an erased row with its M, for good."""
    _capped(fleet)
    refused = 0
    for round in range(3):
        for n in range(CAP):
            client = fleet.client(entry=f"round-{round}-{n}")
            if not _registered(client):
                refused += 1
                continue
            client.delete(client.recover("pw", ksf_floor=FAST_KSF))
    assert refused == 2 * CAP
    for n in fleet.replicas:
        assert _values_of_alice(fleet, n) == _rows_of_alice(fleet, n) == CAP


def test_staging_each_entry_on_t_nodes_only_never_passes_the_cap(fleet: InProcessFleet) -> None:
    """Review s46's second attack: stage each new entry on a different t nodes, so no
    node's count of shares reaches the cap, commit, then let the owed shares come late.
    Every node holds every committed value, and values are what is counted."""
    _capped(fleet)
    nodes, t = len(fleet.replicas), fleet.shape.threshold
    registered = []
    for j in range(nodes):
        stagers = {(j + k) % nodes for k in range(t)}
        fleet.relay_drops = lambda op, node, s=stagers: op is Op.REGISTER_SHARE and node not in s
        client = fleet.client(entry=f"x-{j}")
        client.delivery_patience = 0.5  # the relay keeps dropping: waiting longer changes nothing
        if _registered(client):
            registered.append(client)
    fleet.relay_drops = lambda op, node: False
    assert len(registered) == CAP
    for client in registered:  # the owed shares delivered
        client.recover("pw", ksf_floor=FAST_KSF)
    for n in fleet.replicas:
        assert _values_of_alice(fleet, n) == _rows_of_alice(fleet, n) == CAP


def test_a_registration_cut_off_before_its_commit_registers_again_at_the_cap(
    fleet: InProcessFleet,
) -> None:
    """A staged share is counted by its row, committed or not, and registering a cut-off
    entry again stages on that row: at the cap too."""
    _capped(fleet)
    fleet.relay_drops = lambda op, node: op is Op.COMMIT_SHARES
    cut_off = fleet.client(entry="cut-off")
    cut_off.delivery_patience = 0.5
    with pytest.raises(VaultError):
        cut_off.register("pw", os.urandom(32), ksf=FAST_KSF)
    fleet.relay_drops = lambda op, node: False
    for n in range(CAP - 1):
        fleet.client(entry=f"entry-{n}").register("pw", os.urandom(32), ksf=FAST_KSF)
    with pytest.raises(VaultError, match="as many entry names"):
        fleet.client(entry="one-more").register("pw", os.urandom(32), ksf=FAST_KSF)
    root_key = os.urandom(32)
    fleet.client(entry="cut-off").register("pw", root_key, ksf=FAST_KSF)
    assert fleet.client(entry="cut-off").recover("pw", ksf_floor=FAST_KSF).root_key == root_key
    assert all(_values_of_alice(fleet, n) == CAP for n in fleet.replicas)


def test_only_a_name_the_node_does_not_count_meets_the_cap() -> None:
    """At the cap, a staging for an entry this node counts (a share row or a live value
    here: a deleted name registered again) is taken; one for an entry it does not count
    is refused, a tombstone alone there included (one hostile node can leave those)."""
    fleet_id = b"f" * 16
    keeper = ShareKeeper(fleet_id, 0, FleetShape(1, 1, 1), Ed25519PrivateKey.generate(), {}.get)
    counted = {EntryId.of("alice", "deleted").to_bytes()}
    keeper.count_entries = lambda key: (CAP, key in counted)
    keeper._entries_cap = CAP
    tombstone = ThresholdState(status=EntryStatus.DESTROYED, version=1)

    def staging(entry: str, state: ThresholdState, version: int) -> Message:
        made = manifest.register(
            b"pw",
            bytes(32),
            fleet_id=fleet_id,
            account="alice",
            entry=entry,
            epoch=1,
            nodes=1,
            threshold_count=1,
            ksf=SIM_KSF,
            version=version,
        )
        m = made.manifest
        request = RegisterShareRequest(
            "alice", entry, m.to_bytes(), made.shares[0].to_bytes(), b"", 0
        )
        read = keeper.handle(Op.REGISTER_SHARE, request)
        assert isinstance(read, ThresholdRead)
        return read.read(state).response

    for refused in (staging("new", ThresholdState(), 1), staging("made-up", tombstone, 2)):
        assert isinstance(refused, ErrorResponse) and refused.code == ErrorCode.TOO_MANY_ENTRIES
    taken = staging("deleted", tombstone, 2)
    assert isinstance(taken, ShareAck) and taken.kind == AckKind.STAGED


def test_a_hostile_node_cannot_fill_an_honest_accounts_count(fleet: InProcessFleet) -> None:
    """Review s46: with every record of an entry key counted, one hostile node (c = 1)
    filled alice's count on every honest node, before she registered anything, with
    Prepares for made-up names (each acceptor keeps the promise) or with tombstones of
    made-up names (they need no owner's signature). Neither is counted now."""
    _capped(fleet)
    hostile = 4
    tombstone = ThresholdState(
        status=EntryStatus.DESTROYED, version=1, attempt=fleet.shape.guess_limit
    ).to_bytes()
    for i in range(CAP):
        promised = EntryId.of("alice", f"promised-{i}").to_bytes()
        for node in fleet.replicas:
            if node != hostile:
                prepare = Prepare(os.urandom(16), promised, 1, hostile)
                fleet._run(node, fleet.replicas[node].receive(hostile, prepare, fleet.now))
        tombstoned = EntryId.of("alice", f"tombstoned-{i}").to_bytes()
        op = os.urandom(8)
        proposal = fleet.replicas[hostile].propose(
            op, tombstoned, lambda held: (tombstone, None), fleet.now
        )
        fleet._run(hostile, proposal)
        fleet._settle(until=op)
    for node in set(fleet.replicas) - {hostile}:  # both kept by the honest, none counted
        assert EntryId.of("alice", "promised-0").to_bytes() in fleet.disk[node]
        assert _values_of_alice(fleet, node) == 2 * CAP
        assert fleet.firmware[node].shares.count_entries(
            EntryId.of("alice", "backup-root-key").to_bytes()
        ) == (0, False)
    root_key = os.urandom(32)
    fleet.client(entry="backup-root-key").register("pw", root_key, ksf=FAST_KSF)
    assert fleet.client().recover("pw", ksf_floor=FAST_KSF).root_key == root_key


def test_staging_each_entry_on_t_nodes_then_deleting_it_never_passes_the_cap(
    fleet: InProcessFleet,
) -> None:
    """Review s46's third attack: both earlier ones at once. Each fresh name registered,
    recovered and deleted through a different t nodes only, so after the delete only
    they hold a row of it; a count that forgot the name with its live value let about
    N / t × the cap through. A name is counted for good once its value was live."""
    _capped(fleet)
    nodes, t = len(fleet.replicas), fleet.shape.threshold
    registered = 0
    skipped = (Op.REGISTER_SHARE, Op.DELIVER_SHARE, Op.DELETE_SHARE)
    for j in range(2 * nodes):
        through = {(j * t + k) % nodes for k in range(t)}
        fleet.relay_drops = lambda op, node, s=through: op in skipped and node not in s
        client = fleet.client(entry=f"x-{j}")
        client.delivery_patience = 0.5  # the relay keeps dropping: waiting longer changes nothing
        if _registered(client):
            client.delete(client.recover("pw", ksf_floor=FAST_KSF))
            registered += 1
    assert registered == CAP
    for n in fleet.replicas:
        assert _values_of_alice(fleet, n) == CAP
