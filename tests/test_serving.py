"""A service stops within a bound after SIGTERM (serving.py): a request that never
finishes is cancelled, and a shutdown that hangs ends the process with every thread's
stack on stderr. Real processes and signals: uvicorn installs its own handlers. It also
takes a bounded amount at once, and a client that sends slowly cannot hold a connection
or a request slot past a deadline."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from backupvault.deploy.local import free_port
from backupvault.errors import InvalidInput
from backupvault.serving import MAX_PIPELINED, ServerLimits, listen_address

SERVICE = """
import asyncio, contextlib, sys, threading

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from backupvault import serving

serving.GRACEFUL_SECONDS = 1
serving.STOP_SECONDS = {stop}
serving.HEAD_SECONDS = {head}
serving.BODY_SECONDS = {body}
serving.SEND_SECONDS = {send}

async def forever(request):
    await asyncio.Event().wait()  # a request waiting on a fleet that never answers

async def ready(request):
    return PlainTextResponse("ready")

async def slow(request):
    await asyncio.sleep(1.5)  # longer than the head deadline of the tests that set one
    return PlainTextResponse("slow")

async def big(request):
    return PlainTextResponse("x" * (4 << 20))  # more than the kernel buffers on the way

async def echo(request):
    try:
        body = await serving.read_body(request, 1000)
    except TimeoutError:
        return serving.slow_body_response()
    return PlainTextResponse("too large" if body is None else f"{{len(body)}} bytes")

async def count(request):  # reads a body far past a head's limit, all of it
    body = await serving.read_body(request, 200_000)
    return PlainTextResponse("too large" if body is None else f"{{len(body)}} bytes")

@contextlib.asynccontextmanager
async def lifespan(app):
    yield
    print("shutdown began", flush=True)
    if {hang_shutdown}:
        threading.Event().wait()  # a shutdown stuck on a lock, holding the event loop

