"""A backup and a restore run with Python's cycle collector paused (it only rescanned their
growing lists of entries), a backup with a short GIL switch interval, and each gives the
process back as it found it, also when it fails."""

from __future__ import annotations

import gc
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupvault.backup.repo import create_snapshot, restore_snapshot
from backupvault.backup.repo.repository import cycle_collector_paused, short_gil_turns

SMALL = {"chunk_min": 4096, "chunk_avg": 16384, "chunk_max": 65536, "pack_size": 100_000}


DEFAULT_INTERVAL = 0.005  # Python's


@pytest.fixture(autouse=True)
def as_python_starts() -> Iterator[None]:
    gc.enable()
    sys.setswitchinterval(DEFAULT_INTERVAL)
    yield
    gc.enable()
    sys.setswitchinterval(DEFAULT_INTERVAL)


class Watch:
    """A progress reporter that notes whether the collector ran, and the switch interval,
    while work advanced."""

    def __init__(self, fail: bool = False) -> None:
        self.seen: set[bool] = set()
        self.intervals: set[float] = set()
        self.fail = fail

    def start(self, total_bytes: int | None, label: str) -> None:
        self.advance(0)

    def advance(self, n: int) -> None:
        self.seen.add(gc.isenabled())
        self.intervals.add(sys.getswitchinterval())
        if self.fail:
            raise RuntimeError("stopped by the test")

    def finish(self) -> None:
        pass


def _files(folder: Path, count: int) -> Path:
    folder.mkdir()
    for number in range(count):
        (folder / f"f{number}").write_bytes(os.urandom(100) + bytes(number % 7))
    return folder


def test_pauses_nest_and_overlap_and_give_back_the_state_they_found() -> None:
    first, second = cycle_collector_paused(), cycle_collector_paused()
    first.__enter__()
    assert not gc.isenabled()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second pause still runs
    second.__exit__(None, None, None)
    assert gc.isenabled()

    gc.disable()  # off before: stays off after
    with cycle_collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()

    # The switch interval alike: overlapping runs (threads of one process) give back the
    # interval from before the first only when the last ends, whatever it was.
    first, second = short_gil_turns(), short_gil_turns()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert sys.getswitchinterval() == 0.0005
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == DEFAULT_INTERVAL
    sys.setswitchinterval(0.01)
    with short_gil_turns():
        assert sys.getswitchinterval() == 0.0005
    assert sys.getswitchinterval() == 0.01


def test_a_backup_and_a_restore_run_with_it_paused_and_turn_it_back_on(tmp_path: Path) -> None:
    source = _files(tmp_path / "source", 20)
    key = os.urandom(32)
    watch = Watch()
    create_snapshot(source, str(tmp_path / "repo"), key, watch, repo_params=SMALL)
    assert watch.seen == {False} and watch.intervals == {0.0005}
    assert gc.isenabled() and sys.getswitchinterval() == DEFAULT_INTERVAL

    watch = Watch()
    restore_snapshot(str(tmp_path / "repo"), key, tmp_path / "out", progress=watch)
    assert watch.seen == {False} and watch.intervals == {DEFAULT_INTERVAL}
    assert gc.isenabled()
    assert (tmp_path / "out" / "f3").read_bytes() == (source / "f3").read_bytes()


def test_a_failed_backup_or_restore_turns_it_back_on(tmp_path: Path) -> None:
    source = _files(tmp_path / "source", 5)
    key = os.urandom(32)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        create_snapshot(source, str(tmp_path / "repo"), key, Watch(fail=True), repo_params=SMALL)
    assert gc.isenabled() and sys.getswitchinterval() == DEFAULT_INTERVAL

    create_snapshot(source, str(tmp_path / "repo"), key, repo_params=SMALL)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        restore_snapshot(str(tmp_path / "repo"), key, tmp_path / "out", progress=Watch(fail=True))
    assert gc.isenabled()
    assert not (tmp_path / "out").exists()  # and nothing was written


def test_the_reference_cycles_a_backup_leaves_do_not_grow_with_its_files(tmp_path: Path) -> None:
    """What makes the pause safe: with the collector off, a backup of ten times as many
    files leaves no more cyclic garbage for it to find afterwards."""

    def cycles_left(count: int) -> int:
        source = _files(tmp_path / f"source-{count}", count)
        repo = tmp_path / f"repo-{count}"
        gc.collect()
        gc.disable()
        try:
            create_snapshot(source, str(repo), os.urandom(32), repo_params=SMALL)
            return gc.collect()
        finally:
            gc.enable()
            shutil.rmtree(repo)

    cycles_left(10)  # the first backup in a process imports and caches what it needs
    few, many = cycles_left(100), cycles_left(1000)
    assert many <= few + 10, (few, many)
