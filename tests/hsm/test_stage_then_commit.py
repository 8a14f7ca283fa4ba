"""Stage, then commit (docs/threshold.md): t nodes keep their share of a new version before
any round can make it the entry's version, so no relay, network or minority of hostile
nodes can leave an entry live with fewer than t holders ("Attack review", finding 6)."""

from __future__ import annotations

import pytest
from inprocess_fleet import FAST_KSF, InProcessFleet
from tests.racing import before_first

from backupvault.client.errors import EntryChanged, FleetUnavailable, WrongPassword
from backupvault.client.threshold import ThresholdRecovery
from backupvault.crypto import manifest, owner
from backupvault.hsm.shares import check_threshold_value
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.protocol import (
    AckKind,
    CommitAck,
    CommitSharesRequest,
    DeleteShareRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    Op,
    RegisterShareRequest,
    ShareAck,
    encode_commit_acks,
    share_ack_message,
)
from backupvault.sim.clients import SIM_KSF
from backupvault.sim.world import EPOCH, FLEET_ID, Simulation, ThresholdClient, threshold_world

ROOT_KEY = bytes(range(32))
KEY = EntryId("alice", "backup-root-key").to_bytes()


def _registered(fleet: InProcessFleet) -> ThresholdRecovery:
    vault = fleet.client()
    vault.register("old", ROOT_KEY, ksf=FAST_KSF)
    return vault.recover("old", ksf_floor=FAST_KSF)


# ---- through the real SDK, firmware and replicas ---------------------------------------------


def test_a_registration_whose_version_another_device_registered_and_deleted_says_so(
    fleet: InProcessFleet,
) -> None:
    """Two devices register the same entry; the other commits first and deletes its key
    before this commit arrives. No manifest is agreed (the entry is empty), but every node
    holds version 1 spent, so this registration never takes effect: it says so, and
    registering again works. It said "could not tell whether version 1 took effect", a
    fleet that seemed unsure (simulation seed 10363016, two hostile nodes of five)."""
    other = fleet.client()

    def register_and_delete() -> None:
        other.register("theirs", bytes(32), ksf=FAST_KSF)
        other.delete(other.recover("theirs", ksf_floor=FAST_KSF))

    raced = before_first(fleet, Op.COMMIT_SHARES, register_and_delete)
    mine = fleet.client()  # its transport is made now, through the hook
    with pytest.raises(EntryChanged, match="another device registered version 1") as caught:
        mine.register("mine", ROOT_KEY, ksf=FAST_KSF)
    assert raced
    assert "run the registration again" in (caught.value.hint or "")
    assert all(fleet.state(n, KEY).status == EntryStatus.EMPTY for n in fleet.replicas)
    assert all(fleet.state(n, KEY).version == 1 for n in fleet.replicas)
    assert mine.register("mine", ROOT_KEY, ksf=FAST_KSF, version=2).version == 2  # as the CLI asks
    assert mine.recover("mine", ksf_floor=FAST_KSF).root_key == ROOT_KEY


def test_a_relay_that_passes_one_nodes_change_cannot_lose_the_key(fleet: InProcessFleet) -> None:
    """Finding 6: the relay passed one node's copy of a change and dropped the rest; that
    node committed M′ and every other node erased its old share. Now one node only
    stages its share: with fewer than t staged no commit is sent, nothing changes, and
    the client says so."""
    recovered = _registered(fleet)
    shares_before = {n: fleet.shares[n][KEY].share for n in fleet.replicas}
    fleet.relay_drops = lambda op, node: op is Op.CHANGE_SHARE and node != 0
    commits = [op for op, _ in fleet.requests].count("commit-shares")
    client = fleet.client()
    client.delivery_patience = 0.5  # the relay keeps dropping: waiting longer changes nothing
    with pytest.raises(FleetUnavailable, match="password was not changed"):
        client.change_password(recovered, "new", ksf=FAST_KSF)
    assert [op for op, _ in fleet.requests].count("commit-shares") == commits
    fleet.relay_drops = lambda op, node: False
    assert all(fleet.state(n, KEY).version == 1 for n in fleet.replicas)
    assert {n: fleet.shares[n][KEY].share for n in fleet.replicas} == shares_before
    with pytest.raises(WrongPassword):
        fleet.client().recover("new", ksf_floor=FAST_KSF)
    assert fleet.client().recover("old", ksf_floor=FAST_KSF).root_key == ROOT_KEY


