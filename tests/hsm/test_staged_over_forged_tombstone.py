"""docs/threshold.md, "A registration staged while a node held a forged tombstone" (review
s56b's lead), reproduced step by step on the scripted world and compared with what forged
tombstones alone, from the same hostile node (node 4 of 5), already do to the same honest
nodes; and the honest runs that rule out the fixes tried.

Staging is a request of the account (sealed with its fleet token and the device's proof,
docs/relay.md): in the simulation the attacker owns the tokens, so these tests give it
the account's token, which the relay alone does not have. A holder of that token can
already spend the entry's L guesses and then register the entry again."""

from __future__ import annotations

import pytest
from test_catching_up import NEW_RK, OLD_RK, _checker, _forge
from test_stage_then_commit import _ack, _dealt  # _ack: the hostile node signs what it likes

from backupvault.codec import Message
from backupvault.crypto import manifest, oprf, threshold
from backupvault.errors import AuthenticationFailed
from backupvault.hsm.state import NodeShare, ThresholdState
from backupvault.protocol import (
    AckKind,
    CommitAck,
    CommitSharesRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    Op,
    RegisterShareRequest,
    ShareAck,
    decode_commit_acks,
    encode_commit_acks,
)
from backupvault.sim.world import Simulation, ThresholdClient, threshold_world

ATTACKER_PASSWORD = b"the attacker's password"
ATTACKER_RK = bytes([9]) * 32
SECOND_DEVICE_RK = bytes([5]) * 32
HOSTILE = 4
TRICKED = (0, 1)


