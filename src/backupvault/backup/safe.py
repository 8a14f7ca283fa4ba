"""Writing a restored single-blob archive strictly inside one folder, whatever it asks for.

`SafeDestination` is the only way a restore touches the disk. It trusts nothing about the
names, links and sizes it is given (they come from an archive that may have been written by
a compromised device), and it does not rely on `tarfile`'s extraction or its filters, so the
tarfile path-escape fixes (CVE-2025-4517, -4138, -4330; Python 3.11.13+, 3.12.11+, 3.13.4+)
are not needed for safety. Rules:

- Names are relative, `/`-separated, without empty, `.` or `..` components (the root
  folder itself is the name "."), at most 4096 bytes, 255 per component, 1024 deep.
- Every name is created once (a duplicate aborts); a member's folder must be a folder the
  archive created earlier (so nothing goes under a symbolic link or a file it created).
- Everything is created relative to an open folder descriptor: folders with
  `mkdir(dir_fd=)`, reached again only with `open(O_DIRECTORY | O_NOFOLLOW, dir_fd=)`;
  files with `open(O_CREAT | O_EXCL | O_NOFOLLOW, dir_fd=)`; hard links with
  `link(src_dir_fd=, dst_dir_fd=, follow_symlinks=False)`. No path is ever resolved
  through a symbolic link while restoring.
- A hard link may only name a regular file created earlier by the same restore.
- Symbolic links are created last, and only if their target, resolved through the links of
  the same archive, stays inside the tree (others are skipped and reported). Once made,
  each is resolved again as the file system resolves it (`remove_escaping_links`): one
  that leads out after all, where the file system takes
  names differing in case or Unicode form for one, is removed and reported. So after the
  restore no link in the tree leads out of it.
- Totals are capped: at most `Limits.max_entries` members and `Limits.max_bytes` bytes of
  file data (the backup header's declared figures); a member that would pass them aborts
  before any of its data is written.
- Permission bits are kept except setuid, setgid and sticky; ownership is not applied.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shlex
import signal
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import TypeVar

from backupvault.backup.errors import DestinationError, NoSpace, UnsafeArchive

_T = TypeVar("_T")

MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 1024
MAX_LINK_HOPS = 40  # as the kernel's limit on links followed in one lookup

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: The longest path the kernel takes in one call (Linux's PATH_MAX, with its NUL); a
#: repository snapshot holds paths of up to 65,535 bytes.
_PATH_MAX = 4096
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


#: What to do when --to is a folder with files in it (user review s42: the way to bring a
#: few lost files back into their folder was not said).
NOT_EMPTY_HINT = (
    "restore into a new or empty folder; to bring a few files back into a folder that has"
    " others, restore them (--include) into a new one and copy them over"
)


def check_destination(dest: Path) -> None:
    """A restore goes into a new or empty folder whose parent exists, never through a link."""
    if dest.is_symlink():
        raise link_destination(dest)
    if dest.exists():
        if not dest.is_dir():
            raise DestinationError(f"restore destination {dest} exists and is not a folder")
        if any(dest.iterdir()):
            raise DestinationError(
                f"restore destination {dest} is not empty",
                hint=NOT_EMPTY_HINT,
            )
        if os.path.ismount(dest):
            raise mounted_destination(dest)
    elif not dest.parent.is_dir():
        raise missing_parent(dest)


def missing_parent(dest: Path) -> DestinationError:
    """The error for a --to whose parent folder does not exist (a restore makes only the
    last folder: one that fails leaves nothing behind, folders above it included)."""
    return DestinationError(
        f"the folder {dest.parent} to restore into does not exist",
        hint=f"create it first (mkdir -p {shlex.quote(str(dest.parent))}), or give --to a new"
        " folder in one that exists",
    )


def mounted_destination(dest: Path) -> DestinationError:
    """The error for a --to that is a mount point (an empty drive): the copy is built
    beside `dest` and renamed onto it, which fails there (EBUSY), and failed only after
    the whole restore was written to the parent's disk (whose free space was checked)."""
    return DestinationError(
        f"restore destination {dest} is the root of a mounted file system (a drive): "
        "a restore builds its copy beside the destination and moves it into place, "
        "which cannot be done onto a mount point",
        hint=f"restore into a new folder on it, for instance --to {dest}/restored",
    )


