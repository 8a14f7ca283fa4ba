"""Shared fixtures for backup tests: a root key and a backed-up tree of many packs; the
helpers are in backup_trees.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from backup_trees import SMALL_PACKS


@pytest.fixture
def root_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def many_packs(tmp_path: Path, root_key: bytes) -> tuple[Path, Path]:
    """(source, repository): many small files in two folders, so many packs of many
    chunks each, and one larger file; backed up once."""
    from backupvault.backup.repo import create_snapshot

    source = tmp_path / "src"
    for folder in ("a", "b"):
        (source / folder).mkdir(parents=True)
        for i in range(20):
            (source / folder / f"f{i:02}").write_bytes(os.urandom(300))
    (source / "big").write_bytes(os.urandom(30_000))
    repo = tmp_path / "repo"
    create_snapshot(source, str(repo), root_key, repo_params=SMALL_PACKS)
    return source, repo
