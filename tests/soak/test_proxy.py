"""The fault-injecting proxy on its own: each mode does what the soak relies on."""

from __future__ import annotations

import random
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import cast

import pytest

from backupvault.chaos.proxy import HOST, LinkProxy, Mode, ProxyPool
from backupvault.chaos.soak import ChaosDriver, FaultKind, ProxiedFleet, SoakConfig
from backupvault.deploy.local import free_port


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data.upper())


@pytest.fixture
def link() -> Iterator[tuple[ProxyPool, LinkProxy]]:
    server = socketserver.ThreadingTCPServer((HOST, 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pool = ProxyPool()
    proxy = pool.add("a", "b", server.server_address[1])
    pool.start()
    try:
        yield pool, proxy
    finally:
        pool.stop()
        server.shutdown()
        server.server_close()


def _exchange(port: int, payload: bytes, timeout: float = 3.0) -> bytes:
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def test_pass_forwards_both_ways(link: tuple[ProxyPool, LinkProxy]) -> None:
    _, proxy = link
    assert _exchange(proxy.listen_port, b"hello") == b"HELLO"
    assert proxy.stats.bytes_up == 5 and proxy.stats.bytes_down == 5


def test_drop_refuses_new_and_aborts_open_connections(link: tuple[ProxyPool, LinkProxy]) -> None:
    pool, proxy = link
    held = socket.create_connection((HOST, proxy.listen_port), timeout=3)
    held.sendall(b"x")
    assert held.recv(10) == b"X"
    pool.set_mode([proxy], Mode.DROP)
    with pytest.raises(OSError):  # reset; or an empty read, turned into an error here
        if held.recv(10) == b"":
            raise ConnectionResetError
    held.close()
    with pytest.raises(OSError):
        if _exchange(proxy.listen_port, b"y") == b"":
            raise ConnectionResetError
    pool.set_mode([proxy], Mode.PASS)
    assert _exchange(proxy.listen_port, b"z") == b"Z"


def test_delay_holds_each_chunk(link: tuple[ProxyPool, LinkProxy]) -> None:
    pool, proxy = link
    pool.set_mode([proxy], Mode.DELAY, 0.3)
    started = time.monotonic()
    assert _exchange(proxy.listen_port, b"slow") == b"SLOW"
    assert time.monotonic() - started >= 0.6  # held going up and coming back


def test_stall_delivers_the_request_but_withholds_the_answer(
    link: tuple[ProxyPool, LinkProxy],
) -> None:
    pool, proxy = link
    pool.set_mode([proxy], Mode.STALL)
    with socket.create_connection((HOST, proxy.listen_port), timeout=0.5) as sock:
        sock.sendall(b"lost")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        assert proxy.stats.bytes_up == 4  # the request did arrive
        sock.settimeout(3)
        pool.set_mode([proxy], Mode.PASS)
        assert sock.recv(10) == b"LOST"  # the answer, late


def test_delay_is_a_line_that_does_not_hold_later_chunks_longer(
    link: tuple[ProxyPool, LinkProxy],
) -> None:
    """Chunks sent 0.1 s apart through 0.5 s each way each come back about 1 s after they
    left. A proxy that held one read at a time would make a chunk that arrives during a
    hold wait for it to end first, up to 0.5 s more each way."""
    pool, proxy = link
    pool.set_mode([proxy], Mode.DELAY, 0.5)
    sent: dict[int, float] = {}
    back: dict[int, float] = {}
    with socket.create_connection((HOST, proxy.listen_port), timeout=10) as sock:

        def receive() -> None:
            while len(back) < 12:
                for byte in sock.recv(64):
                    back[byte - ord("A")] = time.monotonic()

        reader = threading.Thread(target=receive)
        reader.start()
        for i in range(12):
            sent[i] = time.monotonic()
            sock.sendall(bytes([ord("a") + i]))
            time.sleep(0.1)
        reader.join(10)
    round_trips = [back[i] - sent[i] for i in range(12)]
    assert min(round_trips) >= 1.0
    assert max(round_trips) < 1.35


def test_stopping_with_connections_open_logs_no_error(
    link: tuple[ProxyPool, LinkProxy], caplog: pytest.LogCaptureFixture
) -> None:
    """The soak stops its proxies with connections still open; that is the normal end of a
    run, and must not print asyncio's "Exception in callback" tracebacks (on Python 3.11
    a cancelled connection handler trips the streams module's done-callback)."""
    pool, proxy = link
    held = [socket.create_connection((HOST, proxy.listen_port), timeout=3) for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(b"x")
            assert sock.recv(10) == b"X"
        with caplog.at_level("ERROR", logger="asyncio"):
            pool.stop()
    finally:
        for sock in held:
            sock.close()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


class _Fleet:
    """What the chaos driver uses of a ProxiedFleet to cut, slow and stall links: its
    proxies."""

    def __init__(self, pool: ProxyPool, nodes: int) -> None:
        self.pool, self.nodes = pool, nodes


@pytest.fixture
def three_nodes() -> Iterator[ProxyPool]:
    pool = ProxyPool()
    for target in range(3):
        pool.add("relay", f"node{target}", free_port())
        for source in range(3):
            if source != target:
                pool.add(f"node{source}", f"node{target}", free_port())
    pool.start()
    try:
        yield pool
    finally:
        pool.stop()


def test_a_fault_on_one_node_never_weakens_or_ends_another_nodes_fault(
    three_nodes: ProxyPool,
) -> None:
    """Node 1 is cut off; then node 2 is slowed, stalled, and healed. The links between
    them belong to both faults: while node 1 is cut they must drop, whatever node 2's
    fault does to them, or the cut node talks to a peer (a weaker fault than the schedule
    says, and the minority the soak claims is no longer what it runs)."""
    pool = three_nodes
    config = SoakConfig(seconds=1, clients=1)
    driver = ChaosDriver(cast(ProxiedFleet, _Fleet(pool, 3)), config, random.Random(0))
    between = [pool.links[("node1", "node2")], pool.links[("node2", "node1")]]
    driver.begin(1, FaultKind.CUT, until=10.0)
    driver.begin(2, FaultKind.SLOW, until=10.0)
    assert [link.mode for link in between] == [Mode.DROP, Mode.DROP]
    assert pool.links[("node2", "node0")].mode is Mode.DELAY  # node 2's own links: slow
    driver.heal(2)
    assert [link.mode for link in between] == [Mode.DROP, Mode.DROP]
    assert pool.links[("node2", "node0")].mode is Mode.PASS
    driver.begin(2, FaultKind.STALL, until=10.0)
    assert pool.links[("relay", "node2")].mode is Mode.STALL
    driver.heal(1)
    assert [link.mode for link in between] == [Mode.PASS, Mode.PASS]
    assert pool.links[("relay", "node1")].mode is Mode.PASS
    assert pool.links[("relay", "node2")].mode is Mode.STALL  # node 2's stall goes on
    driver.heal(2)
    assert {link.mode for link in pool.links.values()} == {Mode.PASS}


def _refused(port: int) -> bool:
    """Whether a connection to `port` is refused outright, as by a closed port; a
    connection that is accepted and then reset is not."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(b"request")
            sock.recv(10)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def test_drop_refuses_new_connections_as_an_unreachable_node(
    link: tuple[ProxyPool, LinkProxy],
) -> None:
    """The relay tells "could not be reached" (the node did not act: safe to say so) from
    "did not answer; it may have acted" by whether the connection was refused. A proxy
    that accepted and then reset made every cut node look like one that may have acted."""
    pool, proxy = link
    pool.set_mode([proxy], Mode.DROP)
    assert _refused(proxy.listen_port)
    pool.set_mode([proxy], Mode.PASS)
    assert _exchange(proxy.listen_port, b"back") == b"BACK"


def test_a_target_that_is_down_is_refused_until_it_listens_again() -> None:
    target = free_port()
    pool = ProxyPool()
    proxy = pool.add("relay", "node0", target)
    pool.start()
    try:
        _refused(proxy.listen_port)  # the first connection finds the node down
        assert _refused(proxy.listen_port)  # the next are refused, as the node's own port
        server = socketserver.ThreadingTCPServer((HOST, target), _Echo)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            deadline = time.monotonic() + 5
            while _refused(proxy.listen_port) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _exchange(proxy.listen_port, b"up") == b"UP"
        finally:
            server.shutdown()
            server.server_close()
    finally:
        pool.stop()
