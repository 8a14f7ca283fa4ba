"""The relay forwards sealed bytes unchanged, each node only its own copy, signed for that
node, under the token's account (the fan-out's timing and failures: test_fanout.py)."""

from __future__ import annotations

import os
from collections.abc import Callable

import httpx
import pytest

from backupvault.fanout import FanoutAnswers
from backupvault.hop import HopRefused, HopVerifier
from backupvault.protocol import REMOVED_OPERATIONS

from .conftest import RELAY_KEY, StubNode, copies, unused_url

OCTET = {"Content-Type": "application/octet-stream"}


def post(
    relay: str,
    token: str,
    body: bytes,
    entry: str = "laptop",
    op: str = "evaluate",
    **headers: str,
) -> httpx.Response:
    return httpx.post(
        f"{relay}/v1/vault/{entry}/{op}",
        content=copies(relay, body),
        headers={**OCTET, "Authorization": f"Bearer {token}", **headers},
        timeout=10,
    )


def test_forwards_body_and_names_unchanged(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    node = stubs[0]
    relay = start_relay([node.url])
    body = os.urandom(4096) + b"\x00\xff not json, not HPKE either"
    response = post(relay, token("alice"), body, entry="phone.2_b-c", op="register-share")
    assert response.status_code == 200
    [reply] = FanoutAnswers.for_nodes(response.content, 1).replies
    assert (reply.status, reply.body) == (200, b"node0|" + body)
    [seen] = node.seen
    assert seen.op == "register-share"
    assert seen.body == body
    assert seen.headers["x-backupvault-account"] == "alice"
    assert seen.headers["x-backupvault-entry"] == "phone.2_b-c"
    assert seen.headers["content-type"] == "application/octet-stream"
    assert "authorization" not in seen.headers


def test_every_forwarded_request_is_signed_for_its_node(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """Each node can check that the relay sent this very request to it, now; the same
    signature fails at any other node, for any other body, and a second time."""
    relay = start_relay([s.url for s in stubs])
    assert post(relay, token("alice"), b"sealed body", entry="e1").status_code == 200
    relay_key = RELAY_KEY.public_key().public_bytes_raw()
    for index, stub in enumerate(stubs):
        [seen] = stub.seen
        verifier = HopVerifier(index, [relay_key])
        verifier.verify(seen.headers, seen.op, "alice", "e1", seen.body)
        with pytest.raises(HopRefused, match="replay"):
            verifier.verify(seen.headers, seen.op, "alice", "e1", seen.body)
        other = HopVerifier((index + 1) % 3, [relay_key])
        with pytest.raises(HopRefused, match="signed for node"):
            other.verify(seen.headers, seen.op, "alice", "e1", seen.body)
        with pytest.raises(HopRefused, match="not the one the relay signed"):
            HopVerifier(index, [relay_key]).verify(
                seen.headers, seen.op, "alice", "e1", seen.body + b"!"
            )


@pytest.mark.parametrize("op", sorted(REMOVED_OPERATIONS))
def test_the_removed_single_seed_operations_say_so_and_reach_no_node(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str], op: str
) -> None:
    relay = start_relay([stubs[0].url])
    response = post(relay, token(), b"x", op=op)
    assert response.status_code == 410
    assert response.json()["error"] == "removed_operation"
    assert "update the client" in response.json()["detail"]
    assert stubs[0].seen == []


def test_client_headers_cannot_smuggle_another_account(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    node = stubs[0]
    relay = start_relay([node.url])
    smuggled = {
        "X-Backupvault-Account": "mallory",
        "X-Backupvault-Entry": "other",
        "X-Forwarded-For": "10.0.0.1",
        "Cookie": "session=abc",
    }
    response = post(relay, token("alice"), b"sealed", entry="laptop", **smuggled)
    assert response.status_code == 200
    # A path naming another account's entry still goes out as alice's.
    response = post(relay, token("alice"), b"sealed", entry="mallory")
    assert response.status_code == 200
    assert [s.headers["x-backupvault-account"] for s in node.seen] == ["alice", "alice"]
    assert [s.headers["x-backupvault-entry"] for s in node.seen] == ["laptop", "mallory"]
    for seen in node.seen:
        assert "cookie" not in seen.headers
        assert "x-forwarded-for" not in seen.headers
        # One account header, not a comma-joined pair.
        assert "mallory" not in seen.headers["x-backupvault-account"]


def test_health_reports_each_node(stubs: list[StubNode], start_relay: Callable[..., str]) -> None:
    down = unused_url()
    stubs[1].mode = "not_ready"
    relay = start_relay([stubs[0].url, down, stubs[1].url])
    response = httpx.get(f"{relay}/v1/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "nodes": [
            {"url": stubs[0].url, "up": True},
            {"url": down, "up": False},
            {"url": stubs[1].url, "up": False},
        ],
        "nodes_up": 1,
        "nodes_total": 3,
    }
