"""A read that asks for a round (`ManifestRequest.confirm`, docs/threshold.md): a node back
from an intact restart answers from the values it holds, and a change it missed while down
reaches it only when settling does. With another node down, its old answer kept t from
agreeing, and the client said "unavailable" while t nodes could serve it (sim seed
7200073, `available-during-faults`). Clients ask again with `confirm`, and each node that
holds the entry first runs a round that leaves it as it is."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from inprocess_fleet import FAST_KSF, LIMIT, InProcessFleet

from backupvault.client import threshold as sdk
from backupvault.client.errors import FleetUnavailable
from backupvault.fanout import FanoutReply
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.protocol import (
    EntryStatus,
    ErrorResponse,
    ManifestRequest,
    ManifestResponse,
    Op,
    pad_response,
)
from backupvault.sim import clients
from backupvault.sim.clients import Answers, Call, Flow, Outcome
from backupvault.sim.world import Simulation, ThresholdClient, threshold_world

ROOT_KEY = bytes(range(32))
KEY = EntryId.of("alice", "backup-root-key").to_bytes()


def _missed_delete() -> InProcessFleet:
    """Three nodes; node 2 is down while the owner deletes the entry, comes back intact
    (ready at once, asking nobody), and node 0 goes down: nodes 1 and 2 are up, t = 2,
    and node 2 still holds the live value."""
    fleet = InProcessFleet(3)
    device = fleet.client()
    device.register("pw", ROOT_KEY, ksf=FAST_KSF)
    fleet.crash(2)
    device.delete(device.recover("pw", ksf_floor=FAST_KSF))
    assert fleet.state(0, KEY).status == EntryStatus.EMPTY
    fleet.restart(2, intact=True)
    fleet.crash(0)
    assert fleet.state(2, KEY).status == EntryStatus.LIVE
    return fleet


def test_a_node_back_from_a_restart_confirms_the_delete_it_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = _missed_delete()
    monkeypatch.setattr(sdk, "MANIFEST_BACKOFF_CAP_SECONDS", 0.0)
    assert fleet.client().status().status == EntryStatus.EMPTY
    assert fleet.state(2, KEY).status == EntryStatus.EMPTY  # its round brought it the delete


def test_without_the_round_the_client_could_not_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same fleet, the SDK's resends plain reads (as before): node 1 says empty, node 2
    live, no t agree, and the user is told to try later for a key that is gone."""
    fleet = _missed_delete()
    monkeypatch.setattr(sdk, "MANIFEST_BACKOFF_CAP_SECONDS", 0.0)
    monkeypatch.setattr(
        sdk, "ManifestRequest", lambda account, entry, confirm: ManifestRequest(account, entry)
    )
    with pytest.raises(FleetUnavailable):
        fleet.client().status()
    assert fleet.state(2, KEY).status == EntryStatus.LIVE


