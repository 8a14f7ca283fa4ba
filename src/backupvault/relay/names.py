"""Account and entry names as the relay accepts them (the nodes check the same rule)."""

from __future__ import annotations

import re
from typing import TypeGuard

NAME_PATTERN = r"[A-Za-z0-9._-]{1,64}"
_NAME = re.compile(NAME_PATTERN)

#: The vault operations a client may ask for; anything else is answered 404.
OPERATIONS: tuple[str, ...] = (
    "register-start",
    "register-finish",
    "recover-start",
    "recover-finish",
    "change-password",
    "delete",
    "status",
)


def is_valid_name(value: object) -> TypeGuard[str]:
    """True for 1-64 characters of letters, digits, '.', '_' or '-' (nothing else, no newline)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None
