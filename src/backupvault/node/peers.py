"""Node-to-node transport: one persistent TCP stream per peer and direction, carrying
length-prefixed binary frames of sealed channel envelopes (docs/fleet.md, "Peer streams").

Node i sends to node j only on the stream i dials to j's peer listener; j answers on its
own stream to i. A stream opens with a hello (fleet/channel.py `PeerChannel.hello`) that
tells the listener who dialled before it reads anything larger than the hello; after it,
every record is a frame of envelopes, each opened and checked on its own by the channel
(sender, receiver, epoch, window, nonce), and each must come from the node that said
hello. Anything wrong on a stream (a forged, replayed, misdirected, truncated or oversize
record) closes that stream: the dialler reconnects, and Paxos treats what was lost as lost
messages. Nothing here trusts the network: the channel does the authentication.

Why our own framing over asyncio streams rather than HTTP/2 or a message library: the
frames are already authenticated and encrypted per message by the channel, so the
transport needs only lengths, and a length prefix is a few lines that any library would
wrap in more (and in a second layer of flow control); asyncio streams run on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Callable

from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.serving import split_host_port

log = logging.getLogger("backupvault.node")

_LENGTH = struct.Struct(">I")
#: Largest frame a listener reads: a catch-up answer carries a node's records.
MAX_FRAME = 64 * 1024 * 1024
#: Streams that have not said hello yet, at once; beyond this the oldest of them is
#: closed to make room. Closing the new one instead let a stranger holding 32 silent
#: connections (7 new ones a second) keep every peer from redialling.
MAX_UNAUTHENTICATED = 32
#: How long a new stream may take to say hello.
HELLO_SECONDS = 5.0
#: Messages waiting for a stream to a peer; beyond this the oldest are dropped (lost).
MAX_QUEUED_MESSAGES = 4096
#: Messages in one frame: a sender splits a longer batch, and a receiver refuses a frame
#: holding more (it opens a frame's messages in one turn of its event loop: a hostile
#: peer's 64 MiB frame of a million messages stalled a node for 20 s, review s39).
MAX_FRAME_MESSAGES = 1024
#: A message not handed to the socket within this time after it was queued is dropped,
#: as HTTP posts were before streams. (The quarantine of a restarted node counts on
#: the receiver's window instead, `channel.WINDOW`: a message in the network can arrive
#: later than this; docs/fleet.md, "Catching up".)
MESSAGE_SECONDS = 2.0
CONNECT_SECONDS = 0.5
#: A stream whose socket takes longer than this to take what was written is closed.
WRITE_SECONDS = 2.0
#: Written bytes the socket has not taken yet, beyond which frames queue instead.
HIGH_WATER = 1024 * 1024
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0
#: A stream that lasted this long was a success: the next redial starts from BACKOFF_FIRST.
STABLE_SECONDS = 1.0


def parse_address(text: str, what: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) as (host, port)."""
    host, port = split_host_port(text)
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidInput(f"{what} must be host:port, not {text!r}")
    return host, int(port)


