"""The token PIN is refused at start where it would leak (issue 9 §6, "Token PIN"): inside
the node's data folder, which operators copy and back up, or readable by other users."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from backupvault.errors import InvalidInput
from backupvault.node.config import NodeConfig
from backupvault.node.store import NodeStore, store_generation


def _node_toml(root: Path, pin_file: str | None) -> Path:
    token: dict[str, str] = {"module": "/usr/lib/softhsm/libsofthsm2.so", "label": "n0"}
    if pin_file is not None:
        token["pin_file"] = pin_file
    config = root / "node0.toml"
    node = {"index": 0, "listen": "127.0.0.1:7101", "data_dir": "node0"}
    config.write_text(tomli_w.dumps({"node": node, "token": token}))
    (root / "node0").mkdir(exist_ok=True)
    return config


def _pin(path: Path, mode: int) -> None:
    path.write_text("1234\n")
    path.chmod(mode)


def test_a_pin_file_outside_the_data_folder_readable_by_the_node_alone_is_taken(
    tmp_path: Path,
) -> None:
    _pin(tmp_path / "node0.pin", 0o600)
    assert NodeConfig.load(_node_toml(tmp_path, "node0.pin")).token.pin == "1234"


@pytest.mark.parametrize("where", ["node0/token.pin", "node0/hsm/token.pin"])
def test_a_pin_file_inside_the_data_folder_is_refused(tmp_path: Path, where: str) -> None:
    config = _node_toml(tmp_path, where)
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    _pin(tmp_path / where, 0o600)
    with pytest.raises(InvalidInput, match="inside the node's data folder") as refused:
        NodeConfig.load(config)
    assert "move it outside data_dir" in str(refused.value.hint)


def test_a_symlink_out_of_the_data_folder_does_not_hide_a_pin_inside_it(tmp_path: Path) -> None:
    config = _node_toml(tmp_path, "elsewhere.pin")
    _pin(tmp_path / "node0" / "token.pin", 0o600)
    (tmp_path / "elsewhere.pin").symlink_to(tmp_path / "node0" / "token.pin")
    with pytest.raises(InvalidInput, match="inside the node's data folder"):
        NodeConfig.load(config)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_pin_file_other_users_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    _pin(tmp_path / "node0.pin", mode)
    with pytest.raises(InvalidInput, match="can be read or changed by other host users") as err:
        NodeConfig.load(_node_toml(tmp_path, "node0.pin"))
    assert "chmod 600" in str(err.value.hint)


def test_the_pin_in_the_environment_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment variable is readable only by the node's own user (and root), through
    /proc/<pid>/environ: it passes."""
    monkeypatch.setenv("BACKUPVAULT_TOKEN_PIN", "5678")
    assert NodeConfig.load(_node_toml(tmp_path, None)).token.pin == "5678"
    monkeypatch.delenv("BACKUPVAULT_TOKEN_PIN")
    with pytest.raises(InvalidInput, match="set the token PIN"):
        NodeConfig.load(_node_toml(tmp_path, None))


def test_a_missing_pin_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read the token PIN file"):
        NodeConfig.load(_node_toml(tmp_path, "nowhere.pin"))


def test_a_config_given_by_a_relative_path_names_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`local up --dir bv` (or `node serve --config bv/node0.toml`) on an existing
    deployment: the store, opened by file URI, cannot be named by a relative path, and the
    node said its store was "malformed" and to wipe it (an audit of 2026-12-04)."""
    _pin(tmp_path / "node0.pin", 0o600)
    _node_toml(tmp_path, "node0.pin")
    monkeypatch.chdir(tmp_path.parent)
    config = NodeConfig.load(Path(tmp_path.name) / "node0.toml")
    assert config.data_dir.is_absolute() and config.data_dir == tmp_path / "node0"
    store = NodeStore(Path(tmp_path.name) / "node0" / "store.sqlite", 0, b"k" * 32)
    store.save([])
    store.close()
    assert store_generation(Path(tmp_path.name) / "node0" / "store.sqlite") == 0
