"""The version-1 backup in fixtures/v1/, made by the code of commit a9b980d (the last to
write version 1) with `create_backup(source, storage, root_key)`, and what it holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "v1"
OBJECT = FIXTURE / "backup-20261130T101433.734239Z-a60e9699398a6f69b14c881894d3e5fc.bvb"
BACKUP_ID = "a60e9699398a6f69b14c881894d3e5fc"
ROOT_KEY = bytes(range(32))
RECOVERY_CODE = (
    "0001-0203-0405-0607-0809-0a0b-0c0d-0e0f-1011-1213-1415-1617-1819-1a1b-1c1d-1e1f-d2ff"
)
MTIME = 1_700_000_000  # of every file and folder in the source

FILES = {
    "notes.txt": b"meet at the station at 7\n",
    "empty": b"",
    "sub folder/caf\u00e9 \u65e5\u672c.txt": "h\u00e9llo w\u00f6rld \u2603\n".encode(),
    "sub folder/deeper/data.bin": bytes(range(256)) * 40,
}
FOLDERS = {"sub folder", "sub folder/deeper"}
LINKS = {"link to notes": "notes.txt", "sub folder/up-link": "../notes.txt"}


def check_restored(dest: Path) -> None:
    """`dest` holds exactly the fixture's source tree, byte for byte."""
    found = {p.relative_to(dest).as_posix(): p for p in dest.rglob("*")}
    assert set(found) == set(FILES) | FOLDERS | set(LINKS)
    for name, content in FILES.items():
        path = found[name]
        assert path.is_file() and not path.is_symlink()
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(content).digest()
        assert path.stat().st_mtime == MTIME
    for name in FOLDERS:
        assert found[name].is_dir() and not found[name].is_symlink()
        assert found[name].stat().st_mtime == MTIME
    for name, target in LINKS.items():
        assert found[name].is_symlink() and found[name].readlink() == Path(target)
    assert dest.stat().st_mtime == MTIME
