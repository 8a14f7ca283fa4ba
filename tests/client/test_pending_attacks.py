"""Attacks on the device's pending deliveries (client/pending.py; docs/threshold.md,
"Finishing later"): a pending file that is damaged, tampered with, swapped between
entries, reordered or rolled back never crashes a flow, never gets a share taken by
another node, entry or version, and never holds a share in the clear."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from backupvault.client.errors import FleetUnavailable
from backupvault.client.pending import PendingFileDamaged, PendingStore
from backupvault.client.threshold import ThresholdVault

from .fake_fleet import FAST_KSF, FakeFleet

RK = bytes(range(32))


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resends without the pauses between them (the degraded registrations here would
    otherwise wait out their 0.6 s of backoff each)."""
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)


def _degraded(fleet: FakeFleet, path: Path, notes: list[str] | None = None) -> ThresholdVault:
    """A registration with node 3 down: its share is owed, kept in the file at `path`."""
    fleet.nodes[3].mode = "down"
    vault = fleet.vault([] if notes is None else notes, PendingStore(path))
    assert vault.register("pw", RK, ksf=FAST_KSF).degraded
    fleet.nodes[3].mode = "ok"
    return vault


def _edit(path: Path, change: Any) -> None:
    body = json.loads(path.read_text())
    change(body["records"])
    path.write_text(json.dumps(body))


def _flip(wrapped: str) -> str:
    return wrapped[:-2] + f"{int(wrapped[-2:], 16) ^ 1:02x}"


def _sent(fleet: FakeFleet) -> int:
    return sum(
        node.seen.count("register-share") + node.seen.count("deliver-share") for node in fleet.nodes
    )


#: Records that contradict their own manifest, by what is wrong with them.
MALFORMED: dict[str, Any] = {
    "a share missing": lambda records: records[0]["shares"].pop(),
    "a share too many": lambda records: records[0]["shares"].append(records[0]["shares"][0]),
    "a manifest that does not decode": lambda records: records[0].update(manifest="00"),
    "a node the fleet does not have": lambda records: records[0].update(nodes=[7]),
    "not the manifest's version": lambda records: records[0].update(version=2),
    "not the manifest's entry": lambda records: records[0].update(entry="other"),
    "an entry name the wire does not take": lambda records: records[0].update(entry="chat 01"),
    "an account name the wire does not take": lambda records: records[0].update(account="al/ice"),
}
#: Shares that are whole but not where they belong.
TAMPERED: dict[str, Any] = {
    "reordered": lambda records: records[0]["shares"].reverse(),  # node 0's in node 4's place
    "one bit flipped": lambda records: records[0]["shares"].__setitem__(
        3, _flip(records[0]["shares"][3])
    ),
}


def test_a_malformed_pending_record_is_named_and_never_crashes_a_flow(tmp_path: Path) -> None:
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    _degraded(fleet, path)
    kept = path.read_text()
    for what, damage in MALFORMED.items():
        path.write_text(kept)
        _edit(path, damage)
        notes: list[str] = []
        vault = fleet.vault(notes, PendingStore(path))
        before = _sent(fleet)
        assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK, what
        assert vault.status().guesses_remaining > 0, what
        assert any("pending deliveries not finished" in n for n in notes), what
        assert _sent(fleet) == before, what  # nothing sent from a damaged record
        with pytest.raises(PendingFileDamaged):
            vault.finish(vault.live_manifest()[0])


def test_a_tampered_or_misplaced_pending_share_is_taken_by_no_node(tmp_path: Path) -> None:
    """Only the node a share is sealed to can open it, and only for its manifest: a
    flipped bit, or node 0's share in node 4's place, is refused by the node it reaches
    (the device cannot tell; the delivery stays owed), and every node keeps the share it
    holds."""
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    _degraded(fleet, path)
    held = [node.share for node in fleet.nodes]
    kept = path.read_text()
    for what, tamper in TAMPERED.items():
        path.write_text(kept)
        _edit(path, tamper)
        vault = fleet.vault([], PendingStore(path))
        before = _sent(fleet)
        recovered = vault.recover("pw", ksf_floor=FAST_KSF)
        assert recovered.root_key == RK, what
        assert _sent(fleet) > before, what  # sent, and refused
        assert [node.share for node in fleet.nodes] == held, what
        # The line says what node 3 answered (review s40: it was dropped).
        (line,) = recovered.pending
        assert line.startswith("node 3: share of version 1 not yet confirmed ("), what
        assert "does not open" in line, what


