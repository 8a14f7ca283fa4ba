"""What the CLI says in situations that need a vault or a failing fleet to reach for
real: its messages, checked on the functions that word them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from console import backupvault  # tests/cli/console.py
from tests.client.fake_fleet import FAST_KSF, FakeFleet

from backupvault.backup.errors import StorageUnavailable
from backupvault.cli.main import (
    Context,
    _confirm,
    _node_without,
    _warn_degraded,
    _with_storage_hint,
)
from backupvault.cli.output import Output
from backupvault.client.errors import Destroyed, FleetUnavailable, WrongPassword
from backupvault.errors import UsageError

RK = bytes(range(32))


def _context() -> Context:
    return Context(Output(json_mode=True), None, False)  # --json: warnings are collected


def test_a_degraded_registration_says_each_share_is_sealed_to_its_node() -> None:
    ctx = _context()
    _warn_degraded(ctx, ("node 4: vault node 4 could not be reached",))
    (warning,) = ctx.output.warnings
    assert "1 vault node did not take its share (node 4: vault node 4 could not" in warning
    assert "sealed to its own node" in warning
    assert "next contact with the fleet, no password asked" in warning
    assert "`backupvault vault finish` does it now" in warning
    # A share is no longer kept under the password's key, nor held until a recovery.
    assert "password's key" not in warning and "next recovery" not in warning


def test_vault_status_does_not_say_an_unreachable_node_holds_no_share() -> None:
    down = _node_without("node 4: vault node 4 could not be reached")
    assert down == "could not get this key's status from node 4: vault node 4 could not be reached"
    assert "not holding" not in down
    assert (
        _node_without("node 2: holds another manifest")
        == "not holding this key's share: node 2: holds another manifest"
    )


# ---- the vault's errors -------------------------------------------------------------------


def test_a_destroyed_key_says_which_backups_still_open() -> None:
    hint = str(Destroyed().hint)
    assert "backups made with the password can no longer be opened" in hint
    assert "those made with --recovery-code still open with their code" in hint
    assert "--new-key" in hint
    assert "open only with a recovery code" not in hint  # password backups have none


@pytest.fixture
def fleet() -> FakeFleet:
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    return fleet


def test_only_an_unanswered_evaluation_may_have_counted_as_a_guess(
    fleet: FakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    monkeypatch.setattr("backupvault.client.threshold.EVALUATE_PATIENCE_SECONDS", 0.0)
    for node in fleet.nodes[3:]:
        node.mode = "down"
    fleet.nodes[2].unavailable_for = 10**6  # holds its share, answers no evaluation
    with pytest.raises(FleetUnavailable) as evaluated:
        fleet.vault().recover("pw", ksf_floor=FAST_KSF)
    assert "partial evaluations" in evaluated.value.message
    assert "may have counted as a guess" in str(evaluated.value.hint)

    for node in fleet.nodes:
        node.mode = "down"
    with pytest.raises(FleetUnavailable) as status:  # no evaluate sent: no guess used
        fleet.vault().status()
    assert status.value.hint == "too few vault nodes answered; try again later"
    assert "guess" not in str(FleetUnavailable("the relay heard from no node").hint)


def test_what_storage_says_reaches_the_terminal_without_its_escape_sequences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A storage error holds the server's own words (an SFTP server's status message, an
    S3 error's): an escape sequence in them reached the terminal, which obeys it (here:
    move up a line and erase it, where a rollback warning stood; rich lets ESC through)."""
    from backupvault.backup.storage import Storage

    said = OSError("denied\x1b[1A\x1b[2K\x9b2J")
    error = Storage(str(tmp_path))._error("cannot read config", said)
    output = Output()
    output.warn("the last snapshot this device made is gone")
    output.error(error)
    shown = capsys.readouterr().err
    assert "\x1b" not in shown and "\x9b" not in shown
    assert "denied\\x1b[1A\\x1b[2K\\x9b2J" in shown
    assert "the last snapshot this device made is gone" in shown


