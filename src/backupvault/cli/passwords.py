"""What the CLI accepts as a password, and which ones it calls weak.

Every password the vault sees costs a guess when it is wrong, so the CLI refuses input
that cannot be meant (empty, only whitespace) and strips the line ending a Windows file
or a `\\r\\n` pipe leaves behind, instead of sending it as a real guess.

The weak list (`common-passwords.txt`, shipped in the package) is a small set of the
passwords most often found in public breach corpora; a password on it, or shorter than
MIN_LENGTH, gets a warning at registration. It is a warning, not a refusal: the vault's
guess limit is what protects a password, and the user may know better.
"""

from __future__ import annotations

from functools import cache

from backupvault.errors import UsageError

MIN_LENGTH = 10


def check_password(raw: str) -> str:
    """`raw` without its line ending; refuses an empty or whitespace-only password."""
    password = raw.removesuffix("\n").removesuffix("\r")
    if not password:
        raise UsageError(
            "the password is empty",
            hint="type the password (with --password-stdin: as the first line of stdin);"
            " nothing was sent to the vault",
        )
    if not password.strip():
        raise UsageError(
            "the password is only whitespace",
            hint="type the password itself; nothing was sent to the vault",
        )
    # Imported here: pysodium takes 50 ms, only when needed.
    from backupvault.client.threshold import password_bytes
    from backupvault.crypto.oprf import MAX_INPUT_LEN

    # Measured as the vault takes it: its NFC form can be longer (U+0958 becomes two).
    if len(password_bytes(password)) > MAX_INPUT_LEN:
        # Its length is left out: the message may end up in a log.
        raise UsageError(
            f"the password is longer than the vault takes ({MAX_INPUT_LEN} bytes in UTF-8)",
            hint="check what was given as the password (a file given by mistake?);"
            " nothing was sent to the vault",
        )
    return password


@cache
def common_passwords() -> frozenset[str]:
    from importlib import resources  # only when a password is set: 6 ms at start-up

    text = resources.files("backupvault.cli").joinpath("common-passwords.txt").read_text()
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


def weakness(password: str) -> str | None:
    """Why `password` is weak, or None."""
    if len(password) < MIN_LENGTH:
        return f"shorter than {MIN_LENGTH} characters"
    if password.lower() in common_passwords():
        return "one of the most common passwords"
    return None
