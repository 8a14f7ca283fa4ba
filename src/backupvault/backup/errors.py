"""Errors of the backup part, all `BackupVaultError`s so the CLI reports them uniformly."""

from __future__ import annotations

from backupvault.errors import AuthenticationFailed, BackupVaultError, InvalidInput, UsageError


class StorageError(BackupVaultError):
    """The storage could not be reached, listed, read or written."""


class BackupNotFound(StorageError):
    """No backup (or no backup with the requested id) at the storage URL."""


class DestinationError(UsageError):
    """The restore destination is unusable (not empty, a file, parent missing...)."""


class SourceError(UsageError):
    """The backup source does not exist or cannot be read."""


class UnsafeArchive(InvalidInput):
    """A backup's archive asks for something a restore never does (write outside the
    destination, link out of it, replace what it wrote, a special file, more than declared)."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"refused to restore: the backup's archive is unsafe ({detail})",
            hint="nothing was written to the destination; this backup was not made by an "
            "unmodified backupvault, so treat the device that made it as compromised",
        )


class StorageNotFound(StorageError):
    """The storage folder does not exist (or is a file): a wrong `--storage`, so a usage
    error (exit 2), as is a config file that does not exist."""

    exit_code = 2


class NoSpace(BackupVaultError):
    """The restore destination's disk is (or would be) full."""


class StorageUnavailable(StorageError):
    """The storage did not answer (refused, timed out, no such host): try again later, as
    for a vault fleet that is unavailable (exit 5)."""

    exit_code = 5


class Damaged(BackupVaultError):
    """What storage holds is not what backupvault wrote: altered, cut off, swapped, missing
    or malformed. Running the command again does not help (exit 9; docs/cli.md)."""

    exit_code = 9


class Corrupt(Damaged, InvalidInput):
    """A stored object does not parse as what its name says it is."""


class Altered(Damaged, AuthenticationFailed):
    """A stored object fails authentication (with the right key), or is another one's."""


class SnapshotTooLarge(BackupVaultError):
    """A backup's tree would be larger than any reader opens (docs/format.md, "Tree"):
    no snapshot is saved (exit 1)."""


class RollbackSuspected(BackupVaultError):
    """A snapshot this device made is gone from storage with no forget record: a command
    that would act on what storage shows (prune deleting its data) does nothing."""