def test_a_commit_the_relay_passes_to_one_node_still_leaves_t_holders(
    fleet: InProcessFleet,
) -> None:
    """Every node staged its share; the relay passes the commit to node 0 only. Its round
    commits M′, and every acceptor that takes M′ promotes the share it staged: the new
    password opens the key, the old one no longer does."""
    recovered = _registered(fleet)
    fleet.relay_drops = lambda op, node: op is Op.COMMIT_SHARES and node != 0
    client = fleet.client()
    client.delivery_patience = 0.5  # the relay keeps dropping: waiting longer changes nothing
    changed = client.change_password(recovered, "new", ksf=FAST_KSF)
    assert changed.acknowledged == (0,) and changed.degraded
    fleet.relay_drops = lambda op, node: False
    rows = [fleet.firmware[n].shares.row(KEY) for n in fleet.replicas]
    assert all(row is not None and row.version == 2 and row.share for row in rows)
    assert fleet.client().recover("new", ksf_floor=FAST_KSF).root_key == ROOT_KEY
    with pytest.raises(WrongPassword):
        fleet.client().recover("old", ksf_floor=FAST_KSF)


def test_a_staged_share_opens_nothing_until_its_commit(fleet: InProcessFleet) -> None:
    """Every commit copy dropped: the shares stay staged, the client says the old password
    still opens the key (t nodes answer the old version), and it does; the new one not."""
    recovered = _registered(fleet)
    fleet.relay_drops = lambda op, node: op is Op.COMMIT_SHARES
    client = fleet.client()
    client.delivery_patience = 0.5  # the relay keeps dropping: waiting longer changes nothing
    with pytest.raises(FleetUnavailable, match="the old password still opens the key"):
        client.change_password(recovered, "new", ksf=FAST_KSF)
    fleet.relay_drops = lambda op, node: False
    assert all(fleet.shares[n][KEY].staged for n in fleet.replicas)  # kept, not in effect
    with pytest.raises(WrongPassword):
        fleet.client().recover("new", ksf_floor=FAST_KSF)
    assert fleet.client().recover("old", ksf_floor=FAST_KSF).root_key == ROOT_KEY


# ---- what a node and an acceptor check -------------------------------------------------------


def _dealt(
    version: int, password: bytes = b"new", root_key: bytes = ROOT_KEY
) -> manifest.Registration:
    return manifest.register(
        password,
        root_key,
        fleet_id=FLEET_ID,
        account="alice",
        entry="chat",
        epoch=EPOCH,
        nodes=5,
        threshold_count=3,
        ksf=SIM_KSF,
        version=version,
    )


def _ack(world: Simulation, slot: int, m: manifest.Manifest, signer: int = -1) -> CommitAck:
    """Node `slot`'s STAGED acknowledgement of M, signed by node `signer`'s key (its own)."""
    signed = share_ack_message(
        AckKind.STAGED,
        FLEET_ID,
        "alice",
        "chat",
        m.version,
        m.commitments.node_public_key(slot + 1),
        m.to_bytes(),
    )
    key = world.signing[slot if signer < 0 else signer]
    return CommitAck(slot + 1, AckKind.STAGED, key.sign(signed))


