"""Backups: archive a file or folder, encrypt it as a stream, keep it in storage; and back.

Public API (what the CLI calls):
  create_backup(source, storage_url, root_key, progress=None) -> BackupInfo
  restore_backup(storage_url, root_key, dest, backup_id=None, progress=None) -> RestoreInfo
  list_backups(storage_url) -> list[BackupSummary]
Formats and guarantees: docs/format.md.
"""

from backupvault.backup.archive import Progress
from backupvault.backup.errors import BackupNotFound, DestinationError, SourceError, StorageError
from backupvault.backup.flows import (
    BackupInfo,
    BackupSummary,
    RestoreInfo,
    create_backup,
    list_backups,
    restore_backup,
)
from backupvault.backup.storage import ENV_WEBDAV_PASSWORD, ENV_WEBDAV_USER, redact_url

__all__ = [
    "ENV_WEBDAV_PASSWORD",
    "ENV_WEBDAV_USER",
    "BackupInfo",
    "BackupNotFound",
    "BackupSummary",
    "DestinationError",
    "Progress",
    "RestoreInfo",
    "SourceError",
    "StorageError",
    "create_backup",
    "list_backups",
    "redact_url",
    "restore_backup",
]
