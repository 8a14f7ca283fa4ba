"""Crash and concurrency safety: a backup or prune that dies at any storage write loses
nothing and leaves no visible snapshot; the next backup reuses what was uploaded; prune
never runs beside a backup; a killed process's lock does not block the next one."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backup_trees import flip_chunk_byte, pack_files, snapshot

from backupvault.backup.repo import (
    RepositoryLocked,
    create_snapshot,
    maintenance,
    restore_snapshot,
)
from backupvault.backup.repo.backend import Backend, Filled
from backupvault.backup.repo.maintenance import Policy
from backupvault.backup.repo.repository import PackWriter, Repository
from backupvault.backup.storage import Storage

SMALL = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 4096}


class Crash(BaseException):
    """The process died here."""


@contextlib.contextmanager
def crash_at(monkeypatch: pytest.MonkeyPatch, n: int) -> Iterator[list[int]]:
    """The n-th storage write (put or delete) and every later one fail, as if the process
    died there; the n-th, if it is a pack, leaves a torn object behind (a storage that is
    not atomic, or a power cut). Yields [writes seen]."""
    seen = [0]
    dead = [False]
    put, delete = Backend.put, Backend.delete

    def guard() -> bool:
        if dead[0]:
            raise Crash
        seen[0] += 1
        if seen[0] == n:
            dead[0] = True
            return True
        return False

    def crashing_put(self: Backend, name: str, data: Any, **kw: Any) -> None:
        if guard():
            if name.startswith("data/"):
                if isinstance(data, Filled):  # a pack, sealed into its buffer as it is written
                    whole = bytes(data.to_bytes())
                else:
                    parts = data if isinstance(data, list) else [data]
                    whole = b"".join(bytes(p) for p in parts)
                put(self, name, whole[: len(whole) // 2], **kw)
            raise Crash
        put(self, name, data, **kw)

    def crashing_delete(self: Backend, name: str) -> None:
        if guard():
            raise Crash
        delete(self, name)

    monkeypatch.setattr(Backend, "put", crashing_put)
    monkeypatch.setattr(Backend, "delete", crashing_delete)
    try:
        yield seen
    finally:
        monkeypatch.setattr(Backend, "put", put)
        monkeypatch.setattr(Backend, "delete", delete)


def interrupted(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    base: Path,
    command: Callable[..., object],
    root_key: bytes,
) -> Iterator[Path]:
    """For each storage write `command` (prune, repair) makes, a copy of the repository
    `base` in which it died at that write, its locks removed (its process is gone; this
    test's lives on)."""
    n = 0
    while True:
        n += 1
        repo_path = tmp_path / f"r{n}"
        shutil.copytree(base, repo_path)
        with crash_at(monkeypatch, n) as seen:
            try:
                command(open_repo(repo_path, root_key), dry_run=False)
            except Crash:
                pass
            else:
                assert seen[0] < n
                return
        for lock in (repo_path / "locks").iterdir():
            lock.unlink()
        yield repo_path


def fill(source: Path, rng: random.Random, count: int) -> None:
    source.mkdir(exist_ok=True)
    for _ in range(count):
        (source / f"f{rng.randrange(10**9):09}").write_bytes(rng.randbytes(rng.randint(50, 3000)))


def open_repo(path: Path, key: bytes) -> Repository:
    return Repository.open(Storage(str(path)), key)


def raw_bytes_in_packs(repo: Repository, names: set[str]) -> int:
    total = 0
    for name in names:
        try:
            entries = repo.verify_pack(bytes.fromhex(name))
        except Exception:
            continue  # torn: not reusable
        total += sum(e.raw_length for e in entries)
    return total


def test_backup_interrupted_at_every_write(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(3)
    source = tmp_path / "src"
    fill(source, rng, 30)
    base = tmp_path / "base"
    first = create_snapshot(source, str(base), root_key, repo_params=SMALL)
    fill(source, rng, 30)
    expected = snapshot(source)
    clean = tmp_path / "clean"
    shutil.copytree(base, clean)
    full = create_snapshot(source, str(clean), root_key)
    n = 0
    while True:
        n += 1
        repo_path = tmp_path / f"r{n}"
        shutil.copytree(base, repo_path)
        packs_before = set(os.listdir(repo_path / "data"))
        with crash_at(monkeypatch, n) as seen:
            try:
                create_snapshot(source, str(repo_path), root_key)
            except Crash:
                crashed = True
            else:
                crashed = False
        if not crashed:
            assert seen[0] < n
            break
        repo = open_repo(repo_path, root_key)
        names = set(repo.snapshot_names())
        if names != {first.snapshot_id}:
            # Only a crash after the snapshot was stored (at unlock) may leave one: whole.
            (made,) = names - {first.snapshot_id}
            restore_snapshot(str(repo_path), root_key, tmp_path / "made", made)
            assert snapshot(tmp_path / "made") == expected
            shutil.rmtree(tmp_path / "made")
            (repo_path / "snapshots" / made).unlink()
        assert maintenance.check(repo, read_data=True).errors == []
        left = set(os.listdir(repo_path / "data")) - packs_before
        reusable = raw_bytes_in_packs(repo, left)
        again = create_snapshot(source, str(repo_path), root_key)
        assert again.added == full.added - reusable  # every uploaded chunk reused
        out = tmp_path / f"out{n}"
        restore_snapshot(str(repo_path), root_key, out)
        assert snapshot(out) == expected
        shutil.rmtree(repo_path)
        shutil.rmtree(out)
    assert n > 5  # the writes: lock, packs, index, snapshot, unlock


def test_prune_interrupted_at_every_write(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(4)
    source = tmp_path / "src"
    base = tmp_path / "base"
    expected: dict[str, dict[str, tuple[object, ...]]] = {}
    for day in range(4):
        fill(source, rng, 15)
        for old in sorted(source.iterdir())[: 5 * day]:
            old.unlink()
        made = create_snapshot(source, str(base), root_key, repo_params=SMALL)
        expected[made.snapshot_id] = snapshot(source)
    kept, _, _ = maintenance.forget(open_repo(base, root_key), Policy(last=2), dry_run=False)
    crashes = 0
    for repo_path in interrupted(monkeypatch, tmp_path, base, maintenance.prune, root_key):
        crashes += 1

        def all_restore(tag: str, repo_path: Path = repo_path) -> None:
            repo = open_repo(repo_path, root_key)
            assert maintenance.check(repo, read_data=True).errors == []
            for snapshot_id in kept:
                out = tmp_path / f"out-{tag}-{snapshot_id}"
                restore_snapshot(str(repo_path), root_key, out, snapshot_id)
                assert snapshot(out) == expected[snapshot_id]
                shutil.rmtree(out)

        all_restore("crashed")
        maintenance.prune(open_repo(repo_path, root_key), dry_run=False)
        all_restore("pruned")
        shutil.rmtree(repo_path)
    assert crashes >= 5


def test_repair_interrupted_at_every_write(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wherever a repair dies, no file is lost that was whole (check names the same files
    as before it, and every other file restores); run again, it finishes: no damaged or
    unindexed pack is left, and the next backup restores whole."""
    rng = random.Random(7)
    source = tmp_path / "src"
    base = tmp_path / "base"
    expected: dict[str, dict[str, tuple[object, ...]]] = {}
    for _ in range(2):  # two index objects
        fill(source, rng, 20)
        made = create_snapshot(source, str(base), root_key, repo_params=SMALL)
        expected[made.snapshot_id] = snapshot(source)
    packs = {p: p.read_bytes() for p in pack_files(base)}
    flip_chunk_byte(base, root_key, sorted(os.listdir(source))[3])
    cut = next(p for p, data in packs.items() if p.read_bytes() == data)  # another one
    os.truncate(cut, cut.stat().st_size // 2)

    def damaged_files(repo_path: Path) -> dict[str, list[str]]:
        checked = maintenance.check(open_repo(repo_path, root_key), read_data=True)
        return {d.snapshot_id: d.paths for d in checked.damaged_files}

    damaged = damaged_files(base)
    assert len(damaged) == 2

    def others_restore(repo_path: Path) -> None:
        assert damaged_files(repo_path) == damaged
        for snapshot_id, tree in expected.items():
            out = tmp_path / f"out-{snapshot_id}"
            whole = [p for p in tree if p != "." and p not in damaged[snapshot_id]]
            restore_snapshot(str(repo_path), root_key, out, snapshot_id, include=tuple(whole))
            assert {p: v for p, v in snapshot(out).items() if p != "."} == {
                p: tree[p] for p in whole
            }
            shutil.rmtree(out)

    crashes = 0
    for repo_path in interrupted(monkeypatch, tmp_path, base, maintenance.repair, root_key):
        crashes += 1
        others_restore(repo_path)
        maintenance.repair(open_repo(repo_path, root_key), dry_run=False)
        others_restore(repo_path)
        checked = maintenance.check(open_repo(repo_path, root_key), read_data=True)
        assert all("in no index" in e for e in checked.errors) and checked.warnings == []
        create_snapshot(source, str(repo_path), root_key)
        out = tmp_path / "out"
        restore_snapshot(str(repo_path), root_key, out)
        assert snapshot(out) == snapshot(source)
        shutil.rmtree(out)
        shutil.rmtree(repo_path)
    assert crashes >= 7  # lock, new packs, index, two old index objects, two packs, unlock


def test_prune_beside_a_running_backup(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup pauses after uploading a pack (holding its lock): prune refuses; once the
    backup is done, prune frees the garbage and every chunk the new snapshot uses stays."""
    rng = random.Random(5)
    source = tmp_path / "src"
    repo_path = tmp_path / "repo"
    for _ in range(3):
        fill(source, rng, 10)
        for old in sorted(source.iterdir())[:8]:
            old.unlink()
        create_snapshot(source, str(repo_path), root_key, repo_params=SMALL)
    maintenance.forget(open_repo(repo_path, root_key), Policy(last=1), dry_run=False)
    fill(source, rng, 40)
    paused, resume = threading.Event(), threading.Event()
    flush = PackWriter.flush

    def slow_flush(self: PackWriter) -> None:
        flush(self)
        if not paused.is_set():
            paused.set()
            resume.wait(30)

    monkeypatch.setattr(PackWriter, "flush", slow_flush)
    results: list[Any] = []
    backup = threading.Thread(
        target=lambda: results.append(create_snapshot(source, str(repo_path), root_key))
    )
    backup.start()
    assert paused.wait(30)
    with pytest.raises(RepositoryLocked):
        maintenance.prune(open_repo(repo_path, root_key), dry_run=False)
    resume.set()
    backup.join(60)
    assert results and results[0].snapshot_id
    freed = maintenance.prune(open_repo(repo_path, root_key), dry_run=False)
    assert freed.bytes_freed > 0
    out = tmp_path / "out"
    restore_snapshot(str(repo_path), root_key, out)
    assert snapshot(out) == snapshot(source)
    assert maintenance.check(open_repo(repo_path, root_key), read_data=True).errors == []


def test_backup_waits_for_no_prune(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: a prune is running (paused mid-way): a backup refuses to start."""
    rng = random.Random(6)
    source = tmp_path / "src"
    fill(source, rng, 20)
    repo_path = tmp_path / "repo"
    create_snapshot(source, str(repo_path), root_key, repo_params=SMALL)
    paused, resume = threading.Event(), threading.Event()
    used = maintenance.snapshot_references

    def slow_used(repo: Repository) -> set[bytes]:
        paused.set()
        resume.wait(30)
        return used(repo)

    monkeypatch.setattr(maintenance, "snapshot_references", slow_used)
    prune = threading.Thread(
        target=lambda: maintenance.prune(open_repo(repo_path, root_key), dry_run=False)
    )
    prune.start()
    assert paused.wait(30)
    with pytest.raises(RepositoryLocked):
        create_snapshot(source, str(repo_path), root_key)
    resume.set()
    prune.join(60)
    assert create_snapshot(source, str(repo_path), root_key).added == 0


_WORKER = textwrap.dedent(
    """
    import os, sys
    from backupvault.backup.repo import create_snapshot
    create_snapshot(sys.argv[1], sys.argv[2], bytes.fromhex(os.environ["KEY"]),
                    repo_params={"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024,
                                 "pack_size": 16384})
    """
)


def test_backups_killed_at_random_points(tmp_path: Path, root_key: bytes) -> None:
    """SIGKILL at random moments: no snapshot appears unless complete, the repository
    checks clean, the dead process's lock does not block a prune, and a last backup
    restores exactly."""
    rng = random.Random(8)
    source = tmp_path / "src"
    for i in range(400):
        (source / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (source / f"d{i % 7}" / f"f{i}").write_bytes(rng.randbytes(rng.randint(100, 8000)))
    repo_path = tmp_path / "repo"
    env = {**os.environ, "KEY": root_key.hex()}
    for _ in range(4):
        worker = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(source), str(repo_path)], env=env
        )
        time.sleep(rng.uniform(0.3, 3.0))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        if not (repo_path / "config").exists():
            continue
        repo = open_repo(repo_path, root_key)
        for name in repo.snapshot_names():
            restore_snapshot(str(repo_path), root_key, tmp_path / "check", name)
            shutil.rmtree(tmp_path / "check")
        assert maintenance.check(repo, read_data=True).errors == []
    create_snapshot(source, str(repo_path), root_key, repo_params=SMALL)
    repo = open_repo(repo_path, root_key)
    maintenance.prune(repo, dry_run=False)  # the killed processes' locks are stale
    assert repo.locks(include_expired=True) == []
    out = tmp_path / "out"
    restore_snapshot(str(repo_path), root_key, out)
    assert snapshot(out) == snapshot(source)
