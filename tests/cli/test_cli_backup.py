"""The `backupvault backup` commands as a user runs them: real processes, exit codes,
--json output, and nothing written when something is wrong."""

from __future__ import annotations

import errno
import filecmp
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SINGLE_BLOB = Path(__file__).parents[1] / "backup" / "single_blob.py"


def _single_blob() -> ModuleType:
    """The test-only single-blob writer (tests/backup/single_blob.py), loaded by path."""
    if "single_blob" not in sys.modules:
        spec = importlib.util.spec_from_file_location("single_blob", SINGLE_BLOB)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["single_blob"] = module
        spec.loader.exec_module(module)
    return sys.modules["single_blob"]


single_blob = _single_blob()
create_backup = single_blob.create_backup
KEY_RECOVERY_CODE = single_blob.KEY_RECOVERY_CODE


def run(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupvault", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def single_blob_backup(source: Path, storage: Path) -> tuple[str, str]:
    """A backup in the format `backup create` wrote before repositories: (id, its code)."""
    from backupvault.crypto import recovery

    key = recovery.new_root_key()
    info = create_backup(source, str(storage), key, key_kind=KEY_RECOVERY_CODE)
    return info.backup_id, recovery.encode(key)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    (root / "photos").mkdir(parents=True)
    (root / "notes.txt").write_text("meet at the station at 7\n")
    (root / "photos" / "cat.jpg").write_bytes(bytes(range(256)) * 100)
    return root


def first_backup(source: Path, storage: Path) -> str:
    """Back up `source` into a new repository at `storage`; its recovery code."""
    done = run(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    code: str = json.loads(done.stdout)["recovery_code"]
    return code


def next_backup(source: Path, storage: Path, code: str) -> dict[str, Any]:
    """Back up `source` again into the repository at `storage` (its recovery code
    `code`); the JSON result."""
    again = run("--json", "backup", "create", str(source), "--storage", str(storage),
                "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert again.returncode == 0, again.stderr
    result: dict[str, Any] = json.loads(again.stdout)
    return result


def same_tree(a: Path, b: Path) -> bool:
    compared = filecmp.dircmp(a, b)
    if compared.left_only or compared.right_only or compared.diff_files or compared.funny_files:
        return False
    return all(same_tree(a / d, b / d) for d in compared.common_dirs)


def test_recovery_code_round_trip_with_json(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    created = run(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    assert created.returncode == 0, created.stderr
    result = json.loads(created.stdout)
    assert len(result["recovery_code"].split("-")) == 17
    assert "\x1b" not in created.stderr  # no progress bar when not a terminal

    listed = json.loads(
        run(
            "--json", "backup", "list", "--storage", str(storage), "--recovery-code", "-",
            stdin=result["recovery_code"] + "\n",
        ).stdout
    )  # fmt: skip
    assert [b["backup_id"] for b in listed["snapshots"]] == [result["backup_id"]]
    assert listed["snapshots"][0]["added_bytes"] == 25 + 25600

    dest = tmp_path / "restored"
    restored = run(
        "backup",
        "restore",
        "--storage",
        str(storage),
        "--to",
        str(dest),
        "--recovery-code",
        "-",
        stdin=result["recovery_code"] + "\n",
    )
    assert restored.returncode == 0, restored.stderr
    assert same_tree(source, dest)


def test_a_json_backup_loads_only_what_it_runs(tmp_path: Path, source: Path) -> None:
    """Start-up time counts in every backup: a `--json` backup (scripts, cron) imports no
    terminal, storage-URL or vault client code, nor prune/check/diff, the password list
    or sockets; and still prints its result."""
    created = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "backupvault", "--json", "backup", "create",
         str(source), "--storage", str(tmp_path / "storage"), "--recovery-code"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["recovery_code"]
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in created.stderr.splitlines()
        if line.startswith("import time:")
    }
    imported = {name.split(".")[0] for name in modules}
    assert "backupvault" in imported and "blake3" in imported  # the check sees imports
    assert not imported & {"rich", "fsspec", "httpx", "pygments", "socket"}
    assert "backupvault.cli.backup_repo" in modules  # its helpers, without what they run:
    assert not modules & {"backupvault.backup.repo.maintenance", "importlib.resources"}


def test_mistyped_and_wrong_codes_exit_3_and_write_nothing(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    created = run(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    code = json.loads(created.stdout)["recovery_code"]
    typo = ("1" if code[0] != "1" else "2") + code[1:]
    dest = tmp_path / "dest"

    mistyped = run(
        "backup", "restore", "--storage", str(storage), "--to", str(dest), "--recovery-code", typo
    )
    assert mistyped.returncode == 3
    assert "checksum" in mistyped.stderr
    assert not dest.exists()

    from backupvault.crypto import recovery

    other = recovery.encode(bytes(32))
    wrong = run(
        "--json",
        "backup",
        "restore",
        "--storage",
        str(storage),
        "--to",
        str(dest),
        "--recovery-code",
        other,
    )
    assert wrong.returncode == 3
    error = json.loads(wrong.stderr.strip().splitlines()[-1])
    assert error["exit_code"] == 3 and "does not open with this key" in error["error"]
    assert "--recovery-code" in error["hint"]
    assert not dest.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["device-state", "source", "storage"]  # nothing else


@pytest.mark.parametrize(
    "args",
    [
        ["backup", "create", "{src}", "--storage", "{tmp}/s"],  # no secret, not a terminal
        [
            "backup",
            "create",
            "{src}",
            "--storage",
            "{tmp}/s",
            "--password-stdin",
            "--recovery-code",
        ],
        ["backup", "create", "{src}", "--storage", "{tmp}/s", "--password-stdin"],  # no config
        ["backup", "restore", "--storage", "{tmp}/s"],  # no --to
        ["backup", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, source: Path, args: list[str]) -> None:
    filled = [a.format(src=source, tmp=tmp_path) for a in args]
    done = run(*filled, stdin="pw\n")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip()


def test_restore_refuses_a_non_empty_destination(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    done = run(
        "backup", "restore", "--storage", str(storage), "--to", str(dest), "--recovery-code", code
    )
    assert done.returncode == 2
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]


def test_empty_storage_lists_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = run("backup", "list", "--storage", str(tmp_path / "empty"))
    assert done.returncode == 0
    assert "no backups" in done.stdout


def test_missing_backup_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    from backupvault.crypto import recovery

    done = run(
        "backup",
        "restore",
        "--storage",
        str(tmp_path / "empty"),
        "--to",
        str(tmp_path / "d"),
        "--recovery-code",
        recovery.encode(bytes(32)),
    )
    assert done.returncode == 1
    assert "error:" in done.stderr and "Traceback" not in done.stderr


def _rename(storage: Path, backup_id: str, when: str) -> None:
    """What an attacker with storage access can do: give an object another time in its name."""
    (old,) = storage.glob(f"backup-*-{backup_id}.bvb")
    old.rename(storage / f"backup-{when}-{backup_id}.bvb")


def test_latest_comes_from_the_authenticated_header_not_the_name(tmp_path: Path) -> None:
    from backupvault.crypto import recovery

    root_key = recovery.new_root_key()
    storage = tmp_path / "storage"
    made = []
    for text in ("first", "second", "third"):
        (tmp_path / "note.txt").write_text(text)
        made.append(
            create_backup(tmp_path / "note.txt", str(storage), root_key, key_kind=KEY_RECOVERY_CODE)
        )
    code = recovery.encode(root_key)

    def restore_latest(dest: str) -> dict[str, str]:
        done = run(
            "--json", "backup", "restore", "--storage", str(storage), "--to",
            str(tmp_path / dest), "--recovery-code", "-", stdin=code + "\n",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    # The newest is renamed to look oldest, the oldest to look newest.
    _rename(storage, made[2].backup_id, "20010101T000000.000000Z")
    _rename(storage, made[0].backup_id, "20990101T000000.000000Z")
    listed = json.loads(run("--json", "backup", "list", "--storage", str(storage)).stdout)
    assert listed["backups"][-1]["backup_id"] == made[0].backup_id  # the names say so...
    result = restore_latest("a")  # ...but the headers say otherwise
    assert result["backup_id"] == made[2].backup_id
    assert result["created_at"] == made[2].created_at.isoformat()
    assert (tmp_path / "a" / "note.txt").read_text() == "third"

    # Objects swapped under each other's names entirely (ids included).
    names = {b.backup_id: next(storage.glob(f"*{b.backup_id}.bvb")) for b in made}
    newest, oldest = names[made[2].backup_id], names[made[0].backup_id]
    newest.rename(tmp_path / "swap")
    oldest.rename(newest)
    (tmp_path / "swap").rename(oldest)
    result = restore_latest("b")
    assert result["backup_id"] == made[2].backup_id
    assert (tmp_path / "b" / "note.txt").read_text() == "third"


def test_latest_is_the_latest_this_credential_opens(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    codes = []
    for marker in ("mine", "someone else's"):
        (source / "notes.txt").write_text(marker)
        codes.append(single_blob_backup(source, storage)[1])
    listed = run("backup", "list", "--storage", str(storage))
    assert "recovery code" in listed.stdout and "2 backups" in listed.stdout
    done = run(
        "backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "d"),
        "--recovery-code", "-", stdin=codes[0] + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"
    # A code that opens none of them: exit 3 and a clear message.
    from backupvault.crypto import recovery

    wrong = run(
        "backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "e"),
        "--recovery-code", recovery.encode(bytes(32)),
    )  # fmt: skip
    assert wrong.returncode == 3
    assert "none of the 2 backups" in wrong.stderr and not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("s3:/bucket/x", "malformed storage URL s3:/bucket/x: write s3://"),
        ("s4://bucket/x", "unknown storage URL scheme 's4'"),
        ("fiel:///backups", "unknown storage URL scheme 'fiel'"),
        ("webdav+htps://host/dav", "unknown storage URL scheme 'webdav+htps'"),
        ("file://otherhost/x", "must name an absolute path"),
    ],
)
def test_malformed_and_unknown_storage_urls_are_refused(
    tmp_path: Path, source: Path, url: str, match: str
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    for args in (
        ["backup", "create", str(source), "--storage", url, "--recovery-code"],
        ["backup", "list", "--storage", url],
    ):
        done = run(*args, cwd=work)
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert match in done.stderr
        assert "supported: a folder path, file:///path, s3://bucket/prefix" in done.stderr
    assert list(work.iterdir()) == []  # no folder named "s3:" or "fiel:"


def test_file_url_with_one_slash_is_a_file_url(tmp_path: Path, source: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    created = run(
        "backup", "create", str(source), "--storage", f"file:{tmp_path}/store", "--recovery-code",
        cwd=work,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "store" / "config").is_file()  # the repository
    assert list(work.iterdir()) == []


def test_list_on_a_missing_storage_says_not_found(tmp_path: Path) -> None:
    done = run("backup", "list", "--storage", str(tmp_path / "nowhere"))
    assert done.returncode == 2  # a wrong option, as a config file that does not exist
    assert f"storage not found: {tmp_path / 'nowhere'} does not exist" in done.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_storage_that_is_a_file_is_named_as_such(tmp_path: Path, source: Path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("not a storage folder\n")
    for args in (["backup", "list"], ["backup", "create", str(source), "--recovery-code"]):
        done = run(*args, "--storage", str(afile))
        assert done.returncode == 2, done.stderr
        assert f"storage {afile} is a file, not a folder" in done.stderr
    assert afile.read_text() == "not a storage folder\n"


def test_list_has_a_header_human_sizes_and_key_kinds(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    (source / "big.bin").write_bytes(os.urandom(300_000))
    created = run("backup", "create", str(source), "--storage", str(tmp_path / "repo"),
                  "--recovery-code")  # fmt: skip
    assert "saved: 3 files, 318.0 KiB (3 files read, 318.0 KiB new, " in created.stdout
    assert "KiB stored)" in created.stdout
    single_blob_backup(source, storage)
    single_blob_backup(source / "notes.txt", storage)
    lines = run("backup", "list", "--storage", str(storage)).stdout.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "(UTC)", "SIZE", "KEY"]
    assert lines[1].endswith("KiB  recovery code") and lines[2].endswith("B  recovery code")
    assert lines[3] == f"2 backups at {storage}"


def test_names_with_brackets_are_printed_as_they_are(tmp_path: Path) -> None:
    """Names are printed literally: "song [live].mp3" lost its "[live]" (rich markup),
    and a source folder "x[/y]" made every later `backup list` end in a traceback."""
    source = tmp_path / "x[" / "y]"
    source.mkdir(parents=True)
    (source / "song [live].mp3").write_text("a")
    storage = tmp_path / "repo"
    code = first_backup(source, storage)
    (source / "song [live].mp3").write_text("b")
    again = run("backup", "create", str(source), "--storage", str(storage), "--recovery-code",
                stdin=code)  # fmt: skip
    assert again.returncode == 0, again.stderr
    listed = run("backup", "list", "--storage", str(storage), "--recovery-code", "-", stdin=code)
    assert listed.returncode == 0, listed.stderr
    assert str(source) in listed.stdout and "Traceback" not in listed.stderr
    ids = [line.split()[0] for line in listed.stdout.splitlines()[1:3]]
    diff = run("backup", "diff", *ids, "--storage", str(storage), "--recovery-code", "-",
               stdin=code)  # fmt: skip
    assert "M  song [live].mp3" in diff.stdout.splitlines()
    missing = run("backup", "restore", "--storage", str(tmp_path / "no [/such]"),
                  "--to", str(tmp_path / "r"), "--recovery-code", "-", stdin=code)  # fmt: skip
    assert missing.returncode != 0 and "no [/such]" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_skipped_items_are_readable_text(tmp_path: Path, source: Path) -> None:
    os.mkfifo(source / "pipe")
    (source / "away").symlink_to("/etc/hostname")
    storage = tmp_path / "storage"
    created = run(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    assert created.returncode == 0, created.stderr
    result = json.loads(created.stdout)
    assert result["skipped"] == [
        {"path": "pipe", "reason": "not a regular file, folder or link", "unread": False}
    ]
    text = run(
        "backup", "create", str(source), "--storage", str(storage), "--recovery-code",
        stdin=result["recovery_code"] + "\n",
    )  # fmt: skip
    assert "skipped pipe: not a regular file, folder or link" in text.stderr
    assert "('" not in text.stderr
    restored = run(
        "backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "d"),
        "--recovery-code", "-", stdin=result["recovery_code"] + "\n",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert "skipped" not in restored.stderr  # the absolute link comes back as it was
    assert os.readlink(tmp_path / "d" / "away") == "/etc/hostname"


def test_a_killed_backup_leaves_a_partial_that_list_reports_and_prune_removes(
    tmp_path: Path,
) -> None:
    source = tmp_path / "big"
    source.mkdir()
    with open(source / "sparse.img", "wb") as sparse:
        sparse.truncate(40 << 30)  # 40 GiB of holes: reading it takes long, storing it little
    storage = tmp_path / "storage"
    storage.mkdir()
    # A single-blob backup (the format before repositories), as older versions wrote it.
    make = (
        "import sys\nsys.path.insert(0, sys.argv[3])\n"
        "from single_blob import KEY_RECOVERY_CODE, create_backup\n"
        "create_backup(sys.argv[1], sys.argv[2], bytes(32), key_kind=KEY_RECOVERY_CODE)\n"
    )
    victim = subprocess.Popen(
        [sys.executable, "-c", make, str(source), str(storage), str(SINGLE_BLOB.parent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list(storage.glob(".*.partial")):
            assert victim.poll() is None, "the backup ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    (partial,) = storage.glob(".*.partial")
    shutil.rmtree(source)
    source.mkdir()
    (source / "small.txt").write_text("small")

    listed = run("backup", "list", "--storage", str(storage))
    assert "no backups at" in listed.stdout
    assert "unfinished backup started " in listed.stdout and partial.name in listed.stdout
    data = json.loads(run("--json", "backup", "list", "--storage", str(storage)).stdout)
    assert [p["name"] for p in data["partials"]] == [partial.name]

    # prune removes it, but not while it may be another device's backup in progress.
    made = run("--json", "backup", "create", str(source), "--storage", str(storage),
               "--recovery-code")  # fmt: skip
    code = json.loads(made.stdout)["recovery_code"]
    prune = ("--json", "backup", "prune", "--storage", str(storage), "--recovery-code", "-")
    fresh = json.loads(run(*prune, stdin=code).stdout)
    assert fresh["temporaries_removed"] == 0 and partial.exists()
    two_days_ago = time.time() - 2 * 86400
    os.utime(partial, (two_days_ago, two_days_ago))
    later = json.loads(run(*prune, stdin=code).stdout)
    assert later["temporaries_removed"] == 1 and not partial.exists()
    data = json.loads(
        run("--json", "backup", "list", "--storage", str(storage), "--recovery-code", "-",
            stdin=code).stdout
    )  # fmt: skip
    assert data["partials"] == [] and data["backups"] == [] and len(data["snapshots"]) == 1


def _ctrl_c_works() -> None:
    """In the child: SIGINT as at a terminal. A test run started in the background (`make
    test &`, as a CI script may) ignores SIGINT, the child inherits that, and Python then
    installs no KeyboardInterrupt handler: the interrupt would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_first_backup_gives_its_new_code_so_it_can_go_on(tmp_path: Path) -> None:
    """The first `--recovery-code` backup makes the repository (its config holds the key
    wrapped under the new code) before it reads the source. Interrupted then, it used to
    print the code nowhere, leaving storage no one could ever use."""
    source = tmp_path / "big"
    source.mkdir()
    with open(source / "sparse.img", "wb") as sparse:
        sparse.truncate(40 << 30)  # 40 GiB of holes: reading it takes long, storing it little
    storage = tmp_path / "storage"
    args = ["--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"]
    first = subprocess.Popen(
        [sys.executable, "-m", "backupvault", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_works,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (storage / "config").exists():
            assert first.poll() is None, "the backup ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 130
    failed = json.loads(err.strip().splitlines()[-1])
    code = failed["recovery_code"]
    assert "run the backup again with --recovery-code" in failed["hint"]
    (source / "sparse.img").unlink()
    (source / "note.txt").write_text("kept")
    again = run("backup", "create", str(source), "--storage", str(storage), "--recovery-code",
                stdin=code)  # fmt: skip
    assert again.returncode == 0, again.stderr
    restored = run("backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "r"),
                   "--recovery-code", "-", stdin=code)  # fmt: skip
    assert restored.returncode == 0 and (tmp_path / "r" / "note.txt").read_text() == "kept"


def test_a_restore_ended_by_sigterm_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGTERM (a service manager stopping a job, `kill`) ended the process at once and
    left the restore's hidden staging folder next to --to, for good. It is cleaned up as
    for Ctrl-C now."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(200 << 20))
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    target = tmp_path / "restored"
    restore = subprocess.Popen(
        [sys.executable, "-m", "backupvault", "backup", "restore", "--storage", str(storage),
         "--to", str(target), "--recovery-code", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert restore.stdin is not None
    restore.stdin.write(code + "\n")
    restore.stdin.close()
    try:
        deadline = time.monotonic() + 60
        while not [p for p in tmp_path.iterdir() if p.name.endswith(".restoring")]:
            assert restore.poll() is None, "the restore ended before it could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        restore.send_signal(signal.SIGTERM)
        restore.wait(timeout=60)
    assert restore.stderr is not None
    err = restore.stderr.read()
    assert restore.returncode == 130 and "restore interrupted" in err, err
    assert not target.exists() and not [p for p in tmp_path.iterdir() if "restor" in p.name]


def test_an_interrupt_that_broke_a_lock_on_its_way_out_is_still_an_interruption() -> None:
    """The test above failed once in a fresh clone (session 44): the SIGTERM landed while
    the restore awaited a thread pool's result, broke the lock's re-acquire inside
    `Future.result`, and the lock's release on the way out raised RuntimeError ("cannot
    release un-acquired lock"), which the command reported as a bug (exit 1) instead of
    an interruption (130). Here the same chain of exceptions, made on purpose."""
    import threading

    from backupvault.cli.main import Interrupted, _on_interrupt

    lock = threading.RLock()  # as a Future's Condition holds
    interrupted = _on_interrupt("restore interrupted", hint="run it again")
    with pytest.raises(Interrupted, match="restore interrupted") as caught, interrupted:
        try:
            raise KeyboardInterrupt  # the signal, during the lock's re-acquire
        finally:
            lock.release()  # the `with` on its way out: the lock is not held
    assert caught.value.exit_code == 130
    bug = _on_interrupt("restore interrupted", hint="run it again")
    with pytest.raises(RuntimeError, match="un-acquired"), bug:  # a bug stays a bug
        lock.release()


def test_a_restore_the_system_refuses_to_write_is_exit_1_with_a_hint(
    tmp_path: Path, source: Path
) -> None:
    """A file size limit (`ulimit -f`) made a restore say "cannot restore the restored
    files: File too large" with exit 2, a usage error, naming nothing to do."""
    (source / "big.bin").write_bytes(os.urandom(3 << 20))
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    limit = 1 << 20

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "backupvault", "backup", "restore", "--storage", str(storage),
         "--to", str(tmp_path / "r"), "--recovery-code", "-"],
        input=code, capture_output=True, text=True, timeout=120, preexec_fn=limited,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "writing the restored files failed: File too large" in done.stderr
    assert "nothing was written into" in done.stderr and not (tmp_path / "r").exists()


def test_no_recovery_code_at_all_is_a_usage_error(tmp_path: Path, source: Path) -> None:
    """Empty stdin was read as a code of 0 digits: exit 3, "wrong code"."""
    storage = tmp_path / "storage"
    first_backup(source, storage)
    restore = ["backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "r")]
    create = ["backup", "create", str(source), "--storage", str(storage)]
    done = run(*restore, "--recovery-code", "-", stdin="")
    assert done.returncode == 2 and "no recovery code: stdin was empty" in done.stderr
    done = run(*create, "--recovery-code", stdin="")
    assert done.returncode == 2 and "needs its recovery code on stdin" in done.stderr


def test_a_source_that_is_a_link_names_what_it_points_to(tmp_path: Path, source: Path) -> None:
    link = tmp_path / "Documents"
    link.symlink_to(source)
    made = run("backup", "create", str(link), "--storage", str(tmp_path / "s"), "--recovery-code")
    assert made.returncode != 0 and not (tmp_path / "s").exists()  # nothing made
    assert f"is a symbolic link (to {source}): give what it points to, {source}" in made.stderr


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_new_recovery_code_stdout_cannot_take_is_given_on_stderr(
    tmp_path: Path, source: Path, json_flag: list[str]
) -> None:
    """`backup create --recovery-code > code.json` onto a full disk: the code could not be
    written, and the error was "unexpected OSError ... a bug in backupvault", without it:
    a repository (and, under --json, a snapshot) whose code nobody ever saw (review s61)."""
    storage = tmp_path / "storage"
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "backupvault", *json_flag, "backup", "create", str(source),
             "--storage", str(storage), "--recovery-code"],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "the result could not be written to stdout (No space left on device)" in done.stderr
    assert "a bug" not in done.stderr
    if json_flag:
        error = json.loads(done.stderr)
        code = error["recovery_code"]
        assert error["backup_id"] and error["new_repository"] is True  # the result's fields
    else:
        found = re.search(r"with the recovery code ([0-9a-f-]{84}) \(here", done.stderr)
        assert found is not None, done.stderr
        code = found.group(1)
    again = run("backup", "create", str(source), "--storage", str(storage), "--recovery-code",
                stdin=code + "\n")  # fmt: skip
    assert again.returncode == 0, again.stderr  # the code opens the repository made


def test_a_new_recovery_code_is_printed_before_the_backup_begins(
    tmp_path: Path, source: Path
) -> None:
    made = run("backup", "create", str(source), "--storage", str(tmp_path / "s"),
               "--recovery-code")  # fmt: skip
    lines = made.stdout.splitlines()
    assert lines[0].startswith("recovery code of the new repository (write it down now")
    assert re.fullmatch(r"  [0-9a-f]{4}(-[0-9a-f]{4}){16}", lines[1])
    assert lines[2].startswith("snapshot ") and len(lines) == 3  # shown once


def _on_small_disk(tmp_path: Path, size: str, command: list[str], stdin: str = "") -> str:
    """Run `command` with a fresh tmpfs of `size` at tmp_path/disk, in a private user and
    mount namespace (no privileges needed); returns stderr plus what the disk held after."""
    disk = tmp_path / "disk"
    disk.mkdir(exist_ok=True)
    script = (
        'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; shift 2; "$@"; rc=$?; '
        'echo "disk holds: [$(ls -A "$DISK")]" >&2; exit $rc'
    )
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", size,
         str(disk), *command],
        input=stdin, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "DISK": str(disk)},
    )  # fmt: skip
    assert done.returncode != 99, done.stderr
    return f"exit {done.returncode}\n{done.stderr}"


def test_restore_onto_a_disk_too_small_says_so_before_starting(
    tmp_path: Path, source: Path
) -> None:
    (source / "big.bin").write_bytes(os.urandom(3 << 20))
    storage = tmp_path / "storage"
    created = run(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    code = json.loads(created.stdout)["recovery_code"]
    result = _on_small_disk(
        tmp_path, "1m",
        [sys.executable, "-m", "backupvault", "backup", "restore", "--storage", str(storage),
         "--to", str(tmp_path / "disk" / "dest"), "--recovery-code", "-"],
        stdin=code + "\n",
    )  # fmt: skip
    assert result.startswith("exit 1\n"), result
    assert "no space left on the destination's disk (needs 3.0 MiB, has 1.0 MiB)" in result
    assert "disk holds: []" in result and "bug" not in result


def test_a_disk_that_fills_during_the_restore_is_a_clear_error(tmp_path: Path) -> None:
    """Another program fills the disk after the check: the write's ENOSPC is reported in
    the same words, through the same SafeDestination every restore uses."""
    program = (
        "import sys\n"
        "from backupvault.backup import Limits, SafeDestination\n"
        "with SafeDestination(sys.argv[1], Limits(10, 1 << 30)) as dest:\n"
        "    dest.file('big', 0o644, 0, 1 << 20, [bytes(1 << 16)] * 16)\n"
    )
    result = _on_small_disk(
        tmp_path, "256k", [sys.executable, "-c", program, str(tmp_path / "disk")]
    )
    assert result.startswith("exit 1\n"), result
    assert "NoSpace: no space left on the destination's disk (needs 1.0 GiB, has 256.0 KiB)" in (
        result
    )


def _many_files_backup(tmp_path: Path, source: Path) -> tuple[Path, str]:
    for i in range(60):
        (source / f"small{i}.txt").write_text(f"file {i}\n")
    storage = tmp_path / "storage"
    created = run(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    return storage, json.loads(created.stdout)["recovery_code"]


@pytest.mark.parametrize("checked", [True, False])
def test_restore_onto_a_disk_without_free_inodes_says_so(
    tmp_path: Path, source: Path, checked: bool
) -> None:
    """Review s49: a disk with bytes to spare but too few inodes gave "no space left (needs
    131.4 MiB, has 184.4 MiB)". The check before the restore counts inodes too; and when
    they run out during it (another program took them after the check: here, no check),
    the error names inodes, not bytes."""
    storage, code = _many_files_backup(tmp_path, source)
    check = "" if checked else "r.check_space = lambda *args: None; "
    program = (
        f"import backupvault.backup.repo.restore as r; {check}"
        "from backupvault.cli.main import main; main()"
    )
    result = _on_small_disk(
        tmp_path, "8m,nr_inodes=40",
        [sys.executable, "-c", program, "backup", "restore", "--storage", str(storage),
         "--to", str(tmp_path / "disk" / "dest"), "--recovery-code", "-"],
        stdin=code + "\n",
    )  # fmt: skip
    assert result.startswith("exit 1\n"), result
    assert "no free inodes left on the destination's disk" in result
    assert "free bytes are not the problem" in result and "needs" not in result
    assert ("has room for 0 more" in result) is not checked  # refused before writing
    assert "disk holds: []" in result and "bug" not in result


def test_second_backup_asks_for_the_code_and_stores_only_changes(
    tmp_path: Path, source: Path
) -> None:
    storage = tmp_path / "storage"
    first = json.loads(
        run(
            "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
        ).stdout
    )
    code = first["recovery_code"]
    (source / "notes.txt").write_text("meet at the station at 8\n")
    second = run(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code",
        stdin=code + "\n",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    info = json.loads(second.stdout)
    assert "recovery_code" not in info
    assert (info["parent_id"], info["files_read"], info["added_bytes"]) == (
        first["backup_id"],
        1,
        25,
    )
    dest = tmp_path / "notes"
    restored = run(
        "backup", "restore", first["backup_id"][:8], "--storage", str(storage), "--to", str(dest),
        "--include", "notes.txt", "--recovery-code", code,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    assert (dest / "notes.txt").read_text() == "meet at the station at 7\n"
    both = run(
        "backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "both"),
        "--include", "notes.txt", "--include", "photos/cat.jpg", "--recovery-code", code,
    )  # fmt: skip
    assert both.returncode == 0, both.stderr
    assert sorted(p.name for p in (tmp_path / "both").rglob("*")) == [
        "cat.jpg", "notes.txt", "photos"
    ]  # fmt: skip
    diff = run(
        "--json", "backup", "diff", first["backup_id"], info["backup_id"], "--storage",
        str(storage), "--recovery-code", code,
    )  # fmt: skip
    assert json.loads(diff.stdout)["changes"] == [
        {"change": "M", "path": "notes.txt", "size_before": 25, "size_after": 25}
    ]
    diff = run("backup", "diff", first["backup_id"], info["backup_id"], "--storage",
               str(storage), "--recovery-code", code)  # fmt: skip
    assert diff.stdout == (
        "M  notes.txt\n0 added (0 B), 0 removed (0 B), 1 modified (25 B to 25 B), 0 changed"
        " type, 0 changed metadata only\n"
    ), diff.stdout
    checked = run("--json", "backup", "check", "--read-data", "--storage", str(storage),
                  "--recovery-code", code)  # fmt: skip
    assert checked.returncode == 0 and json.loads(checked.stdout)["errors"] == []
    assert json.loads(checked.stdout)["damaged_files"] == []
    checked = run("backup", "check", "--read-data", "--storage", str(storage),
                  "--recovery-code", code)  # fmt: skip
    assert re.fullmatch(
        r"no errors: 2 snapshots, 2 packs, \d+ chunks, [\d.]+ (B|KiB) read\n", checked.stdout
    ), checked.stdout
    would = run("backup", "forget", "--keep-last", "1", "--dry-run", "--storage", str(storage),
                "--recovery-code", code)  # fmt: skip
    assert would.stdout.endswith("would forget 1 snapshot and keep 1\n"), would.stdout
    # Each with its date and source, so the policy's choice can be checked (user review s42).
    assert re.search(
        rf"^forget  {first['backup_id']}  \d{{4}}-\d\d-\d\d \d\d:\d\d UTC"
        rf"  {re.escape(str(source))}$",
        would.stdout,
        re.MULTILINE,
    ), would.stdout
    yearly = run("--json", "backup", "forget", "--keep-yearly", "1", "--dry-run", "--storage",
                 str(storage), "--recovery-code", code)  # fmt: skip
    assert json.loads(yearly.stdout)["kept"] == [info["backup_id"]], yearly.stderr
    forgot = run("--json", "backup", "forget", "--keep-last", "1", "--storage", str(storage),
                 "--recovery-code", code)  # fmt: skip
    assert json.loads(forgot.stdout)["removed"] == [first["backup_id"]]
    pruned = run("--json", "backup", "prune", "--storage", str(storage), "--recovery-code", code)
    assert pruned.returncode == 0 and json.loads(pruned.stdout)["bytes_freed"] >= 0


def test_an_unknown_snapshot_or_path_says_where_to_look(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    missing = run("backup", "restore", "ffff", "--storage", str(storage), "--to",
                  str(tmp_path / "a"), "--recovery-code", code)  # fmt: skip
    assert missing.returncode == 1
    assert "no snapshot with id ffff" in missing.stderr
    assert "hint: `backupvault backup list` shows the snapshots" in missing.stderr
    outside = run("backup", "restore", "--include", f"{source.name}/notes.txt", "--storage",
                  str(storage), "--to", str(tmp_path / "b"), "--recovery-code", code)  # fmt: skip
    assert outside.returncode == 1
    assert "is not in this snapshot" in outside.stderr
    assert "relative to the folder that was backed up" in outside.stderr
    # `--include "$DIR"` with DIR unset: refused, as an empty --path is (new-user review
    # s48: it restored the whole snapshot, exit 0).
    empty = run("backup", "restore", "--include", "", "--storage", str(storage), "--to",
                str(tmp_path / "c"), "--recovery-code", code)  # fmt: skip
    assert empty.returncode == 2 and "--include is empty" in empty.stderr
    assert not any((tmp_path / d).exists() for d in "abc")


def test_latest_names_the_latest_snapshot_as_in_restic(tmp_path: Path, source: Path) -> None:
    """`restic restore latest` and `restic diff ID latest` are what a restic user types:
    they were refused with "no snapshot with id latest"."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    (source / "notes.txt").write_text("meet at the bridge at 8\n")
    second = next_backup(source, storage, code)
    restored = run("--json", "backup", "restore", "latest", "--storage", str(storage),
                   "--to", str(tmp_path / "r"), "--recovery-code", code)  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["backup_id"] == second["backup_id"]
    assert (tmp_path / "r" / "notes.txt").read_text() == "meet at the bridge at 8\n"
    changed = run("--json", "backup", "diff", second["parent_id"], "LATEST", "--storage",
                  str(storage), "--recovery-code", code)  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert [(c["change"], c["path"]) for c in json.loads(changed.stdout)["changes"]] == [
        ("M", "notes.txt")
    ]
    same = run("--json", "backup", "diff", "latest", second["backup_id"][:8], "--storage",
               str(storage), "--recovery-code", code)  # fmt: skip
    assert same.returncode == 0 and json.loads(same.stdout)["changes"] == [], same.stderr


def test_ls_shows_what_a_snapshot_holds_before_a_restore(tmp_path: Path, source: Path) -> None:
    """There was no way to see what a snapshot holds (restic's `ls`) but to restore it:
    `--include` wanted paths the user could only guess."""
    (source / "latest-notes").symlink_to("notes.txt")
    (source / "photos" / "cat.jpg").chmod(0o640)
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    listed = run("backup", "ls", "latest", "--storage", str(storage), "--recovery-code", code)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("snapshot ") and f"of {source}" in lines[0]
    assert [line.split(maxsplit=4)[-1] for line in lines[1:]] == [
        "latest-notes -> notes.txt", "notes.txt", "photos", "photos/cat.jpg"
    ]  # fmt: skip
    assert lines[2].startswith("-rw") and lines[3].startswith("d")
    as_json = run("--json", "backup", "ls", "latest", "./photos/", "--storage", str(storage),
                  "--recovery-code", code)  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["source"] == str(source) and len(data["backup_id"]) == 32
    assert [(e["path"], e["type"], e["size"]) for e in data["entries"]] == [
        ("photos", "dir", 0), ("photos/cat.jpg", "file", 25600)
    ]  # fmt: skip
    assert data["entries"][1]["mode"] == 0o640 and data["entries"][1]["mtime"].endswith("+00:00")
    missing = run("--json", "backup", "ls", data["backup_id"][:8], "photos/dog.jpg",
                  "--storage", str(storage), "--recovery-code", code)  # fmt: skip
    assert missing.returncode == 1 and missing.stdout == "", missing.stderr
    error = json.loads(missing.stderr)
    assert error["error"] == "photos/dog.jpg is not in this snapshot"
    assert "backup ls" in error["hint"] and "--include" not in error["hint"]


def test_a_name_with_a_line_break_is_one_line_of_ls_and_diff(tmp_path: Path, source: Path) -> None:
    """A file name may hold a line break (and a tab): `ls` and `diff` print a line per
    path, so such a name made lines of its own, which could pass for other entries."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    (source / "a\n-rw-r--r--  0 2026-01-01 00:00:00  fake").write_text("x")
    second = next_backup(source, storage, code)
    listed = run("backup", "ls", "latest", "--storage", str(storage), "--recovery-code", code)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 1 + 4  # the snapshot's line, then 4 entries
    assert "a\\n-rw-r--r--  0 2026-01-01 00:00:00  fake" in listed.stdout
    changed = run("backup", "diff", second["parent_id"], "latest", "--storage", str(storage),
                  "--recovery-code", code)  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.splitlines()[:2] == [
        "U  .", "+  a\\n-rw-r--r--  0 2026-01-01 00:00:00  fake"
    ]  # fmt: skip


def test_a_skipped_name_with_a_line_break_is_one_line_of_its_warning(
    tmp_path: Path, source: Path
) -> None:
    """A skipped file's name is printed in its warning: a line break in it made a line of
    its own, which could pass for a message of ours (review s62)."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    os.mkfifo(source / "p\nerror: your backup is damaged")
    made = run("backup", "create", str(source), "--storage", str(storage), "--recovery-code",
               stdin=code)  # fmt: skip
    assert made.returncode == 0, made.stderr  # a fifo is left out, not unread: exit 0
    assert "skipped p\\nerror: your backup is damaged: not a regular file" in made.stderr
    assert not [line for line in made.stderr.splitlines() if line.startswith("error:")]


def test_a_name_that_is_not_utf8_is_shown_escaped_on_a_utf8_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file or folder name that is not UTF-8 (b"caf\\xe9", from a Latin-1 disk) is
    printed as an escape: on a UTF-8 locale, whose stdout refuses a lone surrogate (as
    PYTHONIOENCODING=utf-8 makes it here), `backup list` and `backup ls` ended in
    "unexpected UnicodeEncodeError", and a restore that had written every file exit 1."""
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")
    source = Path(os.fsdecode(bytes(tmp_path) + b"/docs-\xe9t\xe9"))
    source.mkdir()
    (source / os.fsdecode(b"caf\xe9.txt")).write_text("hello\n")
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    listed = run("backup", "list", "--storage", str(storage), "--recovery-code", "-", stdin=code)
    assert listed.returncode == 0, listed.stderr
    assert "docs-\\xe9t\\xe9" in listed.stdout
    shown = run("backup", "ls", "latest", "--storage", str(storage), "--recovery-code", "-",
                stdin=code)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1].endswith("  caf\\xe9.txt")
    to = tmp_path / "restored"
    restored = run("backup", "restore", "--storage", str(storage), "--to", str(to),
                   "--recovery-code", "-", stdin=code)  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert "of " + str(tmp_path) + "/docs-\\xe9t\\xe9 made" in restored.stdout
    assert (to / os.fsdecode(b"caf\xe9.txt")).read_text() == "hello\n"


def test_without_a_vault_config_the_recovery_code_is_named_before_a_password_is_read(
    tmp_path: Path, source: Path
) -> None:
    """No password can open anything without the vault's config: each command that needs
    the key says so at once (exit 2), names --recovery-code, and reads no password."""
    storage = tmp_path / "storage"
    first_backup(source, storage)
    to = tmp_path / "restored"
    for args in (
        ["backup", "list"],
        ["backup", "check"],
        ["backup", "restore", "--to", str(to)],
        ["backup", "restore", "--to", str(to), "--password-stdin"],
    ):
        done = run(*args, "--storage", str(storage), stdin="a password\n")
        assert done.returncode == 2, (args, done.stderr)
        assert "--recovery-code - to type the recovery code" in done.stderr
        assert "$BACKUPVAULT_CONFIG" in done.stderr
        assert "no password" not in done.stderr
    assert not to.exists()
    create = run("backup", "create", str(source), "--storage", str(tmp_path / "other"),
                 stdin="a password\na password\n")  # fmt: skip
    assert create.returncode == 2
    assert "give --recovery-code to back up with no vault" in create.stderr
    assert "$BACKUPVAULT_CONFIG" in create.stderr and "no password" not in create.stderr
    assert not (tmp_path / "other").exists()


def test_ctrl_c_says_what_a_backup_or_a_restore_left(
    tmp_path: Path,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 130 with what state the interrupted work left, not a bare "aborted" (the
    states themselves are tested in tests/backup/repo/test_repo_crashes.py)."""
    from backupvault.backup import repo as repo_package
    from backupvault.cli.main import main

    storage = tmp_path / "storage"
    code = first_backup(source, storage)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(repo_package, "create_snapshot", interrupted, raising=False)
    monkeypatch.setattr(repo_package, "restore_snapshot", interrupted, raising=False)
    runs = [
        ["backup", "create", str(source), "--storage", str(tmp_path / "new"), "--recovery-code"],
        ["backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "out"),
         "--recovery-code", code],
    ]  # fmt: skip
    messages = []
    for args in runs:
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 130
        messages.append(capsys.readouterr().err)
    assert "backup interrupted: no snapshot was saved" in messages[0]
    assert "reuses the data this one already stored" in messages[0]
    assert f"restore interrupted: nothing was written into {tmp_path / 'out'}" in messages[1]


def test_an_interrupt_between_the_config_stored_and_its_notice_still_gives_the_code(
    tmp_path: Path,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The subprocess test above interrupts once the config shows in storage, which can be
    before `on_new_repository` runs: the code was then printed nowhere (a CI run hit it).
    The config, opened with the new key, says that this device made the repository."""
    from backupvault.backup import repo as repo_package
    from backupvault.backup.repo.repository import Repository
    from backupvault.backup.storage import Storage
    from backupvault.cli.main import main
    from backupvault.crypto import recovery

    def stored_then_interrupted(
        source_dir: object, url: str, root_key: bytes, *args: object, **kwargs: object
    ) -> None:
        Repository.open(Storage(url), root_key, create=True)
        raise KeyboardInterrupt  # before on_new_repository is called

    monkeypatch.setattr(repo_package, "create_snapshot", stored_then_interrupted)
    storage = tmp_path / "storage"
    args = ["--json", "backup", "create", str(source), "--storage", str(storage)]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--recovery-code"])
    assert exited.value.code == 130
    failed = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    code = failed["recovery_code"]
    assert Repository.open(Storage(str(storage)), recovery.decode(code))


def test_a_backup_that_could_not_read_a_file_saves_the_rest_and_exits_8(
    tmp_path: Path,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As restic's exit code 3: a cron job learns that the snapshot lacks a file it could
    not read (faked, as the tests may run as root), under --json and -q alike; a file
    deleted during the backup is not missing from it, and a fifo is left out on purpose
    (both exit 0: test_skipped_items_are_readable_text)."""
    from backupvault.backup.repo import create
    from backupvault.cli.main import main

    real_open_seen = create._open_seen

    def open_seen(
        item: create.Item, folders: create._Folders, *, blocking: bool = True
    ) -> tuple[int, int]:
        if item.path.endswith("notes.txt"):
            raise PermissionError(13, "Permission denied")
        return real_open_seen(item, folders, blocking=blocking)

    monkeypatch.setattr(create, "_open_seen", open_seen)
    outputs = []
    for flag, storage in (("--json", "json"), ("-q", "quiet")):
        args = [flag, "backup", "create", str(source), "--storage", str(tmp_path / storage)]
        with pytest.raises(SystemExit) as exited:
            main([*args, "--recovery-code"])
        assert exited.value.code == 8
        outputs.append(capsys.readouterr())
    result = json.loads(outputs[0].out)
    assert result["skipped"] == [
        {"path": "notes.txt", "reason": "cannot read it (Permission denied)", "unread": True}
    ]
    assert result["files"] == 1 and result["backup_id"]
    assert result["files_read"] == 1  # notes.txt was tried, not read
    assert any("1 file or folder could not be read" in w for w in result["warnings"])
    quiet = outputs[1].err
    assert "warning: skipped notes.txt: cannot read it (Permission denied)" in quiet
    assert "this snapshot lacks what is in them (exit code 8)" in quiet
    code = result["recovery_code"]
    monkeypatch.undo()
    restored = run(
        "backup", "restore", "--storage", str(tmp_path / "json"), "--to", str(tmp_path / "out"),
        "--recovery-code", code,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert not (tmp_path / "out" / "notes.txt").exists()
    assert (tmp_path / "out" / "photos" / "cat.jpg").read_bytes() == bytes(range(256)) * 100


def test_check_exits_9_on_damage(tmp_path: Path, source: Path) -> None:
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    pack = next((storage / "data").iterdir())
    data = bytearray(pack.read_bytes())
    data[3] ^= 1
    pack.write_bytes(bytes(data))
    done = run("backup", "check", "--read-data", "--storage", str(storage), "--recovery-code", code)
    assert done.returncode == 9
    assert "damaged" in done.stderr and pack.name in done.stderr
    snapshot = next((storage / "snapshots").iterdir()).name
    checked = run("--json", "backup", "check", "--read-data", "--storage", str(storage),
                  "--recovery-code", code)  # fmt: skip
    assert checked.returncode == 9
    [named] = json.loads(checked.stdout)["damaged_files"]
    assert named["backup_id"] == snapshot and named["source"] == str(source)
    [lost] = named["paths"]  # the file whose chunk the flipped byte is in
    assert lost in ("notes.txt", "photos/cat.jpg")
    assert f"snapshot {snapshot} of {source} at " in done.stderr
    assert f" UTC: 1 file: {lost}\n" in done.stderr
    assert "`backup restore --include`" in done.stderr
    # What the hint says: the other file restores.
    other = "photos/cat.jpg" if lost == "notes.txt" else "notes.txt"
    rest = run("backup", "restore", "--include", other, "--storage", str(storage), "--to",
               str(tmp_path / "rest"), "--recovery-code", code)  # fmt: skip
    assert rest.returncode == 0, rest.stderr
    assert (tmp_path / "rest" / other).read_bytes() == (source / other).read_bytes()
    pack.unlink()  # without --read-data, the files of a missing pack are named
    done = run("--json", "backup", "check", "--storage", str(storage), "--recovery-code", code)
    assert done.returncode == 9
    [named] = json.loads(done.stdout)["damaged_files"]
    assert named["paths"] == ["notes.txt", "photos/cat.jpg"]
    assert json.loads(done.stderr)["exit_code"] == 9


def test_restore_json_names_the_damaged_files_as_check_does(tmp_path: Path, source: Path) -> None:
    """A script reads `damaged_files` of restore's error object as it reads check's: a
    list with one item for the snapshot, its paths a list (not one string)."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    key = ("--storage", str(storage), "--recovery-code", code)
    pack = next((storage / "data").iterdir())
    data = bytearray(pack.read_bytes())
    data[3] ^= 1  # in the first chunk's blob
    pack.write_bytes(bytes(data))
    for read_data in (("--read-data",), ()):
        checked = run("--json", "backup", "check", *read_data, *key)
        restored = run("--json", "backup", "restore", "--to", str(tmp_path / "out"), *key)
        assert restored.returncode == 9 and not (tmp_path / "out").exists()
        [named] = json.loads(restored.stderr)["damaged_files"]
        assert [named] == json.loads(checked.stdout)["damaged_files"]
        assert isinstance(named["paths"], list) and named["paths"]
        pack.unlink(missing_ok=True)  # then: in no pack, found before anything is read
    assert named["paths"] == ["notes.txt", "photos/cat.jpg"]


def test_repair_drops_a_damaged_chunk_and_the_next_backup_stores_it_again(
    tmp_path: Path, source: Path
) -> None:
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    key = ("--storage", str(storage), "--recovery-code", code)
    pack = next((storage / "data").iterdir())
    data = bytearray(pack.read_bytes())
    data[3] ^= 1  # in the first chunk's blob
    pack.write_bytes(bytes(data))
    checked = run("backup", "check", "--read-data", *key)
    assert checked.returncode == 9 and "run `backup repair`" in checked.stderr
    assert "move it out" not in checked.stderr

    dry = run("--json", "backup", "repair", "--dry-run", *key)
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] and planned["packs_damaged"] == [pack.name]
    assert len(planned["chunks_lost"]) == 1 and pack.read_bytes() == bytes(data)
    [named] = planned["damaged_files"]
    [lost] = named["paths"]
    assert any("backup create` stores them again" in w for w in planned["warnings"])

    done = run("backup", "repair", *key)
    assert done.returncode == 0, done.stderr
    assert f"pack {pack.name}: chunk " in done.stdout
    assert "1 damaged pack deleted, " in done.stdout and "1 chunk lost" in done.stdout
    assert f"1 file: {lost}\n" in done.stderr and "backup create` stores them" in done.stderr
    assert not pack.exists()
    again = run("--json", "backup", "repair", *key)
    assert again.returncode == 0 and json.loads(again.stdout)["packs_damaged"] == []
    assert "nothing to repair" in run("backup", "repair", *key).stdout
    unknown = run("backup", "repair", "0" * 32, *key)
    assert unknown.returncode == 2 and "no pack 000" in unknown.stderr
    # Until a new backup, check still names the lost file, and says what clears it: a
    # repair, which has nothing left to do, is not what it points to.
    left = run("--json", "backup", "check", *key)
    assert left.returncode == 9 and json.loads(left.stdout)["repairable"] is False
    assert "run `backup repair`" not in left.stderr
    assert "run `backup create` of each folder named" in left.stderr
    assert "stores them again" in left.stderr

    created = run("--json", "backup", "create", str(source), "--storage", str(storage),
                  "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["files_read"] == 1  # the file that lost its chunk
    restored = run("backup", "restore", "--to", str(tmp_path / "out"), *key)
    assert restored.returncode == 0, restored.stderr
    assert same_tree(source, tmp_path / "out")
    # The chunk stored again is the one the first snapshot names: it restores whole too.
    assert run("backup", "check", "--read-data", *key).returncode == 0


def test_prune_refuses_over_a_pack_storage_leaves_out_and_repair_indexes_it_when_back(
    tmp_path: Path, source: Path
) -> None:
    """A pack missing from storage's listing: prune stops with exit 9 and points to
    repair; a repair drops it; listed again, intact, the next repair indexes it again and
    says so (it said "no damage ... nothing to repair"), and the snapshot restores."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    key = ("--storage", str(storage), "--recovery-code", code)
    pack = next((storage / "data").iterdir())
    aside = tmp_path / "aside"
    pack.rename(aside)
    pruned = run("backup", "prune", *key)
    assert pruned.returncode == 9, pruned.stderr
    assert pack.name in pruned.stderr and "`backup repair`" in pruned.stderr
    dropped = run("backup", "repair", *key)
    assert dropped.returncode == 0 and "1 missing pack dropped from the index" in dropped.stdout
    aside.rename(pack)  # listed again, every byte intact
    repaired = run("backup", "repair", *key)
    assert repaired.returncode == 0, repaired.stderr
    assert "1 unindexed pack indexed" in repaired.stdout, repaired.stdout
    assert "nothing to repair" in run("backup", "repair", *key).stdout
    restored = run("backup", "restore", "--to", str(tmp_path / "out"), *key)
    assert restored.returncode == 0, restored.stderr
    assert same_tree(source, tmp_path / "out")


def test_check_points_to_repair_for_an_intact_pack_no_index_names_holding_chunks_in_use(
    tmp_path: Path, source: Path
) -> None:
    """A pack a repair dropped while storage did not list it, listed again intact: its
    chunks are not lost, and check says `backup repair` indexes it (it said they were in
    no pack, and pointed to `backup create` only, though repair indexes such a pack)."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    key = ("--storage", str(storage), "--recovery-code", code)
    pack = next((storage / "data").iterdir())
    aside = tmp_path / "aside"
    pack.rename(aside)
    assert run("backup", "repair", *key).returncode == 0
    aside.rename(pack)  # listed again, every byte intact

    checked = run("--json", "backup", "check", *key)
    assert checked.returncode == 9, checked.stderr
    found = json.loads(checked.stdout)
    assert found["repairable"] is True
    assert not any(pack.name in w for w in found["warnings"])  # an error now, said once
    assert f"pack {pack.name} is in no index and holds " in "\n".join(found["errors"])
    hint = json.loads(checked.stderr)["hint"]
    assert hint.startswith("run `backup repair`") and "in no pack" not in hint
    assert "indexes an intact pack no index names" in hint
    said = run("backup", "check", *key)
    assert said.returncode == 9 and "`backup repair` indexes it" in said.stderr
    # What check promised is what repair does: the files restore again.
    repaired = run("backup", "repair", *key)
    assert "1 unindexed pack indexed" in repaired.stdout and "nothing lost" in repaired.stdout
    assert run("backup", "check", "--read-data", *key).returncode == 0


def test_repair_names_a_malformed_pack_id_before_asking_for_the_key(
    tmp_path: Path, source: Path
) -> None:
    """A pack id that cannot be one (not 32 hex digits) is a usage error before the key
    is read: a password typed, or a recovery code given, is not spent on it."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    for key in (("--recovery-code", "-"), ("--password-stdin",)):
        refused = run("--json", "backup", "repair", "nosuchpack", "0" * 31,
                      "--storage", str(storage), *key, stdin="")  # fmt: skip
        assert refused.returncode == 2, refused.stderr
        error = json.loads(refused.stderr)["error"]
        assert "not a pack id: nosuchpack, " + "0" * 31 in error
        assert "32 hex digits" in json.loads(refused.stderr)["hint"]
    # A well-formed id storage does not hold may still be listed by the index (a missing
    # pack, which repair drops): only the key tells.
    unknown = run("backup", "repair", "0" * 32, "--storage", str(storage),
                  "--recovery-code", "-", stdin=code + "\n")  # fmt: skip
    assert unknown.returncode == 2 and "no pack 000" in unknown.stderr


def test_single_blob_backups_still_list_and_restore(tmp_path: Path, source: Path) -> None:
    """Backups made before the repository format, beside a repository in the same storage."""
    from backupvault.crypto import recovery

    storage = tmp_path / "storage"
    key = recovery.new_root_key()
    old = create_backup(source, str(storage), key)
    code = recovery.encode(key)
    (source / "notes.txt").write_text("changed after the old backup\n")
    storage2 = tmp_path / "storage2"
    old2 = create_backup(source, str(storage2), key)
    created = json.loads(
        run(
            "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
        ).stdout
    )
    listed = json.loads(
        run("--json", "backup", "list", "--storage", str(storage), "--recovery-code",
            created["recovery_code"]).stdout
    )  # fmt: skip
    assert [b["backup_id"] for b in listed["backups"]] == [old.backup_id]
    assert [s["backup_id"] for s in listed["snapshots"]] == [created["backup_id"]]
    dest = tmp_path / "old"
    restored = run(
        "backup", "restore", old.backup_id[:10], "--storage", str(storage), "--to", str(dest),
        "--recovery-code", code,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert (dest / "notes.txt").read_text() == "meet at the station at 7\n"
    only_old = run(
        "backup", "restore", "--storage", str(storage2), "--to", str(tmp_path / "latest-old"),
        "--recovery-code", code,
    )  # fmt: skip
    assert only_old.returncode == 0, only_old.stderr
    assert old2.backup_id in only_old.stdout


def test_cli_runs_keep_device_state_out_of_the_home_folder(
    tmp_path: Path, source: Path, device_state: Path
) -> None:
    """The suite's autouse fixture points $BACKUPVAULT_STATE_DIR at the test's folder, so a
    test's backups write nothing under $HOME; without it they would (the second run)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}
    env["HOME"] = str(home)
    storage = tmp_path / "storage"

    def cli(*args: str, stdin: str = "", environment: dict[str, str] = env) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-m", "backupvault", "--json", *args],
            input=stdin, capture_output=True, text=True, timeout=120, check=True, env=environment,
        )  # fmt: skip
        result: dict[str, object] = json.loads(done.stdout)
        return result

    code = str(
        cli("backup", "create", str(source), "--storage", str(storage), "--recovery-code")[
            "recovery_code"
        ]
    )
    cli("backup", "create", str(source), "--storage", str(storage), "--recovery-code", stdin=code)
    cli("backup", "list", "--storage", str(storage), "--recovery-code", "-", stdin=code)
    cli("backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "out"),
        "--recovery-code", "-", stdin=code)  # fmt: skip
    assert list(home.iterdir()) == []
    names = sorted(p.name for p in device_state.iterdir() if not p.name.endswith(".lock"))
    assert len(names) == 2 and names[0] == "places.json" and names[1].startswith("repo-")
    # and the lock file of each, which a backup updates it under
    locks = sorted(p.name for p in device_state.iterdir() if p.name.endswith(".lock"))
    assert locks == [f".{name}.lock" for name in names]

    unset = {k: v for k, v in env.items() if k != "BACKUPVAULT_STATE_DIR"}
    cli("backup", "create", str(source), "--storage", str(storage), "--recovery-code",
        stdin=code, environment=unset)  # fmt: skip
    assert len(list((home / ".local" / "state" / "backupvault").iterdir())) == 4  # with locks


def test_list_shows_the_key_kind_of_snapshots(tmp_path: Path, source: Path) -> None:
    """Text and JSON say which kind of key made each snapshot; one made before snapshots
    recorded it (its summary ends after the host name) lists as "unknown"."""
    from backupvault.backup.repo import create_snapshot, snapshots
    from backupvault.backup.repo.repository import host_name
    from backupvault.crypto import recovery

    storage = tmp_path / "storage"
    made = run("--json", "backup", "create", str(source), "--storage", str(storage),
               "--recovery-code")  # fmt: skip
    code = json.loads(made.stdout)["recovery_code"]
    new_encode = snapshots.Summary.encode
    old_encode = lambda summary: new_encode(summary)[:-1]  # noqa: E731 (the old writer)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(snapshots.Summary, "encode", old_encode)
        create_snapshot(source, str(storage), recovery.decode(code), force_read=True)
    listed = run("--json", "backup", "list", "--storage", str(storage), "--recovery-code", "-",
                 stdin=code)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    keys = [s["key"] for s in json.loads(listed.stdout)["snapshots"]]
    assert keys == ["recovery code", "unknown"]
    text = run("backup", "list", "--storage", str(storage), "--recovery-code", "-", stdin=code)
    lines = text.stdout.splitlines()
    assert not any(line.startswith("no backups") for line in lines)  # a repository is here
    header, first, second = lines[:3]
    assert header.split()[-3:] == ["KEY", "HOST", "SOURCE"]
    assert (
        f"  recovery code  {host_name()}" in first and f"  unknown        {host_name()}" in second
    )
    assert first.endswith(f"  {source}") and second.endswith(f"  {source}")


def test_prune_says_what_a_dry_run_would_do_in_its_own_words(tmp_path: Path, source: Path) -> None:
    """A dry run said "1 repacked into 0; would free 203 bytes" (it writes no pack, and
    frees less than that once the repacked chunks are stored again); sizes in bytes."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage) + "\n"
    (source / "photos" / "cat.jpg").write_bytes(os.urandom(300_000))
    key = ("--storage", str(storage), "--recovery-code", "-")
    assert (
        run("backup", "create", str(source), *key[:2], "--recovery-code", stdin=code).returncode
        == 0
    )
    assert run("backup", "forget", "--keep-last", "1", *key, stdin=code).returncode == 0
    dry = run("backup", "prune", "--dry-run", *key, stdin=code)
    assert dry.returncode == 0, dry.stderr
    assert re.fullmatch(
        r"\d+ packs?: \d+ to delete, \d+ to repack; would free up to \d+(\.\d)? [KM]?i?B\n",
        dry.stdout,
    ), dry.stdout
    done = run("backup", "prune", *key, stdin=code)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"\d+ packs?: \d+ deleted, \d+ repacked into \d+; freed \d+(\.\d)? [KM]?i?B\n",
        done.stdout,
    ), done.stdout
    assert "repacked into 0; would" not in dry.stdout + done.stdout


def test_prune_says_what_unused_data_it_leaves_and_max_unused_0_removes_it(
    tmp_path: Path, source: Path
) -> None:
    """A file forgotten to be rid of it stays while its pack is mostly in use: prune said
    only "0 deleted" (user review s43)."""
    storage = tmp_path / "storage"
    (source / "photos" / "cat.jpg").write_bytes(os.urandom(100_000))  # incompressible
    code = first_backup(source, storage) + "\n"
    (source / "notes.txt").unlink()  # 25 bytes beside the photo's 100,000: one pack
    key = ("--storage", str(storage), "--recovery-code", "-")
    again = run("backup", "create", str(source), *key[:2], "--recovery-code", stdin=code)
    assert again.returncode == 0, again.stderr
    assert run("backup", "forget", "--keep-last", "1", *key, stdin=code).returncode == 0
    kept = run("backup", "prune", *key, stdin=code)
    assert kept.returncode == 0, kept.stderr
    assert re.search(
        r"; freed 0 B; 1 unused chunk \(\d+ B\) stays in packs not rewritten \(--max-unused 0"
        r" removes it too\)\n$",
        kept.stdout,
    ), kept.stdout
    dry = run("--json", "backup", "prune", "--dry-run", "--max-unused", "0%", *key, stdin=code)
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["packs_repacked"] == 1 and planned["unused_kept_chunks"] == 0
    done = run("backup", "prune", "--max-unused", "0", *key, stdin=code)
    assert done.returncode == 0, done.stderr
    assert "1 repacked into 1" in done.stdout and "unused chunk" not in done.stdout
    for bad in ("101", "²"):  # '²'.isdigit(), but int('²') raised: a traceback (review s60)
        wrong = run("backup", "prune", "--max-unused", bad, *key, stdin=code)
        assert wrong.returncode == 2 and "not a per cent from 0 to 100" in wrong.stderr


def test_prune_says_it_keeps_packs_a_backup_left_unindexed_until_they_are_old(
    tmp_path: Path, source: Path
) -> None:
    """After a backup failed (a full disk), prune freed nothing and said nothing of the
    packs it left, which it keeps for 30 minutes (new-user review s48)."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage) + "\n"
    pack = next(p for p in (storage / "data").rglob("*") if p.is_file())
    left = pack.with_name("ab" * 16)  # a pack no index names, as a failed backup leaves
    left.write_bytes(pack.read_bytes())
    key = ("--storage", str(storage), "--recovery-code", "-")
    done = run("backup", "prune", *key, stdin=code)
    assert done.returncode == 0, done.stderr
    size = left.stat().st_size
    assert (
        f"; 1 pack ({size} B) that no index names yet is kept: under 30 minutes old, a running"
        " backup's or one that failed" in done.stdout
    ), done.stdout
    assert left.exists()
    as_json = json.loads(run("--json", "backup", "prune", *key, stdin=code).stdout)
    assert (as_json["young_unindexed_packs"], as_json["young_unindexed_bytes"]) == (1, size)
    assert as_json["undated_unindexed_packs"] == 0


def test_prune_does_not_call_a_pack_of_no_known_age_young(
    tmp_path: Path,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Storage that gives no time for a pack: prune keeps it whatever its age, and said it
    was "under 30 minutes old" and would go later (review of session 48's diff)."""
    import io

    from backupvault.backup.repo import backend
    from backupvault.cli import main as cli_main

    storage = tmp_path / "storage"
    code = first_backup(source, storage) + "\n"
    pack = next(p for p in (storage / "data").rglob("*") if p.is_file())
    pack.with_name("ab" * 16).write_bytes(pack.read_bytes())  # a pack no index names
    real = backend.Backend.ages
    monkeypatch.setattr(
        backend.Backend, "ages", lambda self, folder: dict.fromkeys(real(self, folder))
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(code))
    with pytest.raises(SystemExit) as done:
        cli_main.main(["backup", "prune", "--storage", str(storage), "--recovery-code", "-"])
    assert not done.value.code
    out = capsys.readouterr().out
    assert "under 30 minutes old" not in out
    assert "1 pack (" in out and "the storage gives no time for them" in out, out


def test_quiet_is_silent_on_success_but_keeps_the_code_and_warnings(
    tmp_path: Path, source: Path
) -> None:
    """`-q` as restic's `--quiet`, for cron: a command that acts prints nothing when it
    worked. The recovery code of a first backup (shown once), dry runs, and warnings (a
    rollback, a skipped file) still print."""
    storage = tmp_path / "storage"
    first = run("-q", "backup", "create", str(source), "--storage", str(storage), "--recovery-code")
    assert first.returncode == 0, first.stderr
    found = re.search(r"(?:[0-9a-f]{4}-){16}[0-9a-f]{4}", first.stdout)
    assert found, first.stdout
    assert "saved" not in first.stdout and first.stderr == ""  # only the code (docs/cli.md)
    code = found.group(0)
    key = ("--recovery-code", "-")

    def quiet(*args: str) -> subprocess.CompletedProcess[str]:
        done = run("-q", "backup", *args, "--storage", str(storage), *key, stdin=code + "\n")
        assert done.returncode == 0, done.stderr
        return done

    (source / "notes.txt").write_text("changed\n")
    silent = [
        run("-q", "backup", "create", str(source), "--storage", str(storage), "--recovery-code",
            stdin=code + "\n"),
        quiet("restore", "--to", str(tmp_path / "out")),
        quiet("forget", "--keep-last", "1"),
        quiet("prune"),
        quiet("check", "--read-data"),
    ]  # fmt: skip
    assert [(d.returncode, d.stdout, d.stderr) for d in silent] == [(0, "", "")] * 5
    assert same_tree(source, tmp_path / "out")
    assert "would free" in quiet("prune", "--dry-run").stdout
    assert "keep" in quiet("forget", "--keep-last", "1", "--dry-run").stdout

    # Storage hides this device's last snapshot; a fifo is skipped: both still said.
    (latest,) = os.listdir(storage / "snapshots")
    (storage / "snapshots" / latest).unlink()
    os.mkfifo(source / "pipe")
    warned = run(
        "-q", "backup", "create", str(source), "--storage", str(storage), "--recovery-code",
        stdin=code + "\n",
    )  # fmt: skip
    assert warned.returncode == 0 and warned.stdout == ""
    assert f"warning: the last snapshot this device made of {source}, {latest}" in warned.stderr
    assert "storage may be hiding it" in warned.stderr
    assert "warning: skipped pipe: not a regular file" in warned.stderr


def test_one_file_system_backs_up_a_tree_on_one_disk_whole(tmp_path: Path, source: Path) -> None:
    """-x leaves out only what is on another file system: a tree on one disk is all
    there (tests/backup/repo/test_repo_create.py walks one with a mount point)."""
    storage = tmp_path / "storage"
    made = run("--json", "backup", "create", str(source), "-x", "--storage", str(storage),
               "--recovery-code")  # fmt: skip
    assert made.returncode == 0, made.stderr
    code = json.loads(made.stdout)["recovery_code"]
    restored = run("backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "r"),
                   "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert same_tree(source, tmp_path / "r")


@pytest.mark.parametrize("given", ["./photos", "./photos/", "{source}/photos"])
def test_exclude_takes_a_path_as_include_does(tmp_path: Path, source: Path, given: str) -> None:
    """Review s49: `--exclude ./docs` and `--exclude /abs/SOURCE/docs` left out nothing,
    silently. Both name that one folder inside SOURCE (not every "photos" below it)."""
    (source / "notes" / "photos").mkdir(parents=True)
    (source / "notes" / "photos" / "kept.jpg").write_bytes(b"kept")
    created = run(
        "--json", "backup", "create", str(source), "--storage", str(tmp_path / "storage"),
        "--recovery-code", "--exclude", given.format(source=source),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["files"] == 2  # notes.txt, notes/photos/kept.jpg


@pytest.mark.parametrize("given", ["--exclude=~/source/photos", "~/source/photos/"])
def test_exclude_takes_a_path_from_the_home_folder_the_shell_did_not_expand(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """`--exclude=~/x` reaches the command with its `~` (a shell expands one only at the
    start of a word), as does one quoted in a cron line or a systemd unit: it matched no
    path and left out nothing, without a word (review s62), where `--to=~/x` and
    `--storage` take `~` as the home folder. A name starting with `~` that is no home
    folder's path (Word's `~$report.docx` lock files) stays a name pattern."""
    from backupvault.cli.main import _exclude_pattern

    monkeypatch.setenv("HOME", str(tmp_path))
    (source / "~$report.docx").write_text("lock")
    option = [given] if given.startswith("--") else ["--exclude", given]
    created = run(
        "--json", "backup", "create", str(source), "--storage", str(tmp_path / "storage"),
        "--recovery-code", *option, "--exclude", "~$*",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["files"] == 1  # notes.txt
    assert _exclude_pattern("~$*", source) == "~$*"
    assert _exclude_pattern("~", source) == "~"  # a folder named "~", as scripts make


def test_an_absolute_exclude_outside_the_source_is_refused(tmp_path: Path, source: Path) -> None:
    done = run(
        "--json", "backup", "create", str(source), "--storage", str(tmp_path / "storage"),
        "--recovery-code", "--exclude", "/photos",
    )  # fmt: skip
    assert done.returncode == 2 and not (tmp_path / "storage").exists()
    error = json.loads(done.stderr.splitlines()[-1])
    assert str(error["error"]).startswith(f"--exclude /photos is not inside {source}")
    assert "./photos" in str(error["hint"])


def test_exclude_is_repeatable_on_the_command_line(tmp_path: Path, source: Path) -> None:
    (source / "photos" / "thumbs").mkdir()
    (source / "photos" / "thumbs" / "t.jpg").write_bytes(b"small")
    (source / "notes.txt.swp").write_text("editor swap")
    storage = tmp_path / "storage"
    created = run(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code",
        "--exclude", "thumbs", "--exclude", "*.swp",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    result = json.loads(created.stdout)
    assert result["files"] == 2 and result["skipped"] == []
    restored = run(
        "backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "out"),
        "--recovery-code", result["recovery_code"],
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")) == [
        "notes.txt", "photos", "photos/cat.jpg"
    ]  # fmt: skip


def test_a_storage_folder_inside_the_source_is_left_out(tmp_path: Path, source: Path) -> None:
    """`backup create SRC --storage SRC/.bk` backed the repository up into itself, growing
    at every backup; now it is left out, with a note. A folder of the same name deeper in
    SRC is not the storage, and is backed up; the storage as SOURCE itself is refused."""
    (source / "photos" / ".bk").mkdir()
    (source / "photos" / ".bk" / "kept.txt").write_text("not the storage\n")
    storage = source / ".bk"
    first = run("backup", "create", str(source), "--storage", str(storage), "--recovery-code")
    assert first.returncode == 0, first.stderr
    assert f"leaving the storage folder .bk out: it is inside {source}" in first.stderr
    code = first.stdout.splitlines()[1].strip()
    again = run(
        "--json", "backup", "create", str(source), "--storage", f"file://{storage}",
        "--recovery-code", stdin=code + "\n",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["files"] == 3 and result["files_read"] == 0  # nothing of the repository
    restored = run(
        "backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "out"),
        "--recovery-code", code,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    shutil.rmtree(storage)
    assert same_tree(source, tmp_path / "out")  # photos/.bk included
    itself = run("backup", "create", str(source), "--storage", f"{source}/", "--recovery-code")
    assert itself.returncode == 2
    assert f"is the backup source {source} itself" in itself.stderr
    assert not (source / "config").exists()  # no repository was made in it


def _digits_of(code: str) -> str:
    return code.replace("-", "").lower()


def test_a_recovery_code_given_where_none_is_taken_is_never_echoed(
    tmp_path: Path, source: Path
) -> None:
    """The code is the key itself: a usage error that named it (`backup create`'s
    --recovery-code is a flag, so a code after it was "unexpected extra argument (<the
    code>)") put it on stderr, and from there into cron mail, CI and journal logs."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    spaced = code.replace("-", " ").split()
    attempts = [
        ("backup", "create", str(source), "--storage", str(storage), "--recovery-code", code),
        ("--json", "backup", "create", str(source), "--storage", str(storage),
         "--recovery-code", *spaced),
        ("backup", "list", "--storage", str(storage), "--recovery-code", "-", code.upper()),
        ("--json", "backup", "restore", code, "--storage", str(storage),
         "--to", str(tmp_path / "r"), "--recovery-code", "-"),
    ]  # fmt: skip
    for args in attempts:
        done = run(*args, stdin=code + "\n")
        assert done.returncode == 2, done.stderr
        said = re.sub(r"[^0-9a-f]", "", (done.stdout + done.stderr).lower())
        assert _digits_of(code)[:16] not in said, args
        assert "recovery code" in done.stderr and "stdin" in done.stderr, done.stderr
    assert not (tmp_path / "r").exists()
    assert len(list((storage / "snapshots").iterdir())) == 1
    ids = ["0123456789abcdef" * 2, "fedcba9876543210" * 2]  # snapshot ids are shown
    extra = run("backup", "diff", "a", "b", *ids, "--storage", str(storage))
    assert extra.returncode == 2 and " ".join(ids) in extra.stderr, extra.stderr


def test_a_mistyped_recovery_code_given_where_none_is_taken_is_never_echoed(
    tmp_path: Path, source: Path
) -> None:
    """click's "unexpected extra argument (<the code>)" for a code with a typo (an o for a
    0): the typo splits its digits into two runs, each too short to look like a code to
    the message's filter, and 63 of the key's 64 digits went to stderr. The arguments
    show the code whole, typed as one or as its seventeen groups."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    at = len(code) // 2 + (code[len(code) // 2] == "-")  # each side too short to hide
    mistyped = code[:at] + "o" + code[at + 1 :]
    digits = _digits_of(mistyped)
    create = ("backup", "create", str(source), "--storage", str(storage), "--recovery-code")
    for args in [(*create, mistyped), ("--json", *create, *mistyped.split("-"))]:
        done = run(*args, stdin=code + "\n")
        assert done.returncode == 2, done.stderr
        said = re.sub(r"[^0-9a-fo]", "", (done.stdout + done.stderr).lower())
        assert digits[:12] not in said and digits[-12:] not in said, done.stderr
        assert "recovery code" in done.stderr, done.stderr
    assert len(list((storage / "snapshots").iterdir())) == 1


def test_a_mistyped_recovery_code_given_as_backup_id_is_never_echoed(
    tmp_path: Path, source: Path
) -> None:
    """A code with a typo (an o for a 0) given as BACKUP_ID was no code to the check
    before the lookup, and "no snapshot with id <the code>" put 63 of the key's 64
    digits on stderr."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    mistyped = code.replace("0", "o", 1) if "0" in code else code[:5] + "o" + code[6:]
    digits = _digits_of(mistyped)
    done = run("backup", "restore", mistyped, "--storage", str(storage),
               "--to", str(tmp_path / "r"), "--recovery-code", "-", stdin=code + "\n")  # fmt: skip
    assert done.returncode == 2, done.stderr
    said = re.sub(r"[^0-9a-fo]", "", (done.stdout + done.stderr).lower())
    assert digits[:16] not in said and digits[-16:] not in said, done.stderr
    assert "recovery code" in done.stderr, done.stderr
    assert not (tmp_path / "r").exists()


def test_a_restore_of_latest_from_rolled_back_storage_warns(tmp_path: Path, source: Path) -> None:
    """Storage that hides the newest snapshot (replays an older listing) makes "latest"
    an older one. The backup after it warned; a restore, the moment it matters, restored
    the older files without a word. The device that made the newer one says so now."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    (source / "notes.txt").write_text("moved to 8\n")
    again = run("--json", "backup", "create", str(source), "--storage", str(storage),
                "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert again.returncode == 0, again.stderr
    newest = json.loads(again.stdout)["backup_id"]
    (storage / "snapshots" / newest).unlink()  # the rollback

    out = tmp_path / "out"
    done = run("--json", "backup", "restore", "--to", str(out), "--storage", str(storage),
               "--recovery-code", "-", stdin=code + "\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    warnings = json.loads(done.stdout)["warnings"]
    assert any(newest in w and "a rollback" in w for w in warnings), warnings
    assert (out / "notes.txt").read_text() == "meet at the station at 7\n"
    # A snapshot named by its id is what was asked for: no warning then.
    older = json.loads(done.stdout)["backup_id"]
    named = run("--json", "backup", "restore", older, "--to", str(tmp_path / "o2"),
                "--storage", str(storage), "--recovery-code", "-", stdin=code + "\n")  # fmt: skip
    assert named.returncode == 0 and "warnings" not in json.loads(named.stdout)


def test_a_snapshot_removed_by_hand_is_forgotten_by_its_whole_id_and_prune_goes_on(
    tmp_path: Path, source: Path
) -> None:
    """Prune refuses while a snapshot's parent, or this device's last snapshot, is gone
    with no forget record, and its hint says `backup forget ID` with the whole id records
    it: the CLI refused that id before asking for the key, as no listing shows it."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    (source / "notes.txt").write_text("meet at the bridge at 8\n")
    second = next_backup(source, storage, code)["backup_id"]
    key = ("--storage", str(storage), "--recovery-code", "-")
    [first] = [p.name for p in (storage / "snapshots").iterdir() if p.name != second]
    for gone in (first, second):  # a parent, then the device's last snapshot
        (storage / "snapshots" / gone).unlink()  # by hand
        refused = run("backup", "prune", *key, stdin=code + "\n")
        assert refused.returncode == 1 and gone in refused.stderr, refused.stderr
        assert "`backup forget ID` with its whole id" in refused.stderr
        forgot = run("--json", "backup", "forget", gone, *key, stdin=code + "\n")
        assert forgot.returncode == 0, forgot.stderr
        assert json.loads(forgot.stdout)["removed"] == [gone]
        pruned = run("backup", "prune", *key, stdin=code + "\n")
        assert pruned.returncode == 0, pruned.stderr
    unknown = run("backup", "forget", "0" * 32, *key, stdin=code + "\n")
    assert unknown.returncode == 1 and "no snapshot with id 000" in unknown.stderr


def test_forget_by_id_removes_exactly_those_snapshots(tmp_path: Path, source: Path) -> None:
    """`backup forget ID...` (restic's `forget ID`): ids or unique prefixes, every one
    resolved before anything is removed; not with a policy, nor `latest`. Forgetting the
    last snapshot this device made, then pruning, gives no rollback warning at the next
    backup: the device's state names the newest left."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    (source / "notes.txt").write_text("meet at the bridge at 8\n")
    second = next_backup(source, storage, code)["backup_id"]
    (source / "notes.txt").write_text("meet at the tower at 9\n")
    third = next_backup(source, storage, code)["backup_id"]
    key = ("--storage", str(storage), "--recovery-code", "-")

    def listed() -> list[str]:
        done = run("--json", "backup", "list", *key, stdin=code + "\n")
        assert done.returncode == 0, done.stderr
        return [s["backup_id"] for s in json.loads(done.stdout)["snapshots"]]

    first = listed()[0]
    for args, status, said in [
        (("--keep-last", "1", first), 2, "not both"),
        (("latest",), 2, "not `latest`"),
        ((second, "ffff"), 1, "no snapshot with id ffff"),
    ]:
        refused = run("backup", "forget", *args, *key, stdin=code + "\n")
        assert refused.returncode == status and said in refused.stderr, refused.stderr
    assert listed() == [first, second, third]
    would = run("--json", "backup", "forget", first[:8], "--dry-run", *key, stdin=code + "\n")
    assert json.loads(would.stdout) == {
        "kept": [second, third], "removed": [first], "dry_run": True
    }  # fmt: skip
    assert listed() == [first, second, third]
    forgot = run("--json", "backup", "forget", first[:8], third, *key, stdin=code + "\n")
    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout) == {
        "kept": [second],
        "removed": [first, third],
        "dry_run": False,
    }
    assert listed() == [second]
    pruned = run("--json", "backup", "prune", *key, stdin=code + "\n")
    assert pruned.returncode == 0, pruned.stderr
    # Both records stay: once one was gone, storage could bring its snapshot back unseen.
    assert sorted(p.name for p in (storage / "forgotten").iterdir()) == sorted([first, third])
    assert "warnings" not in next_backup(source, storage, code)


def test_forget_keeps_and_names_a_snapshot_dated_ahead(tmp_path: Path, source: Path) -> None:
    """A snapshot dated ten years ahead (its device's clock was): `forget --keep-last 1`
    keeps it and the newest real one, and says why it kept it."""
    from datetime import UTC, datetime, timedelta

    from backupvault.backup.repo import Repository, snapshots
    from backupvault.backup.storage import Storage
    from backupvault.crypto import recovery

    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    newest = next_backup(source, storage, code)["backup_id"]
    repo = Repository.open(Storage(str(storage)), recovery.decode(code))
    made = repo.read_snapshot(newest)
    assert made.entries is not None
    future_us = int((datetime.now(UTC) + timedelta(days=3650)).timestamp() * 1e6)
    planted, data = snapshots.seal(
        repo.root_key, repo.keys.repo_id, None, made.summary, made.entries, future_us
    )
    (storage / "snapshots" / planted.hex()).write_bytes(data)
    forgot = run("--json", "backup", "forget", "--keep-last", "1", "--storage", str(storage),
                 "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert forgot.returncode == 0, forgot.stderr
    result = json.loads(forgot.stdout)
    assert set(result["kept"]) == {newest, planted.hex()}
    (warning,) = result["warnings"]
    assert warning.startswith(f"snapshot {planted.hex()} is dated more than a day ahead")


def test_a_folder_whose_config_was_lost_gets_no_new_repository(
    tmp_path: Path, source: Path
) -> None:
    """Its snapshots and packs are there, `config` is not: a backup with a new recovery
    code made a new repository over them (and printed its code); `list` said no backup
    was ever made there. Each now names the lost config (exit 9) and writes nothing."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    (storage / "config").unlink()
    made = run("backup", "create", str(source), "--storage", str(storage), "--recovery-code")
    assert made.returncode == 9, made.stderr
    assert "holds a repository's snapshots and index and data but no config" in made.stderr
    assert "recovery code" not in made.stdout and not (storage / "config").exists()
    listed = run("backup", "list", "--storage", str(storage), "--recovery-code", stdin=code)
    assert listed.returncode == 9 and "but no config" in listed.stderr, listed.stderr
    pruned = run("backup", "prune", "--storage", str(storage), "--recovery-code", stdin=code)
    assert pruned.returncode == 9 and "but no config" in pruned.stderr, pruned.stderr


def test_restore_to_a_mount_point_is_refused_before_the_key_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As any --to a restore would refuse: checked before a password spends a guess. A
    real mount needs root; `ismount` stands for one (the restore's own check is tested
    in tests/backup/repo/test_repo_roundtrip.py)."""
    from backupvault.backup.errors import DestinationError
    from backupvault.cli.main import _check_restore_to

    usb = tmp_path / "usb"
    usb.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(usb) or real_ismount(p))
    with pytest.raises(DestinationError, match="mounted file system") as refused:
        _check_restore_to(usb)
    assert (
        refused.value.hint == f"restore into a new folder on it, for instance --to {usb}/restored"
    )
    _check_restore_to(usb / "restored")  # a new folder on it is fine


def test_a_restore_to_a_mount_that_no_longer_answers_says_so_not_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--to on a dead sshfs or NFS mount (every call there: "Transport endpoint is not
    connected") was "unexpected OSError ... this is a bug in backupvault" (review s62).
    It is named as a destination this restore cannot use, before the key is asked for
    (its lookups fail as a dead mount's do: a real one needs root)."""
    from backupvault.cli.main import main

    dead = tmp_path / "nas"
    dead.mkdir()
    for name in ("stat", "lstat"):
        real = getattr(os, name)

        def dead_there(path: Any, *args: Any, real: Any = real, **kwargs: Any) -> os.stat_result:
            if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(str(dead)):
                raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN), os.fspath(path))
            result: os.stat_result = real(path, *args, **kwargs)
            return result

        monkeypatch.setattr(os, name, dead_there)
    with pytest.raises(SystemExit) as exited:
        main(["--json", "backup", "restore", "--storage", str(tmp_path / "storage"),
              "--to", str(dead / "out"), "--recovery-code", "-"])  # fmt: skip
    assert exited.value.code == 2
    error = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert error["error"] == (
        f"cannot use the restore destination {dead / 'out'}: Transport endpoint is not connected"
    )
    assert "mount it again" in error["hint"]


def test_a_backup_says_when_it_makes_a_new_repository(tmp_path: Path, source: Path) -> None:
    """A typo in --storage starts a new repository: the first backup there says so (and
    `new_repository` under --json), so it is not taken for yesterday's (user review s42)."""
    storage = tmp_path / "storage"
    made = run("backup", "create", str(source), "--storage", str(storage), "--recovery-code")
    assert made.returncode == 0, made.stderr
    assert f"no repository was at {storage}: a new one is made there" in made.stderr
    code = made.stdout.split("recovery code of the new repository")[1].splitlines()[1].strip()
    again = run("backup", "create", str(source), "--storage", str(storage), "--recovery-code",
                stdin=code + "\n")  # fmt: skip
    assert again.returncode == 0 and "new one is made" not in again.stderr, again.stderr
    assert next_backup(source, storage, code)["new_repository"] is False
    other = run("--json", "backup", "create", str(source), "--storage", str(tmp_path / "typo"),
                "--recovery-code")  # fmt: skip
    assert json.loads(other.stdout)["new_repository"] is True


def test_a_restore_of_only_a_link_counts_it(tmp_path: Path, source: Path) -> None:
    """`restore --include` of a link said "(0 files, 0 B)" (user review s42)."""
    (source / "to-notes").symlink_to("notes.txt")
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    done = run("backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "out"),
               "--include", "to-notes", "--recovery-code", "-", stdin=code + "\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "(0 files, 1 link, 0 B)" in done.stdout, done.stdout
    assert (tmp_path / "out" / "to-notes").is_symlink()


def test_a_restore_names_the_folder_the_snapshot_is_of(tmp_path: Path, source: Path) -> None:
    """With several folders backed up to one storage, the latest is of whichever was
    backed up last: the restore says which (user review s42)."""
    storage = tmp_path / "storage"
    code = first_backup(source, storage)
    done = run("backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "out"),
               "--recovery-code", "-", stdin=code + "\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "restored backup " in done.stdout and f" of {source} made " in done.stdout
    as_json = run("--json", "backup", "restore", "--storage", str(storage), "--to",
                  str(tmp_path / "out2"), "--recovery-code", "-", stdin=code + "\n")  # fmt: skip
    assert json.loads(as_json.stdout)["source"] == str(source)


def test_diff_sums_the_sizes_of_each_kind_of_change() -> None:
    from backupvault.backup.repo.maintenance import Change
    from backupvault.cli.backup_repo import _diff_text

    text = _diff_text(
        [
            Change("+", "new.txt", 0, 2048),
            Change("-", "old.txt", 100, 0),
            Change("M", "a.txt", 10, 4096),
            Change("M", "b.txt", 20, 30),
            Change("U", "c.txt", 5, 5),
        ]
    )
    assert text.splitlines()[-1] == (
        "1 added (2.0 KiB), 1 removed (100 B), 2 modified (30 B to 4.0 KiB), 0 changed type,"
        " 1 changed metadata only"
    )
