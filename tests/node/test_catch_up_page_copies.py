"""A catching-up node merges one page per ask (review s60). A page "from the start" (`since`
0, what a peer answers when its store changed) skipped the check that a page continues
what was merged, and copies under the id of one ask were each merged: one 60 MiB frame
of 525 copies put a million made-up rows into one group commit, more than a save may
write, and the node stopped; restarted, it caught up again from the same peer."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from peer_shell import Clock, frame, node_service, opened

from backupvault.fleet.messages import (
    PEER_MESSAGES,
    SYNC_PAGE,
    AcceptorRecord,
    SyncRequest,
    SyncResponse,
)
from backupvault.hsm.state import EntryId


def _page(sync_id: bytes, store_id: bytes, first: int) -> SyncResponse:
    keys = [EntryId.of("a", f"{i:x}").to_bytes() for i in range(first, first + SYNC_PAGE)]
    records = [AcceptorRecord(k, 1, 1) for k in keys]  # a promise each: a row each
    return SyncResponse(sync_id, True, records, store_id, 0, 10**6, True)


def test_copies_of_a_page_from_the_start_under_one_ask_are_merged_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        service, sent = node_service(tmp_path, clock)
        service._step(lambda: service.replica.start(clock(), intact=False))  # catching up
        for _ in range(30):
            await asyncio.sleep(0.005)
        (ask,) = opened(1, sent[1], PEER_MESSAGES)
        assert isinstance(ask, SyncRequest)
        store_id = os.urandom(16)
        copies = [_page(ask.sync_id, store_id, i * SYNC_PAGE) for i in range(3)]
        service.peer_frame(1, frame(1, copies))
        for _ in range(600):
            await asyncio.sleep(0.05)
            if not service._committing and not service._backlog:
                break
        merged = service.metrics["records_caught_up"]
        await service.stop()
        assert merged == SYNC_PAGE  # the first copy; was 6,000

    asyncio.run(scenario())