def link_destination(dest: Path) -> DestinationError:
    """The error for a --to that is a symbolic link: a restore never goes through one (it
    could be pointed elsewhere while the restore runs). Where it leads to an empty folder,
    that folder itself is what to give."""
    target = dest.resolve()
    try:
        with os.scandir(target) as entries:
            empty = next(entries, None) is None
    except OSError:  # leads nowhere, to a file, or to what this user cannot list
        empty = False
    return DestinationError(
        f"restore destination {dest} is a symbolic link (to {os.readlink(dest)})",
        hint="a restore does not go through a link: "
        + (
            f"give the empty folder it leads to, --to {target}"
            if empty
            else "give --to a new folder, or an empty one"
        ),
    )


def _staging_name(dest: Path) -> str:
    return f".{dest.name}.{secrets.token_hex(6)}.restoring"


def remove_abandoned(dest: Path) -> list[str]:
    """Remove the staging folders of restores into `dest` that were killed (SIGKILL, a
    power cut: no `finally` ran), and say so, one line each. A staging folder is locked
    (flock) by its restore while it runs, so one still locked is left alone, as is one
    of another user or not a folder (a link is never followed)."""
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.[0-9a-f]{{12}}\.restoring")
    try:
        with os.scandir(dest.parent) as listing:
            names = [e.name for e in listing if pattern.fullmatch(e.name)]
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        path = dest.parent / name
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            there, ours = os.lstat(path), os.fstat(fd)
            if (there.st_dev, there.st_ino) != (ours.st_dev, ours.st_ino):
                continue
            _remove_tree(path, fd)
        except OSError:  # locked: a restore still running; or it went away meanwhile
            continue
        finally:
            os.close(fd)
        if os.path.lexists(path):
            removed.append(
                f"could not remove {path}, the partial copy a restore into {dest} left when"
                " it was killed: remove it yourself"
            )
            continue
        removed.append(
            f"removed {path}, the partial copy a restore into {dest} left when it was "
            "killed before it could clean up"
        )
    return removed


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SignalHandler = Callable[[int, FrameType | None], object] | int | signal.Handlers


