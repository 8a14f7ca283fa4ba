"""Fan-out: every vault operation goes to every node at once; every answer comes back,
labelled with its node, and one slow or dead node does not stall the answer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from backupvault.fanout import NO_ANSWER, FanoutAnswers
from backupvault.hop import HopVerifier
from backupvault.protocol import OPERATIONS, SealedCopies
from backupvault.relay.app import RESET_ALLOWANCE

from .conftest import RELAY_KEY, StubNode, unused_url

OCTET = {"Content-Type": "application/octet-stream"}


def post_each(
    relay: str, token: str, bodies: list[bytes], op: str = "evaluate", entry: str = "laptop"
) -> httpx.Response:
    return httpx.post(
        f"{relay}/v1/vault/{entry}/{op}",
        content=SealedCopies(bodies).to_bytes(),
        headers={**OCTET, "Authorization": f"Bearer {token}"},
        timeout=20,
    )


def answers(response: httpx.Response, nodes: int) -> FanoutAnswers:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    return FanoutAnswers.for_nodes(response.content, nodes)


@pytest.mark.parametrize("op", OPERATIONS)
def test_each_node_gets_its_own_copy_and_every_answer_comes_back_labelled(
    op: str, stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    relay = start_relay([s.url for s in stubs])
    bodies = [f"copy for node {i}".encode() for i in range(3)]
    replies = answers(post_each(relay, token("alice"), bodies, op=op), 3).replies
    relay_key = RELAY_KEY.public_key().public_bytes_raw()
    for index, (stub, reply) in enumerate(zip(stubs, replies, strict=True)):
        assert reply.index == index
        assert reply.status == 200
        assert reply.body == stub.name.encode() + b"|" + bodies[index]
        [seen] = stub.seen
        assert (seen.op, seen.body) == (op, bodies[index])
        HopVerifier(index, [relay_key]).verify(seen.headers, op, "alice", "laptop", seen.body)


def test_a_dead_node_is_named_and_the_others_answer(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    relay = start_relay([stubs[0].url, unused_url(), stubs[2].url])
    replies = answers(post_each(relay, token(), [b"a", b"b", b"c"]), 3).replies
    assert [r.status for r in replies] == [200, NO_ANSWER, 200]
    assert replies[1].error()[0] == "node_unreachable"
    assert "node 1" in replies[1].error()[1]


def test_a_hanging_node_does_not_stall_the_answer_once_a_majority_answered(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """The stub hangs 5 s and the per-node deadline is 10 s: the relay answers with the
    two others once it has waited the grace (as long again as the majority took)."""
    stubs[2].mode = "hang"
    relay = start_relay([s.url for s in stubs], request_timeout=10.0)
    started = time.monotonic()
    replies = answers(post_each(relay, token(), [b"a", b"b", b"c"]), 3).replies
    assert time.monotonic() - started < 4.5  # well before the hanging node's 5 s
    assert [r.status for r in replies] == [200, 200, NO_ANSWER]
    assert replies[2].error()[0] == "node_slow"
    assert len(stubs[2].seen) == 1  # it did get its copy


def test_a_node_trickling_its_answer_is_cut_off_at_its_deadline(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """Review r31: `request_timeout` bounded each read of a node's answer, not the answer
    (docs: "the whole exchange"). A hostile node sending a byte at a time, with another
    node down so no majority cut it short, held the request (and its forward slot) as
    long as it liked: 3 s here, days with a 64 KiB answer."""
    stubs[1].mode = "trickle"
    relay = start_relay(
        [stubs[0].url, stubs[1].url, unused_url()], connect_timeout=0.3, request_timeout=0.7
    )
    started = time.monotonic()
    replies = answers(post_each(relay, token(), [b"a", b"b", b"c"]), 3).replies
    assert time.monotonic() - started < 2.0  # the trickle goes on for 3 s
    assert [r.status for r in replies] == [200, NO_ANSWER, NO_ANSWER]
    assert replies[1].error()[0] == "node_timeout"


def test_node_refusals_and_bad_answers_are_passed_back_per_node(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    stubs[0].mode = "refuse"
    stubs[1].mode = "broken"
    stubs[2].mode = "not_ready"
    relay = start_relay([s.url for s in stubs])
    replies = answers(post_each(relay, token(), [b"a", b"b", b"c"]), 3).replies
    assert replies[0].status == 410
    assert json.loads(replies[0].body)["error"] == "entry_destroyed"
    assert (replies[1].status, replies[1].error()[0]) == (NO_ANSWER, "bad_node_answer")
    assert (replies[2].status, replies[2].error()[0]) == (NO_ANSWER, "node_unreachable")


def test_a_hostile_nodes_deeply_nested_json_is_its_own_bad_answer(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """JSON nested past the parser's recursion limit, from one node, is that node's bad
    answer: the other nodes' answers still come back (it was a 502 for the whole request,
    so one hostile node of a minority denied the whole fleet), and health still answers."""
    stubs[1].mode = "deep_json"
    relay = start_relay([s.url for s in stubs])
    replies = answers(post_each(relay, token(), [b"a", b"b", b"c"]), 3).replies
    assert [r.status for r in replies] == [200, NO_ANSWER, 200]
    assert replies[1].error()[0] == "bad_node_answer"
    health = httpx.get(f"{relay}/v1/health", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["nodes_total"] == 3


def test_a_bloated_node_answer_is_that_nodes_bad_answer_by_default(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """Sealed answers are padded to at most 1 KiB: a hostile node's 100 KiB one is its bad
    answer under the default cap, not held in memory and passed on to the client (with a
    1 MiB cap, a minority could make the relay hold c MiB per request in flight)."""
    stubs[2].mode = "bloated"
    relay = start_relay([s.url for s in stubs])
    response = post_each(relay, token(), [b"a", b"b", b"c"])
    assert len(response.content) < 16 * 1024
    replies = answers(response, 3).replies
    assert [r.status for r in replies] == [200, 200, NO_ANSWER]
    assert replies[2].error()[0] == "bad_node_answer"


def test_as_many_fan_outs_as_the_relay_takes_at_once_each_reach_every_node(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """Each fan-out holds a connection to every node: the relay's pool had room for
    `max_concurrent_forwards` + 16 connections, so with 3 nodes, 10 fan-outs at once left
    4 copies waiting for a connection until `connect_timeout`, then reported their nodes
    unreachable (with 5 nodes, 55 fan-outs at once of the default 256). A copy left
    waiting fails at `connect_timeout`, before any connection frees; that timeout is long
    enough for a busy machine to open 30 connections (0.3 s was not, under load)."""
    for stub in stubs:
        stub.mode = "slow"  # every fan-out holds its 3 connections while they answer
        stub.slow_seconds = 2.5
    relay = start_relay(
        [s.url for s in stubs],
        max_concurrent_forwards=10,
        connect_timeout=1.2,
        request_timeout=6.0,
    )
    with ThreadPoolExecutor(10) as pool:
        responses = list(
            pool.map(lambda i: post_each(relay, token(f"user{i}"), [b"a", b"b", b"c"]), range(10))
        )
    for response in responses:
        assert [r.status for r in answers(response, 3).replies] == [200, 200, 200]


def test_no_node_answering_is_a_503_with_retry_after(
    start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    relay = start_relay([unused_url(), unused_url(), unused_url()])
    response = post_each(relay, token(), [b"a", b"b", b"c"])
    assert response.status_code == 503
    assert response.json()["error"] == "fleet_unavailable"
    assert response.headers["retry-after"]


@pytest.mark.parametrize(
    "body",
    [
        SealedCopies([b"a", b"b"]).to_bytes(),  # one copy short
        SealedCopies([b"a", b"", b"c"]).to_bytes(),  # an empty copy
        b"\x0f not a SealedCopies message",
    ],
    ids=["one-short", "empty-copy", "garbage"],
)
def test_bad_input_is_a_400_and_reaches_no_node(
    body: bytes,
    stubs: list[StubNode],
    start_relay: Callable[..., str],
    token: Callable[..., str],
) -> None:
    relay = start_relay([s.url for s in stubs])
    response = httpx.post(
        f"{relay}/v1/vault/laptop/evaluate",
        content=body,
        headers={**OCTET, "Authorization": f"Bearer {token()}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_sealed_copies"
    assert all(not stub.seen for stub in stubs)


def test_a_reset_has_its_own_bucket_that_evaluations_do_not_use_up(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    """A reset follows a guess already charged; refusing it for the evaluates before it
    would leave the count unreset. But resets are limited too (RESET_ALLOWANCE times the
    bucket), or one account could make every node open junk without end."""
    relay = start_relay([s.url for s in stubs], rate_per_minute=0.001, burst=1)
    alice = token()
    assert post_each(relay, alice, [b"a", b"b", b"c"]).status_code == 200
    limited = post_each(relay, alice, [b"a", b"b", b"c"])
    assert limited.status_code == 429
    for _ in range(RESET_ALLOWANCE):
        assert post_each(relay, alice, [b"a", b"b", b"c"], op="reset").status_code == 200
    refused = post_each(relay, alice, [b"a", b"b", b"c"], op="reset")
    assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    seen = [stub.seen for stub in stubs]
    assert [len(s) for s in seen] == [1 + RESET_ALLOWANCE] * 3  # the refused ones reached none
    # another account's buckets are its own
    assert post_each(relay, token("bob"), [b"a", b"b", b"c"], op="reset").status_code == 200
