"""Errors of the backup part, all `BackupVaultError`s so the CLI reports them uniformly."""

from __future__ import annotations

from backupvault.errors import BackupVaultError, UsageError


class StorageError(BackupVaultError):
    """The storage could not be reached, listed, read or written."""


class BackupNotFound(StorageError):
    """No backup (or no backup with the requested id) at the storage URL."""


class DestinationError(UsageError):
    """The restore destination is unusable (not empty, a file, parent missing...)."""


class SourceError(UsageError):
    """The backup source does not exist or cannot be read."""
