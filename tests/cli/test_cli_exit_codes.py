"""Exit codes a script acts on, through the real command line: storage that does not
answer is "try again later" (5, as a vault that does not), a repository whose objects do
not authenticate or parse is "your data is damaged" (9), and neither is a wrong key (3)."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from console import backupvault as run  # tests/cli/console.py

UNAVAILABLE = 5
DAMAGED = 9


def error_of(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    error: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    return error


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    root.mkdir()
    (root / "notes.txt").write_text("meet at the station at 7\n")
    (root / "cat.jpg").write_bytes(bytes(range(256)) * 100)
    return root


def _backup(source: Path, storage: Path) -> str:
    done = run("--json", "backup", "create", str(source), "--storage", str(storage),
               "--recovery-code")  # fmt: skip
    assert done.returncode == 0, done.stderr
    code: str = json.loads(done.stdout)["recovery_code"]
    return code


def test_storage_that_does_not_answer_is_exit_5(tmp_path: Path, source: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"webdav+http://127.0.0.1:{port}/backups"
    for args in (
        ("backup", "list", "--storage", url),
        ("backup", "create", str(source), "--storage", url, "--recovery-code"),
        ("backup", "restore", "--to", str(tmp_path / "out"), "--storage", url,
         "--recovery-code", "-"),
    ):  # fmt: skip
        done = run("--json", *args, stdin="")
        assert done.returncode == UNAVAILABLE, done.stderr
        error = error_of(done)
        assert error["exit_code"] == UNAVAILABLE
        assert "ConnectError" in str(error["error"]) and "run the command again" in str(
            error["hint"]
        )
        plain = run(*args, stdin="")
        assert plain.returncode == UNAVAILABLE and "storage did not answer" in plain.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("reset", "error_name"), [(False, "RemoteProtocolError"), (True, "ReadError")]
)
def test_storage_that_drops_the_connection_is_exit_5(reset: bool, error_name: str) -> None:
    """Review s49: a WebDAV server killed mid-run gave exit 1 and the "credentials,
    permissions, free space" hint. A server that takes the connection and closes it
    unanswered (httpx's RemoteProtocolError) or resets it (ReadError) did not answer."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def drop() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return  # closed at the end of the test
                conn.recv(65536)  # the request, left unanswered
                if reset:  # an RST rather than a FIN
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

        threading.Thread(target=drop, daemon=True).start()
        url = f"webdav+http://127.0.0.1:{port}/backups"
        done = run("--json", "backup", "list", "--storage", url, "--recovery-code", "-", stdin="")
        server.shutdown(socket.SHUT_RDWR)
    assert done.returncode == UNAVAILABLE, done.stderr
    error = error_of(done)
    assert f": {error_name}" in str(error["error"])
    assert "the storage did not answer" in str(error["hint"])


def test_sftp_storage_that_does_not_answer_is_one_json_error_on_stderr() -> None:
    """Review s48: the sftp backend's own dependency (asyncssh) warned of DSA's deprecation
    in `cryptography` as it was imported: ten lines on stderr before the JSON error, under
    `--json` and `-q` too."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"sftp://127.0.0.1:{port}/backups"
    done = run("--json", "backup", "list", "--storage", url, "--recovery-code", "-", stdin="")
    assert done.returncode == UNAVAILABLE, done.stderr
    assert json.loads(done.stderr)["exit_code"] == UNAVAILABLE  # the whole of stderr
    quiet = run("-q", "backup", "list", "--storage", url, "--recovery-code", "-", stdin="")
    assert quiet.returncode == UNAVAILABLE and "Warning" not in quiet.stderr, quiet.stderr


def test_a_damaged_repository_is_exit_9_and_a_wrong_code_still_3(
    tmp_path: Path, source: Path
) -> None:
    storage = tmp_path / "storage"
    code = _backup(source, storage)
    pack = next((storage / "data").iterdir())
    data = bytearray(pack.read_bytes())
    data[3] ^= 1  # in the first chunk's blob
    pack.write_bytes(bytes(data))
    key = ("--storage", str(storage), "--recovery-code", code)

    out = tmp_path / "out"
    restored = run("--json", "backup", "restore", "--to", str(out), *key)
    assert restored.returncode == DAMAGED, restored.stderr
    assert error_of(restored)["exit_code"] == DAMAGED
    assert not out.exists()
    checked = run("--json", "backup", "check", "--read-data", *key)
    assert checked.returncode == DAMAGED, checked.stderr
    assert error_of(checked)["exit_code"] == DAMAGED
    assert run("backup", "check", "--read-data", *key).returncode == DAMAGED

    # A snapshot object cut short: damage too, not a storage failure.
    snapshot = next((storage / "snapshots").iterdir())
    snapshot.write_bytes(snapshot.read_bytes()[:40])
    listed = run("--json", "backup", "restore", "--to", str(out), *key)
    assert listed.returncode == DAMAGED, listed.stderr
    assert not out.exists()

    from backupvault.crypto import recovery

    wrong = recovery.encode(bytes(32))
    refused = run("--json", "backup", "list", "--storage", str(storage), "--recovery-code", wrong)
    assert refused.returncode == 3, refused.stderr


def test_help_names_the_exit_codes_a_script_acts_on() -> None:
    shown = " ".join(run("--help").stdout.split())  # as wrapped to any width
    assert "5 unavailable (the fleet, the relay or the storage did not answer" in shown
    assert "9 backup data damaged" in shown


def test_the_backup_commands_help_says_what_a_script_and_a_pack_id_need() -> None:
    """A new user reading `--help`: `backup` lists more than create, list and restore;
    `check` says how damage ends; `repair` says what a PACK_ID looks like."""
    group = " ".join(run("backup", "--help").stdout.split())
    assert "check, repair, forget and prune them" in group
    check = " ".join(run("backup", "check", "--help").stdout.split())
    assert "Exit 9 if anything is damaged or missing" in check
    repair = " ".join(run("backup", "repair", "--help").stdout.split())
    assert "32 hex digits each, as `backup check` names them" in repair