def _changed_value(world: Simulation, client: ThresholdClient) -> tuple[ThresholdState, bytes]:
    """The value a genuine password change to version 2 makes, without its acks, and the
    held version 1 value."""
    recovered = client.recover(b"right")
    assert recovered is not None
    made = _dealt(2)
    encoded = made.manifest.to_bytes()
    statement = owner.OwnerStatement(
        owner.StatementKind.CHANGE_PASSWORD,
        FLEET_ID,
        "alice",
        "chat",
        1,
        1,
        owner.payload_hash(encoded),
    )
    held = world.replicated(0, client.key)
    changed = held.with_(
        version=2,
        manifest=encoded,
        attempt_hash=b"",
        reset_attempt=held.attempt,
        reset_hash=b"",
        reset_signature=b"",
        change_counter=1,
        change_signature=owner.sign_statement(recovered[0], statement),
    )
    return changed, held.to_bytes()


def test_an_acceptor_takes_a_new_version_only_with_t_verified_acknowledgements() -> None:
    """A hostile proposer (or relay) holding the owner's genuine change cannot get it
    committed before t nodes keep their shares: the acceptor counts only acknowledgements
    that verify under each node's own key for its K_i of this M."""
    world = threshold_world(5, 10)
    client = ThresholdClient(world)
    client.register(b"right", ROOT_KEY)
    changed, held = _changed_value(world, client)
    dealt = manifest.Manifest.from_bytes(changed.manifest)

    def check(acks: list[CommitAck], value: ThresholdState = changed) -> str | None:
        proposed = value.with_(acks=encode_commit_acks(acks))
        return check_threshold_value(
            FLEET_ID, client.key, world.shape, proposed, held, node_keys=world.node_keys
        )

    refusal = "a new version without t nodes' acknowledgement that they keep their share"
    assert check([]) == refusal
    assert check([_ack(world, s, dealt) for s in (0, 1)]) == refusal
    # Three entries, but node 2's is signed with node 0's key: two verify.
    assert check([_ack(world, 0, dealt), _ack(world, 1, dealt), _ack(world, 2, dealt, 0)]) == (
        refusal
    )
    # Acknowledgements of another dealing of version 2 say nothing of this M.
    other = _dealt(2, b"other")
    assert check([_ack(world, s, other.manifest) for s in (0, 1, 2)]) == refusal
    good = [_ack(world, s, dealt) for s in (0, 1, 2)]
    assert check(good) is None
    # Within a version the acknowledgements never change (none stripped, none swapped).
    taken = changed.with_(acks=encode_commit_acks(good))
    swapped = taken.with_(acks=encode_commit_acks([_ack(world, s, dealt) for s in (2, 3, 4)]))
    assert (
        check_threshold_value(
            FLEET_ID, client.key, world.shape, swapped, taken.to_bytes(), node_keys=world.node_keys
        )
        == "the acknowledgements changed within a version"
    )


def test_a_node_refuses_a_commit_without_t_acknowledgements_and_stores_nothing() -> None:
    world = threshold_world(5, 10)
    made = _dealt(1, b"right")
    encoded = made.manifest.to_bytes()
    for slot in (0, 1):
        stage = RegisterShareRequest("alice", "chat", encoded, made.shares[slot].to_bytes(), b"", 0)
        assert isinstance(world.request(slot, Op.REGISTER_SHARE, stage), ShareAck)
    acks = [_ack(world, s, made.manifest) for s in (0, 1)]
    commit = CommitSharesRequest("alice", "chat", encoded, b"", 0, encode_commit_acks(acks))
    answer = world.request(0, Op.COMMIT_SHARES, commit)
    assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.BAD_REQUEST
    assert "3 nodes' acknowledgements" in answer.detail
    key = EntryId("alice", "chat").to_bytes()
    assert all(world.replicated(s, key) == ThresholdState() for s in range(5))
    assert not any(world.honest[s].rows[key].share for s in (0, 1))


