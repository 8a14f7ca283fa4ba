"""Recovery codes: the 32-byte root key written for a person.

Format (FORMAT): the root key's 64 hex digits + 4 check digits, shown in 17 groups of 4
separated by dashes, e.g. ``1f0a-…-9c3e-4b7d``. The check digits are the CRC-16/XMODEM
of the 32 key bytes. A CRC-16 detects every burst error of up to 16 bits, so every
single mistyped digit (a 4-bit burst) and every swap of two neighbouring digits (an
8-bit burst) is caught before the code is used. Parsing ignores case, spaces, dashes and
line endings (``\\r\\n`` too), so a code read aloud, retyped on a phone or kept in a file
written on Windows still parses. It reads Unicode forms too (`_digits`): a code pasted
from a document or a web page, or typed on a phone, comes with Unicode hyphens and
no-break or zero-width spaces, fullwidth or other scripts' digits, or a byte order mark.
"""

from __future__ import annotations

import binascii
import hmac
import os
import re
import unicodedata

from backupvault.errors import InvalidInput

ROOT_KEY_LEN = 32
_KEY_DIGITS = 2 * ROOT_KEY_LEN
_CHECK_DIGITS = 4
_GROUP = 4
_HEX = frozenset("0123456789abcdef")
#: What parsing ignores, besides whitespace (a line ending from a file written on
#: Windows, or a `\r\n` pipe, included), dashes (Unicode category Pd) and invisible format
#: characters (Cf: zero-width spaces, a byte order mark): the minus sign, which some
#: documents put for a dash.
_SEPARATORS = "\u2212"
_IGNORED_CATEGORIES = frozenset({"Pd", "Cf"})
#: A run of characters that may be a code's, separators between them: what `_digits`
#: reads (any script's decimal digits, fullwidth letters, the Unicode dashes and spaces
#: and invisible characters it leaves out). For finding codes in a message: a code pasted
#: with Unicode hyphens was four-digit groups to a filter knowing only "-" and " ", each
#: too short to be a code, and went whole to stderr.
_CODE_CHAR = r"[0-9a-fA-F\d\uff21-\uff26\uff41-\uff46]"
_CODE_SEPARATOR = (
    r"[\s\-\u00ad\u2010-\u2015\u2212\u200b-\u200f\u2060-\u2064\ufeff"
    r"\u2e3a\u2e3b\u301c\u30a0\ufe58\ufe63\uff0d]"
)
CODE_RUN = re.compile(rf"{_CODE_CHAR}(?:{_CODE_CHAR}|{_CODE_SEPARATOR})*{_CODE_CHAR}")
#: A hexadecimal argument this long (separators left out) may be a recovery code, even a
#: mistyped one; snapshot and backup ids (16 bytes) are shorter, so nothing else the CLI
#: takes is.
_CODE_LIKE_DIGITS = 48
#: A code of the right length with at most this many characters that are no hex digits
#: is a code mistyped (one is named); more, and it is something else, of which nothing
#: is said.
_TYPOS_NAMED = 2

#: How every message, help text and document describes a recovery code.
FORMAT = "64 hex digits + 4 check digits"


class RecoveryCodeError(InvalidInput):
    """The recovery code was mistyped or is not a recovery code."""

    exit_code = 3  # like a wrong password: the secret the user gave is not right


def new_root_key() -> bytes:
    return os.urandom(ROOT_KEY_LEN)


def _check_digits(root_key: bytes) -> str:
    return f"{binascii.crc_hqx(root_key, 0):04x}"


def encode(root_key: bytes) -> str:
    """The recovery code for a root key, grouped for reading."""
    if len(root_key) != ROOT_KEY_LEN:
        raise InvalidInput(f"a root key is {ROOT_KEY_LEN} bytes, got {len(root_key)}")
    digits = root_key.hex() + _check_digits(root_key)
    return "-".join(digits[i : i + _GROUP] for i in range(0, len(digits), _GROUP))


def _digits(code: str) -> str:
    """The code's digits, lower case, separators left out. NFKC first (fullwidth digits
    and letters, no-break spaces, the non-breaking hyphen), then every decimal digit of
    any script as its ASCII one: the checksum still catches a wrong one."""
    digits = []
    for ch in unicodedata.normalize("NFKC", code).lower():
        if ch.isspace() or ch in _SEPARATORS or unicodedata.category(ch) in _IGNORED_CATEGORIES:
            continue
        value = unicodedata.decimal(ch, None)
        digits.append(ch if value is None else str(value))
    return "".join(digits)


def _code_like(digits: str, bad: int) -> bool:
    """Whether `digits` (`bad` of them no hex digit) may be a code: at least 48 digits, all
    hex, or a code's 68 with at most two typos. What `decode` names the typo in, and what
    `looks_like_code` keeps out of messages: the same, so that a code with a typo in it is
    never printed by a message that leaves the code out."""
    if len(digits) == _KEY_DIGITS + _CHECK_DIGITS:
        return bad <= _TYPOS_NAMED
    return not bad and len(digits) >= _CODE_LIKE_DIGITS


def looks_like_code(text: str) -> bool:
    """Whether `text` may be a recovery code (or one mistyped): messages leave such an
    argument out, as the code is the key itself."""
    digits = _digits(text)
    return _code_like(digits, sum(ch not in _HEX for ch in digits))


def decode(code: str) -> bytes:
    """The root key a recovery code stands for; raises RecoveryCodeError on any typo.

    The message helps find a typo in a code (how many digits, which one is no hex digit)
    but says nothing of what was given when it is no code at all: a password passed by
    mistake (`echo "$PASSWORD" | ... --recovery-code -`) had its length and a character
    of it printed on stderr, and so in cron mail and CI logs."""
    digits = _digits(code)
    wanted = _KEY_DIGITS + _CHECK_DIGITS
    bad = [(i, ch) for i, ch in enumerate(digits) if ch not in _HEX]
    # Digits are counted aloud only when what was given may be a code: a short all-hex
    # password ("deadbeef-2024", a PIN) is as much a secret as any other.
    if not _code_like(digits, len(bad)):
        raise RecoveryCodeError(
            f"this is not a recovery code: a recovery code is {FORMAT} ({wanted} in all), "
            "0-9 and a-f in groups of 4",
            hint="give the code that the first backup printed (nothing of what was given "
            "is shown here, nor was anything tried with it)",
        )
    if len(digits) != wanted:
        raise RecoveryCodeError(
            f"a recovery code is {FORMAT} ({wanted} in all), this one has {len(digits)}",
            hint="check for a missing or doubled group; dashes and spaces are optional",
        )
    if bad:
        position, ch = bad[0]
        raise RecoveryCodeError(
            f"{ch!r} in group {position // _GROUP + 1} is not a hexadecimal digit (0-9, a-f)",
            hint="a recovery code only uses the digits 0-9 and the letters a-f",
        )
    root_key = bytes.fromhex(digits[:_KEY_DIGITS])
    if not hmac.compare_digest(digits[_KEY_DIGITS:], _check_digits(root_key)):
        raise RecoveryCodeError(
            "the recovery code's checksum does not match: a digit is mistyped or two are swapped",
            hint="compare each group with the written code; nothing was tried with this code",
        )
    return root_key
