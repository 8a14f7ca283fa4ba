"""The relay logs metadata only: never a body, a token, or a header other than the account."""

from __future__ import annotations

import http.client
import logging
import os
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from .conftest import StubNode, copies, unused_url


def _request(base: str, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> int:
    """A request through http.client, which logs nothing: every record captured below then
    comes from the relay's side (the relay, uvicorn, and httpx/httpcore towards the nodes)."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_logs_carry_metadata_but_no_payload_token_or_headers(
    stubs: list[StubNode],
    start_relay: Callable[..., str],
    token: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    stubs[1].mode = "refuse"
    relay = start_relay([unused_url(), stubs[0].url])
    relay_refusing = start_relay([stubs[1].url])
    marker = b"PAYLOAD-MARKER-7f3a9c"
    payload = marker + os.urandom(64) + marker
    secret_token = token("carol")
    header_secret = "HEADER-SECRET-51b2"
    headers = {
        "Content-Type": "application/octet-stream",
        "Authorization": f"Bearer {secret_token}",
        "X-Backupvault-Account": header_secret,
        "Cookie": f"c={header_secret}",
        "User-Agent": header_secret,
    }
    with caplog.at_level(logging.DEBUG):
        for base in (relay, relay_refusing):
            for op in ("register-share", "reset"):
                body = copies(base, payload)
                status = _request(base, "POST", f"/v1/vault/laptop/{op}", body, headers)
                assert status in (200, 410)
        # Refused requests are logged too, and must not echo what was refused.
        bad = dict(headers, Authorization=f"Bearer {secret_token[:-4]}AAAA")
        assert (
            _request(relay, "POST", "/v1/vault/laptop/manifest", copies(relay, payload), bad) == 401
        )
        assert _request(relay, "GET", f"/v1/{header_secret}", None, headers) == 404
        # The relay writes its line after the answer is sent, from the server's thread.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            "status=404" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.01)

    # Every record, from every logger (relay, uvicorn, httpx, httpcore), at every level.
    text = "\n".join(f"{r.name} {r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert stubs[0].seen and stubs[0].seen[0].body == payload  # the payload did go through
    assert "PAYLOAD-MARKER" not in text
    assert marker.hex() not in text
    assert secret_token not in text
    for part in secret_token.split("."):
        assert part not in text
    assert header_secret not in text

    lines = [r.getMessage() for r in caplog.records if r.name == "backupvault.relay"]
    assert any(
        "method=POST" in line
        and "route=/v1/vault/{entry}/{op}" in line
        and "op=reset" in line
        and "account=carol" in line
        and "status=200" in line
        and "node=1" in line  # node 0 is down: skipped
        and "skipped=1" in line
        and "latency_ms=" in line
        for line in lines
    ), lines
    # A node's refusal travels inside the fan-out answer; the relay logs who answered.
    assert any("status=200" in line and "node=0 skipped=0" in line for line in lines), lines
    assert any("status=401" in line and "account=-" in line for line in lines), lines
    assert any("status=404" in line and "route=-" in line for line in lines), lines