routes = [
    Route("/forever", forever),
    Route("/ready", ready),
    Route("/slow", slow),
    Route("/big", big),
    Route("/echo", echo, methods=["POST"]),
    Route("/count", count, methods=["POST"]),
]
app = Starlette(routes=routes, lifespan=lifespan)
serving.run_until_stopped(app, {limits}, host="127.0.0.1", port={port}, log_config=None)
"""


def _start(
    tmp_path: Path,
    *,
    hang_shutdown: bool,
    stop: float,
    limits: str = "None",
    head: float = 10.0,
    body: float = 10.0,
    send: float = 10.0,
) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    script = tmp_path / "service.py"
    script.write_text(
        textwrap.dedent(SERVICE).format(
            port=port,
            hang_shutdown=hang_shutdown,
            stop=stop,
            limits=limits,
            head=head,
            body=body,
            send=send,
        )
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).text == "ready":
                return process, url
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    pytest.fail(f"the service did not start: {process.communicate()}")


def _hold_a_request(url: str) -> socket.socket:
    """A request under way that the service never answers."""
    host, port = url.removeprefix("http://").split(":")
    held = socket.create_connection((host, int(port)))
    held.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)  # received and dispatched
    return held


def test_a_request_that_never_finishes_does_not_hold_the_service_past_the_grace(
    tmp_path: Path,
) -> None:
    process, url = _start(tmp_path, hang_shutdown=False, stop=30)
    held = _hold_a_request(url)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=25)
    held.close()
    # Stopped as asked: status 0 (uvicorn alone raises the signal again, to die by it).
    assert process.returncode == 0, err
    assert time.monotonic() - started < 20  # 1 s grace; was: until the request ended
    assert "shutdown began" in out
    assert "Cancel 1 running task(s)" in err


def test_a_shutdown_that_hangs_ends_the_process_with_its_stacks(tmp_path: Path) -> None:
    process, _ = _start(tmp_path, hang_shutdown=True, stop=3)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=25)
    assert process.returncode == 1
    assert 2.5 < time.monotonic() - started < 20
    assert "shutdown began" in out
    # What held it, for the operator (faulthandler names the stuck frame).
    assert "Timeout (0:00:03)!" in err and "in lifespan" in err


def test_beyond_its_limits_a_service_answers_503_with_a_reason(tmp_path: Path) -> None:
    """Whoever opens many requests or connections meets a bound, not an exhausted
    process: past `max_requests` under way a 503 saying why (before the application
    runs), past `max_connections` a 503 saying so too (uvicorn's own was bare text);
    room comes back as they close."""
    limits = "serving.ServerLimits(max_requests=2, max_connections=5, backlog=8)"
    process, url = _start(tmp_path, hang_shutdown=False, stop=30, limits=limits)
    host, port = url.removeprefix("http://").split(":")
    try:
        held = [_hold_a_request(url) for _ in range(2)]
        busy = httpx.get(f"{url}/ready", timeout=5)
        assert busy.status_code == 503
        assert busy.json()["error"] == "busy" and "2 requests" in busy.json()["detail"]
        assert busy.headers["retry-after"] == "1"
        idle = [socket.create_connection((host, int(port))) for _ in range(3)]
        time.sleep(0.3)  # accepted
        crowded = httpx.get(f"{url}/ready", timeout=5)
        assert crowded.status_code == 503 and crowded.json()["error"] == "busy"
        assert "connections open" in crowded.json()["detail"]
        assert crowded.headers["connection"] == "close"
        for connection in idle:
            connection.close()
        time.sleep(0.3)
        # Room for connections again; the two requests (which never end) still hold theirs.
        assert httpx.get(f"{url}/ready", timeout=5).json()["error"] == "busy"
        for connection in held:
            connection.close()
    finally:
        process.kill()
        process.communicate()


def test_one_address_cannot_hold_every_connection(tmp_path: Path) -> None:
    """Attack: one address opened `max_connections` connections and kept them (a request
    head every few seconds, or a new connection when one was closed): uvicorn then answered
    every other client's requests 503. Now one address holds at most
    `max_connections_per_address`; past it a new connection is answered 503
    `too_many_connections` and closed, and other addresses are still served."""
    limits = (
        "serving.ServerLimits(max_requests=4, max_connections=8, backlog=8,"
        " max_connections_per_address=3)"
    )
    process, url = _start(tmp_path, hang_shutdown=False, stop=30, limits=limits)
    host, port = url.removeprefix("http://").split(":")

    def ask(source: str) -> bytes:
        with socket.create_connection((host, int(port)), source_address=(source, 0)) as c:
            c.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return _read_all(c, timeout=5)

    try:
        held = [socket.create_connection((host, int(port))) for _ in range(3)]
        time.sleep(0.3)  # accepted
        with socket.create_connection((host, int(port))) as fourth:
            refused = _read_all(fourth, timeout=5)  # answered and closed before a request
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        reason = json.loads(refused.partition(b"\r\n\r\n")[2])
        assert reason["error"] == "too_many_connections" and "3 connections" in reason["detail"]
        assert ask("127.0.0.2").endswith(b"ready")  # another address is served
        held.pop().close()
        time.sleep(0.3)  # its count is given back
        assert ask("127.0.0.1").endswith(b"ready")
        for connection in held:
            connection.close()
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize(
    "limits",
    [
        {"max_requests": 0},
        {"max_connections": -1},
        {"backlog": True},
        {"max_requests": "many"},
        {"max_requests": 100, "max_connections": 100},
        {"max_connections_per_address": 0},
    ],
)
def test_server_limits_refuse_what_would_not_bound(limits: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ServerLimits(**limits)  # type: ignore[arg-type]


@pytest.mark.parametrize("given", ["host:bad", ":0", "127.0.0.1:65536", "h:８６００", ":-1", "h:"])
def test_a_bad_listen_address_is_a_clear_error(tmp_path: Path, given: str) -> None:
    """`relay serve` and `witness serve` took `int(port)` as it came: a traceback."""
    config = tmp_path / "relay.toml"
    config.write_text('listen = "127.0.0.1:8600"\n')
    with pytest.raises(InvalidInput, match="is not host:port"):
        listen_address(config, given, "127.0.0.1:8600")


def test_the_listen_address_comes_from_the_option_the_config_or_the_default(
    tmp_path: Path,
) -> None:
    config = tmp_path / "witness.toml"
    config.write_text('listen = "0.0.0.0:9100"\n')
    assert listen_address(config, "10.0.0.1:8000", "127.0.0.1:8700") == ("10.0.0.1", 8000)
    assert listen_address(config, ":8000", "127.0.0.1:8700") == ("127.0.0.1", 8000)
    assert listen_address(config, None, "127.0.0.1:8700") == ("0.0.0.0", 9100)
    config.write_text("")
    assert listen_address(config, None, "127.0.0.1:8700") == ("127.0.0.1", 8700)
    config.write_text("listen = [")
    with pytest.raises(InvalidInput, match="cannot read"):
        listen_address(config, None, "127.0.0.1:8700")


def test_an_ipv6_listen_address_may_be_written_in_brackets(tmp_path: Path) -> None:
    """`[::1]:8600`, as URLs and a node's `peer_listen` write it, was taken with its
    brackets: `relay serve --listen [::1]:8600` failed with "cannot listen on
    [::1]:8600: Name or service not known" and a hint that another process held the
    port. Without brackets it is read as before."""
    config = tmp_path / "relay.toml"
    config.write_text('listen = "[::]:9100"\n')
    assert listen_address(config, "[::1]:8000", "127.0.0.1:8600") == ("::1", 8000)
    assert listen_address(config, None, "127.0.0.1:8600") == ("::", 9100)
    assert listen_address(config, "::1:8000", "127.0.0.1:8600") == ("::1", 8000)
    assert listen_address(config, "[]:8000", "127.0.0.1:8600") == ("127.0.0.1", 8000)


def _read_all(connection: socket.socket, timeout: float) -> bytes:
    """Everything the service sends until it closes the connection (or `timeout`)."""
    connection.settimeout(timeout)
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_a_connection_must_bring_its_request_head_in_time(tmp_path: Path) -> None:
    """Attack: connections that send nothing, or a request head a few bytes at a time,
    were held open for ever (uvicorn waits for a head without limit), so a few thousand
    of them filled `max_connections` and every later client got 503. Now each must bring
    its head within HEAD_SECONDS: from its opening, and from the end of each response."""
    limits = "serving.ServerLimits(max_requests=2, max_connections=5, backlog=8)"
    # 1.2 s: the new client below must come while the others still wait for their
    # heads; with 0.6 s, a loaded machine sometimes came after (a 200, not the 503).
    process, url = _start(tmp_path, hang_shutdown=False, stop=30, limits=limits, head=1.2)
    host, port = url.removeprefix("http://").split(":")
    try:
        silent = [socket.create_connection((host, int(port))) for _ in range(2)]
        trickling = socket.create_connection((host, int(port)))
        trickling.sendall(b"GET /ready HTTP/1.1\r\n")
        after_a_response = socket.create_connection((host, int(port)))
        after_a_response.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        after_a_response.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n")  # and no more
        # With a new client's, five connections open, the limit: it is turned away.
        assert httpx.get(f"{url}/ready", timeout=5).status_code == 503
        for connection in silent:
            assert _read_all(connection, timeout=5) == b""  # closed, nothing to answer
            connection.close()
        answer = _read_all(trickling, timeout=5)
        trickling.close()
        assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer
        assert b'"error": "slow_request"' in answer and b"within 1.2 s" in answer
        answers = _read_all(after_a_response, timeout=5)
        after_a_response.close()
        assert answers.startswith(b"HTTP/1.1 200 ")
        assert answers.count(b"HTTP/1.1 408 ") == 1 and b"slow_request" in answers
        # A connection idle after its response is closed without a word: a 408 written
        # as its client sends the next request would read as that request's answer.
        idle = socket.create_connection((host, int(port)))
        idle.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = _read_all(idle, timeout=5)
        idle.close()
        assert answers.startswith(b"HTTP/1.1 200 ") and answers.count(b"HTTP/1.1") == 1
        # Room again; and a request served for longer than the head deadline is not cut.
        assert httpx.get(f"{url}/ready", timeout=5).text == "ready"
        assert httpx.get(f"{url}/slow", timeout=5).text == "slow"
    finally:
        process.kill()
        process.communicate()


def test_a_body_must_arrive_in_time(tmp_path: Path) -> None:
    """Attack: a request that sends its head and then its body a byte at a time held a
    request slot (`max_requests`) for as long as it liked. `serving.read_body`, which
    every service reads its bodies with, gives up after BODY_SECONDS (the service
    answers 408); the head's deadline does not cut a body that keeps its own."""
    process, url = _start(tmp_path, hang_shutdown=False, stop=30, head=0.6, body=1.2)
    host, port = url.removeprefix("http://").split(":")
    try:
        slow = socket.create_connection((host, int(port)))
        slow.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        started = time.monotonic()
        head, _, body = _read_all(slow, timeout=5).partition(b"\r\n\r\n")
        slow.close()  # closed by the service: the rest of that body may still come
        assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head
        assert json.loads(body) == {
            "error": "slow_body",
            "detail": "send the request's body within 1.2 s",
        }
        assert 1.0 < time.monotonic() - started < 4
        assert httpx.post(f"{url}/echo", content=b"x" * 10, timeout=5).text == "10 bytes"
        assert httpx.post(f"{url}/echo", content=b"x" * 1001, timeout=5).text == "too large"
    finally:
        process.kill()
        process.communicate()


def test_a_client_that_does_not_read_its_answer_loses_it_in_time(tmp_path: Path) -> None:
    """Review r31, attack: a client that sends two requests at once (pipelined) and
    reads none of the answers, the first larger than the buffers on the way, held the
    second's request slot for ever (uvicorn waits without limit for room to write), and
    the first's buffered answer and connection too: `max_requests` such clients had
    every later one turned away with 503. Now writing may stall at most SEND_SECONDS,
    then the connection is dropped with its answers; a client that reads gets them."""
    limits = "serving.ServerLimits(max_requests=2, max_connections=8, backlog=8)"
    process, url = _start(tmp_path, hang_shutdown=False, stop=30, limits=limits, send=2.0)
    host, port = url.removeprefix("http://").split(":")
    hogs = []
    try:
        for _ in range(2):
            hog = socket.socket()
            hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            hog.connect((host, int(port)))
            hog.sendall(
                b"GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            hogs.append(hog)
        # Both answers under way, stalled: the slots are held (polled: how soon the
        # service takes the hogs' requests depends on the machine's load)...
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/ready", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "the hogs never held the slots"
            time.sleep(0.05)
        held = time.monotonic()
        # ...until SEND_SECONDS after their writes stalled.
        while (ready := httpx.get(f"{url}/ready", timeout=5)).status_code == 503:
            assert time.monotonic() < held + 10, "the stalled connections were never dropped"
            time.sleep(0.05)
        assert ready.text == "ready"
        assert len(httpx.get(f"{url}/big", timeout=10).content) == 4 << 20
        for hog in hogs:  # dropped: its answers never all arrive
            received = b""
            with contextlib.suppress(ConnectionResetError):
                received = _read_all(hog, timeout=5)
            assert len(received) < 4 << 20
    finally:
        for hog in hogs:
            hog.close()
        process.kill()
        process.communicate()


def test_a_request_head_is_bounded_in_bytes_and_fields(tmp_path: Path) -> None:
    """Attack: uvicorn read a request head of any size within HEAD_SECONDS and kept each
    header field as Python objects, some 25 times a short field's size on the wire: one
    connection sending `a:b` lines made the relay's process grow by a gigabyte every
    40 MB, before any token check. Now a head is at most MAX_HEAD_BYTES and MAX_HEADERS
    fields (`431 head_too_large`, connection closed); an honest head, and a body sent in
    the same packet as its head, still pass."""
    process, url = _start(tmp_path, hang_shutdown=False, stop=30)
    host, port = url.removeprefix("http://").split(":")

    def send(data: bytes) -> bytes:
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(data)
            return _read_all(connection, timeout=5)

    try:
        many = b"GET /ready HTTP/1.1\r\nHost: x\r\n" + b"a:b\r\n" * 8000
        answer = send(many)  # no end of head: the whole head never comes
        assert answer.startswith(b"HTTP/1.1 431 ") and b'"error": "head_too_large"' in answer
        long = b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 200_000
        answer = send(long)
        assert answer.startswith(b"HTTP/1.1 431 ") and b"connection: close" in answer
        honest = b"GET /ready HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"t" * 4096
        honest += b"".join(b"X-%d: v\r\n" % i for i in range(90)) + b"Connection: close\r\n\r\n"
        assert send(honest).startswith(b"HTTP/1.1 200 ")
        body = b"b" * 900  # read_body's limit in the service is 1000
        post = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        post += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        assert send(post).endswith(b"900 bytes")
        # A body beyond the head's limit is not the head's. Read whole by the service: one
        # that answers and closes with the body unread resets the connection, and the
        # reset can reach the client before the answer does (a flake seen once).
        big_body = b"POST /count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        big_body += b"Content-Length: 100000\r\n\r\n" + b"b" * 100_000
        answer = send(big_body)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"100000 bytes")
        # A whole oversized head in one read, its end and body with it (review s39-A: it
        # was parsed before the count, and its end reset the count, so 128 KB passed).
        for big in (b"X-Long: " + b"a" * 100_000 + b"\r\n", b""):
            target = b"/echo" if big else b"/echo?" + b"q" * 100_000
            whole = b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n" + big
            whole += b"Content-Length: 2\r\nConnection: close\r\n\r\nhi"
            answer = send(whole)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
            assert b'"error": "head_too_large"' in answer
        # A request's trailer fields are counted as its own, not against the next head
        # on the same connection (review s39-E: refused with 431).
        with socket.create_connection((host, int(port))) as connection:
            chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            connection.sendall(chunked + b"3\r\nabc\r\n0\r\nX-Sig: " + b"s" * 28_000 + b"\r\n\r\n")
            time.sleep(0.3)
            connection.sendall(
                b"GET /ready HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"t" * 8000
                + b"\r\nConnection: close\r\n\r\n"
            )  # fmt: skip
            both = _read_all(connection, timeout=5)
        assert both.count(b"HTTP/1.1 200 ") == 2 and b"431" not in both, both[-300:]
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr  # a refusal is no error of the server's


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_pipelined_requests_are_bounded(tmp_path: Path) -> None:
    """Attack (review s48): uvicorn queued every pipelined request head and read on after
    each answer though some still waited; two connections sending `GET` heads without
    pause, and reading the answers, grew a service from 31 to 565 MB in 8 s, with no
    token. Now a connection may have MAX_PIPELINED requests waiting (answered, in
    order, the rest dropped unread and the connection closed after them)."""
    process, url = _start(tmp_path, hang_shutdown=False, stop=30)
    host, port = url.removeprefix("http://").split(":")
    slow = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
    ready = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(slow + ready * (MAX_PIPELINED - 1) + last)  # all in one read
            answers = _read_all(connection, timeout=10)
        assert answers.count(b"HTTP/1.1 200 ") == MAX_PIPELINED + 1  # within the bound
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(slow + ready * 4000)
            answers = _read_all(connection, timeout=10)
        # The waiting ones answered, the rest dropped, then the connection closed.
        assert answers.count(b"HTTP/1.1 200 ") == MAX_PIPELINED + 1
        assert answers.rstrip().endswith(b"ready") and b"connection: close" in answers
        before = _rss_mb(process.pid)
        stop = threading.Event()

        def read(connection: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while not stop.is_set() and connection.recv(1 << 20):
                    pass

        def write(connection: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while not stop.is_set():
                    connection.sendall(ready * 4000)

        connections = [socket.create_connection((host, int(port))) for _ in range(2)]
        workers = [
            threading.Thread(target=work, args=(c,), daemon=True)
            for c in connections
            for work in (read, write)
        ]
        peak = before
        try:
            for worker in workers:
                worker.start()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                peak = max(peak, _rss_mb(process.pid))
                time.sleep(0.1)
        finally:
            stop.set()
            for connection in connections:
                connection.close()
        assert peak - before < 60, f"the service grew from {before:.0f} to {peak:.0f} MB"
        assert httpx.get(f"{url}/ready", timeout=5).text == "ready"
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr


def test_a_request_that_is_not_http_gets_a_json_reason(tmp_path: Path) -> None:
    """uvicorn answered what its parser refuses (a byte outside HTTP's, two lengths, a
    chunk size that is no number, a smuggling pair of Content-Length and chunked) with
    bare text, "Invalid HTTP request received.": every other refusal of every service is
    `{"error", "detail"}` JSON that says what to do."""
    process, url = _start(tmp_path, hang_shutdown=False, stop=30)
    host, port = url.removeprefix("http://").split(":")
    post = b"POST /echo HTTP/1.1\r\nHost: x\r\n"
    malformed = [
        b"GET /re\xffady HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ready HTTP/1.1\r\nHost: x\r\nX-A\x00: b\r\n\r\n",
        post + b"Content-Length: 1\r\nContent-Length: 5\r\n\r\nxxxxx",
        post + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n",
        post + b"Content-Length: " + b"9" * 30 + b"\r\n\r\n",
        b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n",
    ]
    try:
        for request in malformed:
            with socket.create_connection((host, int(port))) as connection:
                connection.sendall(request)
                answer = _read_all(connection, timeout=5)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), (request, answer)
            assert b"content-type: application/json" in head.lower(), (request, answer)
            reason = json.loads(body)
            assert reason["error"] == "bad_request", (request, reason)
            assert "HTTP/1.1" in reason["detail"], (request, reason)
        assert httpx.get(f"{url}/ready", timeout=5).text == "ready"  # still serving
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr


def test_a_chunked_body_s_framing_and_trailers_are_bounded_as_a_head_is(tmp_path: Path) -> None:
    """Attack: a chunked request's trailer fields come after its body's last chunk, while
    the connection is still in the body, where no byte was counted; the parser joins the
    pieces of one field as it comes (memory linear, CPU quadratic, on the event loop).
    One connection sending 100 MiB of one trailer field kept a relay's loop busy for
    10 s. Now bytes that are not body (chunk lines, extensions, trailers) are at most
    MAX_HEAD_BYTES between body bytes: `431`, connection closed; honest chunked bodies,
    a byte per chunk and with a trailer, still pass."""
    process, url = _start(tmp_path, hang_shutdown=False, stop=30)
    host, port = url.removeprefix("http://").split(":")
    post = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    try:
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(post + b"\r\n3\r\nabc\r\n0\r\nX-Trailer: ")
            time.sleep(0.2)  # the head and the body in one read, the trailer in later ones
            try:
                for _ in range(64):  # 4 MiB of one trailer field, never ended
                    connection.sendall(b"a" * (64 * 1024))
            except OSError:
                pass  # closed on us: the answer is already there
            answer = _read_all(connection, timeout=5)
        assert answer.startswith(b"HTTP/1.1 431 ") and b'"error": "head_too_large"' in answer
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(post + b"Connection: close\r\n\r\n")
            for _ in range(900):
                connection.sendall(b"1\r\nb\r\n")
            connection.sendall(b"0\r\nX-Checksum: 900\r\n\r\n")
            assert _read_all(connection, timeout=5).endswith(b"900 bytes")
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr


def test_a_port_in_use_is_an_error_naming_it(capfd: pytest.CaptureFixture[str]) -> None:
    """`witness serve` (and node and relay serve) on a port another process listens on
    exited with uvicorn's code 3, which backupvault documents as "wrong password", and
    only a log line to say why."""
    from starlette.applications import Starlette

    from backupvault import serving
    from backupvault.errors import BackupVaultError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BackupVaultError) as refused:
            serving.run_until_stopped(Starlette(), host="127.0.0.1", port=port, log_config=None)
    assert refused.value.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in refused.value.message
    assert refused.value.hint is not None and "--listen" in refused.value.hint


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_service_stopped_as_a_service_manager_stops_it_exits_0(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """`systemctl stop` sends SIGTERM (docs/operations.md, "Serve the nodes"). Before, a
    service's command then said "error: interrupted", with a client's hint ("run the
    command again (a password check with the vault is let finish first ...)"), and exited
    with status 130, which systemd records as a failed unit."""
    port = free_port()
    command = [sys.executable, "-m", "backupvault", "witness"]
    made = subprocess.run(
        [*command, "keygen", "--out", str(tmp_path), "--name", "witness.test/w",
         "--listen", f"127.0.0.1:{port}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    process = subprocess.Popen(
        [*command, "serve", "--config", str(tmp_path / "witness.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not _answers(f"http://127.0.0.1:{port}/v1/witness"):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(stop)
    _, err = process.communicate(timeout=40)
    assert process.returncode == 0, err
    assert "interrupted" not in err and "run the command again" not in err
    assert "stopped by " + stop.name in err


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_port_an_outgoing_connection_holds_is_named_as_the_ephemeral_range() -> None:
    """A node told to listen on a port that an outgoing connection happened to take as its
    local port (one of the kernel's ephemeral range) was refused "another process may
    listen there", though nothing listened: the operator looked for a service that did
    not exist. The hint now says the port is in that range, and to choose one outside it."""
    from starlette.applications import Starlette

    from backupvault import serving
    from backupvault.errors import BackupVaultError

    ephemeral = serving.ephemeral_ports()
    assert ephemeral is not None  # Linux: /proc/sys/net/ipv4/ip_local_port_range
    with socket.socket() as listener, socket.socket() as outgoing:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        outgoing.bind(("127.0.0.1", 0))  # a local port from the ephemeral range
        outgoing.connect(listener.getsockname())
        port = outgoing.getsockname()[1]
        assert port in ephemeral
        with pytest.raises(BackupVaultError) as refused:
            serving.run_until_stopped(Starlette(), host="127.0.0.1", port=port, log_config=None)
    hint = refused.value.hint or ""
    assert f"{ephemeral.start}-{ephemeral.stop - 1}" in hint and "outgoing" in hint
