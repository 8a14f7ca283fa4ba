"""`fleet client-config --out FILE` and a FILE that is already there: it holds an
account's tokens and device key, so it is replaced only when asked to (`--force`)."""

from __future__ import annotations

import os
from pathlib import Path

from fleet_files import client_config, write_fleet_file  # tests/cli/fleet_files.py

from backupvault.client.config import ClientConfig


def test_an_existing_out_file_is_refused_without_force_and_replaced_with_it(
    tmp_path: Path,
) -> None:
    fleet = tmp_path / "fleet.toml"
    write_fleet_file(fleet)
    out = tmp_path / "client.toml"
    out.write_text('account = "bob"\ntoken = "bob-only-copy"\n')
    code, error = client_config(tmp_path, fleet)
    assert code == 2, error
    assert error["error"] == f"{out} already exists: nothing was written"
    assert "--force" in str(error["hint"])
    assert out.read_text() == 'account = "bob"\ntoken = "bob-only-copy"\n'

    # A link there is not followed, nor its target overwritten, without --force either.
    out.unlink()
    target = tmp_path / "elsewhere.toml"
    target.write_text("kept\n")
    out.symlink_to(target)
    code, error = client_config(tmp_path, fleet)
    assert code == 2 and "already exists" in error["error"]
    assert target.read_text() == "kept\n" and out.is_symlink()

    code, result = client_config(tmp_path, fleet, "--force")
    assert code == 0, result
    assert not out.is_symlink() and target.read_text() == "kept\n"
    assert ClientConfig.load(out).account == "alice"
    assert os.stat(out).st_mode & 0o777 == 0o600


def test_a_malformed_option_value_is_a_usage_error_and_writes_nothing(tmp_path: Path) -> None:
    """A mistyped --device-key was exit 1; every other wrong option value is 2 (review
    s39-C: docs/cli.md, exit codes)."""
    fleet = tmp_path / "fleet.toml"
    write_fleet_file(fleet)
    code, error = client_config(tmp_path, fleet, "--device-key", "zz")
    assert code == 2, error
    assert "field 'device_key' is malformed" in error["error"]
    assert "--device-key" in str(error["hint"])
    assert not (tmp_path / "client.toml").exists()
