"""A share left at a node's own count of L when no request comes after the L-th attempt
(docs/threshold.md, "Counters and erasure"): the node waits one grace for the owner's
reset, then erases it and proposes the tombstone itself, as the next request would. Time
is the world's simulated clock, fed to the core through its tick."""

from __future__ import annotations

import pytest

from backupvault.errors import AuthenticationFailed
from backupvault.hsm.shares import (
    LOOK_AGAIN_SECONDS,
    ShareKeeper,
    ThresholdRead,
    check_threshold_value,
)
from backupvault.protocol import EntryStatus, ManifestRequest, Op
from backupvault.sim import clients
from backupvault.sim.clients import Call
from backupvault.sim.world import (
    FLEET_ID,
    Simulation,
    ThresholdClient,
    signing_key,
    threshold_world,
)

LIMIT = 2
GRACE = 30.0  # seconds of the world's clock


def _registered(nodes: int = 3) -> tuple[Simulation, ThresholdClient]:
    world = threshold_world(nodes, LIMIT, seed=41, exhausted_grace=GRACE)
    client = ThresholdClient(world)
    client.register(b"right", bytes(32))
    return world, client


def _grace(world: Simulation) -> float:
    assert world.config.exhausted_grace == GRACE
    return GRACE


def _shares(world: Simulation, key: bytes) -> dict[int, bool]:
    return {i: bool(n.rows[key].share) for i, n in world.honest.items()}


def _keeper(world: Simulation, slot: int) -> ShareKeeper:
    keeper = world.honest[slot].keeper
    assert keeper is not None
    return keeper


def _recover_holding_the_reset(world: Simulation, client: ThresholdClient) -> Call:
    """The owner's right password, evaluated by every node; its reset held back (by a slow
    relay) and returned, unsent."""
    flow = clients.recover(client.ctx, b"right")
    call = next(flow)
    while call.op is not Op.RESET:
        call = flow.send(world.fanout_now(call))
    return call


def test_a_share_left_at_l_is_erased_one_grace_later_with_the_tombstone() -> None:
    world, client = _registered()
    for _ in range(LIMIT):
        assert client.recover(b"wrong") is None
    attempt = world.replicated(0, client.key).attempt
    assert all(n.rows[client.key].count == LIMIT for n in world.honest.values())
    world.settle(_grace(world) / 2)
    assert all(_shares(world, client.key).values()), "erased before the grace ran out"
    world.settle(_grace(world) + 1)
    assert not any(_shares(world, client.key).values())
    for slot in world.honest:
        held = world.replicated(slot, client.key)
        # The tombstone of the L attempts made: none counted, none evaluated, by the expiry.
        assert (held.status, held.attempt) == (EntryStatus.DESTROYED, attempt)


def test_an_expiry_whose_own_tombstone_lost_its_round_proposes_the_tombstone_again() -> None:
    """Sim seed 10588257: node 1's expiry round built the tombstone over the live value
    with its L attempts used, node 1's own acceptor took it (erasing the share on its own
    count), and its messages were lost while another node's round took the live value
    again, higher. The retry is built on that live value: it read the erased row, changed
    nothing and proposed the live value, which node 1 refused for good ("brought back to
    life") while the others took it. The retry proposes the tombstone again."""
    world, client = _registered()
    for _ in range(LIMIT):
        assert client.recover(b"wrong") is None
    live = world.replicated(1, client.key)
    assert live.status == EntryStatus.LIVE and live.attempts_used == LIMIT
    rows = dict(world.honest[1].rows)  # node 1's disk, under a core of its own
    keeper = ShareKeeper(FLEET_ID, 1, world.shape, signing_key(1), rows.get, exhausted_grace=GRACE)
    assert keeper.row(client.key) is not None  # read at L: watched
    assert keeper.tick(0.0) == []
    (expiry,) = keeper.tick(GRACE)
    tombstone, _ = expiry.apply(live)
    assert tombstone.status == EntryStatus.DESTROYED and tombstone.attempt == live.attempt
    # The first try's value, taken by node 1's own acceptor: its share erased at L.
    keeper.on_accept(client.key, tombstone.to_bytes())
    erased = keeper.take_writes()
    assert [w.row.share for w in erased] == [b""]
    rows.update((w.key, w.row) for w in erased)
    keeper.durable(erased)

    def refusal(value: bytes, held: bytes) -> str | None:
        return check_threshold_value(
            FLEET_ID, client.key, world.shape, value, held, node_keys=world.node_keys
        )

    # Why the live value cannot be the retry's: node 1 holds the tombstone.
    assert refusal(live, tombstone.to_bytes()) == (
        "an entry brought back to life without a new version"
    )
    again, answer = expiry.apply(live)  # the retry, over the live value chosen again
    assert again == tombstone  # the live value before the fix
    assert refusal(again, tombstone.to_bytes()) is None
    assert refusal(again, live.to_bytes()) is None  # and the others take it
    assert answer().writes == ()  # nothing left to erase, nothing evaluated
    # Over a value with guesses left (a window the owner's reset opened), no tombstone.
    reopened = live.with_(reset_attempt=live.attempt - 1)
    assert expiry.apply(reopened)[0] == reopened


def test_the_grace_runs_on_the_cores_tick_input() -> None:
    world, client = _registered()
    for _ in range(LIMIT):
        assert client.recover(b"wrong") is None
    # Node 0's core, started afresh over its store (a restart), driven by a fake clock.
    keeper = ShareKeeper(
        FLEET_ID, 0, world.shape, signing_key(0), world.honest[0].rows.get, exhausted_grace=GRACE
    )
    start = 5_000.0  # the tick's clock, not the wall clock
    assert keeper.tick(start) == []  # nothing read yet: nothing watched
    assert keeper.row(client.key) is not None  # read again, at L: watched
    assert keeper.tick(start) == []  # first seen at L now
    assert keeper.tick(start + _grace(world) - 0.001) == []
    due = keeper.tick(start + _grace(world))
    assert [u.key for u in due] == [client.key]
    # Proposed once per grace while it does not commit, not at every tick.
    assert keeper.tick(start + _grace(world) + 0.5) == []
    assert [u.key for u in keeper.tick(start + 2 * _grace(world))] == [client.key]


