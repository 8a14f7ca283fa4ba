"""`backupvault relay metrics --config relay.toml`: each node's counters, asked as a node
wants them (signed with the relay's key, for that node). docs/operations.md promised
`GET /v1/metrics` but gave an operator nothing to sign it with short of Python; a node
that does not answer, or refuses the signature, is named with the reason (exit 5)."""

from __future__ import annotations

import json
import socket
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from console import backupvault  # tests/cli/console.py
from tests.http_stub import serving

from backupvault.hop import METRICS_NAME, METRICS_OP, HopRefused, HopVerifier
from backupvault.relay import load_operator_private_key


def _fake_node(
    index: int, relay_key: bytes, health: dict[str, object] | None = None
) -> type[BaseHTTPRequestHandler]:
    """Node `index`'s metrics route, checking the relay's signature as a node does, with
    `health` as its answer's (node/http.py)."""
    hop = HopVerifier(index, (relay_key,))

    class Node(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                hop.verify(dict(self.headers.items()), METRICS_OP, METRICS_NAME, METRICS_NAME, b"")
                status, body = (
                    200,
                    {
                        "node": index,
                        "evaluations": 10 + index,
                        "health": health or {},
                    },
                )
            except HopRefused as err:
                status, body = 401, {"error": "relay_signature", "detail": err.message}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Node


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _relay_toml(folder: Path, nodes: list[str]) -> Path:
    made = backupvault("relay", "keygen", "--out", str(folder / "keys"))
    assert made.returncode == 0, made.stderr
    config = folder / "relay.toml"
    listed = ", ".join(f'"{url}"' for url in nodes)
    config.write_text(
        f'[relay]\nnodes = [{listed}]\nissuer = "iss"\naudience = "aud"\n'
        'operator_public_key = "keys/operator.pub"\nsigning_key = "keys/relay-signing.key"\n'
    )
    return config


def test_each_node_s_counters_signed_for_it_and_a_silent_node_named(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{_closed_port()}"
    config = _relay_toml(tmp_path, ["http://placeholder0", "http://placeholder1", down])
    key = load_operator_private_key(tmp_path / "keys" / "relay-signing.key")
    relay_key = key.public_key().public_bytes_raw()
    with serving(_fake_node(0, relay_key)) as first, serving(_fake_node(1, relay_key)) as second:
        config.write_text(
            config.read_text()
            .replace("http://placeholder0", first)
            .replace("http://placeholder1", second)
        )
        done = backupvault("--json", "relay", "metrics", "--config", str(config))
        text = backupvault("relay", "metrics", "--config", str(config))
    assert done.returncode == 5, done.stderr
    nodes = json.loads(done.stdout)["fleets"][0]["nodes"]
    assert [n["index"] for n in nodes] == [0, 1, 2]
    # Each node took the signature made for it (a node refuses one for another index).
    assert nodes[0]["metrics"]["evaluations"] == 10
    assert nodes[1]["metrics"]["evaluations"] == 11
    assert "metrics" not in nodes[2] and "did not answer" in nodes[2]["error"]
    assert text.returncode == 5
    assert "evaluations 10" in text.stdout and "evaluations 11" in text.stdout
    assert f"node 2 {down}: did not answer" in text.stdout
    # No node stopped: the hint does not send the operator to restart one.
    assert "stopped" not in text.stderr and "node 2" in text.stderr


def test_a_relay_key_the_nodes_do_not_list_is_named_as_the_reason(tmp_path: Path) -> None:
    stranger = _relay_toml(tmp_path / "other", [])  # keys no node lists
    config = _relay_toml(tmp_path, ["http://placeholder0"])
    other_key = load_operator_private_key(tmp_path / "other" / "keys" / "relay-signing.key")
    with serving(_fake_node(0, other_key.public_key().public_bytes_raw())) as node:
        config.write_text(config.read_text().replace("http://placeholder0", node))
        done = backupvault("--json", "relay", "metrics", "--config", str(config))
    assert stranger.exists()
    assert done.returncode == 5, done.stderr
    error = json.loads(done.stdout)["fleets"][0]["nodes"][0]["error"]
    assert "401" in error and "relay_public_keys" in error


def test_a_rolled_back_or_stopped_node_is_named_in_the_text(tmp_path: Path) -> None:
    """What an operator reads after restoring a node's data folder from a backup, or when
    a node stopped on a damaged store. Before, the text said "ready" for the node that
    found its store rolled back (its `store_start` shown only with --json), called a
    stopped node "not ready (catching up)", and exited 0 with a node that serves nothing."""
    config = _relay_toml(tmp_path, ["http://placeholder0", "http://placeholder1"])
    key = load_operator_private_key(tmp_path / "keys" / "relay-signing.key")
    relay_key = key.public_key().public_bytes_raw()
    rolled_back = {
        "ready": True,
        "intact_start": False,
        "store_start": "rollback_detected",
        "stopped": None,
    }
    stopped = {
        "ready": False,
        "intact_start": True,
        "store_start": "intact",
        "stopped": "store failed its check: bucket 3 is older than the rest",
    }
    with (
        serving(_fake_node(0, relay_key, rolled_back)) as first,
        serving(_fake_node(1, relay_key, stopped)) as second,
    ):
        config.write_text(
            config.read_text()
            .replace("http://placeholder0", first)
            .replace("http://placeholder1", second)
        )
        text = backupvault("relay", "metrics", "--config", str(config))
        done = backupvault("--json", "relay", "metrics", "--config", str(config))
    lines = text.stdout.splitlines()
    node0 = next(line for line in lines if line.startswith("  node 0 "))
    node1 = next(line for line in lines if line.startswith("  node 1 "))
    assert "ready" in node0 and "rollback detected" in node0 and "evaluations 10" in node0
    assert "catching up" not in node1
    assert "stopped: store failed its check: bucket 3 is older than the rest" in node1
    assert text.returncode == 5 and done.returncode == 5
    assert "node 1" in text.stderr and "stopped" in text.stderr
    nodes = json.loads(done.stdout)["fleets"][0]["nodes"]
    assert nodes[1]["metrics"]["health"]["stopped"].startswith("store failed")
