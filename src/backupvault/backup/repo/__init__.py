"""The repository format (version 3): incremental, deduplicated, encrypted backups.

A storage folder holds one repository: chunks cut by a keyed FastCDC, named by keyed
BLAKE3 (HMAC-SHA256 in version 2 repositories) under the repository key, compressed and
sealed, grouped into packs; snapshots each with their own data key. Format and guarantees:
docs/format.md, "Repository format".

Public API (what the CLI calls):
  create_snapshot(source, storage_url, root_key, progress=None, force_read=False)
  restore_snapshot(storage_url, root_key, dest, snapshot_id=None, progress=None, include=())

Names are imported on first use, so a command loads only what it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backupvault.backup.repo.create import SnapshotInfo, create_snapshot
    from backupvault.backup.repo.repository import Repository, RepositoryLocked
    from backupvault.backup.repo.restore import restore_snapshot

_WHERE = {
    "SnapshotInfo": "create",
    "create_snapshot": "create",
    "Repository": "repository",
    "RepositoryLocked": "repository",
    "restore_snapshot": "restore",
}

__all__ = [
    "Repository",
    "RepositoryLocked",
    "SnapshotInfo",
    "create_snapshot",
    "restore_snapshot",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
