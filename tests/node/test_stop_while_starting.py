"""SIGTERM while a node is still starting (measuring its code, unsealing its keys, opening
its store: a second or so, minutes for a large store's first start on a new format) is a
stop, as it is once the node serves: exit status 0, and no client's "interrupted". It was
the command line's Ctrl-C: status 130, "error: interrupted" with a hint about password
checks, so a `systemctl stop` or `restart` of a node still starting left a failed unit."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import tomli_w

from backupvault.cli.main import main


def _node_toml(root: Path, fleet_file: Path) -> Path:
    (root / "node0.pin").write_text("1234\n")
    (root / "node0.pin").chmod(0o600)
    (root / "node0").mkdir(mode=0o700)
    config = root / "node0.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "node": {
                    "index": 0,
                    "listen": "127.0.0.1:7101",
                    "data_dir": "node0",
                    "fleet_file": str(fleet_file),
                },
                "token": {"module": "/nonexistent/p11.so", "label": "n0", "pin_file": "node0.pin"},
            }
        )
    )
    return config


def _terminate_once_it_reads(fifo: Path) -> threading.Thread:
    """SIGTERM to this process once the node's start is blocked reading `fifo` (its fleet
    file): a writer can open a FIFO without waiting only once a reader has it open."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.01)
                continue
            time.sleep(0.2)  # the reader is in read() now, waiting for bytes
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
            os.close(writer)
            return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigterm_while_the_node_starts_is_a_clean_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process: a test cannot run under `python -I`, which the start checks first.
    monkeypatch.setattr("backupvault.node.main.check_isolated", lambda: None)
    fleet_file = tmp_path / "fleet.toml"
    os.mkfifo(fleet_file)
    config = _node_toml(tmp_path, fleet_file)
    thread = _terminate_once_it_reads(fleet_file)
    with pytest.raises(SystemExit) as done:
        main(["node", "serve", "--config", str(config)])
    thread.join()
    err = capsys.readouterr().err
    assert done.value.code == 0, err
    assert "the node stopped while starting" in err
    assert "interrupted" not in err and "password" not in err
