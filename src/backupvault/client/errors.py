"""What can go wrong talking to the vault, each with its CLI exit code."""

from __future__ import annotations

from backupvault.errors import BackupVaultError


class VaultError(BackupVaultError):
    pass


class WrongPassword(VaultError):
    exit_code = 3

    def __init__(self, guesses_remaining: int) -> None:
        plural = "guess" if guesses_remaining == 1 else "guesses"
        super().__init__(
            f"wrong password: {guesses_remaining} {plural} left before the key is destroyed",
            hint="check the password; use your recovery code if you have it",
        )
        self.guesses_remaining = guesses_remaining


class Destroyed(VaultError):
    exit_code = 4

    def __init__(self) -> None:
        super().__init__(
            "the vault destroyed this key after too many wrong passwords",
            hint="only a recovery code can open backups made under it now",
        )


class NotRegistered(VaultError):
    def __init__(self) -> None:
        super().__init__(
            "the vault holds no key for this account entry",
            hint="make a backup with --password-stdin first, which registers one",
        )


class AlreadyRegistered(VaultError):
    pass


class FleetUnavailable(VaultError):
    exit_code = 5

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the vault fleet is unavailable: {detail}",
            hint="fewer than a majority of vault nodes answer; no guess was used; try later",
        )


class Unauthorized(VaultError):
    exit_code = 6

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the relay refused the account token: {detail}",
            hint="check the token in your config; ask the operator for a new one",
        )


class RateLimited(VaultError):
    def __init__(self, retry_after: str) -> None:
        super().__init__(
            f"too many requests; the relay asks to wait {retry_after} s", hint="retry later"
        )
