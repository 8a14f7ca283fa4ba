"""Version-1 backups (made by every release before header version 2) still restore, through
the same safe extractor, within the ceilings, and as tamper-evident as ever."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from single_blob import create_backup
from v1_fixture import BACKUP_ID, OBJECT, ROOT_KEY, check_restored

from backupvault.backup import format as fmt
from backupvault.backup import list_backups, restore_backup
from backupvault.backup.errors import NoSpace
from backupvault.backup.safe import Limits, check_space
from backupvault.errors import AuthenticationFailed, InvalidInput, WrongKey


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A storage folder holding a copy of the version-1 fixture."""
    folder = tmp_path / "store"
    folder.mkdir()
    shutil.copy(OBJECT, folder / OBJECT.name)
    return folder


def test_v1_header_parses_with_ceilings_and_unknown_key_kind() -> None:
    raw = OBJECT.read_bytes()
    assert raw[8] == fmt.VERSION_1 and fmt.HEADER_LEN_V1 == 146
    header = fmt.BackupHeader.from_start(raw)
    assert header.version == 1 and not header.declares_totals
    assert header.backup_id_hex == BACKUP_ID
    assert header.key_name == "unknown"
    assert (header.entries, header.content_bytes) == (fmt.MAX_ENTRIES, fmt.MAX_CONTENT_BYTES)
    assert header.to_bytes() == raw[: fmt.HEADER_LEN_V1]  # the v1 layout, byte for byte
    assert len(fmt.open_header(header, ROOT_KEY)) == fmt.DATA_KEY_LEN


def test_new_backups_are_still_version_2(tmp_path: Path, store: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_bytes(b"a")
    info = create_backup(tmp_path / "src", str(store), ROOT_KEY)
    raw = (store / info.name).read_bytes()
    assert raw[8] == fmt.VERSION == 2
    assert fmt.BackupHeader.from_start(raw).declares_totals


def test_v1_restores_byte_identical(tmp_path: Path, store: Path) -> None:
    info = restore_backup(str(store), ROOT_KEY, tmp_path / "restored")
    assert info.backup_id == BACKUP_ID and info.key == "unknown"
    assert (info.files, info.folders, info.links) == (4, 2, 2)
    check_restored(tmp_path / "restored")
    # By id as well as "the latest".
    restore_backup(str(store), ROOT_KEY, tmp_path / "by-id", backup_id=BACKUP_ID[:8])
    check_restored(tmp_path / "by-id")


def test_v1_is_listed_with_an_unknown_key_kind(store: Path) -> None:
    [listed] = list_backups(str(store))
    assert (listed.backup_id, listed.key, listed.size) == (BACKUP_ID, "unknown", 954)


def test_latest_this_key_opens_counts_v1_by_its_key_check(tmp_path: Path, store: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "new.txt").write_bytes(b"newer, other key")
    # A newer v2 backup under another key is passed over: the v1 one opens with this key.
    create_backup(tmp_path / "src", str(store), os.urandom(32))
    info = restore_backup(str(store), ROOT_KEY, tmp_path / "old")
    assert info.backup_id == BACKUP_ID
    check_restored(tmp_path / "old")
    # A newer v2 backup under the same key wins over the v1 one.
    newer = create_backup(tmp_path / "src", str(store), ROOT_KEY)
    info = restore_backup(str(store), ROOT_KEY, tmp_path / "new")
    assert info.backup_id == newer.backup_id
    assert (tmp_path / "new" / "new.txt").read_bytes() == b"newer, other key"
    assert sorted(b.key or "" for b in list_backups(str(store))) == [
        "password",
        "password",
        "unknown",
    ]


def _refused(store: Path, dest: Path, match: str, error: type[Exception], key: bytes) -> None:
    with pytest.raises(error, match=match):
        restore_backup(str(store), key, dest)
    assert not dest.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["store"]  # no staging left


def test_wrong_key_is_refused_clearly(tmp_path: Path, store: Path) -> None:
    _refused(store, tmp_path / "dest", "not made with this key", WrongKey, os.urandom(32))


@pytest.mark.parametrize("position", [fmt.HEADER_LEN_V1, fmt.HEADER_LEN_V1 + 300, 953])
def test_flipped_body_byte_is_refused(tmp_path: Path, store: Path, position: int) -> None:
    data = bytearray(OBJECT.read_bytes())
    data[position] ^= 0x01
    (store / OBJECT.name).write_bytes(bytes(data))
    _refused(store, tmp_path / "dest", "failed authentication", AuthenticationFailed, ROOT_KEY)


def test_every_v1_header_byte_is_authenticated(tmp_path: Path, store: Path) -> None:
    for position in range(fmt.HEADER_LEN_V1):
        data = bytearray(OBJECT.read_bytes())
        data[position] ^= 0x01
        (store / OBJECT.name).write_bytes(bytes(data))
        if position == 8:
            # 1 -> 0: no such version (a 2 here could not parse: v2 is 13 bytes longer).
            match = "version 0 is not supported"
        else:
            match = "BVBACKUP|payload|chunk size|creation time|this key|failed authentication"
        with pytest.raises((InvalidInput, AuthenticationFailed), match=match):
            restore_backup(str(store), ROOT_KEY, tmp_path / "dest")
        assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("length", [0, 9, fmt.HEADER_LEN_V1 - 1, fmt.HEADER_LEN_V1, 500, 953])
def test_truncated_v1_is_refused(tmp_path: Path, store: Path, length: int) -> None:
    (store / OBJECT.name).write_bytes(OBJECT.read_bytes()[:length])
    error: type[Exception] = InvalidInput if length < fmt.HEADER_LEN_V1 else AuthenticationFailed
    _refused(store, tmp_path / "dest", "truncated|BVBACKUP|failed authentication", error, ROOT_KEY)


def test_appended_data_is_refused(tmp_path: Path, store: Path) -> None:
    (store / OBJECT.name).write_bytes(OBJECT.read_bytes() + b"\x00" * 40)
    _refused(store, tmp_path / "dest", "failed authentication", AuthenticationFailed, ROOT_KEY)


def test_v1_free_space_check_asks_for_the_object_size(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    ceilings = Limits(fmt.MAX_ENTRIES, fmt.MAX_CONTENT_BYTES, space_estimate=954)
    check_space(tmp_path, ceilings)  # the ceilings themselves are not asked for
    with pytest.raises(NoSpace, match="no space left"):
        check_space(tmp_path, Limits(1, 0, space_estimate=free + (1 << 40)))