def _owner_with_a_success() -> tuple[Simulation, ThresholdClient, ThresholdState, ThresholdState]:
    """The owner registered version 1 and opened it once: the commit (window from 0) and
    the value carrying the owner's signed reset of that success (window from 1)."""
    world = threshold_world(5, 4, 1, seed=11, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    client.register(b"right", OLD_RK)
    commit = world.replicated(0, client.key)
    assert client.recover(b"right") is not None
    reset = world.replicated(0, client.key)
    assert (commit.reset_attempt, reset.attempt, reset.reset_attempt) == (0, 1, 1)
    assert reset.reset_signature
    return world, client, commit, reset


def _tombstone(world: Simulation, parent: ThresholdState) -> ThresholdState:
    """A tombstone any proposer can make: `parent`'s window with L invented attempts."""
    return parent.with_(
        status=EntryStatus.DESTROYED,
        manifest=b"",
        acks=b"",
        attempt=parent.reset_attempt + world.shape.guess_limit,
    )


def _stage(world: Simulation, slot: int, made: manifest.Registration) -> Message:
    """Node `slot`'s answer to the staging of its share of `made` (a register-share)."""
    request = RegisterShareRequest(
        "alice", "chat", made.manifest.to_bytes(), made.shares[slot].to_bytes(), b"", 0
    )
    return world.request(slot, Op.REGISTER_SHARE, request)


def _staged_ack(world: Simulation, slot: int, made: manifest.Registration) -> CommitAck:
    """Node `slot` stages its share of `made`; its signed STAGED acknowledgement."""
    answer = _stage(world, slot, made)
    assert isinstance(answer, ShareAck), answer
    assert (answer.kind, answer.index) == (AckKind.STAGED, slot + 1)
    return CommitAck(answer.index, AckKind.STAGED, answer.signature)


def _registered_over(
    parent: ThresholdState, made: manifest.Registration, acks: list[CommitAck]
) -> ThresholdState:
    """The value a registration's commit makes over `parent` (`ShareKeeper._commit`)."""
    return parent.with_(
        status=EntryStatus.LIVE,
        version=made.manifest.version,
        manifest=made.manifest.to_bytes(),
        attempt_hash=b"",
        reset_attempt=parent.attempt,
        reset_hash=b"",
        reset_signature=b"",
        change_counter=0,
        change_signature=b"",
        acks=encode_commit_acks(acks),
    )


def _rows(world: Simulation, key: bytes) -> dict[int, NodeShare]:
    return {slot: world.honest[slot].rows[key] for slot in range(4)}


def _opened(made: manifest.Registration, password: bytes) -> bytes:
    """The root key `password` opens from `made`'s manifest with t of its own shares (what
    the dealer can do alone, offline): raises if the password does not open it."""
    blind, blinded = oprf.blind(password)
    partials = [threshold.evaluate_partial(share, blinded) for share in made.shares[:3]]
    combined = threshold.combine(made.manifest.commitments, blinded, partials)
    return manifest.open_entry(made.manifest, oprf.finalize(password, blind, combined.evaluated))[1]


def _evaluate(world: Simulation, slot: int, version: int) -> Message:
    blinded = oprf.blind(b"guess")[1]
    request = EvaluateRequest("alice", "chat", version, blinded, 10**12)
    return world.request(slot, Op.EVALUATE, request)


def test_a_share_staged_over_a_forged_tombstone_replaces_the_one_the_reset_revived() -> None:
    """The lead, every step taken. The hostile node (4 of 5) makes nodes 0 and 1 take a
    forged tombstone of the live version 1 (window from the commit, L invented attempts);
    with the account's token the attacker stages its own registration of version 2 (its
    M2, its shares) there, and both sign STAGED (a node holding the live entry refuses
    it: the tombstone is needed); the owner's signed reset of a success inside the
    tombstone's window brings both back live at version 1 with the owner's share
    (`_outlived_tombstone`); then version 2 with M2 and t acknowledgements (nodes 0 and
    1's, the hostile node's; two do not pass) makes both promote the attacker-dealt share
    over the owner's, and honest settling takes version 2 to nodes 2 and 3 (t
    acknowledgements verify). The attacker gets no evaluation: no count of the owner's
    share moves, no node answers version 1 again, and M2 opens with the attacker's own
    password only, to the attacker's own root key. The owner loses the entry for good:
    M2 is live everywhere, the owner's share is gone from nodes 0 and 1, and the replayed
    reset that revived them is now refused by every honest node."""
    world, client, commit, reset = _owner_with_a_success()
    key = client.key
    owners = _rows(world, key)
    assert all(row.version == 1 and row.share and row.count == 0 for row in owners.values())
    made = _dealt(2, ATTACKER_PASSWORD, ATTACKER_RK)
    m2 = made.manifest.to_bytes()

    refused = _stage(world, 0, made)  # the entry is live here: no staging
    assert isinstance(refused, ErrorResponse) and refused.code == ErrorCode.ALREADY_REGISTERED

    tombstone = _tombstone(world, commit)
    assert tombstone.reset_attempt < reset.reset_attempt <= tombstone.attempt
    for slot in TRICKED:
        assert _forge(world, slot, key, tombstone)  # step 1
    acks = [_staged_ack(world, slot, made) for slot in TRICKED]  # step 2
    acks.append(_ack(world, HOSTILE, made.manifest))
    for slot in TRICKED:
        row = world.honest[slot].rows[key]
        assert (row.share, row.count) == (owners[slot].share, 0)
        assert [s.manifest for s in row.staged] == [m2]
        assert _forge(world, slot, key, reset)  # step 3: live again, the owner's share
        assert world.replicated(slot, key) == reset
        assert world.honest[slot].rows[key].share == owners[slot].share

    forged = _registered_over(reset, made, acks)
    assert not _forge(world, 0, key, _registered_over(reset, made, acks[1:]))  # two of t
    for slot in TRICKED:
        assert _forge(world, slot, key, forged)  # step 4
        row = world.honest[slot].rows[key]
        assert (row.version, row.manifest, row.share, row.count) == (
            2,
            m2,
            made.shares[slot].to_bytes(),
            0,
        )
    world.settle(5.0)
    assert all(world.replicated(slot, key) == forged for slot in range(4))
    rows = _rows(world, key)
    assert {slot: rows[slot] for slot in (2, 3)} == {slot: owners[slot] for slot in (2, 3)}

    # Nothing evaluated with the owner's share, now or later.
    for slot in range(4):
        answer = _evaluate(world, slot, 1)
        assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.STALE_MANIFEST
    assert _rows(world, key) == rows
    # M2 is the attacker's own registration: the owner's password does not open it.
    assert _opened(made, ATTACKER_PASSWORD) == ATTACKER_RK
    with pytest.raises(AuthenticationFailed):
        _opened(made, b"right")
    # The owner cannot recover: M2 is agreed, with two honest holders (node 4 silent).
    with pytest.raises(threshold.NotEnoughPartials, match="2 nodes hold a share"):
        client.recover(b"right")
    for slot in range(4):
        assert not _forge(world, slot, key, reset)  # the version never goes back
    assert _rows(world, key) == rows
    holders = [s for s, row in rows.items() if row.share and row.manifest == commit.manifest]
    assert holders == [2, 3]  # the owner's key: two honest shares left, fewer than t


def test_forged_tombstones_alone_end_the_entry_and_only_the_attacker_undoes_them() -> None:
    """The baseline the threat table grants, on the same nodes with the same hostile node:
    the forged tombstone of step 1 alone, sent to nodes 0 and 1. Honest settling commits
    it (the nodes holding it run a round, which takes the newest value a majority holds),
    so the entry is destroyed everywhere and the owner cannot recover: lost as in the
    lead. Nothing is erased (every honest node keeps the owner's share and its count),
    and no honest step brings it back, but the attacker can, by replaying the owner's
    reset (`_outlived_tombstone`). The owner's reset does not undo a tombstone whose
    window starts at that reset, and the attacker sees every reset (it holds every
    value): it can end the entry again after each."""
    world, client, commit, reset = _owner_with_a_success()
    key = client.key
    owners = _rows(world, key)
    tombstone = _tombstone(world, commit)
    for slot in TRICKED:
        assert _forge(world, slot, key, tombstone)
    world.settle(5.0)
    assert all(world.replicated(slot, key) == tombstone for slot in range(4))
    with pytest.raises(AuthenticationFailed):
        client.recover(b"right")
    assert _rows(world, key) == owners
    for slot in range(4):
        assert _forge(world, slot, key, reset)
    world.settle(5.0)
    recovered = client.recover(b"right")
    assert recovered is not None and recovered[1] == OLD_RK
    # A tombstone from the reset's own window is not undone by that reset (the owner's
    # next one undoes it), and one whose window starts past any reset by none.
    check = _checker(world, key)
    later = world.replicated(0, key)
    assert later.reset_attempt > reset.reset_attempt and later.reset_signature
    from_the_reset = _tombstone(world, reset)
    past_every_reset = _tombstone(world, reset.with_(reset_attempt=2**40, attempt=2**40))
    assert check(from_the_reset, reset) is None and check(past_every_reset, reset) is None
    assert check(reset, tombstone) is None
    assert check(reset, from_the_reset) == "the attempt counter went down"
    assert check(later, from_the_reset) is None
    assert check(later, past_every_reset) == "the attempt counter went down"


def test_with_the_token_the_baseline_replaces_the_owners_share_at_every_honest_node() -> None:
    """What the same attacker (the hostile node, and the account's token that the lead's
    staging needs) does with forged tombstones and no revival: once the tombstone is
    committed, it registers its own M2 through the ordinary flow. Every honest node holds
    the tombstone, so all four stage and promote: the owner's share is replaced at four
    honest nodes, not two as in the lead, and M2 is live with four honest holders. The
    owner's password is a wrong guess of M2 (it counts against M2, nothing of the owner's
    key); the attacker's opens it, to the attacker's own root key."""
    world, client, commit, _ = _owner_with_a_success()
    key = client.key
    for slot in TRICKED:
        assert _forge(world, slot, key, _tombstone(world, commit))
    world.settle(5.0)
    assert all(world.replicated(slot, key).status == EntryStatus.DESTROYED for slot in range(4))
    attacker = ThresholdClient(world)
    loot, staged = attacker.register(ATTACKER_PASSWORD, ATTACKER_RK, version=2)
    assert staged == 4
    m2 = loot.manifest.to_bytes()
    rows = _rows(world, key)
    assert all((row.version, row.manifest) == (2, m2) for row in rows.values())
    assert not any(row.manifest == commit.manifest for row in rows.values())
    assert client.recover(b"right") is None
    opened = attacker.recover(ATTACKER_PASSWORD)
    assert opened is not None and opened[1] == ATTACKER_RK


def test_the_token_alone_erases_the_owners_share_everywhere_and_registers_its_own() -> None:
    """The token the lead's staging needs is enough without any hostile node: its holder
    spends the L guesses (each counted, the bound kept), every node erases the owner's
    share at L, and it registers its own M2 over the tombstone. The lead, which also needs
    a hostile node, leaves the owner's share at two honest nodes; this leaves it nowhere."""
    world = threshold_world(5, 4, 0, seed=11, leader=False)
    client = ThresholdClient(world)
    client.register(b"right", OLD_RK)
    attacker = ThresholdClient(world)
    for _ in range(world.shape.guess_limit):
        assert attacker.recover(b"wrong") is None
    with pytest.raises(AuthenticationFailed):
        attacker.recover(b"wrong")
    assert all(not n.rows[client.key].share for n in world.honest.values())
    assert attacker.register(ATTACKER_PASSWORD, ATTACKER_RK, version=2)[1] == 5
    client.clock_ms = attacker.clock_ms  # the owner's device keeps the same time
    assert client.recover(b"right") is None
    opened = attacker.recover(ATTACKER_PASSWORD)
    assert opened is not None and opened[1] == ATTACKER_RK


def _staged_at_the_tricked_nodes(
    world: Simulation, key: bytes, commit: ThresholdState
) -> tuple[manifest.Registration, list[CommitAck]]:
    """Steps 1 and 2 of the lead: the forged tombstone at nodes 0 and 1, the attacker's
    registration staged there; its dealing and t acknowledgements (the hostile node's)."""
    made = _dealt(2, ATTACKER_PASSWORD, ATTACKER_RK)
    for slot in TRICKED:
        assert _forge(world, slot, key, _tombstone(world, commit))
    acks = [_staged_ack(world, slot, made) for slot in TRICKED]
    return made, [*acks, _ack(world, HOSTILE, made.manifest)]


def _promoted_over(
    world: Simulation,
    key: bytes,
    parent: ThresholdState,
    made: manifest.Registration,
    acks: list[CommitAck],
) -> None:
    """Version 2 over the tombstone `parent` that nodes 0 and 1 hold: both take it and
    make the attacker's share theirs."""
    for slot in TRICKED:
        assert world.replicated(slot, key) == parent
        assert _forge(world, slot, key, _registered_over(parent, made, acks))
        row = world.honest[slot].rows[key]
        assert (row.version, row.manifest, row.share) == (
            2,
            made.manifest.to_bytes(),
            made.shares[slot].to_bytes(),
        )


def test_without_the_revival_the_share_is_replaced_the_same_way() -> None:
    """The owner's reset bringing the node back (step 3) is not what replaces the share:
    version 2 straight over the forged tombstone promotes the attacker's share the same
    way. So dropping the staged shares of a node the reset revives stops nothing: the
    attacker leaves that step out."""
    world, client, commit, _ = _owner_with_a_success()
    made, acks = _staged_at_the_tricked_nodes(world, client.key, commit)
    _promoted_over(world, client.key, _tombstone(world, commit), made, acks)


def test_after_the_revival_a_tombstone_from_the_owners_reset_lets_the_promotion_through() -> None:
    """Nor does refusing to promote while the node holds the live value its share counts
    for: after the reset revived nodes 0 and 1, the attacker forges a tombstone whose
    window starts at that reset, which the reset does not undo, and version 2 is
    promoted over it, the node holding no live value."""
    world, client, commit, reset = _owner_with_a_success()
    key = client.key
    made, acks = _staged_at_the_tricked_nodes(world, key, commit)
    from_the_reset = _tombstone(world, reset)
    for slot in TRICKED:
        assert _forge(world, slot, key, reset)  # live again, as in the lead
        assert _forge(world, slot, key, from_the_reset)  # then ended from the reset on
        assert not _forge(world, slot, key, reset)  # which that reset does not undo
    _promoted_over(world, key, from_the_reset, made, acks)


def test_an_honest_registration_staged_over_an_outlived_tombstone_is_promoted() -> None:
    """Why dropping staged shares is not free: the lead's steps in an honest run. Nodes
    0, 1 and 2 hold a tombstone that lost its round to the owner's success (as in sim
    seeds 10043566 and 10159529); the owner's second device, finding no agreed manifest,
    stages its registration of version 2 there (three STAGED acknowledgements); the
    success's reset then brings the three back live (node 4 only delivers the values
    honest proposers make, in that order). Node 0 is cut off while wrong guesses use up
    version 1 on nodes 1 to 3; the second device's commit, sent again, lands over that
    tombstone, and node 0, still live at version 1 with its share, takes version 2 when
    it is back. All three stagers promote, so the second device's key has its t holders.
    Dropping the staged shares on the revival would leave none of them a holder, and
    refusing to promote over a share holding the owner's reset would leave node 0 out:
    the commit carries t acknowledgements of nodes that then hold nothing, the key loss
    that stage-then-commit rules out."""
    world, client, commit, reset = _owner_with_a_success()
    key = client.key
    stagers = (0, 1, 2)
    second = _dealt(2, b"second device", SECOND_DEVICE_RK)
    for slot in stagers:
        assert _forge(world, slot, key, _tombstone(world, commit))
    acks = [_staged_ack(world, slot, second) for slot in stagers]
    for slot in stagers:
        assert _forge(world, slot, key, reset)
    world.reachable = {1, 2, 3, 4}  # node 0 misses the guesses and the tombstone
    for _ in range(world.shape.guess_limit):
        assert client.recover(b"wrong") is None
    with pytest.raises(AuthenticationFailed):
        client.recover(b"wrong")
    assert world.replicated(1, key).status == EntryStatus.DESTROYED
    assert world.replicated(0, key) == reset
    m = second.manifest.to_bytes()
    held = world.honest[0].rows[key]  # the owner's share, live, and the staged one
    assert (held.version, held.manifest, held.count) == (1, commit.manifest, 0) and held.share
    assert [s.manifest for s in held.staged] == [m]
    commit_again = CommitSharesRequest(
        "alice", "chat", second.manifest.to_bytes(), b"", 0, encode_commit_acks(acks)
    )
    answer = world.request(1, Op.COMMIT_SHARES, commit_again)
    assert isinstance(answer, ShareAck) and answer.kind == AckKind.HELD, answer
    world.reachable = None
    world.settle(10.0)
    assert world.replicated(0, key).manifest == m
    rows = _rows(world, key)
    assert [s for s, row in rows.items() if row.share and row.manifest == m] == list(stagers)
    client.ctx.credentials.add(m, b"second device", SECOND_DEVICE_RK)
    recovered = client.recover(b"second device")
    assert recovered is not None and recovered[1] == SECOND_DEVICE_RK


def test_a_node_that_missed_the_guesses_promotes_the_next_registration_over_its_share() -> None:
    """The plainest honest run against refusing to promote over a share that still holds
    the owner's reset (which would stop the lead, revival or not): no hostile node. Node 0
    is cut off while wrong guesses use up version 1, so it keeps its share (no count, the
    owner's reset) when it takes the tombstone. The owner registers again; every node
    stages, and node 0's acknowledgement is one of the t in the commit. Node 0 promotes
    its share of the new M over the old one, as a node holding a real tombstone and a
    forged one alike must: it cannot tell them apart (a tombstone carries no statement),
    and refused, it would have signed STAGED for a commit it then holds nothing of."""
    world = threshold_world(5, 4, 0, seed=11, leader=False)
    client = ThresholdClient(world)
    key = client.key
    client.register(b"right", OLD_RK)
    assert client.recover(b"right") is not None
    world.reachable = {1, 2, 3, 4}
    for _ in range(world.shape.guess_limit):
        assert client.recover(b"wrong") is None
    with pytest.raises(AuthenticationFailed):
        client.recover(b"wrong")
    world.reachable = None
    world.settle(10.0)
    assert world.replicated(0, key).status == EntryStatus.DESTROYED
    kept = world.honest[0].rows[key]
    assert (kept.version, kept.count, kept.reset_at) == (1, 0, 1) and kept.share
    loot, staged = client.register(b"new", NEW_RK, version=2)
    assert staged == 5
    committed = world.replicated(0, key)
    assert 1 in {ack.index for ack in decode_commit_acks(committed.acks)}  # node 0's
    row = world.honest[0].rows[key]
    assert (row.version, row.manifest) == (2, loot.manifest.to_bytes()) and row.share
    recovered = client.recover(b"new")
    assert recovered is not None and recovered[1] == NEW_RK
