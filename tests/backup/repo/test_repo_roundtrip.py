"""The repository format end to end on local storage: round trips over many snapshots,
deduplication, the file cache, --include."""

from __future__ import annotations

import os
import random
import shutil
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backup_trees import make_tree, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupvault.backup import BackupNotFound, DestinationError
from backupvault.backup.repo import Repository, chunksource, create_snapshot, restore_snapshot
from backupvault.backup.repo import create as create_module
from backupvault.backup.repo import snapshots as snapshots_module
from backupvault.backup.repo.create import _read_small, excluded
from backupvault.backup.storage import Storage
from backupvault.errors import InvalidInput, WrongKey

# Small chunks and packs, so little data makes many of both.
SMALL = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 8192}


def objects(repo: Path, folder: str) -> set[str]:
    path = repo / folder
    return set(os.listdir(path)) if path.exists() else set()


def test_round_trip_of_a_tree(tmp_path: Path, root_key: bytes) -> None:
    source = make_tree(tmp_path)
    info = create_snapshot(source, str(tmp_path / "repo"), root_key, repo_params=SMALL)
    assert info.parent_id is None and info.files_read == info.files
    restored = restore_snapshot(str(tmp_path / "repo"), root_key, tmp_path / "out")
    expected = snapshot(source)
    # A skipped link (its target leaves the tree) is the only difference.
    assert restored.skipped == []
    assert snapshot(tmp_path / "out") == expected


def test_single_file_snapshot(tmp_path: Path, root_key: bytes) -> None:
    source = tmp_path / "one.db"
    source.write_bytes(os.urandom(50_000))
    create_snapshot(source, str(tmp_path / "repo"), root_key, repo_params=SMALL)
    restore_snapshot(str(tmp_path / "repo"), root_key, tmp_path / "out")
    assert (tmp_path / "out" / "one.db").read_bytes() == source.read_bytes()


def test_unchanged_second_snapshot_adds_nothing(tmp_path: Path, root_key: bytes) -> None:
    source = make_tree(tmp_path)
    repo = tmp_path / "repo"
    first = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    packs = objects(repo, "data")
    second = create_snapshot(source, str(repo), root_key)
    assert second.parent_id == first.snapshot_id
    assert second.files_read == 0  # the file cache: nothing read again
    assert second.added == 0
    assert objects(repo, "data") == packs