@contextlib.contextmanager
def _stop_signals_deferred(came: list[int]) -> Iterator[None]:
    """SIGINT and SIGTERM only noted in `came` while inside, their handlers put back on
    leaving. Python runs signal handlers in the main thread whatever thread the signal
    reached, so this holds them for the whole process (blocking them in one thread with
    `pthread_sigmask` did not, once s3fs or paramiko had a thread of their own: review
    s59). Off the main thread no handler runs there: nothing to do. An ignored signal
    stays ignored, and one installed outside Python is left as it is (it cannot be put
    back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, _SignalHandler] = {}
    try:
        for signum in _STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if handler is None or handler is signal.SIG_IGN:
                continue
            previous[signum] = handler
            signal.signal(signum, lambda number, frame: came.append(number))
        yield
    finally:
        _put_back(previous)


def _put_back(handlers: dict[signal.Signals, _SignalHandler]) -> None:
    """Every handler back in place, even if a signal lands meanwhile: `signal.signal` runs
    the handlers of signals pending before it installs, and one that raised there left
    the noting handler in place for good (review s59). The first such exception is raised
    once all are back."""
    raised: BaseException | None = None
    for signum, handler in handlers.items():
        while signal.getsignal(signum) is not handler:
            try:
                signal.signal(signum, handler)
            except BaseException as exc:
                raised = raised or exc
    if raised is not None:
        raise raised


def _deliver(came: list[int]) -> None:
    """Each stop signal that came while deferred, sent again now that its own handler is
    back: it runs as `raise_signal` returns (KeyboardInterrupt, say), and the rest are
    dropped with it."""
    pending = list(dict.fromkeys(came))
    came.clear()
    for signum in pending:
        signal.raise_signal(signum)


class Staging:
    """A new private folder next to the destination (same filesystem) that a restore
    writes into; `finish` moves it into place in one rename, so the destination gets all
    of a restore or nothing. Made on entering, removed on leaving unless finished; locked
    (flock) while open, so a later restore can tell one a killed restore left behind
    (`remove_abandoned`) from one in use.

    It is used only through `fd`, opened without following a link and checked to be a
    folder this user owns: someone who may write in the destination's parent could
    replace it the moment it is made (with a link to another folder of the user's, or a
    folder of their own that they read). Then nothing is written, and what stands in its
    place is left alone."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.path = dest.parent / _staging_name(dest)
        self.default_mode = 0o755
        self.fd = -1

    def __enter__(self) -> Staging:
        # Made here, not in __init__: an interruption (Ctrl-C, SIGTERM) between the folder
        # made and the `with` entered left it behind for good. The stop signals wait
        # while it is made and locked: one landing between `mkdir` and the cleanup's
        # `try` in `_make` left it behind too (seen once, `make test` under load). One
        # that came is handled after, where the folder is cleaned up, also when making
        # it failed (the interruption is what the user asked for).
        came: list[int] = []
        try:
            with _stop_signals_deferred(came):
                self._make()
            _deliver(came)
        except BaseException:
            try:
                self.__exit__()
            finally:
                _deliver(came)
            raise
        return self

    def _make(self) -> None:
        while True:
            try:
                self.path.mkdir(mode=0o777)  # the umask applies: that is the default mode
                break
            except FileExistsError:
                self.path = self.dest.parent / _staging_name(self.dest)
            except OSError as exc:
                raise DestinationError(
                    f"cannot create a folder in {self.dest.parent}: {exc}"
                ) from None
        try:
            self.fd = os.open(self.path, _DIR_FLAGS)
            made = os.fstat(self.fd)
            if made.st_uid != os.geteuid():
                self._close()  # theirs: not removed
                raise OSError(errno.EPERM, "it is owned by another user")
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours, new: never held
            self.default_mode = stat.S_IMODE(made.st_mode)
            os.fchmod(self.fd, 0o700)  # private while the content is unauthenticated
        except BaseException as exc:
            # Replaced, or interrupted off the main thread (no signal held there): ours is
            # removed, nothing else.
            if self.fd >= 0 and self._in_place():
                _remove_tree(self.path, self.fd)
            elif self.fd < 0 and not isinstance(exc, OSError):
                with contextlib.suppress(OSError):
                    os.rmdir(self.path)  # only an empty folder: not a link, nor one in use
            self._close()
            if not isinstance(exc, OSError):
                raise
            raise DestinationError(
                f"the staging folder {self.path} was replaced as it was made "
                f"({exc.strerror}): someone else may write in {self.dest.parent}",
                hint="restore into a folder only you can write to; nothing was written, "
                f"and what stands at {self.path} was left alone",
            ) from None

    def __exit__(self, *exc: object) -> None:
        try:
            if self.fd >= 0 and self._in_place():
                _remove_tree(self.path, self.fd)
        finally:
            self._close()

    def _in_place(self) -> bool:
        """Whether `path` still names the folder `fd` is (not moved or replaced since)."""
        try:
            there = os.lstat(self.path)
        except OSError:
            return False
        ours = os.fstat(self.fd)
        return (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino)

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def finish(self, mode: int | None, mtime_ns: int | None = None) -> None:
        """Give the folder `mode` and `mtime_ns` (None: leave as the restore set them) and
        move it to the destination."""
        if mtime_ns is not None:
            os.utime(self.fd, ns=(mtime_ns, mtime_ns))
        if mode is not None:
            os.fchmod(self.fd, mode)
        if not self._in_place():
            raise DestinationError(
                f"the staging folder {self.path} was moved or replaced during the restore:"
                f" someone else may write in {self.dest.parent}",
                hint="restore into a folder only you can write to",
            )
        try:
            os.replace(self.path, self.dest)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                # Empty when the restore began (checked), filled since.
                raise DestinationError(
                    f"cannot move the restored data into {self.dest}: something was put in "
                    "it while the restore ran",
                    hint="nothing of the restore was written there, and what was put there "
                    "was left alone; restore again into a new or empty folder",
                ) from None
            raise DestinationError(
                f"cannot move the restored data into {self.dest}: {exc.strerror}"
            ) from None


