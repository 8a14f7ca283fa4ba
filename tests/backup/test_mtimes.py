"""Restored mtimes equal the source's to the whole microsecond, including the values where
a float round trip through tar would land one microsecond off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from single_blob import create_backup

from backupvault.backup import restore_backup

AWKWARD_NS = [
    1_795_450_180_729_570_500,  # the case that once restored as ...571
    1_795_450_180_729_570_999,
    1_700_000_000_000_000_001,
    946_684_800_123_456_789,
    1_000,
]


@pytest.mark.parametrize("mtime_ns", AWKWARD_NS)
def test_mtime_kept_to_the_microsecond(tmp_path: Path, root_key: bytes, mtime_ns: int) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "f.txt").write_text("x")
    os.utime(source / "f.txt", ns=(mtime_ns, mtime_ns))
    os.utime(source, ns=(mtime_ns, mtime_ns))
    create_backup(source, str(tmp_path / "store"), root_key)
    restore_backup(str(tmp_path / "store"), root_key, tmp_path / "out")
    for name in ("f.txt", ""):
        restored = (tmp_path / "out" / name).stat().st_mtime_ns
        assert restored == mtime_ns // 1000 * 1000
