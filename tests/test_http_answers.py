"""http_answers.read_answer: an answer from a server that is not trusted is read up to its
limit, within its deadline, uncompressed, or not at all. Before it, the client's GETs read
a body without end into memory, and a trickled one never timed out."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import pytest

from backupvault.http_answers import AnswerRefused, read_answer

CHUNK = 64 * 1024


class Endless:
    """A streamed body that counts the chunks the client pulled from it."""

    def __init__(self, chunks: int = 4096) -> None:  # 256 MiB stands in for "never ends"
        self.chunks = chunks
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.sent < self.chunks:
            self.sent += 1
            yield b"\x54" * CHUNK


def client(answer: httpx.Response) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda request: answer))


def test_an_answer_within_its_limit_is_read_whole() -> None:
    answer = httpx.Response(200, content=b"x" * 1000, headers={"Retry-After": "3"})
    got = read_answer(client(answer), "GET", "https://s.test/", limit=1000, what="the answer")
    assert (got.status_code, got.content, got.headers["retry-after"]) == (200, b"x" * 1000, "3")
    got.raise_for_status()  # it keeps its request


def test_an_endless_answer_is_refused_past_its_limit() -> None:
    body = Endless()
    with pytest.raises(AnswerRefused, match="the answer is larger than 100000 bytes"):
        read_answer(
            client(httpx.Response(200, content=body)),
            "GET",
            "https://s.test/",
            limit=100_000,
            what="the answer",
        )
    assert body.sent <= 2  # chunks read: one past the limit at most


def test_a_body_still_arriving_after_the_deadline_is_a_timeout() -> None:
    """A body trickled in (each read within httpx's timeout) ends at the deadline, as a
    ReadTimeout: what every caller already handles as a server that does not answer."""
    body = Endless()
    with pytest.raises(httpx.ReadTimeout, match="did not arrive within 0 s"):
        read_answer(
            client(httpx.Response(200, content=body)),
            "GET",
            "https://s.test/",
            limit=1 << 30,
            what="the answer",
            deadline=0,
        )
    assert body.sent == 1


def test_a_compressed_answer_is_refused_unread() -> None:
    """A few KiB of gzip expand to many MiB in one read: the body is asked for and read
    uncompressed only."""
    bomb = gzip.compress(bytes(64 << 20))
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["accept-encoding"])
        return httpx.Response(200, content=bomb, headers={"Content-Encoding": "gzip"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with pytest.raises(AnswerRefused, match="came compressed"):
        read_answer(http, "GET", "https://s.test/", limit=1 << 20, what="the answer")
    assert seen == ["identity"]