def _remove_tree(path: Path, checked: int) -> None:
    """Remove the folder at `path` with everything in it, as far as it can (what is left
    is left: this runs while another error is on its way to the user). `checked`: a
    descriptor of that folder the caller opened and checked; its contents are removed
    through it, not through `path`, which someone who can rename entries in the parent
    may point at another of the user's folders in between (review s47, of the session's
    own change). Depth first without recursion, from one open folder to the next (a
    restored tree may be deeper than Python's recursion limit, and its paths longer than
    the system's: review s47, F1), each folder listed once. A link is never followed; a
    folder whose restored mode keeps its owner out is made 0o700 first; a folder moved
    while it is emptied stops the removal there."""
    fd = os.dup(checked)
    top = os.fstat(fd)
    # Each folder entered: its parent's identity, the parent's folders still to remove,
    # and its own name in the parent.
    above: list[tuple[tuple[int, int], list[str], str]] = []
    try:
        pending = _emptied_but_folders(fd)
        while True:
            if pending:
                name = pending.pop()
                child = _open_folder_at(fd, name)
                if child is None:
                    return  # it cannot be entered: left, with what is above it
                here = os.fstat(fd)
                above.append(((here.st_dev, here.st_ino), pending, name))
                os.close(fd)
                fd = child
                pending = _emptied_but_folders(fd)
                continue
            if not above:
                break
            identity, pending, name = above.pop()
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            there = os.fstat(fd)
            if (there.st_dev, there.st_ino) != identity:
                return  # moved while it was emptied: not followed elsewhere
            os.rmdir(name, dir_fd=fd)
    except OSError:
        return
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        there = os.lstat(path)
        if (there.st_dev, there.st_ino) == (top.st_dev, top.st_ino):
            os.rmdir(path)  # the folder emptied, still at its name (an empty one only)


def _emptied_but_folders(fd: int) -> list[str]:
    """Make the open folder `fd` writable by its owner if its mode kept them out, remove
    every entry of it that is not a folder (links included, not followed), and return the
    names of its folders."""
    if os.fstat(fd).st_mode & 0o700 != 0o700:
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o700)
    with os.scandir(fd) as listing:
        entries = list(listing)
    folders = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            folders.append(entry.name)
        else:
            os.unlink(entry.name, dir_fd=fd)
    return folders


def _open_folder_at(fd: int, name: str) -> int | None:
    """The folder `name` in `fd`, opened without following a link; made 0o700 first if
    its mode keeps its owner out. None if it still cannot be opened."""
    for attempt in range(2):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except PermissionError:
            if attempt:
                return None
            # The entry was listed as a folder, not a link; a link put in its place since
            # is refused by O_NOFOLLOW at the next open.
            with contextlib.suppress(OSError):
                os.chmod(name, 0o700, dir_fd=fd)
        except OSError:
            return None
    return None


class Kind(Enum):
    FOLDER = "folder"
    FILE = "file"
    SYMLINK = "symbolic link"
    HARDLINK = "hard link"


@dataclass(frozen=True)
class Limits:
    """What one restore may write: members (of any kind) and bytes of file data."""

    max_entries: int
    max_bytes: int
    #: The free space a restore is refused without. None: all the caps allow (their blocks
    #: included). A version-1 backup declares no totals, so its caps are the ceilings and
    #: the check asks for less: the size of the stored object.
    space_estimate: int | None = None


@dataclass(frozen=True)
class Skipped:
    """Something a restore left out on purpose, or a backup left out, and why (for people:
    `str()`). `unread`: a backup could not read it, so its snapshot lacks what is there
    (the CLI exits with code 8)."""

    name: str
    reason: str
    unread: bool = False

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass
class Written:
    files: int = 0  # regular files and hard links
    folders: int = 0  # not counting the root
    links: int = 0  # symbolic links created
    bytes: int = 0
    entries: int = 0
    has_root: bool = False
    skipped: list[Skipped] = field(default_factory=list)


class _Leaves(Exception):
    """A lookup on a link's way cannot be trusted to stay inside (`leads_out`)."""


def leads_out(path: bytes, target: bytes, follow: Callable[[bytes], bytes | None]) -> bool:
    """Whether the link `path` -> `target` leads out of the tree, resolving its way as
    the kernel would: `follow(name)` is the target of the link at `name` in the tree, or
    None for anything else (it raises `_Leaves` where a lookup fails)."""
    if target.startswith(b"/"):
        return True
    where = path.split(b"/")[:-1]
    pending = target.split(b"/")
    hops = 0
    try:
        while pending:
            part = pending.pop(0)
            if part in (b"", b"."):
                continue
            if part == b"..":
                if not where:
                    return True
                where.pop()
                continue
            where.append(part)
            followed = follow(b"/".join(where))
            if followed is not None:
                hops += 1
                if hops > MAX_LINK_HOPS or followed.startswith(b"/"):
                    return True
                where.pop()
                pending = followed.split(b"/") + pending
    except _Leaves:
        return True
    return False


