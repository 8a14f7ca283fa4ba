"""Ctrl-C and SIGTERM: a password check with the vault is let finish (the nodes count the
attempt until the success's reset), SIGTERM works as Ctrl-C for the whole command, and a
signal after a backup was saved does not turn the success into a failure."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from backupvault.cli.main import Interrupted, _password_check, main
from backupvault.cli.output import Output
from backupvault.client.errors import WrongPassword

pytestmark = pytest.mark.usefixtures("ctrl_c_as_in_a_terminal")


def test_one_signal_during_the_password_check_waits_for_it_then_interrupts(
    capfd: pytest.CaptureFixture[str],
) -> None:
    before = signal.getsignal(signal.SIGINT)
    for signum in (signal.SIGINT, signal.SIGTERM):
        finished = []
        with pytest.raises(Interrupted) as stopped, _password_check(Output()):
            os.kill(os.getpid(), signum)
            finished.append(True)  # the check goes on to its end
        assert finished == [True]
        assert stopped.value.exit_code == 130
        assert "did not count as a wrong guess" in stopped.value.message
        assert "nothing was changed beyond the check" in stopped.value.message
        err = capfd.readouterr().err
        assert "finishing the password check with the vault" in err
        assert "press Ctrl-C again to stop now" in err
    assert signal.getsignal(signal.SIGINT) is before  # put back


def test_an_ignored_sigint_stays_ignored_during_the_check() -> None:
    """A job a script starts with `&` inherits SIGINT ignored: the data phase of a backup
    ignored it, the password check stopped the command on it (review s39-C). SIGTERM is
    still deferred."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    finished = []
    with pytest.raises(Interrupted) as stopped, _password_check(Output()):
        os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)  # the first signal it takes: deferred
        finished.append(True)
    assert finished == [True] and stopped.value.exit_code == 130
    with _password_check(Output()):
        os.kill(os.getpid(), signal.SIGINT)  # alone: nothing at all
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_second_signal_during_the_password_check_stops_at_once() -> None:
    finished = []
    with pytest.raises(Interrupted) as stopped, _password_check(Output()):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        finished.append(True)
    assert finished == []
    assert stopped.value.exit_code == 130
    assert "may have counted as a guess" in (stopped.value.hint or "")


def test_a_check_that_fails_after_a_deferred_signal_says_how_it_ended() -> None:
    with pytest.raises(Interrupted) as stopped, _password_check(Output(json_mode=True)):
        os.kill(os.getpid(), signal.SIGINT)
        raise WrongPassword(4)
    assert "the password check with the vault ended first" in stopped.value.message
    with pytest.raises(WrongPassword), _password_check(Output()):  # no signal: as it was
        raise WrongPassword(4)


