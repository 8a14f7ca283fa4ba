import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.crypto import recovery
from backupvault.crypto.recovery import RecoveryCodeError

KEY = bytes(range(32))


def test_code_shape() -> None:
    code = recovery.encode(KEY)
    groups = code.split("-")
    assert len(groups) == 17
    assert all(len(g) == 4 for g in groups)
    assert "".join(groups[:16]) == KEY.hex()


@given(st.binary(min_size=32, max_size=32))
def test_round_trip(key: bytes) -> None:
    assert recovery.decode(recovery.encode(key)) == key


def test_forgiving_about_case_spaces_and_dashes() -> None:
    code = recovery.encode(KEY)
    assert recovery.decode(code.upper().replace("-", " ")) == KEY
    assert recovery.decode(code.replace("-", "")) == KEY


def test_a_code_with_a_windows_line_ending_parses() -> None:
    # `--recovery-code -` reads a line: from a file saved on Windows, or a `\r\n` pipe,
    # it ends in "\r\n"; that was "this one has 69" digits, a mistyped code.
    code = recovery.encode(KEY)
    assert recovery.decode(code + "\r\n") == KEY
    assert recovery.decode(code.replace("-", "\r\n")) == KEY


def test_what_may_be_a_code_is_told_from_ids_and_paths() -> None:
    code = recovery.encode(KEY)
    assert recovery.looks_like_code(code)
    assert recovery.looks_like_code(code.upper().replace("-", " "))
    assert recovery.looks_like_code(code[:-5])  # a group short: still the key, mostly
    assert not recovery.looks_like_code(KEY.hex()[:32])  # a snapshot id
    assert not recovery.looks_like_code("/home/me/" + code)


@pytest.mark.parametrize(
    "typo", ["o", "l", "g", "\u0430"], ids=["o for 0", "l for 1", "g", "Cyrillic a"]
)
def test_a_mistyped_code_is_kept_out_of_messages_as_a_code_is(typo: str) -> None:
    """`decode` takes a code's 68 characters with one or two that are no hex digit for a
    code mistyped, and names the typo; `looks_like_code` said no to it, so a message that
    leaves codes out printed it: `backup restore <the code with an o for a 0>` (the code
    given as BACKUP_ID) said "no snapshot with id <63 of the key's 64 digits>"."""
    code = recovery.encode(KEY)
    mistyped = code[:20] + typo + code[21:]
    with pytest.raises(RecoveryCodeError, match="not a hexadecimal digit"):
        recovery.decode(mistyped)
    assert recovery.looks_like_code(mistyped)
    assert recovery.looks_like_code(mistyped[:30] + typo + mistyped[31:])  # two typos
    three = mistyped[:30] + typo + mistyped[31:40] + typo + mistyped[41:]
    with pytest.raises(RecoveryCodeError, match="not a recovery code"):
        recovery.decode(three)
    assert not recovery.looks_like_code(three)  # no code: nothing of it is said either way


def _digits(code: str) -> str:
    return code.replace("-", "")


@settings(deadline=None)  # 1,000+ decodes per example: slow on a loaded machine, not wrong
@given(st.binary(min_size=32, max_size=32))
def test_every_single_digit_typo_is_caught(key: bytes) -> None:
    digits = _digits(recovery.encode(key))
    for i in range(len(digits)):
        for replacement in "0123456789abcdef":
            if replacement == digits[i]:
                continue
            typo = digits[:i] + replacement + digits[i + 1 :]
            with pytest.raises(RecoveryCodeError, match="checksum"):
                recovery.decode(typo)


@settings(deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_every_adjacent_swap_is_caught(key: bytes) -> None:
    digits = _digits(recovery.encode(key))
    for i in range(len(digits) - 1):
        if digits[i] == digits[i + 1]:
            continue
        swapped = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
        with pytest.raises(RecoveryCodeError, match="checksum"):
            recovery.decode(swapped)


def test_wrong_length_and_bad_characters() -> None:
    digits = _digits(recovery.encode(KEY))
    with pytest.raises(RecoveryCodeError, match="has 64"):
        recovery.decode(digits[:64])
    with pytest.raises(RecoveryCodeError, match="group 3"):
        recovery.decode(digits[:9] + "g" + digits[10:])
    with pytest.raises(RecoveryCodeError):
        recovery.decode("")


@pytest.mark.parametrize(
    "given",
    [
        "correct horse battery staple 42",  # the vault password, piped by mistake
        "Tr0ub4dor&3-" * 6,  # as long as a code, nothing like one
        "hunter2hunter2" + "0" * 54,  # a code's length, three characters no hex digit
        "12345678",  # a PIN: every character a hex digit
        "deadbeef-2024",
        "2718 2818 2845 9045",
    ],
)
def test_a_secret_that_is_no_code_is_not_described_in_the_error(given: str) -> None:
    """`echo "$PASSWORD" | ... --recovery-code -` printed the password's length ("this
    one has 27") or one of its characters ("'t' in group 1") on stderr: into cron mail
    and CI logs."""
    with pytest.raises(RecoveryCodeError, match="not a recovery code") as raised:
        recovery.decode(given)
    said = f"{raised.value.message} {raised.value.hint}"
    digits = "".join(ch for ch in given.lower() if ch not in " -")
    if len(digits) != 68:  # a code's own length is in the format the message gives
        assert not re.search(rf"\b{len(digits)}\b", said)
    assert not any(f"'{ch}'" in said for ch in given)
    assert recovery.FORMAT in said


def test_rejects_wrong_key_length() -> None:
    with pytest.raises(recovery.InvalidInput):
        recovery.encode(b"short")


def _fullwidth(code: str) -> str:
    return "".join(chr(ord(ch) - 0x21 + 0xFF01) if ch.isalnum() else ch for ch in code.upper())


def _arabic_indic(code: str) -> str:
    return "".join(chr(0x0660 + int(ch)) if ch.isdigit() else ch for ch in code)


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("Unicode hyphens (a word processor, a PDF)", lambda c: c.replace("-", "\u2010")),
        ("non-breaking hyphens", lambda c: c.replace("-", "\u2011")),
        ("en dashes", lambda c: c.replace("-", "\u2013")),
        ("minus signs", lambda c: c.replace("-", "\u2212")),
        ("no-break spaces", lambda c: c.replace("-", "\u00a0")),
        ("narrow no-break spaces", lambda c: c.replace("-", "\u202f")),
        ("zero-width spaces (copied from a web page)", lambda c: c.replace("-", "\u200b")),
        ("a byte order mark (a file saved by Notepad)", lambda c: "\ufeff" + c + "\r\n"),
        ("fullwidth digits and letters (an East Asian input method)", _fullwidth),
        ("Arabic-Indic digits (a phone keyboard)", _arabic_indic),
    ],
)
def test_a_code_typed_or_pasted_with_other_unicode_forms_parses(
    what: str, change: Callable[[str], str]
) -> None:
    """Each of these was "not a recovery code" (or "'\\ufeff' in group 1 is not a
    hexadecimal digit"): a user holding the right code could not restore."""
    code = change(recovery.encode(KEY))
    assert recovery.decode(code) == KEY, what
    assert recovery.looks_like_code(code), what  # and kept out of messages as a code is


def test_a_unicode_digit_in_the_wrong_place_is_still_a_typo() -> None:
    code = recovery.encode(KEY)
    with pytest.raises(RecoveryCodeError, match="checksum"):
        recovery.decode(chr(0x0660 + 9) + code[1:])  # "\u0669" (9) for the first digit, 0
