"""The relay forwards sealed bytes unchanged, to the right account, and survives node failures."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from backupvault.hop import HopRefused, HopVerifier
from backupvault.protocol import SealedCopies
from backupvault.relay.forward import PROBE_EVERY, STALLED_AFTER, UNREACHABLE_SECONDS

from .conftest import RELAY_KEY, StubNode, copies, unused_url

OCTET = {"Content-Type": "application/octet-stream"}


def post(
    relay: str,
    token: str,
    body: bytes,
    entry: str = "laptop",
    op: str = "recover-start",
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
    response = post(relay, token("alice"), body, entry="phone.2_b-c", op="register-finish")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b"node0|" + body
    [seen] = node.seen
    assert seen.op == "register-finish"
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
    for _ in range(3):  # round-robin: each node gets one
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
        with pytest.raises(HopRefused, match="not signed"):
            HopVerifier(index, [relay_key]).verify(
                seen.headers, seen.op, "alice", "e1", seen.body + b"!"
            )


def test_every_operation_reaches_the_node_path_of_the_same_name(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    relay = start_relay([stubs[0].url])
    ops = [
        "register-start",
        "register-finish",
        "recover-start",
        "recover-finish",
        "change-password",
        "delete",
        "status",
    ]
    for op in ops:
        assert post(relay, token(), b"x", op=op).status_code == 200
    assert [s.op for s in stubs[0].seen] == ops


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


def test_node_errors_pass_through_unchanged(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    node = stubs[0]
    node.mode = "refuse"
    relay = start_relay([node.url, stubs[1].url])
    response = post(relay, token(), b"guess")
    assert response.status_code == 410
    assert response.json() == {"error": "entry_destroyed", "detail": "too many guesses"}
    # A node's 4xx is an answer, not a failure: no other node was asked.
    assert len(node.seen) + len(stubs[1].seen) == 1


def test_retries_on_another_node_when_one_is_down_or_not_ready(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    down = unused_url()
    stubs[0].mode = "not_ready"
    relay = start_relay([down, stubs[0].url, stubs[1].url])
    for _ in range(6):  # round-robin: every start position is exercised
        response = post(relay, token(), b"sealed")
        assert response.status_code == 200
        assert response.content == b"node1|sealed"
    # node0 was asked at most once per request, node1 answered all of them.
    assert len(stubs[0].seen) <= 6
    assert len(stubs[1].seen) == 6


def test_no_retry_when_a_node_may_have_acted(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """A node that got the request and timed out may still count the guess: sending it to
    a second node would charge it twice, so the relay answers 503 node_timeout instead."""
    stubs[0].mode = "hang"
    relay = start_relay([stubs[0].url, stubs[1].url], request_timeout=0.3)
    answers = [post(relay, token(), b"sealed") for _ in range(2)]
    # Round-robin: one request starts at the hanging node, the other at the healthy one.
    assert sorted(a.status_code for a in answers) == [200, 503]
    timed_out = next(a for a in answers if a.status_code == 503)
    assert timed_out.json()["error"] == "node_timeout"
    assert len(stubs[1].seen) == 1


def test_a_node_that_timed_out_gets_no_new_requests_while_others_answer(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """After a node took a request and never answered, the relay sends new requests to
    the healthy nodes first, so a stalled node stops costing users guesses."""
    stubs[0].mode = "hang"
    relay = start_relay([stubs[0].url, stubs[1].url], request_timeout=0.3)
    first = post(relay, token(), b"sealed")
    assert first.json()["error"] == "node_timeout"
    later = [post(relay, token(), b"sealed") for _ in range(4)]
    assert [a.status_code for a in later] == [200] * 4
    assert len(stubs[0].seen) == 1
    assert len(stubs[1].seen) == 4


def test_all_nodes_down_is_503_fleet_unavailable(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    stubs[0].mode = "not_ready"
    relay = start_relay([unused_url(), unused_url(), stubs[0].url])
    response = post(relay, token(), b"sealed")
    assert response.status_code == 503
    assert response.json()["error"] == "fleet_unavailable"
    assert "Retry-After" in response.headers
    assert len(stubs[0].seen) == 1  # each node tried once


def test_node_fleet_unavailable_passes_through_without_retry(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    for node in stubs:
        node.mode = "fleet_unavailable"
    relay = start_relay([n.url for n in stubs])
    response = post(relay, token(), b"sealed")
    assert response.status_code == 503
    assert response.json() == {"error": "fleet_unavailable", "detail": "no majority"}
    assert sum(len(n.seen) for n in stubs) == 1


def test_node_answering_outside_the_contract_is_502(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    stubs[0].mode = "broken"
    relay = start_relay([stubs[0].url])
    response = post(relay, token(), b"sealed")
    assert response.status_code == 502
    assert response.json()["error"] == "bad_node_answer"
    assert "Internal Server Error" not in response.text


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


def test_each_node_gets_only_its_own_copy_and_the_answer_names_it(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """The client seals the request once per node; node i is sent copy i and nothing
    else, and the relay says which node answered (the client opens it with that copy's
    response key)."""
    relay = start_relay([s.url for s in stubs])
    for _ in range(3):  # round-robin: each node once
        sealed = [f"copy for node{i}".encode() for i in range(3)]
        response = httpx.post(
            f"{relay}/v1/vault/laptop/status",
            content=SealedCopies(sealed).to_bytes(),
            headers={**OCTET, "Authorization": f"Bearer {token()}"},
            timeout=10,
        )
        assert response.status_code == 200
        index = int(response.headers["x-backupvault-answered-by"])
        assert response.content == f"node{index}|copy for node{index}".encode()
    for index, stub in enumerate(stubs):
        assert [seen.body for seen in stub.seen] == [f"copy for node{index}".encode()]


@pytest.mark.parametrize(
    "body",
    [
        b"not a list of copies",
        SealedCopies([b"a", b"b"]).to_bytes(),
        SealedCopies([b"a", b"", b"c"]).to_bytes(),
    ],
    ids=["garbage", "too few copies", "an empty copy"],
)
def test_a_body_without_one_copy_per_node_is_a_400_never_forwarded(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str], body: bytes
) -> None:
    relay = start_relay([s.url for s in stubs])
    response = httpx.post(
        f"{relay}/v1/vault/laptop/status",
        content=body,
        headers={**OCTET, "Authorization": f"Bearer {token()}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_sealed_copies"
    assert response.json()["detail"]
    assert all(stub.seen == [] for stub in stubs)


def test_requests_go_first_to_the_node_the_answers_name_as_leader(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """A node forwards a change it takes to the leader: the relay saves that hop by asking
    the node the answers name first; with no name it goes round-robin."""
    relay = start_relay([s.url for s in stubs])
    for _ in range(3):
        assert post(relay, token(), b"sealed").status_code == 200
    assert [len(s.seen) for s in stubs] == [1, 1, 1]  # no leader named: round-robin
    for stub in stubs:
        stub.leader = "2"
    assert post(relay, token(), b"sealed").content == b"node0|sealed"  # names node2
    for _ in range(6):
        assert post(relay, token(), b"sealed").content == b"node2|sealed"
    assert [len(s.seen) for s in stubs] == [2, 1, 7]


def test_a_down_leader_is_passed_over_and_the_next_named_one_taken(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    relay = start_relay([s.url for s in stubs])
    stubs[0].leader = stubs[1].leader = stubs[2].leader = "0"
    for _ in range(3):
        post(relay, token(), b"sealed")
    assert len(stubs[0].seen) >= 2
    # node0 falls behind (not ready); the others name node1 from now on.
    stubs[0].mode = "not_ready"
    stubs[1].leader = stubs[2].leader = "1"
    post(relay, token(), b"sealed")  # node0 refuses; whoever answers names node1
    seen = [len(s.seen) for s in stubs]
    answers = [post(relay, token(), b"sealed").content for _ in range(5)]
    assert answers == [b"node1|sealed"] * 5
    assert [len(s.seen) - n for s, n in zip(stubs, seen, strict=True)] == [0, 5, 0]


@pytest.mark.parametrize("named", ["3", "-1", "x", "01a", "1" * 40, ""])
def test_a_leader_name_that_is_no_node_of_the_fleet_changes_nothing(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str], named: str
) -> None:
    relay = start_relay([s.url for s in stubs])
    for stub in stubs:
        stub.leader = named
    for _ in range(6):
        assert post(relay, token(), b"sealed").status_code == 200
    assert [len(s.seen) for s in stubs] == [2, 2, 2]  # still round-robin


def test_a_busy_leader_gets_only_its_share_and_the_rest_spreads(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """Every request costs the node that takes it the firmware's work: beyond
    LEADER_MAX_IN_FLIGHT at the leader, requests go round-robin."""
    relay = start_relay([s.url for s in stubs])
    for stub in stubs:
        stub.leader = "0"
    post(relay, token(), b"sealed")  # learn the leader
    stubs[0].mode = "slow"
    before = [len(s.seen) for s in stubs]
    with ThreadPoolExecutor(9) as pool:
        answers = list(pool.map(lambda _: post(relay, token(), b"sealed"), range(9)))
    assert all(a.status_code == 200 for a in answers)
    got = [len(s.seen) - n for s, n in zip(stubs, before, strict=True)]
    assert got[0] >= 1 and got[1] + got[2] >= 3, got


def test_a_passed_over_node_is_asked_again_only_once_its_health_says_ready(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    relay = start_relay([stubs[0].url, stubs[1].url])
    stubs[0].mode = "not_ready"  # a restarted node, catching up
    for _ in range(2):
        assert post(relay, token(), b"sealed").content == b"node1|sealed"
    assert len(stubs[0].seen) == 1  # refused once, then passed over
    time.sleep(UNREACHABLE_SECONDS + 3 * PROBE_EVERY)
    for _ in range(4):  # past the minimum, but its health still says not ready
        assert post(relay, token(), b"sealed").content == b"node1|sealed"
    assert len(stubs[0].seen) == 1
    stubs[0].mode = "echo"  # caught up
    time.sleep(3 * PROBE_EVERY)
    answers = [post(relay, token(), b"sealed").content for _ in range(4)]
    assert b"node0|sealed" in answers


def test_a_node_with_a_request_waiting_too_long_gets_new_requests_after_the_others(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """A stall shows as a request waiting at a node; new requests go elsewhere long before
    that request times out (and nothing is failed or resent because of it)."""
    stubs[0].mode = "hang"  # answers after 5 s
    relay = start_relay([stubs[0].url, stubs[1].url], request_timeout=8.0)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post, relay, token(), b"sealed")  # round-robin: node0
        time.sleep(STALLED_AFTER + 0.5)
        answers = [post(relay, token(), b"sealed").content for _ in range(4)]
        assert answers == [b"node1|sealed"] * 4  # round-robin would send 2 to node0
        assert waiting.result().content == b"late"  # the waiting one is not given up
    assert len(stubs[0].seen) == 1
