"""Backups: archive a file or folder, encrypt it as a stream, keep it in storage; and back.

Public API (what the CLI calls):
  create_backup(source, storage_url, root_key, progress=None, key_kind=...) -> BackupInfo
  restore_backup(storage_url, root_key, dest, backup_id=None, progress=None) -> RestoreInfo
  list_backups(storage_url) -> list[BackupSummary]
  list_partials(storage_url) -> list[PartialUpload]
  SafeDestination, Limits: write a tree strictly inside one folder (backup/safe.py)
Formats and guarantees: docs/format.md.
"""

from backupvault.backup.archive import Progress
from backupvault.backup.errors import (
    BackupNotFound,
    DestinationError,
    SourceError,
    StorageError,
    StorageNotFound,
    UnsafeArchive,
)
from backupvault.backup.flows import (
    BackupInfo,
    BackupSummary,
    RestoreInfo,
    create_backup,
    list_backups,
    list_partials,
    restore_backup,
    seal_backup,
)
from backupvault.backup.format import KEY_PASSWORD, KEY_RECOVERY_CODE
from backupvault.backup.safe import Limits, SafeDestination, Skipped, human_size
from backupvault.backup.storage import (
    ENV_WEBDAV_PASSWORD,
    ENV_WEBDAV_USER,
    PartialUpload,
    redact_url,
)

__all__ = [
    "ENV_WEBDAV_PASSWORD",
    "ENV_WEBDAV_USER",
    "KEY_PASSWORD",
    "KEY_RECOVERY_CODE",
    "BackupInfo",
    "BackupNotFound",
    "BackupSummary",
    "DestinationError",
    "Limits",
    "PartialUpload",
    "Progress",
    "RestoreInfo",
    "SafeDestination",
    "Skipped",
    "SourceError",
    "StorageError",
    "StorageNotFound",
    "UnsafeArchive",
    "create_backup",
    "human_size",
    "list_backups",
    "list_partials",
    "redact_url",
    "restore_backup",
    "seal_backup",
]
