"""`backup create` and `backup restore` with a password, through the real CLI against a real
local fleet (5 node processes and the relay): a missing vault entry is never silently
re-keyed over existing password backups (issue 8, item 2), and a password restore picks the
latest backup that password can open (issue 13, item 2)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupvault.node.config import write_toml
from backupvault.protocol import EntryStatus

from .conftest import Vault

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def full_fleet(vault: Vault) -> Iterator[None]:
    vault.ensure_all_running()
    yield
    vault.ensure_all_running()


def test_missing_entry_over_password_backups_needs_new_key(vault: Vault, tmp_path: Path) -> None:
    source = tmp_path / "phone"
    source.mkdir()
    (source / "chat.txt").write_text("first device")
    storage = str(tmp_path / "cloud")
    first = vault.client_config(tmp_path / "first.toml", "nk-user", "nk-entry")
    # The same account with an entry the vault does not hold (lost, deleted, or a typo in
    # the config): its password backups would become unreadable under a new key.
    second = vault.client_config(tmp_path / "second.toml", "nk-user", "nk-other-entry")

    created = vault.cli(
        "--json", "backup", "create", str(source), "--storage", storage, "--password-stdin",
        config=first, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    original = json.loads(created.stdout)
    assert original["registered"] is True and original["key"] == "password"

    refused = vault.cli(
        "backup", "create", str(source), "--storage", storage, "--password-stdin",
        config=second, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "holds 1 password backup: a new key would leave them unopenable" in refused.stderr
    assert "--new-key" in refused.stderr
    assert len(list((tmp_path / "cloud").glob("backup-*.bvb"))) == 1
    status = vault.client("nk-user", "nk-other-entry").status()
    assert status.status == EntryStatus.EMPTY  # no key was made

    (source / "chat.txt").write_text("second key")
    renewed = vault.cli(
        "--json", "backup", "create", str(source), "--storage", storage, "--password-stdin",
        "--new-key", config=second, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert renewed.returncode == 0, renewed.stderr
    assert json.loads(renewed.stdout)["registered"] is True

    again = vault.cli(
        "backup", "create", str(source), "--storage", storage, "--password-stdin", "--new-key",
        config=first, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert again.returncode == 2 and "already holds a key" in again.stderr

    # Newest of all: a recovery-code backup. A password restore passes over it, and over
    # the other entry's password backup, to the latest backup this password opens.
    (source / "chat.txt").write_text("recovery code")
    coded = vault.cli(
        "backup", "create", str(source), "--storage", storage, "--recovery-code", config=first
    )
    assert coded.returncode == 0, coded.stderr
    listed = vault.cli("--json", "backup", "list", "--storage", storage, config=first)
    kinds = [b["key"] for b in json.loads(listed.stdout)["backups"]]
    assert kinds == ["password", "password", "recovery code"]
    text = vault.cli("backup", "list", "--storage", storage, config=first).stdout
    assert "KEY" in text.splitlines()[0] and text.count("password") == 2

    for config, expected in ((first, "first device"), (second, "second key")):
        dest = tmp_path / f"restored-{config.stem}"
        restored = vault.cli(
            "--json", "backup", "restore", "--storage", storage, "--to", str(dest),
            "--password-stdin", config=config, stdin=PASSWORD + "\n",
        )  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout)["key"] == "password"
        assert (dest / "chat.txt").read_text() == expected


def test_tilde_in_client_toml_is_the_home_folder(
    vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the CLI processes inherit it
    config = vault.client_config(tmp_path / "client.toml", "tilde-user", "tilde-entry")
    data = tomllib.loads(config.read_text())
    write_toml(config, {**data, "storage": "~/cloud"})
    source = tmp_path / "notes.txt"
    source.write_text("hello")

    created = vault.cli("backup", "create", str(source), "--recovery-code", config=config)
    assert created.returncode == 0, created.stderr
    assert len(list((home / "cloud").glob("backup-*.bvb"))) == 1
    assert not (tmp_path / "~").exists() and not Path("~").exists()
    listed = vault.cli("backup", "list", config=config)
    assert listed.returncode == 0 and f"1 backup at {home / 'cloud'}" in listed.stdout
