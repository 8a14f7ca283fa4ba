"""The repository format (version 2): incremental, deduplicated, encrypted backups.

A storage folder holds one repository: chunks cut by a keyed FastCDC, named by HMAC
under the repository key, compressed and sealed, grouped into packs; snapshots each with
their own data key. Format and guarantees: docs/format.md, "Repository format".

Public API (what the CLI calls):
  create_snapshot(source, storage_url, root_key, progress=None, force_read=False)
  restore_snapshot(storage_url, root_key, dest, snapshot_id=None, progress=None, include=None)
"""

from backupvault.backup.repo.create import SnapshotInfo, create_snapshot
from backupvault.backup.repo.repository import Repository, RepositoryLocked
from backupvault.backup.repo.restore import restore_snapshot

__all__ = [
    "Repository",
    "RepositoryLocked",
    "SnapshotInfo",
    "create_snapshot",
    "restore_snapshot",
]