def _recording(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each manifest read the SDK sends from now on asks for `confirm`."""
    sent: list[bool] = []

    def recording(account: str, entry: str, confirm: bool) -> ManifestRequest:
        sent.append(confirm)
        return ManifestRequest(account, entry, confirm)

    monkeypatch.setattr(sdk, "ManifestRequest", recording)
    monkeypatch.setattr(sdk, "MANIFEST_BACKOFF_CAP_SECONDS", 0.0)
    return sent


def test_a_first_read_is_plain_and_the_first_resend_after_t_answers_confirms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first read is answered from what each node holds, with no round; the first
    resend after t or more answers that did not agree carries `confirm`."""
    fleet = InProcessFleet(3)
    fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    sent = _recording(monkeypatch)
    assert fleet.client().status().status == EntryStatus.LIVE
    assert sent == [False]
    fleet = _missed_delete()
    sent = _recording(monkeypatch)
    assert fleet.client().status().status == EntryStatus.EMPTY
    assert sent == [False, True]


def test_no_round_is_asked_for_while_fewer_than_t_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """With fewer than t nodes answering a majority is likely out of reach: a round would
    wait out its deadline (6 s) and leave promises that make the nodes that ran it refuse
    the next change's Accept (a restarted node then missed an attempt, and its count lagged
    its peers': tests/integration/test_restart_liveness.py). The resends stay plain reads,
    answered at once."""
    fleet = InProcessFleet(3)
    fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    fleet.crash(0)
    fleet.crash(1)
    sent = _recording(monkeypatch)
    with pytest.raises(FleetUnavailable):
        fleet.client().status()
    assert sent == [False] * sdk.MANIFEST_TRIES


def test_a_confirming_read_of_a_name_held_nowhere_runs_no_round() -> None:
    """As every request on a name a node holds nothing of (review r1): no round, and no
    record written on any node, however often a client asks with `confirm`."""
    world = threshold_world(3)
    request = ManifestRequest("alice", "made-up", confirm=True)
    for _ in range(3):
        answer = world.request(0, Op.MANIFEST, request)
        assert isinstance(answer, ManifestResponse)
        assert answer.status == EntryStatus.EMPTY and answer.version == 0
    key = EntryId.of("alice", "made-up").to_bytes()
    assert all(world.replicated(n, key).version == 0 for n in range(3))
    assert all(world.members[n].disk.get(key) is None for n in range(3))


def test_the_sim_clients_read_past_the_missed_delete() -> None:
    """The simulator's clients do as the SDK: the same fleet in the scripted world."""
    world = threshold_world(3, 10)
    owner = ThresholdClient(world)
    owner.register(b"pw", ROOT_KEY)
    world.crash(2)
    recovered = owner._run(clients.recover(owner.ctx, b"pw"))
    assert recovered.text == "recovered"
    assert owner._run(clients.delete(owner.ctx, recovered)).text == "deleted"
    world.restart(2)
    world.crash(0)
    key = EntryId.of("alice", "chat").to_bytes()
    assert world.replicated(2, key).status == EntryStatus.LIVE
    assert owner.status() == "status: empty"
    assert world.replicated(2, key).status == EntryStatus.EMPTY


def _run_with(world: Simulation, flow: Flow, fanout: Callable[[Call], Answers]) -> Outcome:
    call = next(flow)
    try:
        while True:
            call = flow.send(fanout(call))
    except StopIteration as stop:
        return stop.value


def test_a_node_that_missed_a_registration_after_a_delete_is_read_again() -> None:
    """Review s58: five nodes; the entry is registered, recovered and deleted (empty v1),
    then registered again (v2) while nodes 3 and 4 are down for the staging (they stage
    nothing) and node 2 is cut off after staging and before the commit; two minutes later
    (its repairs and settling given up) node 2 is back, still answering the delete of v1
    and holding a share staged for M2. A new device's recovery has two holders (0, 1) in
    its first read; node 2's "empty v1" is the end of an earlier version, so the recovery
    reads again with `confirm`, node 2's round brings it M2, it promotes its share, and
    the recovery succeeds (the rule of 96a2ee3 waited only for the end of this version or
    a later one, and said "unavailable (2 share holders)")."""
    world = threshold_world(5, 10)
    owner = ThresholdClient(world)
    owner.register(b"pw", ROOT_KEY)
    assert owner._run(clients.delete(owner.ctx, owner._run(clients.recover(owner.ctx, b"pw"))))
    key = EntryId.of("alice", "chat").to_bytes()

    def staging_without_3_and_4(call: Call) -> Answers:
        if call.op is not Op.REGISTER_SHARE:
            return world.fanout_now(call)
        world.crash(3)
        world.crash(4)
        answers = world.fanout_now(call)
        world.restart(3)
        world.restart(4)
        world.isolated = frozenset({2})
        return answers

    dealt = clients.deal(owner.ctx, b"pw2", ROOT_KEY, 2)
    registered = _run_with(
        world, clients.deliver(owner.ctx, Op.REGISTER_SHARE, dealt), staging_without_3_and_4
    )
    assert registered.text.startswith("registered"), registered.text
    world.settle(150.0)  # past the repair window: nobody brings node 2 the commit
    world.isolated = frozenset()
    world.settle(5.0)
    held = world.replicated(2, key)
    assert (held.status, held.version) == (EntryStatus.EMPTY, 1)
    device = ThresholdClient(world)  # a new device: it owes no delivery
    assert device.recover(b"pw2") is not None
    assert world.replicated(2, key).version == 2


def _delete_one_node_never_saw(later: float = 0.0) -> InProcessFleet:
    """Three nodes; node 2 is down through the registration and the delete (it never saw
    the entry), comes back, and node 0 goes down: node 1 says "empty, version 1" and node
    2 "empty, version 0". A registration over the t-th highest version (0) took version 1,
    which node 1 refuses ("a new registration here takes version 2"): one share staged of
    the t = 2 needed, and the same at every try while node 0 was down (review s58)."""
    fleet = InProcessFleet(3)
    device = fleet.client()
    fleet.crash(2)
    device.register("pw", ROOT_KEY, ksf=FAST_KSF)
    device.delete(device.recover("pw", ksf_floor=FAST_KSF))
    fleet.restart(2, intact=True)
    fleet.crash(0)
    fleet.now += later
    assert (fleet.state(1, KEY).status, fleet.state(1, KEY).version) == (EntryStatus.EMPTY, 1)
    assert fleet.state(2, KEY) == ThresholdState()
    return fleet


def _register_again(fleet: InProcessFleet) -> int:
    """As `VaultSession.register`: the version after the one the status read found."""
    device = fleet.client()
    found = device.status()
    assert found.status == EntryStatus.EMPTY
    return device.register("pw2", ROOT_KEY, ksf=FAST_KSF, version=found.version + 1).version


@pytest.mark.parametrize("later", [0.0, 5.0], ids=["at-once", "later"])
def test_a_registration_over_a_delete_one_node_never_saw_is_served(
    monkeypatch: pytest.MonkeyPatch, later: float
) -> None:
    """At once too: node 1's round for the confirm is a real round, not a join answered
    from the delete it holds, which would write nothing to node 2 (review s59)."""
    fleet = _delete_one_node_never_saw(later)
    sent = _recording(monkeypatch)
    assert _register_again(fleet) == 2
    assert sent == [False, True]  # empty of two versions: read again, asking for a round
    assert fleet.state(2, KEY).version == 2


def test_without_the_reread_the_registration_stages_too_few(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = _delete_one_node_never_saw()
    monkeypatch.setattr(sdk, "EMPTY_REREADS", 0)
    monkeypatch.setattr(sdk, "MANIFEST_BACKOFF_CAP_SECONDS", 0.0)
    with pytest.raises(FleetUnavailable, match="takes version 2"):
        _register_again(fleet)


def test_empty_answers_of_one_version_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name nobody registered: every node says "empty, version 0", and one read does."""
    fleet = InProcessFleet(3)
    sent = _recording(monkeypatch)
    assert fleet.client().status().status == EntryStatus.EMPTY
    assert sent == [False]


@pytest.mark.parametrize(
    ("rereads", "wait"),
    [(clients.EMPTY_REREADS, 0.1), (clients.EMPTY_REREADS, 1.0), (0, 1.0)],
    ids=["reread-at-once", "reread-later", "without"],
)
def test_the_simulators_clients_register_over_a_delete_one_node_never_saw(
    monkeypatch: pytest.MonkeyPatch, rereads: int, wait: float
) -> None:
    """The same in the simulator, before settling brings node 2 the delete (3 s); within
    the 0.5 s in which a join would have answered node 1's confirm from the value it
    holds too (review s59)."""
    monkeypatch.setattr(clients, "EMPTY_REREADS", rereads)
    world = threshold_world(3, 5, seed=3)
    client = ThresholdClient(world)
    world.crash(2)
    client.register(b"pw", bytes(32))
    recovered = client.recover(b"pw")
    assert recovered is not None and client.delete(recovered[0]) == 2
    world.restart(2)
    world.crash(0)
    world.settle(wait)
    assert world.replicated(2, client.key) == ThresholdState()
    outcome = client._run(clients.register(client.ctx, b"pw2", bytes(32)))
    if rereads:
        assert outcome.text == "registered (degraded)" and outcome.acks == 2
        assert world.replicated(2, client.key).version == 2
    else:
        assert outcome.text == "unavailable (1 staged)"


def _missed_registration_beside_two_liars(monkeypatch: pytest.MonkeyPatch) -> InProcessFleet:
    """Five nodes; node 2 is down through the registration and comes back intact: it holds
    nothing of the entry, runs no round of its own for it, and says "empty, version 0".
    Nodes 3 and 4 are hostile (c = 2 < t = 3): they answer every manifest read the same,
    though they hold the entry and their shares like the others."""
    fleet = InProcessFleet(5)
    fleet.crash(2)
    fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    fleet.restart(2, intact=True)
    assert fleet.state(2, KEY) == ThresholdState()
    assert fleet.state(3, KEY).status == EntryStatus.LIVE
    honest = fleet._answer

    def answer(node: int, op: Op, copy: bytes) -> FanoutReply:
        if node not in (3, 4) or op is not Op.MANIFEST:
            return honest(node, op, copy)
        opened = fleet.firmware[node].open(op, "alice", fleet._entry, copy, fleet.now)
        assert not isinstance(opened, ErrorResponse)
        lie = ManifestResponse(EntryStatus.EMPTY, 0, b"", LIMIT, LIMIT, False)
        return FanoutReply(node, 200, opened[1].seal(pad_response(op, lie.to_bytes())))

    monkeypatch.setattr(fleet, "_answer", answer)
    monkeypatch.setattr(sdk, "MANIFEST_BACKOFF_CAP_SECONDS", 0.0)
    return fleet


def test_t_empty_answers_beside_live_ones_are_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s62: the laggard's "empty" and the two hostile ones made t, beside nodes 0
    and 1's live manifest, and the client said the entry was empty (`vault status`; a
    recovery said no key was registered, and `backup create` then tries to register one)
    while the key was live on a majority. Read again, the first time asking for a round:
    node 0's round reaches node 2 as an acceptor, which then answers the live manifest."""
    fleet = _missed_registration_beside_two_liars(monkeypatch)
    status = fleet.client().status()
    assert (status.status, status.version, status.agreeing) == (EntryStatus.LIVE, 1, (0, 1, 2))
    assert fleet.state(2, KEY).status == EntryStatus.LIVE


def test_a_recovery_beside_the_liars_is_told_unavailable_not_unregistered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same read in a recovery: with the hostile nodes saying they hold no share, two
    holders answer, and the user hears that, with no guess used (not "no key")."""
    fleet = _missed_registration_beside_two_liars(monkeypatch)
    with pytest.raises(FleetUnavailable, match="need 3 vault nodes that hold a share"):
        fleet.client().recover("pw", ksf_floor=FAST_KSF)
