"""A node whose data folder it cannot use: another user's (`node init` run as root, the
service as its own user, as docs/operations.md's unit runs it), or something else where
a folder or its lock belongs. `node serve` and `node init` said "unexpected
PermissionError: ... node.lock; this is a bug in backupvault"; now an error naming the
folder, with what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w

from backupvault.cli.main import main


def _node_toml(root: Path, data_dir: str = "node0") -> Path:
    (root / "node0.pin").write_text("1234\n")
    (root / "node0.pin").chmod(0o600)
    config = root / "node0.toml"
    node = {"index": 0, "listen": "127.0.0.1:7101", "data_dir": data_dir, "fleet_file": "f.toml"}
    token = {"module": "/nonexistent/p11.so", "label": "n0", "pin_file": "node0.pin"}
    config.write_text(tomli_w.dumps({"node": node, "token": token}))
    return config


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, str]]:
    with pytest.raises(SystemExit) as done:
        main(["--json", *args])
    error: dict[str, str] = json.loads(capsys.readouterr().err)
    assert isinstance(done.value.code, int)
    return done.value.code, error


@pytest.mark.parametrize("command", ["serve", "init"])
def test_a_data_folder_the_node_may_not_write_is_named(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    """As another user's folder, mode 0700, refuses the node's user (the tests may run as
    root, whom no mode refuses: the refusal is the one open(2) gives that user)."""
    config = _node_toml(tmp_path)
    (tmp_path / "node0").mkdir(mode=0o700)

    def refused(path: Path) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("backupvault.node.main.try_lock", refused)
    code, error = _run(["node", command, "--config", str(config)], capsys)
    assert code == 1, error
    lock = tmp_path / "node0" / "node.lock"
    assert error["error"] == f"node 0 cannot open its lock {lock}: Permission denied"
    assert "uid" in error["hint"] and "chown" in error["hint"]
    assert "bug" not in json.dumps(error)


def test_a_lock_that_is_a_folder_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _node_toml(tmp_path)
    (tmp_path / "node0" / "node.lock").mkdir(parents=True)
    code, error = _run(["node", "serve", "--config", str(config)], capsys)
    assert code == 1, error
    assert "node 0 cannot open its lock" in error["error"] and "bug" not in json.dumps(error)


def test_a_data_folder_that_cannot_be_made_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    config = _node_toml(tmp_path, "a-file/node0")
    code, error = _run(["node", "init", "--config", str(config)], capsys)
    assert code == 1, error
    assert error["error"].startswith(
        f"node 0 cannot make its data folder {tmp_path / 'a-file' / 'node0'}:"
    )
    assert "bug" not in json.dumps(error)