def test_dedup_across_snapshots_and_files(tmp_path: Path, root_key: bytes) -> None:
    source = tmp_path / "src"
    source.mkdir()
    blob = random.Random(1).randbytes(200_000)
    (source / "a.bin").write_bytes(blob)
    repo = str(tmp_path / "repo")
    first = create_snapshot(source, repo, root_key, repo_params=SMALL)
    assert first.added == len(blob)
    # The same content under other names, and the file with a few bytes appended.
    (source / "copy.bin").write_bytes(blob)
    (source / "sub").mkdir()
    (source / "sub" / "again.bin").write_bytes(blob)
    with open(source / "a.bin", "ab") as handle:
        handle.write(b"appended")
    second = create_snapshot(source, repo, root_key)
    assert second.files_read == 3
    assert 0 < second.added < 3 * 1024  # only the last chunk or two of a.bin changed
    restore_snapshot(repo, root_key, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(source)
    restore_snapshot(repo, root_key, tmp_path / "out1", first.snapshot_id)
    assert (tmp_path / "out1" / "a.bin").read_bytes() == blob
    assert sorted(os.listdir(tmp_path / "out1")) == ["a.bin"]


def test_changed_file_with_restored_mtime_is_read_again(tmp_path: Path, root_key: bytes) -> None:
    """mtime lies (reset with utime), size equal: ctime still changes, so it is read."""
    source = tmp_path / "src"
    source.mkdir()
    target = source / "f.txt"
    target.write_bytes(b"A" * 1000)
    st = target.stat()
    repo = str(tmp_path / "repo")
    create_snapshot(source, repo, root_key, repo_params=SMALL)
    target.write_bytes(b"B" * 1000)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    info = create_snapshot(source, repo, root_key)
    assert info.files_read == 1
    restore_snapshot(repo, root_key, tmp_path / "out")
    assert (tmp_path / "out" / "f.txt").read_bytes() == b"B" * 1000


def test_force_read_reads_everything(tmp_path: Path, root_key: bytes) -> None:
    source = make_tree(tmp_path)
    repo = str(tmp_path / "repo")
    first = create_snapshot(source, repo, root_key, repo_params=SMALL)
    again = create_snapshot(source, repo, root_key, force_read=True)
    assert again.files_read == first.files and again.added == 0


def test_include_restores_one_file_or_folder(tmp_path: Path, root_key: bytes) -> None:
    source = make_tree(tmp_path)
    repo = str(tmp_path / "repo")
    create_snapshot(source, repo, root_key, repo_params=SMALL)
    restore_snapshot(repo, root_key, tmp_path / "one", include=("docs/notes.txt",))
    assert snapshot(tmp_path / "one") == {
        k: v for k, v in snapshot(source).items() if k in (".", "docs", "docs/notes.txt")
    } | {"docs": snapshot(tmp_path / "one")["docs"]}
    assert (tmp_path / "one" / "docs" / "notes.txt").read_text() == "hello\n" * 100
    restore_snapshot(repo, root_key, tmp_path / "deep", include=("/docs/deep/",))
    expected = {k: v for k, v in snapshot(source).items() if k.startswith("docs/deep") or k == "."}
    got = snapshot(tmp_path / "deep")
    assert {k: v for k, v in got.items() if k != "docs"} == expected
    with pytest.raises(BackupNotFound):
        restore_snapshot(repo, root_key, tmp_path / "none", include=("docs/nothing",))
    assert not (tmp_path / "none").exists()
    # several paths: their union, with the folders above them
    restore_snapshot(repo, root_key, tmp_path / "two", include=("private", "docs/deep/deeper"))
    assert sorted(snapshot(tmp_path / "two")) == [".", "docs", "docs/deep", "docs/deep/deeper",
                                                   "private"]  # fmt: skip
    assert (tmp_path / "two" / "private").read_text() == "secret-ish"
    with pytest.raises(
        BackupNotFound, match=r"^nope, docs/no are not in this snapshot\n"
    ) as not_in:
        restore_snapshot(repo, root_key, tmp_path / "n", include=("nope", "private", "docs/no"))
    # Relative already: pointed at the snapshot's own list, not at an example of a path
    # made relative (new-user walkthrough s47).
    assert not_in.value.hint is not None and "backup ls latest" in not_in.value.hint
    assert not (tmp_path / "n").exists()
    # A file's absolute path in the folder backed up: the hint names the path to give.
    absolute = str(source.resolve() / "docs" / "notes.txt")
    with pytest.raises(BackupNotFound) as caught:
        restore_snapshot(repo, root_key, tmp_path / "abs", include=(absolute, "nope"))
    assert caught.value.hint == (
        f"--include takes a path relative to the folder that was backed up: docs/notes.txt"
        f" for {absolute}"
    )
    with pytest.raises(TypeError):  # a str would be one path per letter
        restore_snapshot(repo, root_key, tmp_path / "s", include="private")  # type: ignore[arg-type]
    # as a shell completes or a user types a relative path: "is not in this snapshot" before
    restore_snapshot(repo, root_key, tmp_path / "dot", include=("./docs//deep/./deeper",))
    assert sorted(snapshot(tmp_path / "dot")) == [".", "docs", "docs/deep", "docs/deep/deeper"]


def test_exclude_leaves_out_names_anywhere_and_paths_inside_the_source(
    tmp_path: Path, root_key: bytes
) -> None:
    source = make_tree(tmp_path)
    (source / "docs" / "deep" / "scratch.tmp").write_text("scratch")
    (source / "x.tmp").write_text("scratch too")
    repo = str(tmp_path / "repo")
    everything = snapshot(source)
    # "*.tmp" (no /): any name; "/docs/deep/" (a /): that path, with all inside it
    made = create_snapshot(
        source, repo, root_key, repo_params=SMALL, exclude=("*.tmp", "/docs/deep/")
    )
    restore_snapshot(repo, root_key, tmp_path / "out")
    kept = {
        k: v for k, v in everything.items() if not (k.endswith(".tmp") or k.startswith("docs/deep"))
    }
    restored = snapshot(tmp_path / "out")
    assert {k: v for k, v in restored.items() if k != "docs"} == {
        k: v for k, v in kept.items() if k != "docs"
    }
    assert made.skipped == []  # left out on purpose is not "skipped"
    # without the patterns the next backup takes them, reading only those
    again = create_snapshot(source, repo, root_key)
    assert again.files_read == 3  # random.bin, and the two .tmp files
    restore_snapshot(repo, root_key, tmp_path / "all")
    assert set(snapshot(tmp_path / "all")) == set(everything)
    with pytest.raises(TypeError):  # a str would be one pattern per letter
        create_snapshot(source, repo, root_key, exclude="*.tmp")  # type: ignore[arg-type]


def test_what_cannot_be_read_is_left_out_and_named_as_restic_does(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that cannot be listed, a small and a large file that cannot be opened
    (Permission denied: faked, as the tests may run as root): the rest is backed up, the
    three are named; the backup does not fail over them. A file deleted after the walk
    is named too, but it is not missing from the snapshot."""
    from backupvault.backup.repo import create

    source = tmp_path / "src"
    (source / "locked").mkdir(parents=True)
    (source / "locked" / "inside.txt").write_text("unseen")
    (source / "open.txt").write_text("fine")
    (source / "secret.txt").write_text("no")
    (source / "gone.txt").write_text("deleted after the walk")
    (source / "big-secret.bin").write_bytes(os.urandom(10_000))
    (source / "big.bin").write_bytes(os.urandom(10_000))
    denied = PermissionError(13, "Permission denied")
    real_open_folder, real_open_seen = create._open_folder, create._open_seen

    def open_folder(name: str, dir_fd: int | None, device: int, inode: int) -> int:
        if name == "locked":
            raise denied
        return real_open_folder(name, dir_fd, device, inode)

    def open_seen(
        item: create.Item, folders: create._Folders, *, blocking: bool = True
    ) -> tuple[int, int]:
        # Small and large files alike are opened here (secret.txt is small, big-* large).
        if item.path.endswith("secret.txt") or item.path.endswith("big-secret.bin"):
            raise denied
        if item.path.endswith("gone.txt"):
            raise FileNotFoundError(2, "No such file or directory")
        return real_open_seen(item, folders, blocking=blocking)

    monkeypatch.setattr(create, "_open_folder", open_folder)
    monkeypatch.setattr(create, "_open_seen", open_seen)
    repo = str(tmp_path / "repo")
    made = create_snapshot(source, repo, root_key, repo_params=SMALL)
    monkeypatch.undo()
    assert sorted(map(str, made.skipped)) == [
        "big-secret.bin: cannot read it (Permission denied)",
        "gone.txt: vanished during the backup",
        "locked: cannot list this folder (Permission denied): backed up empty",
        "secret.txt: cannot read it (Permission denied)",
    ]
    # what it could not read is missing from the snapshot; a file deleted meanwhile is not
    assert {item.name for item in made.skipped if not item.unread} == {"gone.txt"}
    restore_snapshot(repo, root_key, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == [
        "big.bin",
        "locked",
        "open.txt",
    ]
    assert (tmp_path / "out" / "big.bin").read_bytes() == (source / "big.bin").read_bytes()
    # readable again: the next backup takes them
    again = create_snapshot(source, repo, root_key)
    assert again.skipped == [] and again.files == 6


@pytest.mark.parametrize(
    ("path", "pattern", "matches"),
    [
        (b"x.tmp", "*.tmp", True),
        (b"a/b/x.tmp", "*.tmp", True),  # no /: the name, at any depth
        (b"a/cache", "cache", True),
        (b"a/cache2", "cache", False),
        (b"docs/deep", "docs/deep", True),
        (b"docs/deep", "/docs/deep/", True),  # leading and trailing / ignored
        (b"cache", "cache/", True),  # a trailing /: still a path, as docs/cli.md says
        (b"a/cache", "cache/", False),  # (review s62: it was every "cache" at any depth)
        (b"more/docs/deep", "docs/deep", False),  # a /: the whole path inside the source
        (b"docs/a/b.txt", "docs/*.txt", True),  # fnmatch: * also matches /
        (b"Notes.TXT", "*.txt", False),  # case matters
        ("日本/ß.db".encode(), "*.db", True),
        (b"cache", "./cache", True),  # ./: a path inside the source, as --include's
        (b"a/cache", "./cache", False),
        (b"docs/deep", "./docs//deep/", True),
        (b"docs/a.txt", "./*.txt", True),  # * still matches /
    ],
)
def test_exclude_patterns(path: bytes, pattern: str, matches: bool) -> None:
    assert excluded(path, (pattern,)) is matches


def test_wrong_key_and_bad_destination(tmp_path: Path, root_key: bytes) -> None:
    source = make_tree(tmp_path)
    repo = str(tmp_path / "repo")
    create_snapshot(source, repo, root_key, repo_params=SMALL)
    with pytest.raises(WrongKey) as refused:
        restore_snapshot(repo, os.urandom(32), tmp_path / "out")
    # A key registered anew (after wrong guesses destroyed the old) is named as a cause,
    # with what opens the old backups (user review s42).
    assert "--new-key" in str(refused.value.hint) and "vault recovery-code" in str(
        refused.value.hint
    )
    # ...and one registered after `vault delete` (review s49)
    assert "`vault delete`" in str(refused.value.hint)
    with pytest.raises(WrongKey):
        create_snapshot(source, repo, os.urandom(32))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DestinationError):
        restore_snapshot(repo, root_key, tmp_path / "full")
    assert os.listdir(tmp_path / "full") == ["x"]
    with pytest.raises(DestinationError, match="to restore into does not exist") as raised:
        restore_snapshot(repo, root_key, tmp_path / "no" / "such" / "out")
    assert f"mkdir -p {tmp_path / 'no' / 'such'}" in str(raised.value.hint)
    assert not (tmp_path / "no").exists()


def test_symlinks_round_trip_as_they_were_wherever_they_lead(
    tmp_path: Path, root_key: bytes
) -> None:
    """Lexically out, absolute, out through other links of the tree, or a loop: each link
    comes back with its own target, and nothing is written where any of them leads."""
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    links = {
        "out": "../../etc/passwd",
        "abs": "/etc/passwd",
        "via-abs": "abs",
        "here": ".",
        "sub/up": "..",
        "chain": "here/here/sub/up/..",  # looks inside, resolves outside
        "loop": "loop/x",
        "fine": "sub/up/here/sub",
    }
    for name, target in links.items():
        (source / name).symlink_to(target)
    repo = str(tmp_path / "repo")
    create_snapshot(source, repo, root_key, repo_params=SMALL)
    info = restore_snapshot(repo, root_key, tmp_path / "r")
    assert info.skipped == [] and info.links == len(links)
    assert {name: os.readlink(tmp_path / "r" / name) for name in links} == links
    assert sorted(os.listdir(tmp_path)) == ["r", "repo", "src"]


_edit = st.tuples(
    st.sampled_from(["write", "append", "delete", "mkdir", "truncate", "same"]),
    st.integers(0, 7),
    st.binary(min_size=0, max_size=3000),
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(rounds=st.lists(st.lists(_edit, min_size=1, max_size=6), min_size=2, max_size=6))
def test_many_snapshots_with_random_edits_all_restore(
    tmp_path_factory: pytest.TempPathFactory, rounds: list[list[tuple[str, int, bytes]]]
) -> None:
    base = tmp_path_factory.mktemp("rounds")
    source = base / "src"
    source.mkdir()
    repo = str(base / "repo")
    key = os.urandom(32)
    made: list[tuple[str, dict[str, tuple[object, ...]]]] = []
    for edits in rounds:
        for action, slot, data in edits:
            folder = source / f"d{slot % 3}"
            path = folder / f"f{slot}"
            if action == "mkdir":
                folder.mkdir(exist_ok=True)
            elif action in ("write", "append") and folder.exists():
                with open(path, "ab" if action == "append" else "wb") as handle:
                    handle.write(data * 7)
            elif action == "truncate" and path.exists():
                os.truncate(path, len(data) % (path.stat().st_size + 1))
            elif action == "delete" and path.exists():
                path.unlink()
            elif action == "same" and path.exists():
                # New content, same size and mtime: only ctime gives it away.
                st_before = path.stat()
                path.write_bytes(bytes(b ^ 1 for b in path.read_bytes()))
                os.utime(path, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
        info = create_snapshot(source, repo, key, repo_params=SMALL)
        made.append((info.snapshot_id, snapshot(source)))
    for number, (snapshot_id, expected) in enumerate(made):
        out = base / f"out{number}"
        restore_snapshot(repo, key, out, snapshot_id)
        got = snapshot(out)
        assert {k: v for k, v in got.items() if k != "."} == {
            k: v for k, v in expected.items() if k != "."
        }
    shutil.rmtree(base)


def test_repository_object_names(tmp_path: Path, root_key: bytes) -> None:
    source = make_tree(tmp_path)
    repo = tmp_path / "repo"
    create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    assert sorted(os.listdir(repo)) == ["config", "data", "index", "locks", "snapshots"]
    assert objects(repo, "locks") == set()  # released
    assert Repository.exists(Storage(str(repo)))
    for folder in ("data", "index", "snapshots"):
        for name in objects(repo, folder):
            assert len(name) == 32 and int(name, 16) >= 0


def test_snapshots_record_the_key_kind_inside_the_sealed_summary(
    tmp_path: Path, root_key: bytes
) -> None:
    from backupvault.backup.keykinds import KEY_PASSWORD, KEY_RECOVERY_CODE
    from backupvault.backup.repo import snapshots
    from backupvault.errors import InvalidInput

    source = make_tree(tmp_path)
    url = str(tmp_path / "repo")
    made = create_snapshot(source, url, root_key, repo_params=SMALL, key_kind=KEY_PASSWORD)
    other = create_snapshot(source, url, root_key, key_kind=KEY_RECOVERY_CODE, force_read=True)
    repo = Repository.open(Storage(url), root_key)
    kinds = {s.id_hex: s.summary.key_name for s in repo.list_snapshots()}
    assert kinds == {made.snapshot_id: "password", other.snapshot_id: "recovery code"}
    with pytest.raises(InvalidInput, match="unknown key kind"):
        create_snapshot(source, url, root_key, key_kind=7)
    # A kind no version writes is refused even when it authenticates.
    summary = repo.read_snapshot(made.snapshot_id).summary
    encoded = bytearray(summary.encode())
    encoded[-1] = 7
    with pytest.raises(InvalidInput, match="malformed"):
        snapshots.Summary.decode(bytes(encoded))


@pytest.mark.parametrize("listed", [0, 1, 99, 100, 101, 10_000])
def test_a_small_file_is_read_to_its_end_whatever_size_the_walk_saw(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch, listed: int
) -> None:
    """A file that grew or shrank between the walk and its read is read whole: the small
    read asks for one byte more than the walk saw and reads on until the end; a file
    holding more than the walk saw is read to its end as a large file."""
    path = tmp_path / "grows"
    data = os.urandom(100)
    path.write_bytes(data)
    with open(path, "rb") as grows:
        assert _read_small(grows.fileno(), listed, 100) == (data if listed >= 100 else None)
    (tmp_path / "empty").write_bytes(b"")
    with open(tmp_path / "empty", "rb") as empty:
        assert _read_small(empty.fileno(), listed, 0) == b""
    # And a backup of it, as the walk saw `listed` bytes (chunk_min is 64: each size but
    # 10,000 takes the small read).
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(os.urandom(listed))
    monkeypatch.setattr(
        create_module, "walk", _then(create_module.walk, lambda: (source / "f").write_bytes(data))
    )
    repo = str(tmp_path / "repo")
    made = create_snapshot(source, repo, root_key, repo_params=SMALL)
    assert made.skipped == [] and made.size == 100
    restore_snapshot(repo, root_key, tmp_path / "out")
    assert (tmp_path / "out" / "f").read_bytes() == data


def _then(
    walk: Callable[..., create_module.Walked], change: Callable[[], None]
) -> Callable[..., create_module.Walked]:
    """`walk`, then `change()`: the source changed after the walk, before the reads."""

    def walked(*args: object) -> create_module.Walked:
        result = walk(*args)
        change()
        return result

    return walked


def test_content_a_later_file_uses_again_is_not_all_held_in_memory(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore kept every chunk until its last use: a large file stored twice (a copy,
    a hard link, two versions of one file) took its whole size in memory, and a restore
    on a machine with less memory than that was killed. Past the budget, the chunks held
    longest are let go and read again when a file needs them."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(200_000))
    (source / "m").write_bytes(os.urandom(5_000))
    os.link(source / "a", source / "z")  # the same content, last in the tree
    (source / "y").write_bytes((source / "a").read_bytes()[:100_000] + os.urandom(9_000))
    repo = tmp_path / "repo"
    create_snapshot(source, str(repo), root_key, repo_params={**SMALL, "pack_size": 4096})
    budget = 16_384  # 4 packs
    monkeypatch.setattr(chunksource, "KEEP_BYTES", budget, raising=False)
    held = 0
    original = chunksource.ChunkSource.chunks

    def chunks(self: chunksource.ChunkSource, ids: list[bytes]) -> Iterator[bytes | bytearray]:
        nonlocal held
        for piece in original(self, ids):
            held = max(held, sum(map(len, self.ready.values())))
            yield piece

    monkeypatch.setattr(chunksource.ChunkSource, "chunks", chunks)
    restore_snapshot(str(repo), root_key, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(source)
    assert 0 < held <= budget


@pytest.mark.parametrize("lost_at", ["start", "end"])
def test_a_clock_before_2000_saves_no_snapshot_that_every_command_then_calls_damaged(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch, lost_at: str
) -> None:
    """A device whose clock lost its time (no battery-backed clock, network time not yet
    there) says 1970: the snapshot was sealed with that time and stored, then refused by
    every reader ("invalid creation time"), so the backup failed after saving a snapshot
    that every later list, backup and restore called damaged."""
    source = make_tree(tmp_path)
    repo = tmp_path / "repo"
    first = create_snapshot(source, str(repo), root_key, repo_params=SMALL)
    (source / "docs" / "notes.txt").write_text("changed\n")
    real = time.time_ns
    calls = iter([real()] if lost_at == "end" else [])  # the clock is lost mid-backup
    clock = types.SimpleNamespace(time_ns=lambda: next(calls, 86_400 * 10**9))
    monkeypatch.setattr(create_module, "time", clock)
    monkeypatch.setattr(snapshots_module, "time", clock)
    with pytest.raises(InvalidInput, match="clock says 1970-01-02"):
        create_snapshot(source, str(repo), root_key)
    assert objects(repo, "snapshots") == {first.snapshot_id}
    monkeypatch.undo()
    opened = Repository.open(Storage(str(repo)), root_key)
    assert [s.id_hex for s in opened.list_snapshots()] == [first.snapshot_id]
    assert opened.damaged == {}
    again = create_snapshot(source, str(repo), root_key)
    assert again.parent_id == first.snapshot_id


def test_a_restore_onto_an_empty_mounted_drive_is_refused_before_anything_is_written(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--to /media/usb`, an empty drive just mounted: the copy was built next to it, on
    the parent's disk (whose free space was the one checked, and which it could fill),
    then could not be moved onto the mount point ("Device or resource busy"), after the
    whole restore. A real mount needs root; the kernel's answer is the same for any
    mount point, so `ismount` stands for one here."""
    source = make_tree(tmp_path)
    repo = str(tmp_path / "repo")
    create_snapshot(source, repo, root_key, repo_params=SMALL)
    usb = tmp_path / "usb"
    usb.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(usb) or real_ismount(p))
    replaced: list[object] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: replaced.append(b) or real_replace(a, b))
    before = set(os.listdir(tmp_path))
    with pytest.raises(DestinationError, match="mount") as refused:
        restore_snapshot(repo, root_key, usb)
    assert refused.value.hint is not None and f"--to {usb}/" in refused.value.hint
    assert replaced == [] and set(os.listdir(tmp_path)) == before and os.listdir(usb) == []
    restore_snapshot(repo, root_key, usb / "restored")
    assert snapshot(usb / "restored") == snapshot(source)


