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
from backupvault.errors import AuthenticationFailed, BackupVaultError

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


@pytest.fixture(scope="module")
def sftp_server() -> Iterator[int]:
    """An SFTP server (asyncssh, on a thread of its own) that asks for no password and
    serves this machine's files; its port."""
    import asyncio
    import threading
    import warnings

    from cryptography.utils import CryptographyDeprecationWarning

    with warnings.catch_warnings():  # asyncssh names DSA at import, as storage.py's note says
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        import asyncssh

    class NoAuth(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False

    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    async def listen() -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[key], server_factory=NoAuth, sftp_factory=True
        )
        started["server"], started["port"] = server, server.sockets[0].getsockname()[1]
        ready.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(listen()), loop.run_forever()), daemon=True
    )
    thread.start()
    assert ready.wait(30)
    try:
        yield started["port"]
    finally:

        async def close() -> None:
            started["server"].close()
            await started["server"].wait_closed()
            # The sessions' handlers too, or the loop's end reports them still pending.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_sftp_snapshot_cut_off_on_its_way_leaves_no_damaged_snapshot(
    sftp_server: int, tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sftp writes an object in place: a backup whose connection is lost (or that is
    killed) while its snapshot is on its way left that snapshot torn under its name, a
    damaged snapshot that `check` reported and that stopped every prune until `forget
    --damaged`. Written as a temporary and renamed, it leaves nothing under the name."""
    import asyncssh

    url = f"sftp://tester@127.0.0.1:{sftp_server}{tmp_path / 'repo'}"
    options = {"known_hosts": None}
    source = tmp_path / "src"
    make_tree(source)
    first = create_snapshot(source, url, root_key, repo_params=SMALL, storage_options=options)
    (source / "new.txt").write_text("added later")
    cutting = [False]
    write, put = asyncssh.SFTPClientFile.write, Backend.put

    async def cut_off(self: Any, data: bytes, *args: Any, **kwargs: Any) -> Any:
        if not cutting[0]:
            return await write(self, data, *args, **kwargs)
        await write(self, data[: len(data) // 2], *args, **kwargs)
        raise ConnectionResetError("connection lost")

    def put_snapshot_cut_off(self: Backend, name: str, data: Any, **kw: Any) -> None:
        cutting[0] = name.startswith("snapshots/")
        try:
            put(self, name, data, **kw)
        finally:
            cutting[0] = False

    monkeypatch.setattr(asyncssh.SFTPClientFile, "write", cut_off)
    monkeypatch.setattr(Backend, "put", put_snapshot_cut_off)
    with pytest.raises(BackupVaultError):
        create_snapshot(source, url, root_key, storage_options=options)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "repo" / "snapshots").iterdir() if p.name[0] != "."] == [
        first.snapshot_id
    ]
    repo = maintenance.open_repository(url, root_key, options)
    assert maintenance.check(repo, read_data=True).errors == []
    maintenance.prune(repo, dry_run=False)


def test_sftp_round_trip_of_a_tree_whose_snapshot_is_larger_than_a_ranged_read(
    sftp_server: int, tmp_path: Path, root_key: bytes
) -> None:
    """sshfs's cat_file reads a whole object whatever range is asked: each ranged read
    (a snapshot's summary, its first 8 KiB; a pack's header; a restore's chunks) was
    refused as "storage sent N bytes for a range of M", so once the snapshot of a tree of
    a few hundred files was stored, the next backup, list, restore and prune all failed."""
    url = f"sftp://tester@127.0.0.1:{sftp_server}{tmp_path / 'repo'}"
    options = {"known_hosts": None}
    source = tmp_path / "src"
    source.mkdir()
    for number in range(400):
        (source / f"file-{number:04}.txt").write_bytes(os.urandom(300))
    first = create_snapshot(source, url, root_key, repo_params=SMALL, storage_options=options)
    assert (tmp_path / "repo" / "snapshots" / first.snapshot_id).stat().st_size > 8192
    (source / "new.txt").write_text("added later")
    second = create_snapshot(source, url, root_key, storage_options=options)
    assert second.parent_id == first.snapshot_id
    restore_snapshot(url, root_key, tmp_path / "out", storage_options=options)
    assert snapshot(tmp_path / "out") == snapshot(source)
    repo = maintenance.open_repository(url, root_key, options)
    assert maintenance.check(repo, read_data=True).errors == []
    maintenance.prune(repo, dry_run=False)
    # A single-blob backup's header is read so too (the first bytes of each object).
    assert len(Storage(url, options).read_start("config", 16)) == 16
