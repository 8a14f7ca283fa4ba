"""One `node serve` per data folder. A second one (started by hand beside the service
manager's, or by two `local up`s) unsealed the node's keys and opened its store and token
while the first ran (it could undo the first's row key rotation, destroying the token key
of the generation the first was re-sealing its store under) and only then failed to
listen. It is refused before anything is read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomli_w

from backupvault.files import try_lock
from backupvault.node.main import DATA_LOCK


def _node_toml(root: Path) -> Path:
    """A node config whose data folder holds nothing yet (the node is not provisioned)."""
    (root / "node0.pin").write_text("1234\n")
    (root / "node0.pin").chmod(0o600)
    token = {"module": "/usr/lib/softhsm/libsofthsm2.so", "label": "n0", "pin_file": "node0.pin"}
    node = {"index": 0, "listen": "127.0.0.1:7101", "data_dir": "node0", "fleet_file": "f.toml"}
    config = root / "node0.toml"
    config.write_text(tomli_w.dumps({"node": node, "token": token}))
    (root / "node0").mkdir(mode=0o700)
    return config


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-m", "backupvault", "node", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_a_second_node_on_a_data_folder_in_use_is_refused_before_it_reads_anything(
    tmp_path: Path,
) -> None:
    config = _node_toml(tmp_path)
    running = try_lock(tmp_path / "node0" / DATA_LOCK)  # the node that runs
    assert running is not None
    os.write(running, b"4242\n")
    try:
        second = _serve(config)
    finally:
        os.close(running)
    assert second.returncode == 1, second.stderr
    assert f"node 0 already runs on {tmp_path / 'node0'} (pid 4242)" in second.stderr
    assert "stop it first" in second.stderr
    # Refused before the fleet file (which is missing here) or any key was read.
    assert "f.toml" not in second.stderr and "identity" not in second.stderr


def test_the_lock_goes_with_the_node(tmp_path: Path) -> None:
    """Once the node that held it has stopped, the next start passes the lock (and fails
    further on, here: this folder holds no node)."""
    config = _node_toml(tmp_path)
    running = try_lock(tmp_path / "node0" / DATA_LOCK)
    assert running is not None
    os.close(running)
    done = _serve(config)
    assert done.returncode != 0
    assert "already runs" not in done.stderr


def test_node_init_on_a_data_folder_in_use_is_refused_before_it_touches_the_token(
    tmp_path: Path,
) -> None:
    """`node init` makes the keys a folder lacks: run beside the node serving from it (an
    operator following "move row-key.sealed aside and run node init" without stopping
    the node), it would make a new row key under the running node. It is refused first."""
    config = _node_toml(tmp_path)
    running = try_lock(tmp_path / "node0" / DATA_LOCK)
    assert running is not None
    os.write(running, b"4242\n")
    try:
        init = subprocess.run(
            [sys.executable, "-I", "-m", "backupvault", "node", "init", "--config", str(config)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    finally:
        os.close(running)
    assert init.returncode == 1, init.stderr
    assert f"node 0 already runs on {tmp_path / 'node0'} (pid 4242)" in init.stderr
    assert "PKCS#11" not in init.stderr  # the token was not opened