def test_two_devices_staging_at_once_both_stage_and_the_first_commit_wins() -> None:
    """Each node keeps a few staged shares per entry, so a second device's registration
    does not push out the first's before either commits; the second commit is refused."""
    world = threshold_world(5, 10)
    key = EntryId("alice", "chat").to_bytes()
    first, second = _dealt(1, b"one"), _dealt(1, b"two")
    acks: dict[int, list[CommitAck]] = {0: [], 1: []}
    for which, made in enumerate((first, second)):
        encoded = made.manifest.to_bytes()
        for slot in range(5):
            stage = RegisterShareRequest(
                "alice", "chat", encoded, made.shares[slot].to_bytes(), b"", 0
            )
            answer = world.request(slot, Op.REGISTER_SHARE, stage)
            assert isinstance(answer, ShareAck) and answer.kind == AckKind.STAGED
            acks[which].append(CommitAck(answer.index, AckKind.STAGED, answer.signature))
    assert all(len(world.honest[s].rows[key].staged) == 2 for s in range(5))
    commit = CommitSharesRequest(
        "alice", "chat", first.manifest.to_bytes(), b"", 0, encode_commit_acks(acks[0][:3])
    )
    assert isinstance(world.request(4, Op.COMMIT_SHARES, commit), ShareAck)
    assert world.run_until(
        lambda: all(world.honest[s].rows[key].version == 1 for s in range(5)), 30.0
    )
    for slot in range(5):
        row = world.honest[slot].rows[key]
        assert row.share == first.shares[slot].to_bytes() and not row.staged
    late = CommitSharesRequest(
        "alice", "chat", second.manifest.to_bytes(), b"", 0, encode_commit_acks(acks[1][:3])
    )
    refused = world.request(0, Op.COMMIT_SHARES, late)
    assert isinstance(refused, ErrorResponse) and refused.code == ErrorCode.ALREADY_REGISTERED


def test_a_registration_staged_after_the_delete_was_taken_survives_the_delete_request() -> None:
    """A node that took the owner's delete through other nodes' rounds, then staged another
    device's registration of the next version, and only then got its own copy of the
    delete, erased the staged share with the deleted one: the registration committed on
    its acknowledgements with no share there (sim seed 10356181: none on any honest node)."""
    world = threshold_world(5, 10)
    client = ThresholdClient(world, entry="chat")
    client.register(b"old", ROOT_KEY)
    recovered = client.recover(b"old")
    assert recovered is not None
    current = client.agreed()
    statement = owner.OwnerStatement(
        owner.StatementKind.DELETE,
        FLEET_ID,
        "alice",
        "chat",
        current.version,
        7,
        owner.payload_hash(current.to_bytes()),
    )
    delete = DeleteShareRequest(
        "alice", "chat", current.version, 7, owner.sign_statement(recovered[0], statement)
    )
    key = EntryId("alice", "chat").to_bytes()
    for slot in (1, 2, 3, 4):
        assert isinstance(world.request(slot, Op.DELETE_SHARE, delete), ShareAck)
    assert world.replicated(0, key).status == EntryStatus.EMPTY  # taken as an acceptor
    new = _dealt(current.version + 1, b"again")
    acks = []
    for slot in range(5):
        stage = RegisterShareRequest(
            "alice", "chat", new.manifest.to_bytes(), new.shares[slot].to_bytes(), b"", 0
        )
        answer = world.request(slot, Op.REGISTER_SHARE, stage)
        assert isinstance(answer, ShareAck) and answer.kind == AckKind.STAGED
        acks.append(CommitAck(answer.index, AckKind.STAGED, answer.signature))
    erased = world.request(0, Op.DELETE_SHARE, delete)  # node 0's own copy, late
    assert isinstance(erased, ShareAck) and erased.kind == AckKind.ERASED
    assert not world.honest[0].rows[key].share
    commit = CommitSharesRequest(
        "alice", "chat", new.manifest.to_bytes(), b"", 0, encode_commit_acks(acks[:3])
    )
    assert isinstance(world.request(1, Op.COMMIT_SHARES, commit), ShareAck)
    assert world.run_until(
        lambda: all(world.honest[s].rows[key].version == new.manifest.version for s in range(5)),
        30.0,
    )
    assert world.honest[0].rows[key].share == new.shares[0].to_bytes()
