"""A node whose start-up fails (its peer port taken between the check and the bind) must
exit, not hang. Its peer links were started before its listener bound: each dialled its
peer, and asyncio's cancellation at exit could be swallowed by a dial that had just
connected (Python 3.11's `wait_for`), so the process waited on that task forever."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from peer_shell import channel, firmware, open_store

from backupvault.node.service import NodeService


def _held_port() -> socket.socket:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    return held


def test_a_start_whose_peer_listener_cannot_bind_leaves_no_peer_link_dialling(
    tmp_path: Path,
) -> None:
    async def start() -> list[str]:
        peers = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        peer_port = peers.sockets[0].getsockname()[1]
        with _held_port() as held:
            store = open_store(tmp_path)
            addresses = {0: held.getsockname(), 1: ("127.0.0.1", peer_port)}
            addresses[2] = addresses[1]
            service = NodeService(0, addresses, firmware(store), channel(0), store, intact=True)
            with pytest.raises(OSError):
                await service.start()
            await asyncio.sleep(0.2)  # long enough for a started link to dial and connect
            left = [
                t.get_coro().__qualname__  # type: ignore[union-attr]
                for t in asyncio.all_tasks()
                if t is not asyncio.current_task()
            ]
            store.close()
        peers.close()
        return left

    assert [name for name in asyncio.run(start()) if "PeerLink" in name] == []
