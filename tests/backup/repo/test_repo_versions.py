"""Repository format versions: new repositories name chunks with keyed BLAKE3 (version 3);
version 2 repositories (HMAC-SHA256 chunk ids) still restore, check, and deduplicate
against what they hold; and storage cannot turn one into the other."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
from pathlib import Path

import blake3
import pytest

from backupvault.backup.repo import Repository, create_snapshot, restore_snapshot
from backupvault.backup.repo.keys import CONFIG_MAGIC, HMAC_SHA256_IDS, VERSION
from backupvault.backup.repo.maintenance import check
from backupvault.backup.storage import Storage
from backupvault.errors import BackupVaultError

# Made by commit 981caca (the last to create version 2 repositories) with
# create_snapshot(source, repo, bytes(range(32)), repo_params=V2_PARAMS).
V2_FIXTURE = Path(__file__).parent.parent / "fixtures" / "repo-v2"
V2_ROOT_KEY = bytes(range(32))
V2_SNAPSHOT = "0c5255e591e24cb7be62eeccd465842a"
V2_PARAMS = {"chunk_min": 1024, "chunk_avg": 4096, "chunk_max": 16384, "pack_size": 65536}
V2_MTIME = 1_700_000_000
V2_FILES = {
    "chat.log": b"".join(
        b"%06d alice: see you at the station at %d\n" % (i, i % 24) for i in range(3000)
    ),
    "notes.txt": b"meet at the station at 7\n",
    "sub/data.bin": bytes(range(256)) * 40,
}
_VERSION_OFFSET = len(CONFIG_MAGIC)


def v2_source(tmp_path: Path) -> Path:
    """The tree the fixture was made from, with the same times."""
    root = tmp_path / "src"
    for name, data in V2_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in [*root.rglob("*"), root]:
        os.utime(path, (V2_MTIME, V2_MTIME))
    return root


def v2_copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo-v2"
    shutil.copytree(V2_FIXTURE, repo)
    return repo


def test_a_version_2_repository_restores_and_checks(tmp_path: Path) -> None:
    repo = v2_copy(tmp_path)
    opened = Repository.open(Storage(str(repo)), V2_ROOT_KEY)
    assert opened.config.version == HMAC_SHA256_IDS
    restore_snapshot(str(repo), V2_ROOT_KEY, tmp_path / "out", snapshot_id=V2_SNAPSHOT)
    for name, data in V2_FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    result = check(opened, read_data=True)
    assert result.errors == [] and result.chunks > 10


def test_a_version_2_repository_keeps_hmac_ids_and_deduplicates(tmp_path: Path) -> None:
    """A new backup into a version 2 repository names chunks as before, so the same data
    adds nothing, and the repository stays version 2."""
    repo = v2_copy(tmp_path)
    source = v2_source(tmp_path)
    (source / "new.txt").write_bytes(b"a new file\n")
    packs_before = set(os.listdir(repo / "data"))
    info = create_snapshot(source, str(repo), V2_ROOT_KEY)
    assert info.added == len(b"a new file\n")  # only the new file's one chunk
    assert (repo / "config").read_bytes()[_VERSION_OFFSET] == HMAC_SHA256_IDS
    opened = Repository.open(Storage(str(repo)), V2_ROOT_KEY)
    data = V2_FILES["notes.txt"]
    expected = hmac.new(opened.keys.chunk_id, data, hashlib.sha256).digest()
    assert opened.sealer.chunk_id(data) == expected
    assert expected in opened.load_index()[0].chunks
    assert packs_before < set(os.listdir(repo / "data"))
    assert check(opened, read_data=True).errors == []


def test_new_repositories_name_chunks_with_keyed_blake3(tmp_path: Path, root_key: bytes) -> None:
    source = tmp_path / "src"
    source.mkdir()
    data = os.urandom(3000)
    (source / "a.bin").write_bytes(data)
    create_snapshot(source, str(tmp_path / "repo"), root_key)
    assert (tmp_path / "repo" / "config").read_bytes()[_VERSION_OFFSET] == VERSION == 3
    opened = Repository.open(Storage(str(tmp_path / "repo")), root_key)
    expected = blake3.blake3(data, key=opened.keys.chunk_id).digest()
    assert expected in opened.load_index()[0].chunks
    # The key matters: the unkeyed hash names nothing.
    assert blake3.blake3(data).digest() not in opened.load_index()[0].chunks


@pytest.mark.parametrize(("made", "claimed"), [(VERSION, HMAC_SHA256_IDS), (2, VERSION)])
def test_storage_cannot_change_a_repository_version(
    tmp_path: Path, root_key: bytes, made: int, claimed: int
) -> None:
    """The version byte is authenticated (key check and the wrapped key's associated data),
    so storage cannot make a reader name chunks with the other function."""
    if made == VERSION:
        source = tmp_path / "src"
        source.mkdir()
        (source / "a").write_bytes(b"x" * 100)
        create_snapshot(source, str(tmp_path / "repo"), root_key)
        repo, key = tmp_path / "repo", root_key
    else:
        repo, key = v2_copy(tmp_path), V2_ROOT_KEY
    config = bytearray((repo / "config").read_bytes())
    assert config[_VERSION_OFFSET] == made
    config[_VERSION_OFFSET] = claimed
    (repo / "config").write_bytes(bytes(config))
    with pytest.raises(BackupVaultError):
        Repository.open(Storage(str(repo)), key)


def test_an_unknown_repository_version_is_refused_with_a_hint(tmp_path: Path) -> None:
    repo = v2_copy(tmp_path)
    config = bytearray((repo / "config").read_bytes())
    config[_VERSION_OFFSET] = 9
    (repo / "config").write_bytes(bytes(config))
    with pytest.raises(BackupVaultError, match="version 9 is not supported") as refused:
        Repository.open(Storage(str(repo)), V2_ROOT_KEY)
    # A later version's repository wants a newer build, not a repair: not "damaged" (9).
    assert refused.value.exit_code == 1
