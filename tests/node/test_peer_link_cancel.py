"""A peer link ends when it is cancelled, whatever it was doing. Its dial ran under
`asyncio.wait_for`, which on Python 3.11 returns the connection instead of raising when
the cancellation comes as the dial completes: the link went on to serve the stream, and
whatever awaited it (a node's stop, asyncio.run's exit) waited forever."""

from __future__ import annotations

import asyncio
import socket

import pytest

from backupvault.node import peers
from backupvault.node.peers import PeerLink


def test_a_link_cancelled_as_its_dial_completes_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        dialled: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        dialled = loop.create_future()

        async def open_connection(*address: object) -> object:
            return await dialled

        ours, theirs = socket.socketpair()
        with ours, theirs:
            stream = await asyncio.open_connection(sock=ours)
            monkeypatch.setattr(peers.asyncio, "open_connection", open_connection)
            link = PeerLink(1, ("127.0.0.1", 1), lambda: b"hello", lambda count: None)
            link.start()
            await asyncio.sleep(0)  # dialling
            dialled.set_result(stream)
            await asyncio.sleep(0)  # the dial completes: the link is cancelled right then
            task = link._task
            assert task is not None
            task.cancel()
            await asyncio.wait({task}, timeout=2)
            ended = task.done()
            if not ended:
                await link.stop()  # cancel again, so that this test ends
            stream[1].close()
            return ended

    assert asyncio.run(scenario())
