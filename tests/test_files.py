"""Secret files are created 0600 from the first byte and never written through a
symlink someone planted where the file is to go."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from backupvault.errors import InvalidInput
from backupvault.files import private_folder, replace_file, write_new_file


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_text("the attacker wants this overwritten or read\n")
    return victim


def test_a_new_secret_file_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_new_file(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    before = victim.read_text()
    planted = tmp_path / "token.pin"
    planted.symlink_to(victim)
    with pytest.raises(InvalidInput, match="already exists"):
        write_new_file(planted, b"1234")
    assert victim.read_text() == before
    # Replacing (client.toml is rewritten at a rotation) swaps the link for a file.
    replace_file(planted, b"token = 'x'\n")
    assert not planted.is_symlink()
    assert planted.read_bytes() == b"token = 'x'\n"
    assert stat.S_IMODE(planted.stat().st_mode) == 0o600
    assert victim.read_text() == before


def test_witness_keygen_refuses_a_planted_symlink(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    before = victim.read_text()
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "witness.key").symlink_to(victim)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "backupvault",
            "witness",
            "keygen",
            "--out",
            str(tmp_path / "w"),
            "--name",
            "w.test/x",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert victim.read_text() == before


def test_relay_keygen_writes_secret_keys_0600(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "backupvault",
            "--json",
            "relay",
            "keygen",
            "--out",
            str(tmp_path / "keys"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in ("operator.key", "relay-signing.key"):
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600
    assert '"relay_public_key"' in done.stdout


def test_a_replaced_file_is_synced_then_its_folder_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """State that only moves forward (pending shares, trust checkpoints) must not come back
    older after a power loss: the new file's bytes are synced before the rename, and the
    folder (which holds the rename) after it."""
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        steps.append("rename")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    replace_file(tmp_path / "state.json", b"{}", mode=0o644)
    assert steps == ["fsync file", "rename", "fsync folder"]
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_private_folder_is_made_0700(tmp_path: Path) -> None:
    folder = private_folder(tmp_path / "new" / "bv")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o757])
def test_a_folder_others_can_write_is_no_private_folder(tmp_path: Path, mode: int) -> None:
    """Another user made /tmp/bv in advance (it is theirs, or open to them): whatever is
    written there, they can swap for their own (a client.toml pinning their fleet keys)."""
    planted = tmp_path / "bv"
    planted.mkdir()
    planted.chmod(mode)
    with pytest.raises(InvalidInput, match="can be changed by other host users"):
        private_folder(planted)


def test_local_up_refuses_a_folder_others_can_write(tmp_path: Path) -> None:
    planted = tmp_path / "bv"
    planted.mkdir()
    planted.chmod(0o777)
    done = _cli("local", "up", "--dir", str(planted), "--nodes", "1")
    if (planted / "processes.json").exists():  # the old code started it: stop it again
        _cli("local", "down", "--dir", str(planted))
    assert done.returncode == 1, done.stderr
    assert "can be changed by other host users" in done.stderr
    assert list(planted.iterdir()) == []  # no key, PIN or config written into it


@pytest.mark.parametrize("group", ["fleet", "relay"])
def test_keygen_refuses_a_folder_others_can_write(tmp_path: Path, group: str) -> None:
    planted = tmp_path / "keys"
    planted.mkdir()
    planted.chmod(0o777)
    done = _cli(group, "keygen", "--out", str(planted))
    assert done.returncode == 1, done.stderr
    assert "can be changed by other host users" in done.stderr
    assert list(planted.iterdir()) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupvault", *args], capture_output=True, text=True, check=False
    )


def test_a_config_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    """`fleet ceremony` (fleet.toml), `witness add-fleet` (witness.toml) and SoftHSM2's conf
    wrote a temporary file of a fixed name first, following a link planted there."""
    import tomllib

    from backupvault.node.config import write_toml
    from backupvault.node.softhsm import _write_conf

    victim = _victim(tmp_path)
    before = victim.read_text()
    (tmp_path / "fleet.toml.tmp").symlink_to(victim)
    (tmp_path / ".softhsm2.conf.tmp").symlink_to(victim)
    write_toml(tmp_path / "fleet.toml", {"fleet_id": "00"})
    _write_conf(tmp_path / "softhsm2.conf", tmp_path / "tokens")
    assert victim.read_text() == before
    assert tomllib.loads((tmp_path / "fleet.toml").read_text()) == {"fleet_id": "00"}
    assert stat.S_IMODE((tmp_path / "fleet.toml").stat().st_mode) == 0o644
    assert "directories.tokendir" in (tmp_path / "softhsm2.conf").read_text()
