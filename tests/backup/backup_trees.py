"""Helpers for backup tests: sample trees, tree snapshots, packs. A module of its own, not
conftest.py: test modules import it by name, and every test folder without `__init__.py`
has a `conftest` (tests/test_test_collection.py)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

SMALL_CHUNK = 4096  # many chunks from little data
# Repository parameters for many small chunks in many small packs
SMALL_PACKS = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 4096}


class RecordingProgress:
    """A `Progress` that keeps its starts (total, label) and finishes (bytes so far)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.done = 0

    def start(self, total_bytes: int | None, label: str) -> None:
        self.events.append(("start", (total_bytes, label)))

    def advance(self, n: int) -> None:
        self.done += n

    def finish(self) -> None:
        self.events.append(("finish", self.done))


def _microseconds(st: os.stat_result) -> int:
    # Backups keep mtimes to the whole microsecond (finer digits are dropped).
    return st.st_mtime_ns // 1000


def snapshot(path: Path) -> dict[str, tuple[object, ...]]:
    """Everything observable about a tree: types, modes, mtimes, contents, link targets."""
    result: dict[str, tuple[object, ...]] = {}
    if not (path.exists() or path.is_symlink()):
        return result
    entries = [path] if not path.is_dir() or path.is_symlink() else [path, *path.rglob("*")]
    for entry in entries:
        st = entry.lstat()
        name = entry.relative_to(path).as_posix() if entry != path else "."
        if stat.S_ISLNK(st.st_mode):
            result[name] = ("link", os.readlink(entry))
        elif stat.S_ISDIR(st.st_mode):
            result[name] = ("dir", stat.S_IMODE(st.st_mode), _microseconds(st))
        else:
            digest = hashlib.sha256(entry.read_bytes()).hexdigest()
            result[name] = ("file", stat.S_IMODE(st.st_mode), _microseconds(st), digest)
    return result


def make_tree(root: Path) -> Path:
    """A folder with nested folders, unicode names, links, odd modes and old mtimes."""
    source = root / "source"
    (source / "docs" / "deep" / "deeper").mkdir(parents=True)
    (source / "empty folder").mkdir()
    (source / "docs" / "notes.txt").write_text("hello\n" * 100)
    (source / "docs" / "deep" / "random.bin").write_bytes(os.urandom(20_000))
    (source / "Ünïcødé ✓ 日本.txt").write_text("unicode name")
    (source / "empty.txt").write_bytes(b"")
    script = source / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (source / "private").write_text("secret-ish")
    (source / "private").chmod(0o600)
    (source / "shared").write_text("group writable")
    (source / "shared").chmod(0o664)
    (source / "readonly").write_text("read only")
    (source / "readonly").chmod(0o444)
    (source / "link-to-notes").symlink_to("docs/notes.txt")
    (source / "docs" / "deep" / "up").symlink_to("../notes.txt")
    (source / "dangling").symlink_to("does-not-exist")
    os.link(source / "docs" / "notes.txt", source / "hardlink.txt")
    (source / "docs" / "deep").chmod(0o750)
    (source / "docs" / "deep" / "deeper").chmod(0o555)
    for i, entry in enumerate(sorted(source.rglob("*"), key=lambda p: -len(p.parts))):
        if not entry.is_symlink():
            mtime = 1_000_000_000_123_456_000 + i * 1000
            os.utime(entry, ns=(mtime, mtime))
    os.utime(source, ns=(1_100_000_000_000_000_000, 1_100_000_000_000_000_000))
    return source


def pack_files(repo: Path) -> list[Path]:
    return sorted((repo / "data").iterdir())


def flip_chunk_byte(repo: Path, root_key: bytes, path: str, which: int = 0) -> bytes:
    """Flip a byte inside the blob of the `which`-th chunk of the file `path` (in the
    latest snapshot); that chunk's id."""
    from backupvault.backup.repo import Repository
    from backupvault.backup.storage import Storage

    opened = Repository.open(Storage(str(repo)), root_key)
    entries = opened.find_snapshot(None).entries
    assert entries is not None
    chunk_id = next(e for e in entries if e.path == os.fsencode(path)).chunks[which]
    for pack in pack_files(repo):
        for entry in opened.read_pack_header(pack.name, pack.stat().st_size):
            if entry.chunk_id == chunk_id:
                data = bytearray(pack.read_bytes())
                data[entry.offset + 20] ^= 0x01
                pack.write_bytes(bytes(data))
                return chunk_id
    raise AssertionError("chunk in no pack")
