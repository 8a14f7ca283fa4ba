"""`backupvault vault status` and `vault finish` on a degraded entry, in process, over the
fake fleet of tests/client (the process tests run the same commands on real nodes)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from tests.client.fake_fleet import FakeFleet

from backupvault.cli import main as cli_main
from backupvault.client.pending import PendingStore
from backupvault.client.trust import FleetSession

RK = bytes(range(32))


class _Config:
    """What the vault commands take from a config: a session (here on the fake fleet)."""

    account = "alice"
    entry = "backup-root-key"

    def __init__(self, session: FleetSession) -> None:
        self._session = session

    def session(self, **_kwargs: object) -> FleetSession:
        return self._session


def _run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    session: FleetSession,
    *args: str,
    stdin: str = "",
) -> tuple[int, dict[str, object]]:
    monkeypatch.setattr(cli_main.Context, "config", lambda self: _Config(session))
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as done:
        cli_main.main(["--json", *args])
    out = capsys.readouterr()
    code = int(done.value.code or 0)
    return code, json.loads(out.out if code == 0 else out.err)


def test_status_shows_pending_shares_and_finish_delivers_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fleet = FakeFleet(5)
    fleet.nodes[3].mode = "down"
    session = FleetSession(fleet.vault(pending=PendingStore(tmp_path / "client-pending.json")))
    session.register("correct horse battery", RK)
    code, status = _run(monkeypatch, capsys, session, "vault", "status")
    assert code == 0 and status["pending"] == ["node 3: share of version 1 not yet confirmed"]
    # Node 3 still down: finish says what is left, exit 5 (as fleet-unavailable). The
    # share is sealed to node 3: no password is asked (stdin is empty).
    code, error = _run(monkeypatch, capsys, session, "vault", "finish")
    assert code == 5 and "node 3" in str(error["error"])
    fleet.nodes[3].mode = "ok"
    code, done = _run(monkeypatch, capsys, session, "vault", "finish")
    delivered = ["node 3: share of version 1"]  # said, not only done (new-user review s48)
    assert (code, done) == (0, {"finished": True, "pending": [], "delivered": delivered})
    assert fleet.nodes[3].share is not None
    code, done = _run(monkeypatch, capsys, session, "vault", "finish")
    assert (code, done) == (0, {"finished": True, "pending": [], "delivered": []})
    assert not any("evaluate" in node.seen for node in fleet.nodes)  # no recovery
    code, status = _run(monkeypatch, capsys, session, "vault", "status")
    assert code == 0 and status["pending"] == []


def test_status_of_an_empty_vault_has_no_guess_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No key is not "no guesses left" (that is a destroyed key): a script reading
    guesses_remaining gets null, not 0."""
    session = FleetSession(FakeFleet(5).vault(pending=PendingStore(tmp_path / "p.json")))
    code, status = _run(monkeypatch, capsys, session, "vault", "status")
    assert code == 0 and status["status"] == "empty"
    assert status["guesses_remaining"] is None
    session.register("correct horse battery", RK)
    code, status = _run(monkeypatch, capsys, session, "vault", "status")
    assert status["status"] == "live" and status["guesses_remaining"] == status["guess_limit"]


