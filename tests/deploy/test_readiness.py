"""`local up` and `local status` take a process for ready only while the process `local
up` started still runs: whatever answers on its port after it has exited (another
program, another deployment's node) is not it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from tests.http_stub import serving

from backupvault.crypto.seal import NodePublicKey
from backupvault.deploy.local import DeploymentError, LocalDeployment
from backupvault.node.config import FleetDescription, FleetNode


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


class _Squatter(BaseHTTPRequestHandler):
    """Another program on the port: answers every GET with `body`, 200."""

    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(params=[b'{"ready": true}', b"<html>it works</html>", b"[1]"])
def squatter(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a program that holds a port and answers 200 with the param's body: a
    backupvault node of another deployment (ready), a web server, anything."""
    handler = type("Handler", (_Squatter,), {"body": request.param})
    with serving(handler) as url:
        yield url


def _deployment(root: Path, url: str) -> LocalDeployment:
    """A one-node deployment folder whose node and relay URLs are `url`, with node0
    recorded as a process that has exited (it could not listen, say) and the relay as a
    running one."""
    node = FleetNode(
        0,
        url,
        _raw(Ed25519PrivateKey.generate()),
        NodePublicKey.from_bytes(
            b"\x00\x20" + X25519PrivateKey.generate().public_key().public_bytes_raw()
        ).to_bytes(),
        _raw(Ed25519PrivateKey.generate()),
    )
    keys = (_raw(Ed25519PrivateKey.generate()),)
    FleetDescription(
        b"\x01" * 16, 10, (node,), keys, "iss", _raw(Ed25519PrivateKey.generate())
    ).save(root / "fleet.toml")
    (root / "client.toml").write_text(f'relay_url = "{url}"\n')
    exited = subprocess.Popen(["true"])
    exited.wait()
    deployment = LocalDeployment(root)
    deployment._record("node0", exited.pid)
    return deployment


@pytest.fixture
def relay_process() -> Iterator[int]:
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def test_an_exited_node_is_not_ready_whatever_answers_on_its_port(
    tmp_path: Path, squatter: str, relay_process: int
) -> None:
    deployment = _deployment(tmp_path, squatter)
    deployment._record("relay", relay_process)
    node0 = deployment.status()["node0"]
    assert node0["running"] is False
    assert node0["healthy"] is False
    with pytest.raises(DeploymentError) as failed:
        deployment.wait_ready(5)
    assert "node0 exited before becoming ready" in failed.value.message


def test_local_status_shows_an_exited_node_unhealthy(tmp_path: Path, squatter: str) -> None:
    _deployment(tmp_path, squatter)
    done = subprocess.run(
        [sys.executable, "-m", "backupvault", "--json", "local", "status", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 5, done.stderr  # for scripts: something is not healthy
    # Nothing runs (node0 exited, the rest never started): said as such, the way to start
    # it named once (it read "the vault fleet is unavailable" with `local up` named twice:
    # user review s42).
    error = json.loads(done.stderr.strip().splitlines()[-1])
    assert error["error"] == "the local deployment is stopped"
    assert error["hint"].count("local up") == 1
    processes = json.loads(done.stdout)["processes"]
    assert processes["node0"]["healthy"] is False
    assert processes["relay"]["healthy"] is False  # never started here


def test_a_running_node_is_not_ready_on_another_programs_answer(
    tmp_path: Path, squatter: str, relay_process: int
) -> None:
    """The node `local up` started still runs (it has not failed to listen yet, say) while
    another program answers on its port: that answer is not the node's."""
    deployment = _deployment(tmp_path, squatter)
    deployment._record("node0", relay_process)  # runs, and listens nowhere
    deployment._record("relay", relay_process)
    status = deployment.status()
    assert status["node0"]["running"] is True
    assert status["node0"]["healthy"] is False
    assert status["relay"]["healthy"] is False


READY_SERVER = """
import http.server, sys
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "15")
        self.end_headers()
        self.wfile.write(b'{"ready": true}')
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Ready)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def test_a_node_that_answers_on_its_own_port_is_ready(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", READY_SERVER], stdout=subprocess.PIPE, text=True
    ) as node:
        try:
            assert node.stdout is not None
            url = f"http://127.0.0.1:{int(node.stdout.readline())}"
            deployment = _deployment(tmp_path, url)
            deployment._record("node0", node.pid)
            deployment._record("relay", node.pid)
            status = deployment.status()
            assert status["node0"]["healthy"] is True
            assert status["relay"]["healthy"] is True
            deployment.wait_ready(5)
        finally:
            node.kill()


def test_a_deployment_that_does_not_become_ready_names_what_is_not(
    tmp_path: Path, squatter: str, relay_process: int
) -> None:
    """Running but never answering (a node still catching up, say): the timeout names it,
    not only "see the logs" for every process."""
    deployment = _deployment(tmp_path, squatter)
    deployment._record("node0", relay_process)
    deployment._record("relay", relay_process)
    with pytest.raises(DeploymentError) as late:
        deployment.wait_ready(0.5)
    assert "did not become ready in 0.5 s" in late.value.message
    assert "not ready: node0, relay" in late.value.message
    assert "node0.log" in (late.value.hint or "")