def test_a_pending_record_swapped_in_from_another_registration_does_not_open(
    tmp_path: Path,
) -> None:
    """Another registration's record (another device's file, the same names) with this
    entry's manifest put in: its shares are sealed to other nodes' keys, or for another
    manifest, and no node takes one."""
    fleet_a, fleet_b = FakeFleet(5), FakeFleet(5)
    path_a, path_b = tmp_path / "a-pending.json", tmp_path / "b-pending.json"
    notes: list[str] = []
    vault = _degraded(fleet_a, path_a, notes)
    _degraded(fleet_b, path_b)
    own = json.loads(path_a.read_text())["records"][0]
    swapped = json.loads(path_b.read_text())
    swapped["records"][0].update(manifest=own["manifest"], fleet_id=own["fleet_id"])
    path_a.write_text(json.dumps(swapped))
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK
    assert fleet_a.nodes[3].share is None
    assert fleet_a.nodes[3].seen.count("deliver-share") == 2  # before and after the recovery


def test_a_rolled_back_pending_file_sends_nothing_for_an_old_version(tmp_path: Path) -> None:
    """The file as it was before the delivery finished and the password changed: its
    version 1 record is dropped unsent; no node is offered a share of version 1 again."""
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    vault = _degraded(fleet, path)
    shutil.copy(path, tmp_path / "old.json")
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.pending == () and not path.exists()
    vault.change_password(recovered, "new", ksf=FAST_KSF)
    shutil.copy(tmp_path / "old.json", path)  # rolled back
    before = _sent(fleet)
    assert vault.recover("new", ksf_floor=FAST_KSF).pending == ()
    assert _sent(fleet) == before and not path.exists()
    assert all(node.version == 2 for node in fleet.nodes)


def test_a_change_fewer_than_t_nodes_staged_fails_with_nothing_changed() -> None:
    """The relay passes the new shares to two nodes only: fewer than t keep theirs, so no
    commit is sent; the client says the password was not changed, and it was not."""
    fleet = FakeFleet(5)
    vault = fleet.vault([])
    vault.register("old", RK, ksf=FAST_KSF)
    recovered = vault.recover("old", ksf_floor=FAST_KSF)
    for i in (2, 3, 4):
        fleet.nodes[i].down_for = 1000  # up, but the relay passes none of their copies
    commits = sum(node.seen.count("commit-shares") for node in fleet.nodes)
    with pytest.raises(FleetUnavailable) as caught:
        vault.change_password(recovered, "new", ksf=FAST_KSF)
    assert "password was not changed" in caught.value.message
    assert sum(node.seen.count("commit-shares") for node in fleet.nodes) == commits
    for i in (2, 3, 4):
        fleet.nodes[i].down_for = 0
    assert vault.recover("old", ksf_floor=FAST_KSF).root_key == RK
    assert all(node.version == 1 for node in fleet.nodes)


def test_a_malformed_pending_erasure_never_crashes_status(tmp_path: Path) -> None:
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    vault = fleet.vault([], PendingStore(path))
    vault.register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[4].mode = "down"
    vault.delete(vault.recover("pw", ksf_floor=FAST_KSF))
    fleet.nodes[4].mode = "ok"
    kept = path.read_text()
    damages = {
        "not a signature's length": {"authorization": "00" * 63},
        "a negative counter": {"counter": -1},
        "a counter above u64": {"counter": 2**64},
    }
    for what, fields in damages.items():
        path.write_text(kept)
        _edit(path, lambda records, fields=fields: records[0].update(fields))
        notes: list[str] = []
        vault = fleet.vault(notes, PendingStore(path))
        assert vault.status().status.name == "EMPTY", what
        assert any("pending deliveries not finished" in n for n in notes), what
        assert fleet.nodes[4].share is not None, what  # nothing sent from it


def test_two_processes_never_save_over_each_other(tmp_path: Path) -> None:
    """One command records that the owed nodes acknowledged its record (and drops it)
    while another keeps a newer record for the entry: the first, having read the file
    before the second saved, wrote back the file without the newer record."""
    fleet = FakeFleet(5)
    fleet.nodes[4].mode = "down"
    path = tmp_path / "client-pending.json"
    (record,) = _degraded(fleet, path).pending.owed(*_key(path))
    assert set(record.nodes) == {3, 4}
    newer = record.without({4})  # stands for what the second command keeps
    assert newer is not None

    first, second = PendingStore(path), PendingStore(path)
    read = first._load
    other = threading.Thread(target=second.put, args=(newer,))

    def load_then_let_the_other_run() -> Any:
        records = read()
        other.start()
        other.join(timeout=2)  # it finishes now, unless it waits for the file's lock
        return records

    first._load = load_then_let_the_other_run  # type: ignore[method-assign]
    first.acknowledged(record, {3, 4})
    other.join()
    assert PendingStore(path).owed(*record.key[:4]) == (newer,)


def _key(path: Path) -> tuple[bytes, str, str, int]:
    body = json.loads(path.read_text())
    only = body["records"][0]
    return bytes.fromhex(only["fleet_id"]), only["account"], only["entry"], 0