def join_frame(envelopes: list[bytes]) -> bytes:
    """A frame: for each sealed message, u32 big-endian length || the sealed message."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in envelopes)


def split_frame(frame: bytes) -> list[bytes]:
    envelopes: list[bytes] = []
    at = 0
    while at < len(frame):
        if len(envelopes) == MAX_FRAME_MESSAGES:
            raise InvalidInput(f"peer frame holds more than {MAX_FRAME_MESSAGES} messages")
        if at + 4 > len(frame):
            raise InvalidInput("peer frame ends inside a length")
        (length,) = _LENGTH.unpack_from(frame, at)
        at += 4
        if length == 0 or at + length > len(frame):
            raise InvalidInput("peer frame holds a message of a wrong length")
        envelopes.append(frame[at : at + length])
        at += length
    return envelopes


def record(body: bytes) -> bytes:
    """One record on a stream: u32 big-endian length || body."""
    return _LENGTH.pack(len(body)) + body


class PeerLink:
    """This node's stream to one peer: dialled on start, redialled with backoff after any
    failure; frames go straight to the socket when it keeps up, else into a bounded queue
    that a writer task empties."""

    def __init__(
        self,
        peer: int,
        address: tuple[str, int],
        hello: Callable[[], bytes],
        on_drop: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peer = peer
        self.address = address
        self._hello = hello
        self._on_drop = on_drop  # told how many messages were dropped
        self._clock = clock
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._queue: deque[tuple[float, int, bytes]] = deque()  # (queued at, messages, record)
        self._queued = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connects = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._close()

    @property
    def connected(self) -> bool:
        return self._usable()

    def _usable(self) -> bool:
        writer, reader = self._writer, self._reader
        # The listener never writes, so anything readable (an end of stream) means closed.
        return (
            writer is not None
            and reader is not None
            and not writer.is_closing()
            and not reader.at_eof()
        )

    def send(self, envelopes: list[bytes]) -> None:
        """Send one frame of sealed messages, now if the stream keeps up, else later."""
        data = record(join_frame(envelopes))
        writer = self._writer
        if (
            writer is not None
            and not self._queue
            and self._usable()
            and writer.transport.get_write_buffer_size() < HIGH_WATER
        ):
            writer.write(data)
            return
        self._queue.append((self._clock(), len(envelopes), data))
        self._queued += len(envelopes)
        while self._queued > MAX_QUEUED_MESSAGES:
            _, count, _ = self._queue.popleft()
            self._queued -= count
            self._on_drop(count)
        self._wake.set()

    def _drop_expired(self) -> None:
        oldest = self._clock() - MESSAGE_SECONDS
        while self._queue and self._queue[0][0] < oldest:
            _, count, _ = self._queue.popleft()
            self._queued -= count
            self._on_drop(count)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._writer = self._reader = None

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for returns a dial that
                # completes as the link is cancelled, and the link then lived on.
                async with asyncio.timeout(CONNECT_SECONDS):
                    reader, writer = await asyncio.open_connection(*self.address)
            except (OSError, TimeoutError) as err:
                log.debug("peer %d at %s unreachable: %r", self.peer, self.address, err)
            else:
                self.connects += 1
                opened = self._clock()
                writer.write(record(self._hello()))
                self._reader, self._writer = reader, writer
                try:
                    await self._serve(reader, writer)
                except (OSError, TimeoutError) as err:
                    log.debug("stream to peer %d broke: %r", self.peer, err)
                finally:
                    self._close()
                # Something between may accept a connection and drop it at once (a proxy
                # or load balancer whose peer is down): only a stream that lasted counts
                # as a success that restarts the backoff.
                if self._clock() - opened >= STABLE_SECONDS:
                    backoff = BACKOFF_FIRST
            self._drop_expired()
            # Jitter keeps the nodes of a restarted fleet from redialling in step.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(BACKOFF_MAX, backoff * 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Empty the queue whenever woken, until the stream ends."""
        closed = asyncio.ensure_future(reader.read(1))  # the listener never writes
        try:
            while not closed.done():
                self._wake.clear()
                self._drop_expired()
                while self._queue:
                    _, count, data = self._queue.popleft()
                    self._queued -= count
                    writer.write(data)
                if writer.transport.get_write_buffer_size() > 0:
                    async with asyncio.timeout(WRITE_SECONDS):
                        await writer.drain()
                if writer.is_closing():
                    return
                woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({closed, woken}, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
        finally:
            closed.cancel()


class PeerListener:
    """Accepts the streams peers dial to this node. `authenticate(hello)` returns the
    sender a hello proves (or raises); `deliver(sender, frame)` takes a frame and returns
    False when the stream must be closed (something in it was refused). `on_refused()`
    is called for each stream closed for something refused, whatever it was (the node's
    `peer_streams_refused` metric)."""

    def __init__(
        self,
        address: tuple[str, int],
        authenticate: Callable[[bytes], int],
        deliver: Callable[[int, bytes], bool],
        hello_size: int,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self._authenticate = authenticate
        self._deliver = deliver
        self._hello_size = hello_size
        self._on_refused = on_refused
        self._server: asyncio.Server | None = None
        #: Streams waiting for their hello, oldest first.
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        self._streams: dict[int, asyncio.StreamWriter] = {}  # the newest stream per sender
        self._open: set[asyncio.StreamWriter] = set()  # every accepted stream still open
        self._handlers: set[asyncio.Task[None]] = set()
        self.refused = 0  # streams closed for something refused

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, *self.address)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Closing the streams ends their handlers (their reads see the end); a handler is
        # cancelled only if that takes too long.
        for writer in list(self._open):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=2)
        for task in list(self._handlers):
            task.cancel()

    def _refuse(self, writer: asyncio.StreamWriter, why: str) -> None:
        self.refused += 1
        if self._on_refused is not None:
            self._on_refused()
        log.warning("closed a peer stream: %s", why)
        writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._open.add(writer)
        try:
            sender = await self._hello(reader, writer)
            if sender is not None:
                await self._frames(sender, reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()  # the dialler went away, or cut a record short
        finally:
            self._open.discard(writer)
            self._handlers.discard(task)

    async def _hello(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> int | None:
        if len(self._waiting) >= MAX_UNAUTHENTICATED:
            # An honest peer's hello comes within a round trip of its dial: to hold it
            # off, a stranger must now open more streams than this in that time, always.
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            self._refuse(oldest, "the oldest of too many streams waiting for a hello")
        self._waiting[writer] = None
        try:
            async with asyncio.timeout(HELLO_SECONDS):
                (length,) = _LENGTH.unpack(await reader.readexactly(4))
                if length != self._hello_size:
                    self._refuse(writer, f"a hello of {length} bytes")
                    return None
                hello = await reader.readexactly(length)
        except TimeoutError:
            self._refuse(writer, "no hello in time")
            return None
        finally:
            self._waiting.pop(writer, None)
        try:
            sender = self._authenticate(hello)
        except (InvalidInput, AuthenticationFailed) as err:
            self._refuse(writer, f"hello refused: {err.message}")
            return None
        older = self._streams.get(sender)
        if older is not None:
            older.transport.abort()  # the peer redialled; its old stream is dead to it
        self._streams[sender] = writer
        return sender

    async def _frames(
        self, sender: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                header = await _read_header(reader)
                if header is None:
                    return  # the dialler closed the stream between frames
                (length,) = _LENGTH.unpack(header)
                if not 0 < length <= MAX_FRAME:
                    self._refuse(writer, f"a frame of {length} bytes from node {sender}")
                    return
                frame = await reader.readexactly(length)
                if not self._deliver(sender, frame):
                    self._refuse(writer, f"a frame from node {sender} held refused messages")
                    return
        finally:
            if self._streams.get(sender) is writer:
                del self._streams[sender]
            writer.transport.abort()


async def _read_header(reader: asyncio.StreamReader) -> bytes | None:
    """The next record's length, or None at a clean end of stream between records."""
    try:
        return await reader.readexactly(4)
    except asyncio.IncompleteReadError as err:
        if err.partial:
            raise
        return None