def test_vault_finish_interrupted_during_its_password_check_finishes_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the command: the recovery is let finish (its reset sent), then exit 130."""
    from backupvault.cli import main as cli_main

    recovered = []

    class Session:
        threshold = SimpleNamespace(confirmed=[])

        def status(self) -> SimpleNamespace:
            return SimpleNamespace(pending=())

        def needs_password_to_finish(self) -> bool:
            return True

        def recover(self, password: str) -> SimpleNamespace:
            os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` sends, mid-check
            recovered.append(password)  # stands for the evaluation and the reset
            threshold = SimpleNamespace(pending=(), reset_confirmed=True, reset_missing=())
            return SimpleNamespace(wrong_guesses_before=0, threshold=threshold)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli_main.Context, "session", lambda self: Session())
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery staple\n"))
    with pytest.raises(SystemExit) as exited:
        main(["vault", "finish", "--password-stdin"])
    assert exited.value.code == 130
    assert recovered == ["correct horse battery staple"]
    err = capsys.readouterr().err
    assert "did not count as a wrong guess" in err
    assert signal.getsignal(signal.SIGTERM) is before  # main put it back


def test_a_signal_after_the_snapshot_is_saved_leaves_the_backup_a_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from backupvault.cli import main as cli_main

    committed = cli_main._committed

    def then_signalled() -> None:
        committed()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(cli_main, "_committed", then_signalled)
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_text("a")
    args = ["backup", "create", str(source), "--storage", str(tmp_path / "s"), "--recovery-code"]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 0
    assert "saved" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is before  # put back


def test_sigterm_during_a_backup_exits_130_saying_what_it_left(tmp_path: Path) -> None:
    source = tmp_path / "big"
    source.mkdir()
    with open(source / "sparse.img", "wb") as sparse:
        sparse.truncate(40 << 30)  # 40 GiB of holes: reading it takes long, storing it little
    storage = tmp_path / "storage"
    args = ["backup", "create", str(source), "--storage", str(storage), "--recovery-code"]
    backup = subprocess.Popen(
        [sys.executable, "-m", "backupvault", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (storage / "config").exists():
            assert backup.poll() is None, "the backup ended before it could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        backup.send_signal(signal.SIGTERM)
        _, err = backup.communicate(timeout=60)
    assert backup.returncode == 130, err
    assert "backup interrupted: no snapshot was saved" in err


class _ChangingSession:
    """A session whose password change (or delete) gets a signal mid-way, between its
    fan-outs: `signals` of them."""

    def __init__(self, signals: tuple[int, ...]) -> None:
        self.signals = signals
        self.finished: list[str] = []

    def recover_or_migrate(self, password: str) -> SimpleNamespace:
        return self.recover(password)

    def recover(self, password: str) -> SimpleNamespace:
        threshold = SimpleNamespace(
            pending=(), reset_confirmed=True, reset_missing=(), manifest=SimpleNamespace(version=1)
        )
        return SimpleNamespace(wrong_guesses_before=0, threshold=threshold)

    def status(self) -> SimpleNamespace:
        from backupvault.protocol import EntryStatus

        return SimpleNamespace(status=EntryStatus.LIVE)

    def _between_fan_outs(self, what: str) -> None:
        for signum in self.signals:
            os.kill(os.getpid(), signum)  # after staging, before the commit went out
        self.finished.append(what)  # stands for the commit and its answers

    def change_password(self, recovered: object, new: str) -> SimpleNamespace:
        self._between_fan_outs("change")
        return SimpleNamespace(version=2, missing=())

    def delete(self, recovered: object) -> tuple[int, tuple[str, ...]]:
        self._between_fan_outs("delete")
        return 1, ()


COMMANDS = {
    "change": (["vault", "change-password", "--password-stdin"], "old password\nnew password\n"),
    "delete": (["vault", "delete", "--yes", "--password-stdin"], "the password\n"),
}


@pytest.mark.parametrize("what", sorted(COMMANDS))
def test_a_signal_during_a_change_with_the_vault_lets_it_finish_and_says_it_took_effect(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    """Stopped between staging and commit, a password change (or a delete) may land
    unseen, and the user does not know which password opens the key (a retry with the
    old one after the change landed costs a guess)."""
    from backupvault.cli import main as cli_main

    session = _ChangingSession((signal.SIGTERM,))
    monkeypatch.setattr(cli_main.Context, "session", lambda self: session)
    monkeypatch.setattr(cli_main.Context, "config", lambda self: SimpleNamespace(storage=None))
    args, stdin = COMMANDS[what]
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 130
    assert session.finished == [what]
    err = capsys.readouterr().err
    assert "it was let finish, and took effect" in err
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_signal_during_a_password_change_stops_and_says_either_password_may_open(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from backupvault.cli import main as cli_main

    session = _ChangingSession((signal.SIGINT, signal.SIGINT))
    monkeypatch.setattr(cli_main.Context, "session", lambda self: session)
    args, stdin = COMMANDS["change"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 130
    assert session.finished == []
    err = capsys.readouterr().err
    assert "may or may not have taken effect" in err
    # Each outcome named by the version `vault status` then shows (review s61: it said
    # "key: live" for either, and the user could not tell which password to type).
    assert "the new password opens your key (`vault status` shows version 2)" in err
    assert "or the old one still does (version 1)" in err
    assert "`backupvault vault status` shows the version in effect" in err


def test_a_signal_during_a_first_backups_registration_lets_it_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from backupvault.cli import main as cli_main
    from backupvault.client.errors import NotRegistered

    registered: list[bytes] = []

    class Session:
        def recover_or_migrate(self, password: str) -> None:
            raise NotRegistered()

        def register(self, password: str, root_key: bytes) -> SimpleNamespace:
            os.kill(os.getpid(), signal.SIGINT)
            registered.append(root_key)
            return SimpleNamespace(missing=())

    ctx = cli_main.Context(Output(json_mode=True), None, False)
    monkeypatch.setattr(cli_main.Context, "session", lambda self: Session())
    with pytest.raises(Interrupted) as stopped:
        cli_main._root_key_from_vault(ctx, "a long enough passphrase here", register=True)
    assert len(registered) == 1
    assert "the registration of a new key with the vault" in stopped.value.message
    assert "run the command again to use it" in (stopped.value.hint or "")


@pytest.mark.parametrize(
    ("pressed", "told"),
    [(KeyboardInterrupt, "interrupted"), (EOFError, "a question was declined or got no answer")],
)
def test_ctrl_c_at_a_question_is_an_interrupt_and_ctrl_d_is_end_of_input(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pressed: type[BaseException],
    told: str,
) -> None:
    """click turns both into an Abort raised `from None` at a question: Ctrl-C at the
    password prompt was told "aborted: ... (end of input)" (new-user review s48)."""
    import click

    from backupvault.cli import main as cli_main

    @click.command()
    def asks() -> None:
        click.prompt("Password", hide_input=True, err=True)

    def press(prompt: str) -> str:
        raise pressed

    monkeypatch.setattr(cli_main, "cli", asks)
    monkeypatch.setattr(click.termui, "hidden_prompt_func", press)
    with pytest.raises(SystemExit) as stopped:
        cli_main._run([], json_mode=False)
    assert stopped.value.code == 130
    assert told in capsys.readouterr().err
