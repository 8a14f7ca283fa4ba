"""The repository format over real remote storage: S3 (moto's server, spoken to over the
S3 protocol by s3fs) and WebDAV (WsgiDAV). Incremental backups, --include, check,
forget/prune, and tampering detected with nothing written."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from backup_trees import make_tree, snapshot
from moto.server import ThreadedMotoServer
from test_backup_webdav import webdav, with_userinfo  # noqa: F401 - the WsgiDAV fixture

from backupvault.backup.repo import create_snapshot, maintenance, restore_snapshot
from backupvault.backup.repo.backend import Backend
from backupvault.backup.repo.maintenance import Policy
from backupvault.backup.storage import Storage
from backupvault.errors import AuthenticationFailed

SMALL = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 8192}
BUCKET = "backups"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """(storage URL, boto3 client) with credentials and endpoint in the environment."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
    }.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    prefix = f"laptop-{os.urandom(4).hex()}"
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}/{prefix}", client


def round_trip(url: str, source: Path, tmp_path: Path, key: bytes) -> None:
    first = create_snapshot(source, url, key, repo_params=SMALL)
    (source / "new.txt").write_text("added later")
    second = create_snapshot(source, url, key)
    assert second.parent_id == first.snapshot_id
    assert second.files_read == 1 and second.added == len("added later")
    restore_snapshot(url, key, tmp_path / "latest")
    assert snapshot(tmp_path / "latest") == snapshot(source)
    restore_snapshot(url, key, tmp_path / "one", include=("docs/notes.txt",))
    assert (tmp_path / "one" / "docs" / "notes.txt").read_text() == "hello\n" * 100
    repo = maintenance.open_repository(url, key)
    assert [s.snapshot_id for s in maintenance.list_snapshots(repo)] == [
        first.snapshot_id,
        second.snapshot_id,
    ]
    assert maintenance.check(repo, read_data=True).errors == []
    maintenance.forget(repo, Policy(last=1), dry_run=False)
    assert repo.was_forgotten(first.snapshot_id)  # its forget record is in storage
    maintenance.prune(repo, dry_run=False)
    assert repo.was_forgotten(first.snapshot_id)  # kept for good
    checked = maintenance.check(repo, read_data=True)
    assert (checked.errors, checked.warnings) == ([], [])
    restore_snapshot(url, key, tmp_path / "after-prune")
    assert snapshot(tmp_path / "after-prune") == snapshot(source)


def test_s3_round_trip(s3: tuple[str, Any], tmp_path: Path, root_key: bytes) -> None:
    url, _ = s3
    round_trip(url, make_tree(tmp_path), tmp_path, root_key)


def test_s3_tampered_pack_is_detected(s3: tuple[str, Any], tmp_path: Path, root_key: bytes) -> None:
    url, client = s3
    source = make_tree(tmp_path)
    create_snapshot(source, url, root_key, repo_params=SMALL)
    prefix = url.split("/", 3)[3]
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/data/")
    key = listed["Contents"][0]["Key"]
    body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[20] ^= 1
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    with pytest.raises(AuthenticationFailed):
        restore_snapshot(url, root_key, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    errors = maintenance.check(maintenance.open_repository(url, root_key), read_data=True).errors
    assert len(errors) == 1 and key.rsplit("/", 1)[1] in errors[0]


def test_webdav_round_trip(webdav: tuple[str, Path], tmp_path: Path, root_key: bytes) -> None:  # noqa: F811
    base, served = webdav
    url = with_userinfo(base) + "/repo-" + os.urandom(4).hex()
    round_trip(url, make_tree(tmp_path), tmp_path, root_key)
    repo_dir = served / url.rsplit("/", 1)[1]
    leftovers = [p for p in repo_dir.rglob("*") if p.name.endswith(".partial")]
    assert leftovers == []


def test_webdav_tampered_snapshot_is_detected(
    webdav: tuple[str, Path],  # noqa: F811
    tmp_path: Path,
    root_key: bytes,
) -> None:
    base, served = webdav
    name = "repo-" + os.urandom(4).hex()
    url = with_userinfo(base) + "/" + name
    create_snapshot(make_tree(tmp_path), url, root_key, repo_params=SMALL)
    snap = next((served / name / "snapshots").iterdir())
    data = bytearray(snap.read_bytes())
    data[-3] ^= 1
    snap.write_bytes(bytes(data))
    with pytest.raises(AuthenticationFailed):
        restore_snapshot(url, root_key, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_s3_config_is_created_only_if_absent(s3: tuple[str, Any]) -> None:
    """A conditional PUT (If-None-Match: *): the second device's config is refused."""
    url, client = s3
    backend = Backend(Storage(url))
    assert backend.put_new("config", b"first") is True
    assert backend.put_new("config", b"second") is False
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    assert client.get_object(Bucket=bucket, Key=f"{prefix}/config")["Body"].read() == b"first"


def test_webdav_config_is_created_only_if_absent(webdav: tuple[str, Path]) -> None:  # noqa: F811
    """MOVE with Overwrite: F; the refused temporary is removed."""
    base, served = webdav
    name = "repo-" + os.urandom(4).hex()
    backend = Backend(Storage(with_userinfo(base) + "/" + name))
    assert backend.put_new("config", b"first") is True
    assert backend.put_new("config", b"second") is False
    assert os.listdir(served / name) == ["config"]
    assert (served / name / "config").read_bytes() == b"first"
