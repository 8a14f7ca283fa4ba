"""Writing files that hold secrets (keys, tokens, PINs) or state that must not go back.

Created with O_CREAT | O_EXCL | O_NOFOLLOW and mode 0600 from the first byte: never
through a symlink someone planted at the path, and never readable by others, not even
for the moment between a write and a chmod.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from backupvault.errors import InvalidInput

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, _FLAGS, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    finally:
        if fd >= 0:
            os.close(fd)


def write_new_file(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Create `path` holding `data`; refuses if anything (a file, a symlink) is there."""
    path = Path(path)
    try:
        _write(path, data, mode)
    except FileExistsError:
        raise InvalidInput(
            f"{path} already exists; refusing to overwrite it",
            hint="move the old file away first, or choose another path",
        ) from None
    except OSError as err:
        raise InvalidInput(f"cannot create {path}: {err.strerror}") from None


def replace_file(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` (mode 0600 unless told), replacing what is there: a fresh
    temporary file is written, fsynced and renamed over it, then its folder is synced. So a
    symlink at `path` is replaced, never followed; a crash or a full disk leaves the old
    file or the new one, never part of one; and a power loss after the return cannot bring
    the old one back (state that only moves forward depends on that)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write(tmp, data, mode)
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InvalidInput(f"cannot write {path}: {err.strerror}") from None
