"""The sim's clients keep and deliver what they owe the fleet as the SDK does
(docs/threshold.md, "Finishing later"; `client/pending.py`): the shares of nodes that did
not acknowledge a registration or password change, sealed to each node, delivered at the
device's next contact (before a recovery needs them), and dropped once the entry moved
past their version. Each world here is scripted: `ThresholdClient` answers each fan-out
at once, and `Simulation.down` takes a node off the network."""

from __future__ import annotations

from backupvault.hsm.state import EntryStatus
from backupvault.protocol import Op
from backupvault.sim.clients import Answers, Call
from backupvault.sim.world import EPOCH, FLEET_ID, Simulation, ThresholdClient, threshold_world

N, L = 5, 10
ROOT_KEY = bytes([3]) * 32


def _owed_nodes(client: ThresholdClient) -> list[tuple[int, tuple[int, ...]]]:
    """(version, nodes) of every record the client's device keeps for its entry."""
    records = client.ctx.pending.owed(FLEET_ID, client.account, client.entry, EPOCH)
    return [(r.version, r.nodes) for r in records]


def _holds_share(world: Simulation, slot: int, client: ThresholdClient) -> bool:
    row = world.honest[slot].rows.get(client.key)
    held = world.replicated(slot, client.key)
    return row is not None and bool(row.share) and row.manifest == held.manifest


def _recorded_ops(world: Simulation) -> list[Op]:
    """The op of every fan-out the world's clients make from now on."""
    ops: list[Op] = []
    fanout = world.fanout_now

    def recording(call: Call) -> Answers:
        ops.append(call.op)
        return fanout(call)

    world.fanout_now = recording  # type: ignore[method-assign]
    return ops


def _registered_without(world: Simulation, missing: int) -> ThresholdClient:
    """A registration while node `missing` is off the network, which then comes back and
    catches up on M (without its share)."""
    client = ThresholdClient(world)
    world.down = {missing}
    _, acks = client.register(b"pw", ROOT_KEY)
    assert acks == N - 1
    world.down = set()
    world.settle(10.0)
    assert world.replicated(missing, client.key).status == EntryStatus.LIVE
    assert not _holds_share(world, missing, client)
    return client


def test_a_share_owed_at_registration_is_delivered_before_the_recovery() -> None:
    world = threshold_world(N, L)
    client = _registered_without(world, 4)
    assert _owed_nodes(client) == [(1, (4,))]
    assert client.recover(b"pw") is not None
    assert _holds_share(world, 4, client)
    assert _owed_nodes(client) == []  # node 4 acknowledged: nothing left to deliver


def test_a_share_owed_is_delivered_at_a_status_read() -> None:
    world = threshold_world(N, L)
    client = _registered_without(world, 2)
    client.status()
    assert _holds_share(world, 2, client)
    assert _owed_nodes(client) == []


def test_another_device_owes_nothing_and_delivers_nothing() -> None:
    """The shares are kept on the device that dealt them: another device of the owner has
    no record, so the node stays without its share until the dealing device's contact."""
    world = threshold_world(N, L)
    client = _registered_without(world, 4)
    other = ThresholdClient(world)
    assert other.recover(b"pw") is not None
    assert not _holds_share(world, 4, client)
    assert _owed_nodes(client) == [(1, (4,))]


def test_a_share_of_a_version_the_entry_moved_past_is_dropped_unsent() -> None:
    world = threshold_world(N, L)
    client = _registered_without(world, 4)
    other = ThresholdClient(world)
    recovered = other.recover(b"pw")
    assert recovered is not None
    _, acks = other.change_password(recovered[0], b"pw2", ROOT_KEY)
    assert acks == N
    ops = _recorded_ops(world)
    client.status()
    assert Op.DELIVER_SHARE not in ops
    assert _owed_nodes(client) == []  # version 2 is in effect: version 1's shares dropped


def test_a_node_still_down_keeps_its_share_owed() -> None:
    """A node that does not answer does not acknowledge: the share stays owed to it, the
    recovery goes on with the others, and the next contact delivers it."""
    world = threshold_world(N, L)
    client = _registered_without(world, 4)
    world.down = {4}
    assert client.recover(b"pw") is not None
    assert _owed_nodes(client) == [(1, (4,))]
    world.down = set()
    assert client.recover(b"pw") is not None
    assert _holds_share(world, 4, client)
    assert _owed_nodes(client) == []


def test_a_share_owed_goes_out_after_the_first_read_not_after_the_reads_that_wait() -> None:
    """Fewer than t holders answer the first read and two nodes are silent: the share owed
    to a node that answered goes out at once, before the reads that wait for the silent
    ones (as the SDK). Another device's recovery may be waiting on that share too: seed
    10451914, where it went out after those reads and the other device's recovery, made
    meanwhile, ended "2 share holders"."""
    world = threshold_world(N, L)
    client = _registered_without(world, 4)
    world.down = {2, 3}
    ops = _recorded_ops(world)
    assert client.recover(b"pw") is not None  # nodes 0, 1 and 4, once 4 holds its share
    assert ops[:3] == [Op.MANIFEST, Op.DELIVER_SHARE, Op.MANIFEST], ops
    assert _holds_share(world, 4, client)


def test_a_node_owed_its_share_that_answers_only_a_later_read_gets_it_then() -> None:
    """The owed node is silent on the first read and answers the next: its share goes out
    after that read, before the evaluation (review s42-A: it was tried only after the
    first, and the recovery ended with two holders)."""
    world = threshold_world(N, L)
    client = _registered_without(world, 3)  # node 3's share owed
    world.restart(1, {})  # node 1 loses its rows: it catches up on M, without a share
    world.settle(10.0)
    assert not _holds_share(world, 1, client)
    world.down = {0}
    ops = _recorded_ops(world)
    fanout = world.fanout_now

    def node_3_silent_on_the_first_read(call: Call) -> Answers:
        world.down = {0, 3} if not ops else {0}  # (ops gets this call next)
        return fanout(call)

    world.fanout_now = node_3_silent_on_the_first_read  # type: ignore[method-assign]
    assert client.recover(b"pw") is not None  # nodes 2, 3 and 4
    assert ops[:3] == [Op.MANIFEST, Op.MANIFEST, Op.DELIVER_SHARE], ops
    assert _holds_share(world, 3, client)
