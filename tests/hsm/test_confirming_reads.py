"""A read that asks for a round (`ManifestRequest.confirm`, docs/threshold.md): a node back
from an intact restart answers from the values it holds, and a change it missed while down
reaches it only when settling does. With another node down, its old answer kept t from
agreeing, and the client said "unavailable" while t nodes could serve it (sim seed
7200073, `available-during-faults`). Clients ask again with `confirm`, and each node that
holds the entry first runs a round that leaves it as it is."""

from __future__ import annotations

import pytest
from inprocess_fleet import FAST_KSF, InProcessFleet

from backupvault.client import threshold as sdk
from backupvault.client.errors import FleetUnavailable
from backupvault.hsm.state import EntryId
from backupvault.protocol import EntryStatus, ManifestRequest, ManifestResponse, Op
from backupvault.sim import clients
from backupvault.sim.world import ThresholdClient, threshold_world

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


def test_the_sdk_asks_for_the_round_only_when_it_asks_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first read is answered from what each node holds, with no round; only the
    resends after answers that did not agree carry `confirm`."""
    sent: list[bool] = []

    def recording(account: str, entry: str, confirm: bool) -> ManifestRequest:
        sent.append(confirm)
        return ManifestRequest(account, entry, confirm)

    fleet = InProcessFleet(3)
    fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    monkeypatch.setattr(sdk, "ManifestRequest", recording)
    assert fleet.client().status().status == EntryStatus.LIVE
    assert sent == [False]
    fleet.crash(0)
    fleet.crash(1)
    monkeypatch.setattr(sdk, "MANIFEST_BACKOFF_CAP_SECONDS", 0.0)
    with pytest.raises(FleetUnavailable):
        fleet.client().status()
    assert sent[1:] == [False] + [True] * (sdk.MANIFEST_TRIES - 1)


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