def test_a_share_below_l_is_never_expired() -> None:
    world, client = _registered()
    assert client.recover(b"wrong") is None
    world.settle(3 * _grace(world))
    assert all(_shares(world, client.key).values())
    assert world.replicated(0, client.key).status == EntryStatus.LIVE
    assert client.recover(b"right") is not None


def test_the_owners_reset_in_flight_within_the_grace_keeps_the_entry() -> None:
    world, client = _registered()
    assert client.recover(b"wrong") is None
    held_reset = _recover_holding_the_reset(world, client)  # the L-th attempt: right
    assert all(n.rows[client.key].count == LIMIT for n in world.honest.values())
    world.settle(_grace(world) * 0.8)
    world.fanout_now(held_reset)
    world.settle(3 * _grace(world))
    assert all(_shares(world, client.key).values())
    assert world.replicated(0, client.key).status == EntryStatus.LIVE
    assert all(n.rows[client.key].count == 0 for n in world.honest.values())
    assert client.recover(b"right") is not None


def test_a_node_that_missed_the_reset_takes_it_from_the_value_instead_of_erasing() -> None:
    world, client = _registered()
    assert client.recover(b"wrong") is None
    held_reset = _recover_holding_the_reset(world, client)
    world.reachable = {1, 2}  # node 0 never gets the reset request; nodes 1, 2 commit it
    world.fanout_now(held_reset)
    world.reachable = {0, 1, 2}
    assert world.honest[0].rows[client.key].count == LIMIT
    world.settle(2 * _grace(world))
    row = world.honest[0].rows[client.key]
    assert row.share and row.count == 0
    assert world.replicated(0, client.key).status == EntryStatus.LIVE
    assert client.recover(b"right") is not None


def test_a_reset_after_the_grace_finds_the_entry_destroyed_and_no_guess_is_gained() -> None:
    """The documented cost: a reset held back past the grace loses to the tombstone (the
    owner holds the root key from that success); nothing evaluates afterwards."""
    world, client = _registered()
    assert client.recover(b"wrong") is None
    held_reset = _recover_holding_the_reset(world, client)
    partials = world.observer.partials
    world.settle(2 * _grace(world))
    answers = world.fanout_now(held_reset)
    assert {getattr(a, "code", "") for a in answers.values()} == {"not_registered"}
    assert not any(_shares(world, client.key).values())
    with pytest.raises(AuthenticationFailed):
        client.recover(b"right")  # destroyed: no live manifest, no evaluation
    assert world.observer.partials == partials


def test_a_node_that_missed_the_tombstone_takes_it_when_asked_for_the_manifest() -> None:
    """Soak run BG (docs/soak.md): the tombstone was chosen while a node was down, and the
    repair that would carry it to that node is gone (its window passed; in the soak, the
    repairers restarted). A manifest read answers from the held value without a round,
    so the node asked about an entry it holds live with no guess left runs a no-op round,
    and takes the tombstone (erasing its share on its own count of L)."""
    world, client = _registered()
    for _ in range(LIMIT):
        assert client.recover(b"wrong") is None
    world.crash(0)
    world.settle(_grace(world) + 200.0)  # nodes 1 and 2 end it; every repair window passes
    assert {world.replicated(s, client.key).status for s in (1, 2)} == {EntryStatus.DESTROYED}
    world.restart(0)  # its store intact: serving at once, nothing to catch up
    world.settle(2.0)
    assert world.replicated(0, client.key).status == EntryStatus.LIVE  # nobody told it
    assert world.honest[0].rows[client.key].share
    partials = world.observer.partials
    assert client.status() == "status: destroyed"
    world.settle(2.0)  # well within node 0's own grace, which a read starts again
    assert world.replicated(0, client.key).status == EntryStatus.DESTROYED
    assert not world.honest[0].rows[client.key].share
    assert world.observer.partials == partials  # nothing evaluated, nothing counted


def test_a_manifest_read_looks_again_at_most_once_per_interval() -> None:
    """However often a live entry with no guess left is asked about, its node runs one
    no-op round per LOOK_AGAIN_SECONDS; an entry with guesses left runs none."""
    world, client = _registered()
    keeper = ShareKeeper(
        FLEET_ID, 0, world.shape, signing_key(0), world.honest[0].rows.get, exhausted_grace=GRACE
    )
    read = keeper.handle(Op.MANIFEST, ManifestRequest(client.account, client.entry))
    assert isinstance(read, ThresholdRead)
    live_with_guesses = world.replicated(0, client.key)
    read.read(live_with_guesses)
    assert keeper.tick(100.0) == []
    spent = live_with_guesses.with_(attempt=LIMIT, attempt_client_time_ms=1)
    assert spent.attempts_used >= LIMIT
    for _ in range(3):
        read.read(spent)
    assert [u.key for u in keeper.tick(100.0)] == [client.key]
    read.read(spent)
    assert keeper.tick(100.0 + LOOK_AGAIN_SECONDS / 2) == []
    assert [u.key for u in keeper.tick(100.0 + LOOK_AGAIN_SECONDS)] == [client.key]
    assert keeper.tick(100.0 + 3 * LOOK_AGAIN_SECONDS) == []  # not asked since