def test_recovery_code_prints_the_key_that_opens_password_backups_without_the_vault(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The design's third way in (a recovery code is RK itself) had no command for a
    password key: a user whose vault key wrong guesses destroyed (a thief's ten tries), or
    whose vault is gone, lost every password backup, with no offline copy to keep."""
    from backupvault.backup.keykinds import KEY_PASSWORD
    from backupvault.backup.repo import create_snapshot
    from backupvault.crypto import recovery

    session = FleetSession(FakeFleet(5).vault(pending=PendingStore(tmp_path / "p.json")))
    config = ["--config", str(tmp_path / "client.toml")]  # read through the patched Context
    # No key yet: said so, and that the first password backup makes one (it spoke of
    # opening backups, and sent the user to this very command: new-user walkthrough s47).
    empty = _run(monkeypatch, capsys, session, *config, "vault", "recovery-code",
                 "--password-stdin", stdin="correct horse battery\n")  # fmt: skip
    assert empty[0] == 1 and "no recovery code to show" in str(empty[1]["error"])
    assert "the first backup with a password registers the key" in str(empty[1]["hint"])
    session.register("correct horse battery", RK)
    wrong = _run(monkeypatch, capsys, session, *config, "vault", "recovery-code",
                 "--password-stdin", stdin="wrong horse battery\n")  # fmt: skip
    assert wrong[0] == 3 and "recovery_code" not in wrong[1]
    code, shown = _run(monkeypatch, capsys, session, *config, "vault", "recovery-code",
                       "--password-stdin", stdin="correct horse battery\n")  # fmt: skip
    assert code == 0, shown
    assert recovery.decode(str(shown["recovery_code"])) == RK
    assert session.status().guesses_remaining == session.status().guess_limit  # reset
    # A repository the password's key made opens with the code alone, no vault asked.
    source, storage = tmp_path / "source", tmp_path / "storage"
    source.mkdir()
    (source / "a.txt").write_text("alpha\n")
    create_snapshot(source, str(storage), RK, state_dir=tmp_path / "state", key_kind=KEY_PASSWORD)
    listed = _run(monkeypatch, capsys, session, "backup", "list", "--storage", str(storage),
                  "--recovery-code", "-", stdin=f"{shown['recovery_code']}\n")  # fmt: skip
    assert listed[0] == 0, listed
    snapshots = listed[1]["snapshots"]
    assert isinstance(snapshots, list) and [s["key"] for s in snapshots] == ["password"]


def test_a_first_password_backup_names_the_recovery_code_to_keep(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The key a first backup registers is lost for good once wrong guesses destroy it:
    the note that it was registered is where to say how to keep an offline copy."""
    session = FleetSession(FakeFleet(5).vault(pending=PendingStore(tmp_path / "p.json")))
    monkeypatch.setattr(cli_main.Context, "config", lambda self: _Config(session))
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    monkeypatch.setenv("BACKUPVAULT_STATE_DIR", str(tmp_path / "state"))
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_text("alpha\n")
    with pytest.raises(SystemExit) as done:
        cli_main.main(["--config", str(tmp_path / "client.toml"), "backup", "create",
                       str(source), "--storage", str(tmp_path / "s"),
                       "--password-stdin"])  # fmt: skip
    assert done.value.code == 0
    said = " ".join(capsys.readouterr().err.split())
    assert "a new key was registered in the vault behind your password" in said
    assert "`backupvault vault recovery-code`" in said


def test_status_says_what_to_do_about_a_key_that_is_destroyed_or_not_there(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`key: destroyed` and `key: empty` said what the vault holds and nothing of what
    then opens the backups, or what makes a key."""
    from backupvault.client.errors import Destroyed, WrongPassword

    session = FleetSession(FakeFleet(5).vault(pending=PendingStore(tmp_path / "p.json")))
    monkeypatch.setattr(cli_main.Context, "config", lambda self: _Config(session))

    def status_text() -> str:
        with pytest.raises(SystemExit) as done:
            cli_main.main(["vault", "status"])
        assert done.value.code == 0
        return " ".join(capsys.readouterr().out.split())

    empty = status_text()
    assert empty.startswith("key: empty") and "`backupvault backup create" in empty
    session.register("correct horse battery", RK)
    assert status_text() == "key: live (version 1), 10 of 10 guesses left"
    # The version in effect is said: after a password change cut off before it said
    # whether it landed, it is what tells which password opens the key (review s61).
    session.change_password(session.recover("correct horse battery"), "another password")
    assert status_text() == "key: live (version 2), 10 of 10 guesses left"
    session.before_last_guess = None  # the CLI set its question on this shared session
    for _ in range(10):
        with pytest.raises((WrongPassword, Destroyed)):
            session.recover("a thief's guess")
    destroyed = status_text()
    assert destroyed.startswith("key: destroyed")
    assert "`backupvault vault recovery-code`" in destroyed and "--new-key" in destroyed


def test_finish_does_not_call_a_share_delivered_that_it_dropped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A share owed for a version the entry moved past (a password change made on another
    device) is dropped, never sent: `vault finish` said it was delivered and confirmed
    (review of session 48's diff)."""
    fleet = FakeFleet(5)
    fleet.nodes[3].mode = "down"
    here = FleetSession(fleet.vault(pending=PendingStore(tmp_path / "here-pending.json")))
    here.register("correct horse battery", RK)
    fleet.nodes[3].mode = "ok"
    other = FleetSession(fleet.vault(pending=PendingStore(tmp_path / "other-pending.json")))
    other.change_password(other.recover("correct horse battery"), "another password")
    seen_before = len(fleet.nodes[3].seen)
    code, done = _run(monkeypatch, capsys, here, "vault", "finish")
    assert (code, done) == (0, {"finished": True, "pending": [], "delivered": []})
    assert not any("share" in op for op in fleet.nodes[3].seen[seen_before:])  # none sent


def test_delete_after_a_rotation_deletes_the_key_on_the_older_epoch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """After a rotation the key stays on the older epoch (opening with the password there,
    and counting guesses) until a recovery moves it: `vault status` said so, and `vault
    delete` said "there is nothing to delete" and left it there (review s61)."""
    from backupvault.client.errors import NotRegistered

    pending = PendingStore(tmp_path / "p.json")
    old_fleet, new_fleet = FakeFleet(5), FakeFleet(5)
    old = FleetSession(old_fleet.vault(pending=pending, epoch=1), 1)
    old.register("correct horse battery", RK)
    session = FleetSession(new_fleet.vault(pending=pending, epoch=2), 2, iter([(1, old)]))

    class Config(_Config):
        storage = None

    monkeypatch.setattr(cli_main.Context, "config", lambda self: Config(session))
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    with pytest.raises(SystemExit) as done:
        cli_main.main(["vault", "delete", "--yes", "--password-stdin"])
    said = capsys.readouterr()
    assert done.value.code == 0, said.err
    assert "key deleted from the vault (on fleet epoch 1" in said.out
    old.before_last_guess = None
    with pytest.raises(NotRegistered):
        old.recover("correct horse battery")  # gone from the older epoch too
    assert not any("register" in op for node in new_fleet.nodes for op in node.seen)


def test_status_on_another_device_names_a_node_without_its_share(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A node that missed its share (down at the registration or password change) holds
    the key's manifest and no share: the key survives one node failure fewer. Only the
    device that owes the share said so (a pending line); `vault status` on any other
    device said all was well, though docs/cli.md has it name "the nodes that do not hold
    its share" (review s61, on a local deployment: a node killed during a change)."""
    fleet = FakeFleet(5)
    fleet.nodes[3].mode = "down"
    here = FleetSession(fleet.vault(pending=PendingStore(tmp_path / "here-pending.json")))
    here.register("correct horse battery", RK)
    fleet.nodes[3].mode = "ok"  # back, with the committed manifest and no share
    other = FleetSession(fleet.vault(pending=PendingStore(tmp_path / "other-pending.json")))
    code, status = _run(monkeypatch, capsys, other, "vault", "status")
    assert code == 0 and status["status"] == "live" and status["pending"] == []
    assert status["nodes_without"] == ["node 3: holds the key's manifest but no share of it"]
    monkeypatch.setattr(cli_main.Context, "config", lambda self: _Config(other))
    with pytest.raises(SystemExit):
        cli_main.main(["vault", "status"])
    said = capsys.readouterr().out
    assert "not holding this key's share: node 3: holds the key's manifest but no share" in said
    # The device that owed it delivers it on the way, and does not name the node then.
    code, status = _run(monkeypatch, capsys, here, "vault", "status")
    assert code == 0 and status["nodes_without"] == [] and status["pending"] == []
    code, status = _run(monkeypatch, capsys, other, "vault", "status")
    assert code == 0 and status["nodes_without"] == []


def test_a_first_backup_that_loses_the_registration_race_says_whose_key_it_hit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Two devices' first backups at once, with different passwords: the one that finds
    the other's key registered tries its password on it (its own lost answer would be
    the same key), which costs a guess and fails. It said only "wrong password: check
    the password before trying again", and every retry of the same password used
    another guess of the other device's key (review s61)."""
    fleet = FakeFleet(5)
    session = FleetSession(fleet.vault(pending=PendingStore(tmp_path / "p.json")))
    other = FleetSession(fleet.vault(pending=PendingStore(tmp_path / "other.json")))
    register = session.register

    def other_device_first(password: str, root_key: bytes) -> object:
        other.register("the other device's passphrase", bytes(32))
        return register(password, root_key)

    monkeypatch.setattr(session, "register", other_device_first)
    monkeypatch.setenv("BACKUPVAULT_STATE_DIR", str(tmp_path / "state"))
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_text("alpha\n")
    code, error = _run(monkeypatch, capsys, session, "--config", str(tmp_path / "client.toml"),
                       "backup", "create", str(source), "--storage", str(tmp_path / "s"),
                       "--password-stdin", stdin="correct horse battery\n")  # fmt: skip
    assert code == 3 and "wrong password" in str(error["error"])
    hint = " ".join(str(error["hint"]).split())
    assert "another device (or another run of this one) registered a key" in hint
    assert "with that device's password, and do not try this one again" in hint
    assert other.recover("the other device's passphrase").root_key == bytes(32)