def test_a_destination_filled_while_the_restore_ran_says_so_and_keeps_what_was_put(
    tmp_path: Path, root_key: bytes
) -> None:
    """`--to` was empty when the restore began; something was put in it while the restore
    ran (another program, the user). The copy cannot replace a folder that is not empty:
    it failed with a bare "Directory not empty" and no word of what to do. Now it says
    what happened and what to do; what was put there is left alone, and nothing else."""
    source = make_tree(tmp_path)
    repo = str(tmp_path / "repo")
    create_snapshot(source, repo, root_key, repo_params=SMALL)
    dest = tmp_path / "out"
    dest.mkdir()

    class Meanwhile:
        def start(self, total_bytes: int | None, label: str) -> None:
            pass

        def advance(self, n: int) -> None:
            (dest / "put-meanwhile").touch()

        def finish(self) -> None:
            pass

    before = set(os.listdir(tmp_path))
    with pytest.raises(DestinationError, match="while the restore ran") as refused:
        restore_snapshot(repo, root_key, dest, progress=Meanwhile())
    assert refused.value.hint is not None and "new or empty folder" in refused.value.hint
    assert os.listdir(dest) == ["put-meanwhile"] and set(os.listdir(tmp_path)) == before


def test_small_files_handed_to_writers_in_batches_all_come_back(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore hands each writer thread its small files in batches (by count and by
    bytes): every file comes back with its bytes, mode and time, also the last of each
    writer's batches, which only the end of the restore hands over."""
    from backupvault.backup.repo import restore as restore_module

    monkeypatch.setattr(restore_module, "_BATCH_FILES", 3)
    monkeypatch.setattr(restore_module, "_BATCH_BYTES", 1000)
    rng = random.Random(7)
    source = tmp_path / "src"
    for number in range(40):
        folder = source / f"d{number % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{number}"
        path.write_bytes(rng.randbytes(rng.randrange(0, 900)))
        path.chmod(0o600 + number % 8)
        os.utime(path, ns=(number * 10**9, number * 10**9))
    repo = str(tmp_path / "repo")
    create_snapshot(source, repo, root_key)
    restore_snapshot(repo, root_key, tmp_path / "out")
    for path in source.rglob("f*"):
        back = tmp_path / "out" / path.relative_to(source)
        assert back.read_bytes() == path.read_bytes()
        assert (back.stat().st_mode, back.stat().st_mtime_ns) == (
            path.stat().st_mode,
            path.stat().st_mtime_ns,
        )
