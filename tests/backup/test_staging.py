"""A restore's staging folder: what a killed restore leaves is removed by the next restore
into the same place, and nothing else is (backup/safe.py, `remove_abandoned`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from backup_trees import SMALL_PACKS

from backupvault.backup.repo import create_snapshot, restore_snapshot
from backupvault.backup.safe import Staging, _remove_tree, remove_abandoned
from backupvault.errors import AuthenticationFailed


def _killed_restore(dest: Path) -> Path:
    """The staging folder a restore into `dest` leaves when it is killed (SIGKILL) while
    it writes: a real `Staging`, in a process killed inside its `with`."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from backupvault.backup.safe import Staging

        with Staging(Path({str(dest)!r})) as staging:
            os.mkdir("sub", dir_fd=staging.fd)
            sub = os.open("sub", os.O_RDONLY | os.O_DIRECTORY, dir_fd=staging.fd)
            fd = os.open("half.bin", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=sub)
            os.write(fd, b"half of a file")
            os.fchmod(sub, 0o500)  # as a restored read-only folder
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL
    (left,) = [p for p in dest.parent.iterdir() if p.name.endswith(".restoring")]
    return left


def test_a_killed_restore_s_staging_folder_is_removed_by_the_next(
    tmp_path: Path, root_key: bytes
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_text("restored whole")
    repo = str(tmp_path / "repo")
    create_snapshot(source, repo, root_key)
    dest = tmp_path / "out" / "restored"
    dest.parent.mkdir()
    left = _killed_restore(dest)
    assert (left / "sub" / "half.bin").read_bytes() == b"half of a file"
    info = restore_snapshot(repo, root_key, dest)
    assert info.warnings == [
        f"removed {left}, the partial copy a restore into {dest} left when it was killed "
        "before it could clean up"
    ]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["restored"]
    assert (dest / "a.txt").read_text() == "restored whole"


def test_a_running_restore_s_folder_and_look_alikes_are_left_alone(tmp_path: Path) -> None:
    """A staging folder still locked by its restore (running, here in this process), a
    link under a staging folder's name, a folder of another destination's restore, and a
    name that only looks like one: none is touched."""
    dest = tmp_path / "restored"
    elsewhere = tmp_path / "target"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not ours to remove")
    link = tmp_path / f".restored.{'ab' * 6}.restoring"
    link.symlink_to(elsewhere)
    other = tmp_path / f".other.{'cd' * 6}.restoring"
    other.mkdir()
    not_hex = tmp_path / ".restored.not-hex-here.restoring"
    not_hex.mkdir()
    with Staging(dest) as running:
        os.mkdir("inside", dir_fd=running.fd)
        assert remove_abandoned(dest) == []
        assert (running.path / "inside").is_dir()
    assert not running.path.exists()  # left by its own restore, as always
    assert link.is_symlink() and (elsewhere / "keep.txt").exists()
    assert other.is_dir() and not_hex.is_dir()


def test_an_abandoned_folder_is_removed_even_when_it_holds_read_only_folders(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "restored"
    left = _killed_restore(dest)
    (message,) = remove_abandoned(dest)
    assert str(left) in message
    assert not left.exists()


def _deep_folder(top: Path, depth: int) -> None:
    """`depth` nested folders `d` under `top`, each with a file, through descriptors (the
    whole path is longer than the system takes at this depth)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        file = os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
        os.write(file, b"x")
        os.close(file)
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)


def _removed(folder: Path) -> None:
    """`folder` and all in it removed, if it is there (without recursion, as a staging
    folder is)."""
    if folder.exists():
        checked = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _remove_tree(folder, checked)
        finally:
            os.close(checked)


def test_a_failed_restore_of_a_tree_deeper_than_the_recursion_limit_leaves_nothing(
    tmp_path: Path, root_key: bytes, request: pytest.FixtureRequest
) -> None:
    """Review s47, F1: removing the staging folder of a failed restore recursed once per
    level, and at about 1,000 levels raised RecursionError over the restore's own error
    ("a bug"), left the staging folder, and every later restore into the same folder
    tripped over it in `remove_abandoned`."""
    source = tmp_path / "source"
    _deep_folder(source, sys.getrecursionlimit() + 100)
    # pytest's own removal of old temporary folders recurses too: these go at the end.
    request.addfinalizer(lambda: _removed(source))
    request.addfinalizer(lambda: _removed(tmp_path / "out"))
    repo = tmp_path / "repo"
    create_snapshot(source, str(repo), root_key, repo_params=SMALL_PACKS)
    packs = sorted((repo / "data").rglob("*"))
    originals = {p: p.read_bytes() for p in packs if p.is_file()}
    for pack, data in originals.items():  # every chunk damaged: the restore fails late
        pack.write_bytes(data[:20] + bytes([data[20] ^ 1]) + data[21:])
    before = set(os.listdir(tmp_path))
    with pytest.raises(AuthenticationFailed):
        restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert set(os.listdir(tmp_path)) == before  # no staging folder left
    for pack, data in originals.items():
        pack.write_bytes(data)
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert (tmp_path / "out" / "f").read_bytes() == b"x"


def test_removing_a_staging_folder_follows_no_link_and_opens_locked_folders(
    tmp_path: Path,
) -> None:
    """What a restore left in its staging folder is removed whole, however deep, with
    folders whose restored mode kept their owner out, and links (to a folder outside,
    and dangling) removed, not followed: what they lead to is left as it was."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the restore's")
    staging = tmp_path / ".out.0123456789ab.restoring"
    _deep_folder(staging, 1500)
    deep = staging / "d" / "d" / "d"
    (deep / "to-outside").symlink_to(outside)
    (deep / "dangling").symlink_to(tmp_path / "nowhere")
    locked = deep / "locked"
    locked.mkdir()
    (locked / "inner").mkdir()
    (locked / "inner" / "g").write_text("y")
    os.chmod(locked / "inner", 0o000)
    os.chmod(locked, 0o000)
    remove_abandoned(tmp_path / "out")
    assert not staging.exists()
    assert sorted(os.listdir(tmp_path)) == ["outside"]
    assert (outside / "keep.txt").read_text() == "not the restore's"


def test_a_failed_restore_removes_its_own_staging_folder_not_what_a_rename_put_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of session 47's change: the removal checked the staging folder's identity,
    then opened it again by name; someone who can rename entries in the parent (a shared
    folder without the sticky bit) swapped another of the user's folders in between, and
    the user's own process emptied and removed it. The removal now goes through the
    descriptor that was checked."""
    from backupvault.backup import safe

    shared = tmp_path / "shared"
    shared.mkdir()
    docs = shared / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "sub" / "thesis.tex").write_text("the user's own")
    removal = safe._remove_tree

    def swapped_first(path: Path, checked: int) -> None:
        os.rename(path, shared / "moved-away")
        os.rename(docs, path)
        removal(path, checked)

    monkeypatch.setattr(safe, "_remove_tree", swapped_first)
    with pytest.raises(RuntimeError), Staging(shared / "out") as staging:
        os.mkdir("restored", dir_fd=staging.fd)
        raise RuntimeError("the restore failed")
    (left,) = [p for p in shared.iterdir() if p.name.endswith(".restoring")]
    assert (left / "sub" / "thesis.tex").read_text() == "the user's own"
    assert os.listdir(shared / "moved-away") == []  # the restore's own, emptied


def test_a_staging_folder_s_removal_lists_each_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of session 47's change: each folder was listed again after every subfolder
    removed from it, so a folder of 50,000 folders took about 20 minutes to remove."""
    from backupvault.backup import safe

    staging = tmp_path / ".out.0123456789ab.restoring"
    staging.mkdir()
    for number in range(300):
        (staging / f"f{number}").mkdir()
        (staging / f"f{number}" / "file").write_text("x")
    listings: list[int] = []
    listing = safe._emptied_but_folders

    def counted(fd: int) -> list[str]:
        listings.append(fd)
        return listing(fd)

    monkeypatch.setattr(safe, "_emptied_but_folders", counted)
    remove_abandoned(tmp_path / "out")
    assert not staging.exists()
    assert len(listings) == 301  # the staging folder and each of its 300 folders, once


class _Stopped(Exception):
    """What the test's SIGTERM handler raises (the CLI's raises KeyboardInterrupt)."""


@pytest.mark.parametrize(
    ("after", "other_thread", "signals"),
    [
        ("mkdir", False, (signal.SIGTERM,)),
        ("mkdir", True, (signal.SIGTERM,)),
        ("mkdir", True, (signal.SIGTERM, signal.SIGINT)),
        ("os.open", True, (signal.SIGTERM,)),
    ],
    ids=["mkdir", "mkdir-beside-a-thread", "two-signals", "os.open-beside-a-thread"],
)
def test_a_stop_signal_as_the_folder_is_made_leaves_nothing_behind(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    after: str,
    other_thread: bool,
    signals: tuple[signal.Signals, ...],
) -> None:
    """SIGTERM landing right after `mkdir`, before the cleanup's `try`, left the folder
    behind (`test_a_restore_ended_by_sigterm_leaves_nothing_behind` failed so once under
    load). It waits while the folder is made and locked, and is handled after, where the
    folder is cleaned up: sent to the process (as `kill` and a terminal's Ctrl-C do) with
    another thread running too (s3fs and paramiko keep one), where blocking it in one
    thread let it through (review s59), and with a second signal beside it."""
    dest = tmp_path / "restored"
    real_mkdir, real_open = Path.mkdir, os.open
    stop_thread = threading.Event()
    if other_thread:
        threading.Thread(target=stop_thread.wait, daemon=True).start()

    def send() -> None:
        for signum in signals:
            os.kill(os.getpid(), signum)
        time.sleep(0.05)  # the window, widened: a handler would run in it

    def mkdir_then_signal(path: Path, *args: object, **kwargs: object) -> None:
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]
        if after == "mkdir":
            send()

    def open_then_signal(path: object, *args: object, **kwargs: object) -> int:
        fd = real_open(path, *args, **kwargs)  # type: ignore[arg-type]
        if after == "os.open":
            send()
        return fd

    def stop(signum: int, frame: object) -> None:
        raise _Stopped

    previous = {signum: signal.signal(signum, stop) for signum in signals}
    monkeypatch.setattr(Path, "mkdir", mkdir_then_signal)
    monkeypatch.setattr("backupvault.backup.safe.os.open", open_then_signal)
    try:
        with pytest.raises(_Stopped), Staging(dest):
            raise AssertionError("the with block is never entered")
        assert {signum: signal.getsignal(signum) for signum in signals} == dict.fromkeys(
            signals, stop
        )  # the handlers are put back
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        stop_thread.set()
    assert list(tmp_path.iterdir()) == []


