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

import sys
from functools import cache

from backupvault.errors import UsageError

MIN_LENGTH = 10
NOT_SHOWN = "nothing of it is shown, and nothing was tried with it"


def read_secret_line(what: str) -> str:
    """One line of stdin that holds a secret (`what`: "the password", ...). A line that is
    not UTF-8 is refused without a word of the codec's message, which names the byte and
    where it sits in the secret: whether stdin decodes strictly (the error is raised
    here) or, as in a C or UTF-8 locale, with surrogateescape (the byte becomes a lone
    surrogate, which a later message would quote: "'\\udce9' in group 17")."""
    refused = UsageError(
        f"{what} on stdin is not UTF-8 text", hint=f"give it as UTF-8; {NOT_SHOWN}"
    )
    try:
        line = sys.stdin.readline()
        line.encode()
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise refused from None
    return line


def check_password(raw: str) -> str:
    """`raw` without its line ending; refuses an empty or whitespace-only password, and
    one that is not text (a byte that is no UTF-8, read as a lone surrogate)."""
    password = raw.removesuffix("\n").removesuffix("\r")
    if not password.isascii():
        try:
            password.encode()
        except UnicodeEncodeError:
            # Without naming the character or its place: this message may end up in a log.
            raise UsageError(
                "the password is not UTF-8 text (a password file saved as Latin-1?)",
                hint=f"convert it, e.g. `iconv -f latin1 -t utf-8`; {NOT_SHOWN}",
            ) from None
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
    """Why `password` is weak (every reason: "password" is short and common), or None."""
    reasons = []
    if len(password) < MIN_LENGTH:
        reasons.append(f"shorter than {MIN_LENGTH} characters")
    if password.lower() in common_passwords():
        reasons.append("one of the most common passwords")
    return " and ".join(reasons) or None
