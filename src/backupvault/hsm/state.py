"""What the vault keeps for one entry, replicated by the fleet as one value."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from backupvault.codec import Message
from backupvault.protocol import EntryStatus, check_name

DEFAULT_GUESS_LIMIT = 10
MAX_GUESS_LIMIT = 100


@dataclass(frozen=True)
class EntryId(Message):
    """The replication key of an entry: (account, entry)."""

    TAG = 40
    account: str
    entry: str

    @classmethod
    def of(cls, account: str, entry: str) -> EntryId:
        return cls(check_name("account", account), check_name("entry", entry))


@dataclass(frozen=True)
class EntryState(Message):
    """One entry. `attempt_seq` counts every OPRF evaluation ever made (never reset), so a
    KE3 names exactly the attempt it answers; `attempts_used` counts those since the last
    success. A destroyed entry keeps only counters: its secrets are overwritten."""

    TAG = 41
    status: int = EntryStatus.EMPTY
    generation: int = 0  # registrations so far; part of the OPRF key name
    registration_nonce: bytes = b""  # chosen by the fleet at register-start
    record: bytes = b""  # OPAQUE RegistrationRecord
    ksf_params: bytes = b""
    wrapped_root_key: bytes = b""
    guess_limit: int = DEFAULT_GUESS_LIMIT
    attempts_used: int = 0
    attempt_seq: int = 0
    success_seq: int = 0
    version: int = 0
    #: SHA-256 of the latest attempt's KE1: a resend of it is answered without a new charge.
    attempt_ke1_hash: bytes = b""
    #: The client's clock at the latest attempt: an older recover-start (a replay) is refused.
    attempt_client_time_ms: int = 0

    @property
    def guesses_remaining(self) -> int:
        if self.status != EntryStatus.LIVE:
            return 0
        return max(0, self.guess_limit - self.attempts_used)

    def changed(self, **fields: object) -> EntryState:
        """A new state with `fields` replaced and the version bumped."""
        return dataclasses.replace(self, version=self.version + 1, **fields)  # type: ignore[arg-type]

    def destroyed(self) -> EntryState:
        """The tombstone: every secret overwritten, counters kept so nothing can resurrect it."""
        return self.changed(
            status=EntryStatus.DESTROYED,
            registration_nonce=b"",
            record=b"",
            ksf_params=b"",
            wrapped_root_key=b"",
            attempts_used=self.guess_limit,
            attempt_ke1_hash=b"",
        )