def test_empty_stdin_for_a_password_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/cli.md: every error says on a second line what to do."""
    import io

    from backupvault.cli.main import _password
    from backupvault.errors import UsageError

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(UsageError) as err:
        _password(from_stdin=True)
    assert "stdin ended before a password line" in err.value.message
    assert err.value.hint is not None and "first line of stdin" in err.value.hint


def test_password_stdin_on_a_terminal_asks_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--password-stdin` typed on a terminal (no pipe) read a bare line: no prompt, and
    the password echoed on screen (user review s42). It is now asked as a prompt is."""
    import click

    from backupvault.cli.main import _password

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    asked: list[dict[str, object]] = []

    def prompt(text: str, **kwargs: object) -> str:
        asked.append({"text": text, **kwargs})
        return "a long enough passphrase"

    monkeypatch.setattr("sys.stdin", Terminal("typed but never read\n"))
    monkeypatch.setattr(click, "prompt", prompt)
    assert _password(from_stdin=True) == "a long enough passphrase"
    assert asked == [
        {"text": "Password", "hide_input": True, "confirmation_prompt": False, "err": True}
    ]


@pytest.mark.parametrize("keep", [(), ("--keep-last", "0")])
def test_forget_without_a_policy_says_what_to_do(tmp_path: Path, keep: tuple[str, ...]) -> None:
    done = backupvault("backup", "forget", "--storage", str(tmp_path), *keep)
    assert done.returncode == 2
    assert "say what to forget: snapshot ids, or what to keep" in done.stderr
    assert "hint: for instance `backup forget --keep-last 7`" in done.stderr


@pytest.mark.parametrize(
    ("args", "hinted"),
    [
        (["create", "{src}", "--password-stdin", "--recovery-code"], "leave --recovery-code out"),
        (["create", "{src}", "--new-key", "--recovery-code"], "leave --new-key out"),
        (
            ["restore", "--to", "{tmp}/r", "--password-stdin", "--recovery-code", "-"],
            "vault recovery-code",
        ),
        (
            ["forget", "--keep-last", "1", "--password-stdin", "--recovery-code", "-"],
            "vault recovery-code",
        ),
        (["restore", "--to", "{tmp}/r", "--include", "a.txt"], "leave --include out"),
    ],
)
def test_a_usage_error_says_what_to_do(tmp_path: Path, args: list[str], hinted: str) -> None:
    """Each said only what was wrong ("choose one of ..."): no hint line, `"hint": null`
    under --json, where docs/cli.md promises what to do on a second line."""
    import shutil

    from tests.backup import v1_fixture

    source, storage = tmp_path / "source", tmp_path / "s"
    source.mkdir()
    if "--include" in args:  # a single-blob backup of an earlier version
        storage.mkdir()
        shutil.copy(v1_fixture.OBJECT, storage / v1_fixture.OBJECT.name)
    else:
        made = backupvault("backup", "create", str(source), "--storage", str(storage),
                           "--recovery-code")  # fmt: skip
        assert made.returncode == 0, made.stderr
    filled = [a.format(src=source, tmp=tmp_path) for a in args]
    done = backupvault("--json", "backup", *filled, "--storage", str(storage), stdin="\n")
    assert done.returncode == 2, done.stderr
    error = json.loads(done.stderr)
    assert hinted in str(error["hint"]), error


def test_a_usage_hint_names_commands_only_where_there_are_some(tmp_path: Path) -> None:
    """`backup ls` with its argument missing pointed at "its commands and options": it
    has none of the first (review s39-C)."""
    leaf = backupvault("--json", "backup", "ls", "--storage", str(tmp_path))
    assert leaf.returncode == 2
    assert json.loads(leaf.stderr)["hint"] == "`backupvault backup ls --help` lists its options"
    group = backupvault("--json", "backup", "--bogus")
    assert group.returncode == 2
    assert "lists its commands and options" in json.loads(group.stderr)["hint"]


def test_operator_commands_missing_their_inputs_say_what_to_give(tmp_path: Path) -> None:
    """Review s39-C: `verify-deployment` with the pinned client.toml `local up` writes, and
    `fleet measure` with no option, said what was missing but not where it is."""
    from tests.cli.test_cli_newcomer import _client_toml

    pinned = _client_toml(tmp_path / "client.toml")
    pinned.chmod(0o600)
    cases = [
        (["--config", str(pinned), "verify-deployment"], "client-ota.toml beside client.toml"),
        (["verify-deployment"], "--operator-key deploy.pub --witness-key"),
        (["fleet", "measure"], "--record deployment.bin"),
    ]
    for args, hinted in cases:
        done = backupvault("--json", *args)
        assert done.returncode == 2, done.stderr
        assert hinted in str(json.loads(done.stderr)["hint"]), (args, done.stderr)


def test_a_question_without_a_terminal_says_to_pass_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # a pipe: never read as the answer
    with pytest.raises(UsageError) as raised:
        _confirm("Delete the key from the vault?", yes=False)
    assert "'Delete the key from the vault?'" in raised.value.message
    assert raised.value.hint is not None and "--yes" in raised.value.hint


