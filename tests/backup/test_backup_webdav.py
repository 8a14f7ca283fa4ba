"""Backups through a real WebDAV server (WsgiDAV on cheroot) on loopback, with basic auth."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_trees import SMALL_CHUNK, make_tree, snapshot
from cheroot import wsgi
from single_blob import create_backup
from wsgidav.wsgidav_app import WsgiDAVApp

from backupvault.backup import (
    ENV_WEBDAV_PASSWORD,
    ENV_WEBDAV_USER,
    StorageError,
    list_backups,
    restore_backup,
)
from backupvault.errors import AuthenticationFailed

USER = "alice"
PASSWORD = "p@ss:w/rd"  # characters that need percent-encoding in a URL


@pytest.fixture(scope="module")
def webdav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL without credentials, the folder the server serves)."""
    root = tmp_path_factory.mktemp("webdav-root")
    app = WsgiDAVApp(
        {
            "provider_mapping": {"/": str(root)},
            "http_authenticator": {
                "domain_controller": None,  # the SimpleDomainController
                "accept_basic": True,
                "accept_digest": False,
                "default_to_digest": False,
            },
            "simple_dc": {"user_mapping": {"*": {USER: {"password": PASSWORD}}}},
            "verbose": 0,
            "logging": {"enable": False},
        }
    )
    server = wsgi.Server(("127.0.0.1", 0), app)
    server.prepare()
    port = server.bind_addr[1]
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield f"webdav+http://127.0.0.1:{port}", root
    finally:
        server.stop()
        thread.join(timeout=10)


def with_userinfo(base: str, password: str = PASSWORD) -> str:
    from urllib.parse import quote

    scheme, rest = base.split("://", 1)
    return f"{scheme}://{USER}:{quote(password, safe='')}@{rest}"


def test_backup_list_restore_with_credentials_in_the_url(
    webdav: tuple[str, Path], tmp_path: Path, root_key: bytes
) -> None:
    base, served = webdav
    url = with_userinfo(base) + "/backups/laptop"
    source = make_tree(tmp_path)
    first = create_backup(source, url, root_key, chunk_size=SMALL_CHUNK)
    (source / "new.txt").write_text("added later")
    second = create_backup(source, url, root_key, chunk_size=SMALL_CHUNK)

    listed = list_backups(url)
    assert [b.backup_id for b in listed] == [first.backup_id, second.backup_id]
    assert [b.size for b in listed] == [first.size, second.size]
    stored = sorted(p.name for p in (served / "backups" / "laptop").iterdir())
    assert stored == sorted([first.name, second.name])  # no temporary objects left
    assert PASSWORD not in first.url and "***" in first.url

    restore_backup(url, root_key, tmp_path / "latest")
    assert snapshot(tmp_path / "latest") == snapshot(source)
    restore_backup(url, root_key, tmp_path / "first", backup_id=first.backup_id)
    assert not (tmp_path / "first" / "new.txt").exists()
    assert (tmp_path / "first" / "docs" / "notes.txt").read_text() == "hello\n" * 100


def test_credentials_from_the_environment(
    webdav: tuple[str, Path], tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = webdav
    monkeypatch.setenv(ENV_WEBDAV_USER, USER)
    monkeypatch.setenv(ENV_WEBDAV_PASSWORD, PASSWORD)
    source = tmp_path / "one.txt"
    source.write_bytes(os.urandom(3 * SMALL_CHUNK))
    info = create_backup(source, base + "/env", root_key, chunk_size=SMALL_CHUNK)
    assert [b.backup_id for b in list_backups(base + "/env")] == [info.backup_id]
    restore_backup(base + "/env", root_key, tmp_path / "out")
    assert (tmp_path / "out" / "one.txt").read_bytes() == source.read_bytes()


def test_tampered_remote_object_leaves_dest_untouched(
    webdav: tuple[str, Path], tmp_path: Path, root_key: bytes
) -> None:
    base, served = webdav
    url = with_userinfo(base) + "/tamper"
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(4 * SMALL_CHUNK))
    info = create_backup(source, url, root_key, chunk_size=SMALL_CHUNK)
    stored = served / "tamper" / info.name
    data = stored.read_bytes()
    stored.write_bytes(data[: len(data) - SMALL_CHUNK])
    with pytest.raises(AuthenticationFailed, match="truncated"):
        restore_backup(url, root_key, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_wrong_password_is_a_storage_error_without_the_password(
    webdav: tuple[str, Path], tmp_path: Path, root_key: bytes
) -> None:
    base, _ = webdav
    wrong = "not-the-Password-123"
    url = with_userinfo(base, wrong) + "/x"
    source = tmp_path / "f"
    source.write_text("x")
    for action in (
        lambda: list_backups(url),
        lambda: restore_backup(url, root_key, tmp_path / "out"),
    ):
        with pytest.raises(StorageError) as caught:
            action()
        assert wrong not in str(caught.value)
        assert "***" in str(caught.value)


def test_unreachable_server_is_a_storage_error(tmp_path: Path, root_key: bytes) -> None:
    with pytest.raises(
        StorageError, match=r"cannot list backups at webdav\+http://127.0.0.1:9/backups: "
    ):
        list_backups("webdav+http://127.0.0.1:9/backups")


def test_a_first_backup_s_new_repository_note_hides_the_password(
    webdav: tuple[str, Path], tmp_path: Path
) -> None:
    """The note a first backup gives of the repository it made named the storage URL as
    given, password and all (review s42-B, B3)."""
    import subprocess
    import sys
    from urllib.parse import quote

    source = make_tree(tmp_path)
    url = with_userinfo(webdav[0]) + "/first-note"
    done = subprocess.run(
        [sys.executable, "-m", "backupvault", "backup", "create", str(source), "--storage",
         url, "--recovery-code"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "a new one is made there" in done.stderr and "***" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout
    assert quote(PASSWORD, safe="") not in done.stderr + done.stdout
