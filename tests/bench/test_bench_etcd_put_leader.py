"""etcd's put p50, the reference of the fleet's one-commit p50 (bench/vault_e2e.py), was
measured through member 0, whichever member led: four runs in five a follower, which
forwards each put to the leader (about 6 % of a put here: 2.48 ms p50 at the leader
against 2.59-2.70 ms at the followers of a 5-member cluster). Every fan-out of ours
reaches the fleet's leader directly (the relay sends each node its copy), so the
reference is now measured at etcd's leader too."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from bench import etcd_reference

FORWARD = 0.02  # seconds a follower adds to each put


def _member(member_id: str, leader_id: str) -> type[BaseHTTPRequestHandler]:
    class Member(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v3/maintenance/status":
                body = json.dumps({"header": {"member_id": member_id}, "leader": leader_id})
            else:
                if member_id != leader_id:
                    time.sleep(FORWARD)
                body = "{}"
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    return Member


@pytest.fixture
def fake_etcd() -> Iterator[SimpleNamespace]:
    """Three members; the last one leads."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _member(str(i), "3")) for i in (1, 2, 3)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield SimpleNamespace(urls=[f"http://127.0.0.1:{s.server_address[1]}" for s in servers])
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_put_latency_is_measured_at_the_leader(fake_etcd: SimpleNamespace) -> None:
    latencies = etcd_reference.put_latencies(fake_etcd, 10)  # type: ignore[arg-type]
    assert etcd_reference.median_ms(latencies) < FORWARD * 1000 / 2
    assert etcd_reference.leader_url(fake_etcd.urls) == fake_etcd.urls[2]
