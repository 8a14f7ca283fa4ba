"""What can go wrong talking to the vault, each with its CLI exit code."""

from __future__ import annotations

from backupvault.errors import BackupVaultError
from backupvault.protocol import MAX_ERROR_DETAIL


def one_line(text: str) -> str:
    """Words another party chose, as one line cut to the length of an honest node's own
    detail: whole, they wrote lines of their own under `error:` (a fake "key destroyed"
    with a hint to make a new one) or buried the real message under kilobytes."""
    return " ".join(text.split())[:MAX_ERROR_DETAIL]


def relay_says(text: str) -> str:
    """Words the relay chose (an error's detail or code, a body it served), on one line
    and marked as the relay's (review s49)."""
    return "the relay says: " + one_line(text)


class VaultError(BackupVaultError):
    pass


class WrongPassword(VaultError):
    exit_code = 3

    def __init__(self, guesses_remaining: int, *, up_to: int | None = None) -> None:
        """`up_to`: the highest figure a node reported, when the nodes that answered
        disagree and are too few to outvote a hostile one (the truth lies between)."""
        if up_to is not None and up_to != guesses_remaining:
            # Nodes that missed an attempt count one less, and a hostile one may report
            # anything: too few answered to outvote it, so the span is what can be said.
            left = (
                f"{guesses_remaining} to {up_to} guesses left before the key is destroyed (the"
                " vault nodes that answered count differently)"
            )
        elif guesses_remaining == 1:
            left = "1 guess left: the next wrong password destroys the key"
        else:
            left = f"{guesses_remaining} guesses left before the key is destroyed"
        super().__init__(
            f"wrong password: {left}",
            hint="check the password before trying again: each wrong one uses up a guess",
        )
        self.guesses_remaining = guesses_remaining
        self.guesses_remaining_up_to = up_to
        # For --json: a script reads the count, not the sentence.
        self.details = {"guesses_remaining": guesses_remaining}
        if up_to is not None and up_to != guesses_remaining:
            self.details["guesses_remaining_up_to"] = up_to


class Destroyed(VaultError):
    exit_code = 4

    def __init__(self) -> None:
        super().__init__(
            "the vault destroyed this key after too many wrong passwords",
            hint="backups made with the password can no longer be opened, but with the code"
            " `backupvault vault recovery-code` printed, if you kept it (--recovery-code -);"
            " those made with --recovery-code still open with their code. To start over,"
            " `backupvault backup create --new-key` registers a new key (a repository needs a"
            " new --storage)",
        )


class NotRegistered(VaultError):
    def __init__(
        self,
        message: str = "the vault holds no key for this account entry",
        *,
        hint: str = "make a backup with --password-stdin first, which registers one",
    ) -> None:
        super().__init__(message, hint=hint)


class AlreadyRegistered(VaultError):
    pass


class EntryChanged(VaultError):
    """Most nodes moved past the manifest this recovery read, between the read and the
    evaluation: another device changed the password, or deleted the key. `registration`:
    another device took the version this registration was made for, so it never takes
    effect (the entry may be empty again by now)."""

    def __init__(self, version: int, *, registration: bool = False) -> None:
        if registration:
            super().__init__(
                f"another device registered version {version + 1} of this entry while this"
                " registration was being made, and may have deleted it since: nothing of"
                " this registration took effect",
                hint="run the registration again (if the entry holds the other device's"
                " key, it says so)",
            )
            return
        super().__init__(
            f"the key changed while it was being recovered: the vault no longer holds"
            f" version {version} (its password was changed, or the key deleted, on another"
            " device)",
            hint="no guess was used on the new version; try again, with the new password"
            " if it was changed",
        )


class FleetUnavailable(VaultError):
    exit_code = 5

    def __init__(self, detail: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"the vault fleet is unavailable: {detail}",
            hint=hint or "too few vault nodes answered; try again later",
        )


#: The hint of a recovery whose evaluate was sent and got fewer than t partials: only
#: then may the attempt have been counted (a status, registration or erasure uses none).
EVALUATION_UNANSWERED_HINT = (
    "too few vault nodes answered the password's evaluation, which they may have counted"
    " as a guess; try again later"
)


class RelayUnreachable(FleetUnavailable):
    """The relay itself did not answer (nothing reached the vault)."""

    def __init__(self, url: str, detail: str) -> None:
        VaultError.__init__(
            self,
            f"cannot reach the relay at {url} ({detail})",
            hint="check that the relay runs and that relay_url in your config is right; "
            "no guess was used",
        )


class EpochNotRouted(VaultError):
    """The relay routes no fleet of the epoch asked for (`404 unknown_epoch`): retired."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the relay does not route that fleet epoch: {detail}",
            hint="the operator retired it; a key still on it went with it",
        )


class Unauthorized(VaultError):
    exit_code = 6

    def __init__(self, detail: str, *, by_vault: bool = False) -> None:
        if by_vault:
            super().__init__(
                f"the vault refused this account's fleet token: {detail}",
                hint="check fleet_token (and account) in your config; ask the operator for a"
                " new one (a `backupvault local` deployment renews it at `local up`)",
            )
        else:
            super().__init__(
                f"the relay refused the account token: {detail}",
                hint="check the token in your config; ask the operator for a new one (a"
                " `backupvault local` deployment renews it at `local up`)",
            )


class RateLimited(VaultError):
    """The relay refused to pass a request on (429) for longer than the client waits: it
    is unavailable for now, as exit 5 says, so a script that retries on 5 retries it."""

    exit_code = 5

    def __init__(self, retry_after: str) -> None:
        super().__init__(
            f"too many requests; the relay asks to wait {retry_after} s",
            hint="the relay refused the request for now: run the command again after that"
            " wait (its limit is per account: another of your devices or scripts may be"
            " using it up)",
        )


class FleetNotTrusted(VaultError):
    """The fleet bundle the relay served did not pass the transparency checks (or could not
    be checked); nothing was sent to that fleet."""

    exit_code = 7

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(
            message,
            hint=hint
            or "the relay may be serving a fleet nobody published; nothing derived from your "
            "password was sent. Keep the state file and report this to the operator",
        )
        self.reason: BackupVaultError | None = None

    @classmethod
    def because(cls, reason: BackupVaultError) -> FleetNotTrusted:
        error = cls(
            f"refused the relay's fleet bundle: {reason.message}",
            hint=reason.hint,
        )
        error.reason = reason
        return error
