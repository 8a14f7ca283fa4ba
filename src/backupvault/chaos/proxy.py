"""A fault-injecting TCP proxy on loopback, one listening port per directed link.

A `LinkProxy` forwards one link (for instance "relay -> node 2", HTTP, or "node 0 ->
node 3", the node's peer stream: it forwards bytes, whatever the protocol) to the real
port of the destination and, on command, misbehaves:

    PASS    forward bytes both ways
    DROP    abort every open connection, and refuse new ones (the caller's connect is
            refused, as by an unreachable node: nothing reaches it, and the relay says it
            "could not be reached", not that it "may have acted")
    DELAY   forward, but hold every chunk for `delay` seconds, both ways (a delay line:
            chunks behind it are not held up longer, as on a long link)
    STALL   forward requests, withhold the answers until the mode changes (the caller
            times out although the node did the work: a lost answer, the case that makes
            the relay retry a KE1 on another node)

All proxies of a soak run live in one asyncio loop on a background thread (`ProxyPool`);
the chaos driver, which is synchronous, changes their modes through thread-safe calls.
Because every link has its own port, a proxy knows the source of what it carries: cutting
a node off drops the links into it *and* the links out of it.

A proxy refuses a connection by not listening: its port stays bound to a socket that does
not listen (so no other process takes it meanwhile), and the kernel refuses connects. It
also stops listening while its target is down (found by a connection the target refused;
it listens again once the target accepts a test connection), so that a killed node is
refused through the proxy as it is without it, rather than accepted and reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from backupvault.deploy.local import free_port

HOST = "127.0.0.1"
CHUNK = 64 * 1024
#: Chunks a link holds in its delay line before it stops reading (back pressure).
LINE_CHUNKS = 1024
#: How often a proxy whose target is down tries it again (a refused connect costs the
#: target nothing; an accepted test connection is closed at once).
DOWN_RETRY_SECONDS = 0.1


class Mode(enum.StrEnum):
    PASS = "pass"
    DROP = "drop"
    DELAY = "delay"
    STALL = "stall"


@dataclass
class LinkStats:
    connections: int = 0
    refused: int = 0
    aborted: int = 0
    #: Connections accepted while the target was down (reset: found it down).
    target_down: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(eq=False)
class _Connection:
    downstream: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        for writer in (self.downstream, self.upstream):
            if writer is not None:
                writer.transport.abort()


@dataclass(eq=False)
class LinkProxy:
    """One directed link: listens on `listen_port`, forwards to `target_port`."""

    name: str
    listen_port: int
    target_port: int
    mode: Mode = Mode.PASS
    delay: float = 0.0
    stats: LinkStats = field(default_factory=LinkStats)
    _server: asyncio.Server | None = None
    _connections: set[_Connection] = field(default_factory=set)
    _changed: asyncio.Event | None = None
    #: Bound, never listening: keeps the port while the proxy refuses connections.
    _reserve: socket.socket | None = None
    #: The target refused a connection: refuse until it accepts one again.
    _target_down: bool = False
    _watching: asyncio.Task[None] | None = None
    #: Held while a listener is made: one at a time, since the port allows several.
    _opening: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.listen_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def start(self) -> None:
        self._changed = asyncio.Event()
        reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind((HOST, self.listen_port))
        self._reserve = reserve
        await self._listen()

    async def stop(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
        await self._close_listener()
        for connection in list(self._connections):
            connection.abort()
        if self._reserve is not None:
            self._reserve.close()

    def _should_listen(self) -> bool:
        return self.mode is not Mode.DROP and not self._target_down

    async def _listen(self) -> None:
        """Listen (again), unless the link drops or its target is down. The mode may
        change while the listener is made: it is checked again once it is there."""
        async with self._opening:
            if self._server is not None or not self._should_listen():
                return
            server = await asyncio.start_server(
                self._handle, HOST, self.listen_port, reuse_port=True
            )
            if self._should_listen() and self._server is None:
                self._server = server
            else:
                server.close()

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        """Runs in the proxy loop; returns once the link refuses or listens as `mode` says."""
        self.mode, self.delay = mode, delay
        if mode is Mode.DROP:
            for connection in list(self._connections):
                connection.abort()
                self.stats.aborted += 1
            self._refuse_now()
        else:
            await self._listen()
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    def _refuse_now(self) -> None:
        """Stop accepting at once (the next connect is refused); the server's own close
        finishes in the background."""
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def _watch_target(self) -> None:
        """The target refused a connection: refuse ours until it accepts one."""
        try:
            while True:
                await asyncio.sleep(DOWN_RETRY_SECONDS)
                try:
                    _, probe = await asyncio.open_connection(HOST, self.target_port)
                except OSError:
                    continue
                probe.transport.abort()
                break
            self._target_down = False
            await self._listen()
        finally:
            self._watching = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.mode is Mode.DROP or self._target_down:
            # Accepted in the instant before the listener closed.
            self.stats.refused += 1
            writer.transport.abort()
            return
        connection = _Connection(writer)
        self._connections.add(connection)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
            except OSError:
                # The node is down. This connection is already accepted and can only be
                # reset; the next ones are refused, as the node's own port refuses them.
                self.stats.target_down += 1
                writer.transport.abort()
                if not self._target_down:
                    self._target_down = True
                    self._refuse_now()
                    self._watching = asyncio.ensure_future(self._watch_target())
                return
            connection.upstream = up_writer
            await asyncio.gather(
                self._pipe(reader, up_writer, upward=True),
                self._pipe(up_reader, writer, upward=False),
            )
        except asyncio.CancelledError:
            # `ProxyPool.stop` cancels the handlers of open connections: the normal end of
            # a run. Ending quietly matters because on Python 3.11 the streams module's
            # done-callback asks a cancelled handler for its exception, and asyncio then
            # prints "Exception in callback" tracebacks at every soak's end.
            pass
        finally:
            self._connections.discard(connection)
            connection.abort()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, upward: bool
    ) -> None:
        """Forward one direction. In DELAY mode a chunk leaves `delay` seconds after it
        arrived, while the chunks behind it keep arriving: a delay line that adds latency
        without limiting throughput, as a long link does."""
        loop = asyncio.get_running_loop()
        line: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(LINE_CHUNKS)

        async def read() -> None:
            try:
                while data := await source.read(CHUNK):
                    delay = self.delay if self.mode is Mode.DELAY else 0.0
                    await line.put((loop.time() + delay, data))
            except (ConnectionError, OSError):
                pass
            finally:
                await line.put(None)

        reading = asyncio.ensure_future(read())
        try:
            while (item := await line.get()) is not None:
                due, data = item
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                await self._hold(upward)
                if self.mode is Mode.DROP:
                    return
                if upward:  # counted before the write, so a reader never sees it first
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError):
            return
        finally:
            reading.cancel()

    async def _hold(self, upward: bool) -> None:
        """Withhold answers while the link stalls."""
        while self.mode is Mode.STALL and not upward:
            assert self._changed is not None
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 1.0)


class ProxyPool:
    """Every link proxy of a run, served by one event loop on a daemon thread."""

    def __init__(self) -> None:
        self.links: dict[tuple[str, str], LinkProxy] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="chaos-proxies", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=30)

    def add(self, source: str, target: str, target_port: int) -> LinkProxy:
        """A proxy for the link source -> target (names like "relay", "node2")."""
        link = LinkProxy(f"{source}->{target}", free_port(), target_port)
        self.links[(source, target)] = link
        return link

    def start(self) -> None:
        self._thread.start()

        async def start_all() -> None:
            for link in self.links.values():
                await link.start()

        self._call(start_all())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def stop_all() -> None:
            for link in self.links.values():
                await link.stop()
            # Connection handlers still running (a stalled answer, a delayed chunk) end here
            # rather than being destroyed pending when the loop stops.
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(stop_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def into(self, node: str) -> list[LinkProxy]:
        return [link for (_, t), link in self.links.items() if t == node]

    def set_mode(self, links: Iterable[LinkProxy], mode: Mode, delay: float = 0.0) -> None:
        chosen = list(links)

        async def apply() -> None:
            for link in chosen:
                await link.set_mode(mode, delay)

        self._call(apply())

    def stats(self) -> dict[str, dict[str, int]]:
        return {link.name: vars(link.stats).copy() for link in self.links.values()}
