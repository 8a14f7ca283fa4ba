"""Backups: archive a file or folder, encrypt it as a stream, keep it in storage; and back.

Public API (what the CLI calls):
  restore_backup(storage_url, root_key, dest, backup_id=None, progress=None) -> RestoreInfo
  list_backups(storage_url) -> list[BackupSummary]
  list_partials(storage_url) -> list[PartialUpload]
  SafeDestination, Limits: write a tree strictly inside one folder (backup/safe.py)
New backups are repository snapshots (backup/repo). Formats and guarantees: docs/format.md.

Names are imported on first use, so a command loads only what it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backupvault.backup.errors import (
        BackupNotFound,
        DestinationError,
        SourceError,
        StorageError,
        StorageNotFound,
        UnsafeArchive,
    )
    from backupvault.backup.flows import (
        BackupSummary,
        RestoreInfo,
        list_backups,
        list_partials,
        restore_backup,
    )
    from backupvault.backup.keykinds import KEY_PASSWORD, KEY_RECOVERY_CODE
    from backupvault.backup.progress import Progress
    from backupvault.backup.safe import Limits, SafeDestination, Skipped, human_size
    from backupvault.backup.storage import (
        ENV_WEBDAV_PASSWORD,
        ENV_WEBDAV_USER,
        PartialUpload,
        redact_url,
    )

_WHERE = {
    "BackupNotFound": "errors",
    "DestinationError": "errors",
    "SourceError": "errors",
    "StorageError": "errors",
    "StorageNotFound": "errors",
    "UnsafeArchive": "errors",
    "BackupSummary": "flows",
    "RestoreInfo": "flows",
    "list_backups": "flows",
    "list_partials": "flows",
    "restore_backup": "flows",
    "KEY_PASSWORD": "keykinds",
    "KEY_RECOVERY_CODE": "keykinds",
    "Progress": "progress",
    "Limits": "safe",
    "SafeDestination": "safe",
    "Skipped": "safe",
    "human_size": "safe",
    "ENV_WEBDAV_PASSWORD": "storage",
    "ENV_WEBDAV_USER": "storage",
    "PartialUpload": "storage",
    "redact_url": "storage",
}

__all__ = [
    "ENV_WEBDAV_PASSWORD",
    "ENV_WEBDAV_USER",
    "KEY_PASSWORD",
    "KEY_RECOVERY_CODE",
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
    "human_size",
    "list_backups",
    "list_partials",
    "redact_url",
    "restore_backup",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