@contextlib.contextmanager
def reached(dir_fd: int, path: bytes) -> Iterator[tuple[int, bytes]]:
    """(folder descriptor, name) that stand for `path` inside the folder `dir_fd` in the
    `*at` calls (`dir_fd=`): `dir_fd` and `path` when the kernel takes a path that long,
    else the descriptor of a folder on its way, each opened with O_NOFOLLOW from the last
    as far as PATH_MAX allows (names are at most 255 bytes), and the rest of the path.
    The folders opened are closed on leaving."""
    rest = path.split(b"/")
    opened: list[int] = []
    try:
        while len(path) >= _PATH_MAX:
            # The most leading names (of those before the last) that fit in one call.
            taken, length = 1, len(rest[0])
            while taken < len(rest) - 1 and length + 1 + len(rest[taken]) < _PATH_MAX:
                length += 1 + len(rest[taken])
                taken += 1
            opened.append(os.open(b"/".join(rest[:taken]), _DIR_FLAGS, dir_fd=dir_fd))
            dir_fd, rest = opened[-1], rest[taken:]
            path = b"/".join(rest)
        yield dir_fd, path
    finally:
        for fd in opened:
            os.close(fd)


def resolves_outside(dir_fd: int, path: bytes) -> bool:
    """Whether the symbolic link `path`, made in the folder `dir_fd`, leads out of it as
    this file system resolves it. Like the checks made before a link is created, but
    every name is looked up in the folder itself (lstat, readlink): a file system that
    takes names differing in case or Unicode form for one (APFS, NTFS, ext4 casefold)
    follows links that a check comparing bytes does not see. A name that is not there is
    taken as a folder (so lexically); a lookup that fails otherwise, or too many links,
    counts as leaving."""

    def follow(name: bytes) -> bytes | None:
        try:
            with reached(dir_fd, name) as (fd, rest):
                if not stat.S_ISLNK(os.lstat(rest, dir_fd=fd).st_mode):
                    return None
                return os.readlink(rest, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            raise _Leaves from None

    try:
        with reached(dir_fd, path) as (fd, rest):
            target = os.readlink(rest, dir_fd=fd)
    except OSError:
        return True
    return leads_out(path, target, follow)


def remove_escaping_links(dir_fd: int, made: list[tuple[bytes, bytes]]) -> list[Skipped]:
    """Remove the links of `made` ((path, target), created in `dir_fd`) that lead out of
    it as the file system resolves them, although the byte-level check let them through
    (names it compared as bytes are one name on this file system); what was removed, and
    why. Both restores call it once their links are made. One pass is enough if all are
    judged before any is removed: a link whose way goes through an escaping one meets the
    same exit on that way, so it is removed too; the others resolve as before."""
    escaping = [(path, target) for path, target in made if resolves_outside(dir_fd, path)]
    removed: list[Skipped] = []
    for path, target in escaping:
        with reached(dir_fd, path) as (fd, rest):
            os.unlink(rest, dir_fd=fd)
        removed.append(
            Skipped(
                os.fsdecode(path),
                f"symbolic link to {os.fsdecode(target)} leads outside the restored "
                "folder on this file system (it may take names that differ in case or "
                "Unicode form for one): removed",
            )
        )
    return removed


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def no_space(needs: int, has: int) -> NoSpace:
    return NoSpace(
        f"no space left on the destination's disk (needs {human_size(needs)}, "
        f"has {human_size(has)})",
        hint="free some space, or restore onto another disk",
    )


def space(folder: str | os.PathLike[str] | int, limits: Limits) -> tuple[int, int]:
    """(bytes a restore within `limits` may need, bytes free) on `folder`'s disk. The need
    counts a block per entry besides the file data: small files take a block each."""
    st = os.statvfs(folder)
    if limits.space_estimate is None:
        needs = limits.max_bytes + limits.max_entries * st.f_bsize
    else:
        needs = limits.space_estimate
    return needs, st.f_bavail * st.f_frsize


def no_inodes(entries: int, free_inodes: int, has: int) -> NoSpace:
    return NoSpace(
        f"no free inodes left on the destination's disk: this restore makes up to {entries}"
        f" files, folders and links, and the disk has room for {free_inodes} more (its"
        f" {human_size(has)} of free bytes are not the problem)",
        hint="delete files on that disk, restore fewer with --include, or restore onto"
        " another disk",
    )


def check_space(folder: str | os.PathLike[str], limits: Limits) -> None:
    """Refuse before anything is written if a restore within `limits` may not fit: too few
    free bytes, or too few free inodes where the file system counts them (f_files 0: it
    does not) and `limits` counts entries rather than caps them (no `space_estimate`)."""
    needs, has = space(folder, limits)
    if needs > has:
        raise no_space(needs, has)
    st = os.statvfs(folder)
    if limits.space_estimate is None and st.f_files and limits.max_entries > st.f_favail:
        raise no_inodes(limits.max_entries, st.f_favail, has)


def full_disk(folder: str | os.PathLike[str], limits: Limits, exc: OSError) -> NoSpace:
    """What a write's ENOSPC or EDQUOT (`exc`) during a restore within `limits` means on
    `folder`'s disk: no inodes left, too few bytes left, or, with both to spare, a quota
    (the figures would say there is room, so none are given)."""
    needs, has = space(folder, limits)
    st = os.statvfs(folder)
    if st.f_files and st.f_favail == 0:
        return no_inodes(limits.max_entries, 0, has)
    if needs > has:
        return no_space(needs, has)
    return NoSpace(
        f"the destination's disk refused more data ({exc.strerror}) although it reports"
        f" {human_size(has)} and {st.f_favail} inodes free: a quota may limit this user",
        hint="free some space (within the quota), or restore onto another disk",
    )


def split_name(name: str) -> tuple[str, ...]:
    """The components of an archive name; () for the root ("."). Refuses anything unsafe."""
    if "\x00" in name:
        raise UnsafeArchive(f"a name holds a NUL byte: {name!r}")
    if name.startswith("/"):
        raise UnsafeArchive(f"an absolute name: {name!r}")
    trimmed = name[:-1] if name.endswith("/") else name  # folders may end with one "/"
    if trimmed in (".", "./"):
        return ()
    if len(os.fsencode(trimmed)) > MAX_NAME_BYTES:
        raise UnsafeArchive(f"a name longer than {MAX_NAME_BYTES} bytes: {name[:80]!r}...")
    parts = tuple(trimmed.split("/"))
    for part in parts:
        if part == "..":
            raise UnsafeArchive(f"a name that climbs out with '..': {name!r}")
        if part in ("", "."):
            raise UnsafeArchive(f"a name with an empty or '.' component: {name!r}")
        if len(os.fsencode(part)) > MAX_COMPONENT_BYTES:
            raise UnsafeArchive(f"a name component longer than 255 bytes in {name[:80]!r}")
    if len(parts) > MAX_DEPTH:
        raise UnsafeArchive(f"a name more than {MAX_DEPTH} folders deep")
    return parts


class SafeDestination:
    """Creates a tree inside the existing folder `root` (see the module docstring).

    Use: create members in archive order (`folder`, `file`, `symlink`, `hardlink`,
    `root_attributes`), then `finish()`, which creates the symbolic links and applies folder
    modes and times; `close()` (or `with`) releases the descriptors. Any refusal raises
    `UnsafeArchive`; a full disk raises `NoSpace`. What was written so far stays:
    the caller writes into a staging folder and removes it on failure.
    """

    def __init__(self, root: str | os.PathLike[str] | int, limits: Limits) -> None:
        """`root`: the folder, or a descriptor of it (a `Staging`'s `fd`)."""
        self.limits = limits
        self.written = Written()
        if isinstance(root, int):
            self._root_fd = os.open(".", _DIR_FLAGS, dir_fd=root)
        else:
            self._root_fd = os.open(root, _DIR_FLAGS)
        self._needs, self._has = space(self._root_fd, limits)
        self._kinds: dict[tuple[str, ...], Kind] = {}
        self._link_targets: dict[tuple[str, ...], str] = {}
        self._folders: list[tuple[tuple[str, ...], int, int]] = []  # (name, mode, mtime_ns)
        self._root_attrs: tuple[int, int] | None = None
        self._cached: tuple[tuple[str, ...], int] | None = None  # last folder opened

    def __enter__(self) -> SafeDestination:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._forget_cached()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # ---- members ------------------------------------------------------------------------

    def root_attributes(self, mode: int, mtime_ns: int) -> None:
        """The archive's "." member: the restored folder's own mode and time (set last)."""
        if self._root_attrs is not None:
            raise UnsafeArchive("the archive holds its root folder '.' twice")
        self._count(())
        self._root_attrs = (mode & 0o777, mtime_ns)
        self.written.has_root = True

    def folder(self, name: str, mode: int, mtime_ns: int) -> None:
        parts = self._new(name, Kind.FOLDER)
        if not parts:
            self.root_attributes(mode, mtime_ns)
            return
        parent = self._parent_fd(parts)
        self._kinds[parts] = Kind.FOLDER
        self._os(lambda: os.mkdir(parts[-1], 0o700, dir_fd=parent), name)
        self._folders.append((parts, mode & 0o777, mtime_ns))
        self.written.folders += 1

    def file(self, name: str, mode: int, mtime_ns: int, size: int, data: Iterable[bytes]) -> None:
        """A regular file of exactly `size` bytes from `data`."""
        parts = self._leaf(self._new(name, Kind.FILE), name)
        if size < 0 or size > self.limits.max_bytes - self.written.bytes:
            raise UnsafeArchive(
                f"{name!r} declares {size} bytes, past the {self.limits.max_bytes} bytes "
                "the backup header allows"
            )
        parent = self._parent_fd(parts)
        self._kinds[parts] = Kind.FILE
        fd = self._os(lambda: os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=parent), name)
        try:
            written = 0
            for piece in data:
                written += len(piece)
                if written > size:
                    raise UnsafeArchive(f"{name!r} holds more data than it declares")
                self._write_all(fd, piece, name)
            if written != size:
                raise UnsafeArchive(f"{name!r} holds less data than it declares")
            os.fchmod(fd, mode & 0o777)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        self.written.files += 1
        self.written.bytes += size

    def _write_all(self, fd: int, data: bytes, name: str) -> None:
        view = memoryview(data)
        while view:
            try:
                done = os.write(fd, view)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._no_space() from None
                raise DestinationError(f"cannot write {name!r}: {exc.strerror}") from None
            view = view[done:]

    def hardlink(self, name: str, target: str) -> None:
        """A second name for `target`, a regular file this restore already created."""
        parts = self._leaf(self._new(name, Kind.HARDLINK), name)
        target_parts = split_name(target)
        if self._kinds.get(target_parts) is not Kind.FILE:
            what = self._kinds.get(target_parts)
            raise UnsafeArchive(
                f"hard link {name!r} points to {target!r}, which is "
                + ("not in the archive before it" if what is None else f"a {what.value}")
                + " (only regular files extracted earlier may be linked)"
            )
        source_fd = self._open_folder(target_parts[:-1])
        try:
            parent = self._parent_fd(parts)
            self._os(
                lambda: os.link(
                    target_parts[-1],
                    parts[-1],
                    src_dir_fd=source_fd,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                ),
                name,
            )
        finally:
            os.close(source_fd)
        self._kinds[parts] = Kind.HARDLINK
        self.written.files += 1

    def symlink(self, name: str, target: str) -> None:
        """A symbolic link, created in `finish` if its target stays inside the tree."""
        parts = self._leaf(self._new(name, Kind.SYMLINK), name)
        if not target or "\x00" in target or len(os.fsencode(target)) > MAX_NAME_BYTES:
            raise UnsafeArchive(f"symbolic link {name!r} has an invalid target")
        self._parent_fd(parts)  # its folder must be one of ours
        self._kinds[parts] = Kind.SYMLINK
        self._link_targets[parts] = target

    def finish(self) -> Written:
        """Create the symbolic links that stay inside, then remove those that lead out
        after all as the file system resolves them; apply folder modes and times."""
        made: list[tuple[bytes, bytes]] = []
        for parts, target in self._link_targets.items():
            name = "/".join(parts)
            reason = self._link_escapes(parts, target)
            if reason is not None:
                self.written.skipped.append(Skipped(name, reason))
                continue
            parent = self._parent_fd(parts)
            self._os(lambda: os.symlink(target, parts[-1], dir_fd=parent), name)  # noqa: B023
            made.append((os.fsencode(name), os.fsencode(target)))
        self._forget_cached()
        # Before any folder is made read-only: a link in one could not be removed then.
        removed = remove_escaping_links(self._root_fd, made)
        self.written.links += len(made) - len(removed)
        self.written.skipped.extend(removed)
        # Deepest first, so a read-only folder is closed only after everything inside it.
        for parts, mode, mtime_ns in sorted(self._folders, key=lambda f: -len(f[0])):
            fd = self._open_folder(parts)
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
        if self._root_attrs is not None:
            os.fchmod(self._root_fd, self._root_attrs[0])
            os.utime(self._root_fd, ns=(self._root_attrs[1], self._root_attrs[1]))
        return self.written

    # ---- checks -------------------------------------------------------------------------

    def _no_space(self) -> NoSpace:
        if self.limits.space_estimate is None:
            return no_space(self._needs, self._has)
        return NoSpace(
            f"no space left on the destination's disk (it had {human_size(self._has)} free; "
            "this backup's format, version 1, does not record how much it holds)",
            hint="free some space, or restore onto another disk",
        )

    def _count(self, parts: tuple[str, ...]) -> None:
        if self.written.entries >= self.limits.max_entries:
            raise UnsafeArchive(
                f"the archive holds more than the {self.limits.max_entries} entries its "
                "backup header declares"
            )
        self.written.entries += 1

    def _new(self, name: str, kind: Kind) -> tuple[str, ...]:
        parts = split_name(name)
        if not parts:
            if kind is not Kind.FOLDER:
                raise UnsafeArchive(f"the archive's root '.' is a {kind.value}")
            return parts
        if parts in self._kinds:
            raise UnsafeArchive(f"the archive holds {'/'.join(parts)!r} twice")
        self._count(parts)
        return parts

    @staticmethod
    def _leaf(parts: tuple[str, ...], name: str) -> tuple[str, ...]:
        if not parts:
            raise UnsafeArchive(f"{name!r} names the root folder")
        return parts

    def _parent_fd(self, parts: tuple[str, ...]) -> int:
        """An open descriptor of the folder that holds `parts` (cached: do not close)."""
        folder = parts[:-1]
        if folder:
            if self._kinds.get(folder) is not Kind.FOLDER:
                # Name the outermost part that is not one of the archive's folders.
                depth = next(
                    i
                    for i in range(1, len(folder) + 1)
                    if self._kinds.get(folder[:i]) is not Kind.FOLDER
                )
                kind = self._kinds.get(folder[:depth])
                where = "/".join(folder[:depth])
                raise UnsafeArchive(
                    f"{'/'.join(parts)!r} is under {where!r}, which is "
                    + (
                        "not a folder the archive created before it"
                        if kind is None
                        else f"a {kind.value} the archive created"
                    )
                )
        else:
            return self._root_fd
        if self._cached is not None and self._cached[0] == folder:
            return self._cached[1]
        fd = self._open_folder(folder)
        self._forget_cached()
        self._cached = (folder, fd)
        return fd

    def _forget_cached(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _link_escapes(self, parts: tuple[str, ...], target: str) -> str | None:
        """Why the link `parts` -> `target` leads out of the tree (None if it does not),
        resolving through the archive's own links as the kernel would after the restore."""
        if target.startswith("/"):
            return f"symbolic link to {target} is outside the restored folder"
        stack = list(parts[:-1])
        pending = target.split("/")
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return f"symbolic link to {target} is outside the restored folder"
                stack.pop()
                continue
            stack.append(part)
            inner = self._link_targets.get(tuple(stack))
            if inner is not None:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    return f"symbolic link to {target} goes through over {MAX_LINK_HOPS} links"
                if inner.startswith("/"):
                    return f"symbolic link to {target} leads outside through other links"
                stack.pop()
                pending = inner.split("/") + pending
        return None

    def _open_folder(self, folder: tuple[str, ...]) -> int:
        """A new descriptor of an archive folder, one component at a time, never following
        a link; the caller closes it."""
        fd = os.dup(self._root_fd)
        try:
            for part in folder:
                step = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = step
        except OSError as exc:
            os.close(fd)
            raise UnsafeArchive(f"cannot open the folder {'/'.join(folder)!r}: {exc}") from None
        return fd

    def _os(self, call: Callable[[], _T], name: str) -> _T:
        """Run one system call for `name`, turning its failure into a clear error."""
        try:
            return call()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._no_space() from None
            if exc.errno == errno.EEXIST:
                raise UnsafeArchive(f"{name!r} already exists in the restored folder") from None
            raise DestinationError(f"cannot restore {name!r}: {exc.strerror}") from None