@pytest.mark.parametrize("dash", ["\u2010", "\u2013", "\u00a0", "\u200b"])
def test_a_recovery_code_pasted_with_unicode_dashes_is_not_echoed(
    tmp_path: Path, dash: str
) -> None:
    """Such a code parses (crypto/recovery.py), so it is one: a usage error that names it
    as an extra argument must leave it out as it does a code with ASCII dashes. Its
    groups, four digits each between separators the message filter did not know, were
    each too short to look like a code, and all 68 digits went to stderr."""
    from backupvault.crypto import recovery

    code = recovery.encode(bytes(range(32))).replace("-", dash)
    done = backupvault(
        "backup", "list", "--storage", str(tmp_path / "s"), "--recovery-code", "-", code
    )
    assert done.returncode == 2, done.stderr
    shown = "".join(ch for ch in done.stdout + done.stderr if ch in "0123456789abcdef")
    assert bytes(range(32)).hex()[:16] not in shown, done.stderr
    assert "recovery code" in done.stderr


@pytest.mark.parametrize(
    ("error", "fields"),
    [
        (WrongPassword(9), {"guesses_remaining": 9}),
        (WrongPassword(1, up_to=3), {"guesses_remaining": 1, "guesses_remaining_up_to": 3}),
    ],
)
def test_a_wrong_password_under_json_gives_the_count_as_a_number(
    capfd: pytest.CaptureFixture[str], error: WrongPassword, fields: dict[str, int]
) -> None:
    """A script reads the guesses left from the error object, not from the sentence."""
    Output(json_mode=True).error(error)
    printed = json.loads(capfd.readouterr().err)
    assert {k: printed[k] for k in fields} == fields and printed["exit_code"] == 3
    assert ("guesses_remaining_up_to" in printed) == ("guesses_remaining_up_to" in fields)


def test_running_out_of_memory_is_said_as_such_not_as_a_bug(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Storage can grow an object to the largest the format allows; the machine running out
    of memory on it was told "unexpected MemoryError ... this is a bug" (storage review
    s42, F2)."""
    from backupvault.cli import main as cli_main

    def exhausted(dest: Path) -> None:
        raise MemoryError

    monkeypatch.setattr(cli_main, "_check_restore_to", exhausted)
    with pytest.raises(SystemExit) as done:
        cli_main.main(["backup", "restore", "--to", str(tmp_path / "out"), "--storage",
                       str(tmp_path), "--recovery-code", "-"])  # fmt: skip
    assert done.value.code == 1
    err = capfd.readouterr().err
    assert "ran out of memory" in err and "bug" not in err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["backup", "lst"], "no such command 'lst'; did you mean one of: 'list', 'ls'?"),
        (["bakup", "list"], "no such command 'bakup'; did you mean 'backup'?"),
        (["backup", "restore", "--storage", "/tmp", "--password-stdin"], "missing option '--to'"),
        (["backup", "list", "--storage"], "option '--storage' requires an argument"),
        (
            ["backup", "create", "/nonexistent-source", "--storage", "/tmp/x"],
            "invalid value for 'SOURCE': path '/nonexistent-source' does not exist",
        ),
        (  # the user's own text, in quotes, as it was typed
            ["backup", "create", "/x/Notes: Work", "--storage", "/tmp/x"],
            "invalid value for 'SOURCE': path '/x/Notes: Work' does not exist",
        ),
    ],
)
def test_click_s_own_errors_read_as_this_program_s(args: list[str], said: str) -> None:
    """click's messages came capitalised, with a full stop, and "Did you mean" in brackets
    for one command and not another, beside this program's "error: the two passwords
    differ" (new-user walkthrough s47); under --json too."""
    done = backupvault(*args)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == f"error: {said}", done.stderr
    as_json = backupvault("--json", *args)
    assert json.loads(as_json.stderr.strip().splitlines()[-1])["error"] == said


def test_a_storage_error_with_a_lock_left_behind_still_says_what_to_do() -> None:
    """Review s49: the note of the lock left behind took the hint's place, and nothing said
    to run the command again once storage answers."""
    err = StorageUnavailable("cannot store data/ab: ReadError: reset", hint="its lock L ...")
    err.details["lock_left"] = "L"
    hint = _with_storage_hint(err).hint
    assert hint is not None and hint.startswith("the storage did not answer")
    assert hint.endswith("run the command again; its lock L ...")
