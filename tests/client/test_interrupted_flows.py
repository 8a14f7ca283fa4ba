"""Registration and password change cut off between their fan-outs (docs/threshold.md,
"Registration" and "Finishing later"): once the commit may have gone out, the shares of
the nodes that did not stage theirs are kept on the device, so that a commit landing
without its answer (a SIGINT or SIGTERM, a crash, the relay failing after passing it
on) is finished at the next contact, as a degraded one that returned is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from backupvault.client import DEFAULT_ENTRY
from backupvault.client.errors import FleetUnavailable, WrongPassword
from backupvault.client.pending import PendingStore
from backupvault.client.threshold import ThresholdVault
from backupvault.client.trust import FleetSession
from backupvault.protocol import EntryStatus, Op

from .fake_fleet import FAST_KSF, FLEET_ID, FakeFleet

RK = bytes(range(32))


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)


def _cut_after(fleet: FakeFleet, op: Op, cut: Callable[[], httpx.Response]) -> None:
    """The nodes act on the next `op` fan-out, then the answer never reaches the client
    (`cut` raises, as a signal or a crash would, or answers what a failing relay does)."""
    handle = fleet.handle

    def cut_once(request: httpx.Request) -> httpx.Response:
        answer = handle(request)
        if request.url.path.endswith(f"/{op}"):
            fleet.handle = handle  # type: ignore[method-assign]
            return cut()
        return answer

    fleet.handle = cut_once  # type: ignore[method-assign]


def _interrupt() -> httpx.Response:
    raise KeyboardInterrupt


def _relay_error() -> httpx.Response:
    return httpx.Response(500, json={"error": "internal", "detail": "relay failed"})


def _holders(fleet: FakeFleet) -> list[int]:
    return [n.index for n in fleet.nodes if n.share is not None and n.manifest == fleet.replicated]


def test_a_registration_cut_off_after_its_commit_is_finished_at_the_next_contact(
    tmp_path: Path,
) -> None:
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    fleet.nodes[3].mode = fleet.nodes[4].mode = "down"
    _cut_after(fleet, Op.COMMIT_SHARES, _interrupt)
    with pytest.raises(KeyboardInterrupt):
        fleet.vault(pending=PendingStore(path)).register("pw", RK, ksf=FAST_KSF)
    assert _holders(fleet) == [0, 1, 2]  # committed: only the nodes that staged hold it
    fleet.nodes[3].mode = fleet.nodes[4].mode = "ok"
    # The next run of any command (a new process: only the file carries over).
    vault = fleet.vault(pending=PendingStore(path))
    assert vault.status().pending == ()
    assert _holders(fleet) == [0, 1, 2, 3, 4]
    # Every node holds its share: two of the first holders may be down.
    fleet.nodes[0].mode = fleet.nodes[1].mode = "down"
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK


def test_a_password_change_cut_off_after_its_commit_is_finished_at_the_next_contact(
    tmp_path: Path,
) -> None:
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    vault = fleet.vault(pending=PendingStore(path))
    vault.register("old", RK, ksf=FAST_KSF)
    recovered = vault.recover("old", ksf_floor=FAST_KSF)
    fleet.nodes[4].mode = "down"
    _cut_after(fleet, Op.COMMIT_SHARES, _interrupt)
    with pytest.raises(KeyboardInterrupt):
        vault.change_password(recovered, "new", ksf=FAST_KSF)
    assert _holders(fleet) == [0, 1, 2, 3]
    old_share = fleet.nodes[4].share  # node 4 still holds the old password's share
    fleet.nodes[4].mode = "ok"
    again = fleet.vault(pending=PendingStore(path))
    assert again.recover("new", ksf_floor=FAST_KSF).root_key == RK
    assert again.status().pending == ()
    assert _holders(fleet) == [0, 1, 2, 3, 4] and fleet.nodes[4].share != old_share


def _wrong_password_hint(vault: ThresholdVault, password: str) -> str:
    """The hint of the WrongPassword a recovery with `password` raises."""
    with pytest.raises(WrongPassword) as wrong:
        vault.recover(password, ksf_floor=FAST_KSF)
    assert wrong.value.hint is not None
    return wrong.value.hint


def test_the_old_password_after_a_change_cut_off_after_its_commit_is_told_what_happened(
    tmp_path: Path,
) -> None:
    """The device crashed once the change's commit went out, so the user never saw
    "password changed", and gives the old password again: that costs a guess, and the
    error said only "wrong password". The device kept the new version's shares before the
    commit, so it knows it set the password now in effect, and says so."""
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    vault = fleet.vault(pending=PendingStore(path))
    vault.register("old", RK, ksf=FAST_KSF)
    _cut_after(fleet, Op.COMMIT_SHARES, _interrupt)
    with pytest.raises(KeyboardInterrupt):
        vault.change_password(vault.recover("old", ksf_floor=FAST_KSF), "new", ksf=FAST_KSF)
    again = fleet.vault(pending=PendingStore(path))
    hint = _wrong_password_hint(again, "old")
    assert "this device set the password" in hint and "version 2" in hint
    assert again.recover("new", ksf_floor=FAST_KSF).root_key == RK
    # Once finished, nothing is kept, and a wrong password is told as just that.
    assert "this device set" not in _wrong_password_hint(again, "old")


def test_a_wrong_password_on_a_first_registration_kept_here_names_no_older_password(
    tmp_path: Path,
) -> None:
    """A degraded registration keeps its shares too, but version 1 has no older password
    to mix up: a wrong password is told as just that."""
    fleet = FakeFleet(5)
    fleet.nodes[4].mode = "down"
    vault = fleet.vault(pending=PendingStore(tmp_path / "client-pending.json"))
    assert vault.register("pw", RK, ksf=FAST_KSF).degraded
    assert "this device set" not in _wrong_password_hint(vault, "not it")


def test_a_change_cut_off_before_its_commit_leaves_the_old_password_and_no_debt_in_force(
    tmp_path: Path,
) -> None:
    """Stopped after staging: nothing changed. The new version's shares stay kept (its
    commit may still land), but are never sent while the old version is in effect, and
    the next change replaces them."""
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    vault = fleet.vault(pending=PendingStore(path))
    vault.register("old", RK, ksf=FAST_KSF)
    version_1 = fleet.replicated
    _cut_after(fleet, Op.REGISTER_SHARE, _interrupt)  # a password change stages with it too
    _cut_after(fleet, Op.CHANGE_SHARE, _interrupt)
    with pytest.raises(KeyboardInterrupt):
        vault.change_password(vault.recover("old", ksf_floor=FAST_KSF), "new", ksf=FAST_KSF)
    assert fleet.replicated == version_1
    again = fleet.vault(pending=PendingStore(path))
    recovered = again.recover("old", ksf_floor=FAST_KSF)
    assert again.status().status == EntryStatus.LIVE
    assert again.change_password(recovered, "newer", ksf=FAST_KSF).missing == ()
    assert again.status().pending == ()
    assert again.recover("newer", ksf_floor=FAST_KSF).root_key == RK


def test_a_registration_whose_commit_lands_after_the_client_gave_up_is_finished_later(
    tmp_path: Path,
) -> None:
    """No node answered the commit in time and t nodes still answered no entry, so the
    client said the commit may still take effect; settling then committed it. The shares
    of the nodes that staged none were kept, and go out at the next contact."""
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    fleet.nodes[4].mode = "down"
    handle = fleet.handle
    held_back: list[httpx.Request] = []

    def commit_held_back(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/{Op.COMMIT_SHARES}"):
            held_back.append(request)  # accepted by a minority, not committed yet
            return httpx.Response(503, json={"error": "fleet_unavailable", "detail": "timeout"})
        return handle(request)

    fleet.handle = commit_held_back  # type: ignore[method-assign]
    vault: ThresholdVault = fleet.vault(pending=PendingStore(path))
    vault.delivery_patience = 0.05
    with pytest.raises(FleetUnavailable, match="may still take effect"):
        vault.register("pw", RK, ksf=FAST_KSF)
    fleet.handle = handle  # type: ignore[method-assign]
    # `vault status` at once, as the message says: no entry yet, the shares still kept.
    said = fleet.vault(pending=PendingStore(path)).status()
    assert said.status == EntryStatus.EMPTY
    assert said.pending == (
        "version 1 (a registration or password change whose commit was not confirmed):"
        " its shares are kept in case it still takes effect; no key is in effect yet, and"
        " the next registration or password change replaces them",
    )
    handle(held_back[-1])  # settling commits it
    assert _holders(fleet) == [0, 1, 2, 3]
    fleet.nodes[4].mode = "ok"
    assert fleet.vault(pending=PendingStore(path)).status().pending == ()
    assert _holders(fleet) == [0, 1, 2, 3, 4]


def _rotated(path: Path) -> tuple[FakeFleet, FakeFleet, FleetSession]:
    """A key registered on epoch 0's fleet, and a session on epoch 1's, which moves it
    there at the next recovery; one pending file for both, as on a device."""
    old, new = FakeFleet(5), FakeFleet(5)
    old.vault(pending=PendingStore(path)).register("pw", RK, ksf=FAST_KSF)
    older = FleetSession(old.vault(pending=PendingStore(path), epoch=0), 0)
    current = FleetSession(new.vault(pending=PendingStore(path), epoch=1), 1, iter([(0, older)]))
    return old, new, current


def test_a_key_moved_to_a_new_epoch_with_a_node_down_is_finished_there_later(
    tmp_path: Path,
) -> None:
    """Moving the key registers it on the new epoch (degraded: node 4 down), then deletes
    it on the old one: that erasure's bookkeeping must not forget the new epoch's shares
    (one record per entry, whatever the epoch, let the old epoch's confirmed erasure drop
    them: node 4 never got its share)."""
    path = tmp_path / "client-pending.json"
    old, new, session = _rotated(path)
    new.nodes[4].mode = "down"
    moved = session.recover_or_migrate("pw")
    assert (moved.root_key, moved.migrated_from) == (RK, 0)
    assert all(node.share is None for node in old.nodes)  # deleted there
    new.nodes[4].mode = "ok"
    assert FleetSession(new.vault(pending=PendingStore(path), epoch=1), 1).status().pending == ()
    assert _holders(new) == [0, 1, 2, 3, 4]


def test_an_old_epochs_erasure_owed_does_not_push_out_the_new_epochs_shares(
    tmp_path: Path,
) -> None:
    path = tmp_path / "client-pending.json"
    old, new, session = _rotated(path)
    new.nodes[4].mode = old.nodes[1].mode = "down"
    session.recover_or_migrate("pw")
    assert old.nodes[1].share is not None  # its erasure is owed
    new.nodes[4].mode = old.nodes[1].mode = "ok"
    current = FleetSession(new.vault(pending=PendingStore(path), epoch=1), 1)
    assert current.status().pending == ()
    assert _holders(new) == [0, 1, 2, 3, 4]
    # The old epoch's erasure is still owed to its node, and sent at its next contact.
    assert FleetSession(old.vault(pending=PendingStore(path), epoch=0), 0).status().pending == ()
    assert old.nodes[1].share is None


def _answer_503(fleet: FakeFleet, op: Op, detail: str) -> Callable[[], None]:
    """A relay that drops every `op` fan-out to `fleet` (no node sees it) and answers 503,
    as when no node answered; returns what lets them through again."""
    handle = fleet.handle

    def dropping(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/{op}"):
            return httpx.Response(503, json={"error": "fleet_unavailable", "detail": detail})
        return handle(request)

    fleet.handle = dropping  # type: ignore[method-assign]

    def restore() -> None:
        fleet.handle = handle  # type: ignore[method-assign]

    return restore


def _drop_deletes(fleet: FakeFleet) -> Callable[[], None]:
    return _answer_503(fleet, Op.DELETE_SHARE, "dropped")


def _later_run(old: FakeFleet, new: FakeFleet, path: Path) -> FleetSession:
    """A later run of the client: new sessions, only the pending file carries over."""
    older = FleetSession(old.vault(pending=PendingStore(path), epoch=0), 0)
    return FleetSession(new.vault(pending=PendingStore(path), epoch=1), 1, iter([(0, older)]))


def test_a_migrations_delete_the_relay_drops_is_sent_again_at_later_runs(
    tmp_path: Path,
) -> None:
    """docs/threshold.md, "Per live copy": until the old epoch's delete lands, both
    copies count their own guesses (twice the bound). The delete was sent once, its
    failure swallowed and nothing kept: a relay that dropped it left the old copy live
    (with a fresh count: the migration's recovery reset it) for as long as the old
    epoch was routed. The owner's signed delete is kept and sent again at every later
    run (a recovery, or `vault status`) until the old nodes erase."""
    path = tmp_path / "client-pending.json"
    old, new, session = _rotated(path)
    let_through = _drop_deletes(old)
    moved = session.recover_or_migrate("pw")
    assert (moved.root_key, moved.migrated_from) == (RK, 0)
    assert all(node.share is not None for node in old.nodes)  # the old copy is live
    # Still dropped at the next run: still kept, and the old copy still live.
    assert _later_run(old, new, path).recover_or_migrate("pw").root_key == RK
    assert all(node.share is not None for node in old.nodes)
    let_through()
    assert _later_run(old, new, path).recover_or_migrate("pw").root_key == RK
    assert all(node.share is None for node in old.nodes)  # erased at last
    assert old.replicated == b"" and new.replicated != b""
    assert _later_run(old, new, path).status().pending == ()


def test_a_migrations_delete_dropped_is_sent_again_by_vault_status(tmp_path: Path) -> None:
    path = tmp_path / "client-pending.json"
    old, new, session = _rotated(path)
    let_through = _drop_deletes(old)
    session.recover_or_migrate("pw")
    dropped = _later_run(old, new, path).status()
    assert dropped.status == EntryStatus.LIVE
    assert any("epoch 0" in line for line in dropped.pending), dropped.pending
    let_through()
    assert _later_run(old, new, path).status().pending == ()
    assert all(node.share is None for node in old.nodes)


def test_a_kept_delete_is_forgotten_once_its_epoch_is_retired(tmp_path: Path) -> None:
    """Retiring the old epoch ends its copy (its nodes are gone): the relay answers
    `404 unknown_epoch` there, and the kept delete is dropped, not owed forever."""
    path = tmp_path / "client-pending.json"
    old, new, session = _rotated(path)
    _drop_deletes(old)
    session.recover_or_migrate("pw")
    assert PendingStore(path).epochs_owed(FLEET_ID, "alice", DEFAULT_ENTRY) == {0}

    def retired(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404, json={"error": "unknown_epoch", "detail": "this relay routes no fleet of epoch 0"}
        )

    old.handle = retired  # type: ignore[method-assign]
    assert _later_run(old, new, path).status().pending == ()
    assert PendingStore(path).epochs_owed(FLEET_ID, "alice", DEFAULT_ENTRY) == frozenset()
    assert _holders(new) == [0, 1, 2, 3, 4]


def test_a_kept_delete_is_never_sent_to_the_new_epoch_and_the_new_copy_stays(
    tmp_path: Path,
) -> None:
    """The kept statement is about the old epoch's manifest: sent at later runs it reaches
    only that epoch's nodes, and a relay that passes it to the new epoch's nodes gets it
    refused there (another manifest, another pk_auth)."""
    path = tmp_path / "client-pending.json"
    old, new, session = _rotated(path)
    let_through = _drop_deletes(old)
    session.recover_or_migrate("pw")
    let_through()
    seen_before = [list(node.seen) for node in new.nodes]
    _later_run(old, new, path).status()
    assert all(
        Op.DELETE_SHARE not in node.seen[len(before) :]
        for node, before in zip(new.nodes, seen_before, strict=True)
    )
    (kept,) = PendingStore(path).owed(FLEET_ID, "alice", DEFAULT_ENTRY, 0) or (None,)
    assert kept is None  # delivered, so forgotten
    assert _holders(new) == [0, 1, 2, 3, 4]
    assert (
        FleetSession(new.vault(pending=PendingStore(path), epoch=1), 1).recover("pw").root_key == RK
    )


def test_a_commit_the_relay_fails_after_passing_it_on_is_told_as_it_landed(
    tmp_path: Path,
) -> None:
    """The relay answered the commit with a 500 (or garbage) after the nodes took it: the
    flow used to end with "the relay answered 500", and the user, told the change failed,
    retried it with the old password, a wrong guess now. The manifests tell what is in
    effect, as when no node answered."""
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    vault = fleet.vault(pending=PendingStore(path))
    vault.register("old", RK, ksf=FAST_KSF)
    recovered = vault.recover("old", ksf_floor=FAST_KSF)
    fleet.nodes[4].mode = "down"
    _cut_after(fleet, Op.COMMIT_SHARES, _relay_error)
    changed = vault.change_password(recovered, "new", ksf=FAST_KSF)
    assert changed.version == 2 and changed.degraded and changed.acknowledged == ()
    assert all("relay failed" in why for why in changed.missing), changed.missing
    fleet.nodes[4].mode = "ok"
    assert vault.status().pending == ()
    assert _holders(fleet) == [0, 1, 2, 3, 4]
    assert vault.recover("new", ksf_floor=FAST_KSF).root_key == RK


def test_a_registration_commit_the_relay_fails_before_any_node_took_it_says_so(
    tmp_path: Path,
) -> None:
    fleet = FakeFleet(5)
    handle = fleet.handle

    def refused(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/{Op.COMMIT_SHARES}"):
            return _relay_error()  # passed on to no node
        return handle(request)

    fleet.handle = refused  # type: ignore[method-assign]
    with pytest.raises(FleetUnavailable, match="the entry is not registered yet"):
        fleet.vault(pending=PendingStore(tmp_path / "p.json")).register("pw", RK, ksf=FAST_KSF)


def test_a_change_whose_commit_did_not_land_is_told_as_such_until_the_next_change(
    tmp_path: Path,
) -> None:
    """Its shares are kept in case the commit still lands; until then they are not
    "not yet confirmed" by each node (said at every backup), but one line that says why
    they are kept, and the next change replaces them."""
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    vault = fleet.vault(pending=PendingStore(path))
    vault.register("old", RK, ksf=FAST_KSF)
    let_through = _answer_503(fleet, Op.COMMIT_SHARES, "timeout")
    vault.delivery_patience = 0.05
    with pytest.raises(FleetUnavailable, match="may still take effect"):
        vault.change_password(vault.recover("old", ksf_floor=FAST_KSF), "new", ksf=FAST_KSF)
    let_through()
    said = vault.status().pending
    assert said == (
        "version 2 (a registration or password change whose commit was not confirmed):"
        " its shares are kept in case it still takes effect; version 1 is in effect, and"
        " the next registration or password change replaces them",
    )
    assert vault.recover("old", ksf_floor=FAST_KSF).pending == said
    vault.change_password(vault.recover("old", ksf_floor=FAST_KSF), "newer", ksf=FAST_KSF)
    assert vault.status().pending == ()


def test_an_unconfirmed_change_does_not_push_out_what_the_version_in_effect_is_owed(
    tmp_path: Path,
) -> None:
    """Version 1 was registered with node 4 down (its share owed); a password change's
    commit then went out unconfirmed and did not land. Both are kept: one record per
    entry let the change's shares, kept before its commit, push out node 4's share of the
    version still in effect, which it then never got."""
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    fleet.nodes[4].mode = "down"
    vault = fleet.vault(pending=PendingStore(path))
    assert vault.register("old", RK, ksf=FAST_KSF).degraded
    handle = fleet.handle

    def lost(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/{Op.COMMIT_SHARES}"):
            return httpx.Response(503, json={"error": "fleet_unavailable", "detail": "timeout"})
        return handle(request)

    fleet.handle = lost  # type: ignore[method-assign]
    vault.delivery_patience = 0.05
    with pytest.raises(FleetUnavailable, match="may still take effect"):
        vault.change_password(vault.recover("old", ksf_floor=FAST_KSF), "new", ksf=FAST_KSF)
    fleet.handle = handle  # type: ignore[method-assign]
    fleet.nodes[4].mode = "ok"
    said = fleet.vault(pending=PendingStore(path)).status().pending
    assert len(said) == 1 and said[0].startswith("version 2 (a registration or password")
    assert _holders(fleet) == [0, 1, 2, 3, 4]  # node 4 got its share of version 1


def test_a_change_cut_off_before_its_commit_is_forgotten_when_the_key_is_deleted(
    tmp_path: Path,
) -> None:
    """The cut-off change's shares (version 2) are kept in case its commit lands; once
    version 1 is deleted it never can (its statement is of version 1). They were kept
    all the same: every `vault status` said they might still take effect, and `vault
    finish` failed with exit 5 until the next registration (review s61)."""
    fleet = FakeFleet(5)
    path = tmp_path / "client-pending.json"
    vault = fleet.vault(pending=PendingStore(path))
    vault.register("old", RK, ksf=FAST_KSF)
    handle = fleet.handle

    def cut_before_the_commit(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/{Op.COMMIT_SHARES}"):
            fleet.handle = handle  # type: ignore[method-assign]
            raise KeyboardInterrupt  # staged everywhere, the commit never sent
        return handle(request)

    fleet.handle = cut_before_the_commit  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        vault.change_password(vault.recover("old", ksf_floor=FAST_KSF), "new", ksf=FAST_KSF)
    assert vault.status().pending != ()  # kept: it may still land
    vault.delete(vault.recover("old", ksf_floor=FAST_KSF))
    status = vault.status()
    assert status.status == EntryStatus.EMPTY and status.pending == ()
    assert not path.exists()
    # A new key registers at the version after the deleted one's, and works.
    assert vault.register("newest", RK, ksf=FAST_KSF, version=2).missing == ()
    assert vault.recover("newest", ksf_floor=FAST_KSF).root_key == RK


def test_a_change_the_relay_took_then_could_not_show_names_each_passwords_version(
    tmp_path: Path,
) -> None:
    """The relay passed the commit on, then failed it and the manifest read after it: the
    hint sent the user to `vault status` to learn whether the change took effect, and
    the status says "live" either way; the versions tell which password opens the key
    (review s61)."""
    fleet = FakeFleet(5)
    vault = fleet.vault(pending=PendingStore(tmp_path / "client-pending.json"))
    vault.register("old", RK, ksf=FAST_KSF)
    recovered = vault.recover("old", ksf_floor=FAST_KSF)
    handle = fleet.handle
    committed: list[bool] = []

    def failing(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(f"/{Op.COMMIT_SHARES}"):
            handle(request)  # the nodes take it
            committed.append(True)
            return _relay_error()
        if committed and request.url.path.endswith(f"/{Op.MANIFEST}"):
            return _relay_error()
        return handle(request)

    fleet.handle = failing  # type: ignore[method-assign]
    with pytest.raises(FleetUnavailable) as told:
        vault.change_password(recovered, "new", ksf=FAST_KSF)
    hint = told.value.hint or ""
    assert "version 2 if it did (the new password opens the key)" in hint
    assert "version 1 if not (the old one still does)" in hint