def _with_handlers(handlers: dict[signal.Signals, Any]) -> dict[signal.Signals, Any]:
    return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


def test_a_signal_while_the_handlers_are_put_back_is_handled_and_every_one_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C landing as SIGINT's handler is put back, before SIGTERM's: its handler ran
    inside `signal.signal`, which then left SIGTERM's noting handler in place for good
    and the folder behind (review s59)."""
    previous = _with_handlers({signal.SIGINT: _stop, signal.SIGTERM: _stop})
    real_signal = signal.signal
    sent: list[bool] = []

    def putting_back(signum: int, handler: Any) -> Any:
        old = real_signal(signum, handler)
        if signum == signal.SIGINT and handler is _stop and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return old

    monkeypatch.setattr(signal, "signal", putting_back)
    try:
        with pytest.raises(_Stopped), Staging(tmp_path / "restored"):
            raise AssertionError("the with block is never entered")
        assert sent
        assert signal.getsignal(signal.SIGTERM) is _stop
        assert signal.getsignal(signal.SIGINT) is _stop
    finally:
        monkeypatch.undo()
        _with_handlers(previous)
    assert list(tmp_path.iterdir()) == []


def test_an_ignored_sigint_stays_ignored_and_hides_no_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background job (SIGINT ignored): SIGINT then SIGTERM as the folder is made. Only
    the first noted signal was sent again, the ignored SIGINT, and SIGTERM was lost."""
    previous = _with_handlers({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: _stop})
    real_mkdir = Path.mkdir

    def mkdir_then_signals(path: Path, *args: object, **kwargs: object) -> None:
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Path, "mkdir", mkdir_then_signals)
    try:
        with pytest.raises(_Stopped), Staging(tmp_path / "restored"):
            raise AssertionError("the with block is never entered")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        _with_handlers(previous)
    assert list(tmp_path.iterdir()) == []


def test_a_signal_during_a_failed_make_still_interrupts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM, then the folder cannot be made: the interruption is what the user asked
    for (exit 130, not the folder's error), and it is not lost."""
    previous = _with_handlers({signal.SIGTERM: _stop})

    def signal_then_fail(path: Path, *args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", signal_then_fail)
    try:
        with pytest.raises(_Stopped), Staging(tmp_path / "restored"):
            raise AssertionError("the with block is never entered")
    finally:
        _with_handlers(previous)
    assert list(tmp_path.iterdir()) == []
