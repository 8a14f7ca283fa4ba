"""How a backup's root key RK is kept, as single-blob headers and snapshot summaries record
it (one byte; docs/format.md)."""

from __future__ import annotations

from typing import Final

KEY_UNKNOWN: Final = 0  # not recorded: version-1 single-blob backups, older snapshots
KEY_PASSWORD: Final = 1  # RK comes from the vault, behind a password
KEY_RECOVERY_CODE: Final = 2  # RK is shown once as the backup's own recovery code
KEY_NAMES: Final = {
    KEY_UNKNOWN: "unknown",
    KEY_PASSWORD: "password",
    KEY_RECOVERY_CODE: "recovery code",
}
