"""What a device remembers about repositories (backup/repo/state.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from backupvault import files
from backupvault.backup.repo import state as state_module
from backupvault.backup.repo.state import DeviceState


def test_two_backups_at_once_keep_both_sources_latest_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`made` read repo-<id>.json, changed it and wrote it back with no lock: a second
    backup of another source from this device, finishing in between, had its record
    written over (its next backup could not notice a rollback). The second backup is run
    inside the first one's read-change-write; with the lock it waits for it instead."""
    repo_id = bytes(16)
    first = DeviceState(tmp_path, repo_id, "/storage")
    second = DeviceState(tmp_path, repo_id, "/storage")
    real_load, real_try_lock = state_module._load, files.try_lock
    waiting = threading.Event()  # the second backup waits for the lock, or has finished
    started: list[threading.Thread] = []

    def try_lock(lock_path: Path) -> int | None:
        fd = real_try_lock(lock_path)
        if fd is None and threading.current_thread() in started:
            waiting.set()
        return fd

    def load(path: Path, field: str) -> dict[str, str]:
        loaded = real_load(path, field)
        if field == "latest" and not started:
            # The first backup has read the file: now the second one runs.
            other = threading.Thread(target=lambda: (second.made("/b", "bb"), waiting.set()))
            started.append(other)
            other.start()
            assert waiting.wait(30), "the second backup neither waited nor finished"
        return loaded

    monkeypatch.setattr(state_module, "_load", load)
    monkeypatch.setattr(files, "try_lock", try_lock)
    first.made("/a", "aa")
    started[0].join(30)
    assert not started[0].is_alive()
    assert first.last_made("/a") == "aa"
    assert first.last_made("/b") == "bb"
