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


def test_missing_entry_over_a_repository_makes_no_key(vault: Vault, tmp_path: Path) -> None:
    """A repository opens only with the key that made it: a vault entry that does not
    exist (lost, deleted, or a typo in the config) is never silently given a new key over
    it, not even with --new-key, and nothing is registered."""
    source = tmp_path / "phone"
    source.mkdir()
    (source / "chat.txt").write_text("first device")
    storage = str(tmp_path / "cloud")
    first = vault.client_config(tmp_path / "first.toml", "nk-user", "nk-entry")
    second = vault.client_config(tmp_path / "second.toml", "nk-user", "nk-other-entry")

    created = vault.cli(
        "--json", "backup", "create", str(source), "--storage", storage, "--password-stdin",
        config=first, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    original = json.loads(created.stdout)
    assert original["registered"] is True and original["key"] == "password"

    for extra in ([], ["--new-key"]):
        refused = vault.cli(
            "backup", "create", str(source), "--storage", storage, "--password-stdin", *extra,
            config=second, stdin=PASSWORD + "\n",
        )  # fmt: skip
        assert refused.returncode == 1, refused.stderr
        assert "holds a repository: a new key could not open it" in refused.stderr
        # A password repository opens with the code `vault recovery-code` printed, not only
        # a --recovery-code one: the hint said "if the repository was made with one".
        assert "the code `backupvault vault recovery-code` printed" in refused.stderr
        status = vault.threshold("nk-user", "nk-other-entry").status()
        assert status.status == EntryStatus.EMPTY  # no key was made

    again = vault.cli(
        "backup", "create", str(source), "--storage", storage, "--password-stdin", "--new-key",
        config=first, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert again.returncode == 2 and "already holds a key" in again.stderr

    # The right entry and password restore the latest snapshot.
    (source / "chat.txt").write_text("second snapshot")
    made = vault.cli(
        "backup", "create", str(source), "--storage", storage, "--password-stdin",
        config=first, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    dest = tmp_path / "restored"
    restored = vault.cli(
        "--json", "backup", "restore", "--storage", storage, "--to", str(dest),
        "--password-stdin", config=first, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert (dest / "chat.txt").read_text() == "second snapshot"


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

    created = vault.cli("--json", "backup", "create", str(source), "--recovery-code", config=config)
    assert created.returncode == 0, created.stderr
    code = json.loads(created.stdout)["recovery_code"]
    assert (home / "cloud" / "config").is_file()  # the repository is in ~/cloud
    assert not (tmp_path / "~").exists() and not Path("~").exists()
    listed = vault.cli("backup", "list", "--recovery-code", "-", config=config, stdin=code + "\n")
    assert listed.returncode == 0, listed.stderr
    assert f"1 snapshot in the repository at {home / 'cloud'}" in listed.stdout
