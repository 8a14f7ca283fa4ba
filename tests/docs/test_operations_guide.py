"""docs/operations.md, followed literally: its `sh` blocks, in order, in one bash shell in
an empty folder, set up 3 nodes with SoftHSM2 tokens, the witness, the relay, a user's
client configs, and make a backup and a restore, on loopback."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from backupvault.deploy.local import local_ports

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
PORTS = 8  # 3 nodes, the witness, the relay, 3 node peer listeners


def sh_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", markdown, flags=re.S | re.M)


def free_port_base() -> int:
    """The first of PORTS consecutive free loopback ports."""
    ports = local_ports()  # this worker's own range, below the ephemeral one
    for _ in range(200):
        base = random.randrange(ports[0], ports[-1] + 1 - PORTS)
        sockets = []
        try:
            for port in range(base, base + PORTS):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise AssertionError("no free range of loopback ports")


def test_the_guide_has_the_steps_it_promises() -> None:
    script = "\n".join(sh_blocks(GUIDE.read_text()))
    for step in [
        "softhsm2-util --init-token",
        "backupvault node init",
        "backupvault fleet ceremony",
        "backupvault fleet keygen",
        "backupvault witness keygen",
        "backupvault witness serve",
        "backupvault fleet deploy",
        "backupvault node serve",
        "backupvault relay serve",
        "backupvault relay mint-token",
        "backupvault fleet client-config",
        "backup create",
        "backup restore",
        "verify-deployment",
    ]:
        assert step in script, step
    # the witness runs before the deploy that needs it
    assert script.index("witness serve") < script.index("fleet deploy")


def test_the_operations_guide_runs_as_written(tmp_path: Path) -> None:
    script = "set -euo pipefail\n" + "\n".join(sh_blocks(GUIDE.read_text()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPVAULT_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["BV_PORT_BASE"] = str(free_port_base())
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its background servers share this process group
    )
    try:
        output, _ = process.communicate(timeout=150)
    finally:
        # The guide stops its servers at the end; after a failure they may still run.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait()
    logs = "".join(
        f"\n--- {log.relative_to(tmp_path)}\n{log.read_text()[-2000:]}"
        for log in sorted(tmp_path.rglob("*.log"))
    )
    assert process.returncode == 0, output[-6000:] + logs
    assert "restored, byte for byte" in output
    assert "verdict: every check passed" in output
    assert (tmp_path / "alice" / "restored" / "notes.txt").read_text() == "first day\n"
    # what the guide promised about the files it made
    assert not list(tmp_path.glob("node*/data/fleet-secrets.*"))  # no fleet-wide secret
    assert (tmp_path / "deployment.bin").is_file() and (tmp_path / "bundle.bin").is_file()
    assert oct((tmp_path / "alice" / "client.toml").stat().st_mode & 0o777) == "0o600"
