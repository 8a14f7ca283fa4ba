"""Writing files that hold secrets (keys, tokens, PINs) or state that must not go back,
and reading small files no further than they can be.

Created with O_CREAT | O_EXCL | O_NOFOLLOW and mode 0600 from the first byte: never
through a symlink someone planted at the path, and never readable by others, not even
for the moment between a write and a chmod.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from backupvault.errors import BackupVaultError, InvalidInput

#: The largest trust state file (a client's or `verify-deployment --state`'s): its fleets
#: grow by one deployment record per epoch (a few KiB), so thousands of epochs fit.
MAX_STATE_BYTES = 16 * 1024 * 1024


def read_at_most(path: Path, limit: int, larger_than: str, hint: str) -> bytes:
    """A file's bytes, read no further than `limit` + 1: a path such as /dev/zero or a huge
    file given where a small one belongs took all the memory there was. OSError
    (FileNotFoundError included) is the caller's to name."""
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise InvalidInput(
            f"{path} is larger than {larger_than} ({limit} bytes at most); nothing of it was used",
            hint=hint,
        )
    return data


_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, _FLAGS, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    finally:
        if fd >= 0:
            os.close(fd)


def write_new_file(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Create `path` holding `data`; refuses if anything (a file, a symlink) is there."""
    path = Path(path)
    try:
        _write(path, data, mode)
    except FileExistsError:
        raise InvalidInput(
            f"{path} already exists; refusing to overwrite it",
            hint="move the old file away first, or choose another path",
        ) from None
    except OSError as err:
        raise InvalidInput(f"cannot create {path}: {err.strerror}") from None


def replace_durably(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` (mode 0600 unless told), replacing what is there: a fresh
    temporary file (a random name, created exclusively) is written, fsynced and renamed
    over it, then its folder is synced. So a symlink at `path` or planted at the temporary
    name is never followed; a crash or a full disk leaves the old file or the new one,
    never part of one; and a power loss after the return cannot bring the old one back
    (state that only moves forward depends on that). Raises OSError; `replace_file` is
    the same for callers that answer a user."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write(tmp, data, mode)
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def replace_file(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """`replace_durably`, with a failure as InvalidInput naming the file."""
    try:
        replace_durably(path, data, mode)
    except OSError as err:
        raise InvalidInput(f"cannot write {path}: {err.strerror}") from None


def private_folder(path: str | Path) -> Path:
    """`path` as a folder for secrets: made (with its parents) mode 0700 when missing;
    refused when it exists and another host user could change what is in it: owned by
    someone else (or a symbolic link someone else owns), or writable by others, or by a
    group other than the user's own. A folder made in advance at a predictable path (such
    as /tmp/bv) lets its owner swap the files written into it (a client.toml pinning their
    own fleet keys, a deploy.pub of theirs) or plant more of them, even though they cannot
    read the 0600 secrets themselves."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise InvalidInput(f"cannot make the folder {path}: {err.strerror}") from None
    try:
        link, info = path.lstat(), path.stat()
    except OSError as err:
        raise InvalidInput(f"cannot use the folder {path}: {err.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"{path} is not a folder")
    uid = os.getuid()
    writable = info.st_mode & 0o002 or (info.st_mode & 0o020 and info.st_gid != os.getgid())
    if info.st_uid != uid or link.st_uid != uid or writable:
        raise InvalidInput(
            f"the folder {path} can be changed by other host users (mode"
            f" {info.st_mode & 0o7777:04o}, owner uid {info.st_uid}): it would hold secrets,"
            " and whoever can change it could swap the files written there",
            hint=f"give a folder of your own that only you can write to (chmod go-w {path}),"
            " or a new path, which is made mode 0700",
        )
    return path


class LockTimeout(BackupVaultError):
    """Another process held a file's lock for longer than we wait."""


#: How often a waiting process tries the lock again (seconds).
_LOCK_POLL = 0.02


def try_lock(lock_path: Path) -> int | None:
    """A descriptor holding an exclusive advisory lock (flock) on `lock_path`, created
    0600 and never through a symbolic link (a planted link cannot make us create or lock
    another file); None if another process holds it. Closing the descriptor releases the
    lock, and the kernel drops it if the holder dies. OSError if it cannot be opened."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def locked(path: str | Path, *, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock (`try_lock`) on the sibling file `.<name>.lock` of `path`
    while the block runs: processes that read, change and save `path` under it never save
    over each other. The lock file is never removed (removing it would let two processes
    lock two different files), and a crash leaves nothing stale. LockTimeout after
    `timeout` seconds of waiting."""
    path = Path(path)
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidInput(f"cannot write {path}: {err.strerror}") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = try_lock(lock_path)
        except OSError as err:
            raise InvalidInput(
                f"cannot write {path}: its lock file {lock_path} cannot be opened ({err.strerror})"
            ) from None
        if fd is not None:
            break
        if time.monotonic() >= deadline:
            raise LockTimeout(
                f"{path} is locked by another process (waited {timeout:g} s for {lock_path})",
                hint="another backupvault command of this device is using it; try again when"
                " it has finished",
            )
        time.sleep(_LOCK_POLL)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock
