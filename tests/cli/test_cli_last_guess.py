"""The last guess: before a recovery sends the password a wrong one would destroy the key
with, the command asks on the terminal, and without one (a script, a pipe) it refuses and
sends nothing (`_confirm_last_guess`, the SDK's `before_last_guess`)."""

from __future__ import annotations

import io
import os
import signal

import click
import pytest

from backupvault.cli.main import UsageError, _confirm_last_guess, _password_check
from backupvault.cli.output import Output


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


pytestmark = pytest.mark.usefixtures("ctrl_c_as_in_a_terminal")


def test_without_a_terminal_the_last_guess_is_refused_and_nothing_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("right password\n"))
    with pytest.raises(UsageError) as refused:
        _confirm_last_guess(False)
    assert refused.value.exit_code == 2
    assert "one guess left" in refused.value.message
    assert "no guess was used" in refused.value.message
    assert "terminal" in (refused.value.hint or "")


@pytest.mark.parametrize(("answer", "sent"), [("y\n", True), ("n\n", False), ("\n", False)])
def test_on_a_terminal_the_user_says_whether_to_send_it(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], answer: str, sent: bool
) -> None:
    monkeypatch.setattr("sys.stdin", _Terminal(answer))
    if sent:
        _confirm_last_guess(False)
    else:
        with pytest.raises(click.exceptions.Abort):
            _confirm_last_guess(False)
    assert "a wrong password now could destroy it for good" in capfd.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_at_the_question_stops_at_once_inside_the_password_check(
    monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    """The password check defers Ctrl-C and SIGTERM (the nodes may be counting); while the
    question waits for the user nothing is sent yet, so either stops the command there,
    as "interrupted" (SIGTERM killed it silently with 143: review s42-B, B8)."""
    monkeypatch.setattr("sys.stdin", _Terminal())

    def interrupted(*args: object, **kwargs: object) -> bool:
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal was deferred")

    monkeypatch.setattr(click, "confirm", interrupted)
    with _password_check(Output()):
        deferring = signal.getsignal(signum)
        with pytest.raises(KeyboardInterrupt):
            _confirm_last_guess(False)
        assert signal.getsignal(signum) is deferring  # put back for the check
