"""A version-1 backup does not say which key it was made with: through the real CLI against
a real local fleet, it counts as a password backup that a new vault key would orphan."""

from __future__ import annotations

import shutil
from pathlib import Path

from .conftest import Vault

FIXTURE = Path(__file__).parents[1] / "backup" / "fixtures" / "v1"


def test_v1_backup_is_not_silently_rekeyed_over(vault: Vault, tmp_path: Path) -> None:
    vault.ensure_all_running()
    storage = tmp_path / "cloud"
    shutil.copytree(FIXTURE, storage)
    source = tmp_path / "phone"
    source.mkdir()
    (source / "chat.txt").write_text("new device")
    config = vault.client_config(tmp_path / "c.toml", "v1-user", "v1-entry")
    refused = vault.cli(
        "backup", "create", str(source), "--storage", str(storage), "--password-stdin",
        config=config, stdin="correct horse battery staple\n",
    )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "holds 1 password backup: a new key would leave them unopenable" in refused.stderr
    assert sorted(p.name for p in storage.iterdir()) == sorted(p.name for p in FIXTURE.iterdir())
