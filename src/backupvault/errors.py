"""The error types every part raises, each with a message for a person and an exit code.

This module is a leaf: it imports nothing from backupvault, so every part (the
trusted core included) may use it.
"""

from __future__ import annotations


class BackupVaultError(Exception):
    """Base of every error a user may see. `str(err)` says what went wrong and what to do."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        #: More fields for `--json`'s error object (what a script needs to act on it).
        self.details: dict[str, object] = {}

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


class InvalidInput(BackupVaultError):
    """Malformed input: wrong length, bad encoding, a point not on the group, a bad field."""


class AuthenticationFailed(BackupVaultError):
    """A MAC, AEAD tag or signature did not verify: wrong key, or the data was altered."""


class WrongKey(AuthenticationFailed):
    """The key (from a password or a recovery code) is not the one the data was made with."""

    exit_code = 3


class UsageError(BackupVaultError):
    """The command line asked for something impossible."""

    exit_code = 2
