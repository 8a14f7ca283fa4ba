"""Count report requests through the node's shell (node/service.py; docs/threshold.md,
"Counters and erasure"): each costs the answering node a store read and a signature, so
a peer's flood is dropped past its token bucket before either, while another peer's
request is still answered; a rolled-back node sends each open request at most once per
COUNT_ASK_INTERVAL, and reports to nothing are dropped unread."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

from peer_shell import Clock, frame, node_service, opened

from backupvault.hsm.state import EntryId
from backupvault.node.service import (
    COUNT_ASK_INTERVAL,
    COUNT_REQUEST_BURST,
)
from backupvault.protocol import COUNT_MESSAGES, CountReport, CountReportRequest


def test_a_flood_of_count_requests_is_dropped_before_any_read_or_signature(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        clock = Clock()
        service, sent = node_service(tmp_path, clock)
        reads: list[bytes] = []
        held = service.replica.held_payload

        def counted(key: bytes) -> bytes:
            reads.append(key)
            return held(key)

        service.replica.held_payload = counted  # type: ignore[method-assign]
        flood = [CountReportRequest("alice", f"e{i}", 0, os.urandom(32)) for i in range(1000)]
        for start in range(0, len(flood), 100):
            assert service.peer_frame(1, frame(1, flood[start : start + 100])) == 0
        await asyncio.sleep(0)
        metrics = service.metrics
        assert metrics["count_reports_sent"] == COUNT_REQUEST_BURST
        assert metrics["count_requests_dropped"] == 1000 - COUNT_REQUEST_BURST
        assert len(reads) == COUNT_REQUEST_BURST  # a dropped request reads nothing
        assert len(sent[1]) == COUNT_REQUEST_BURST
        # Another peer (an honest node that found its store rolled back) is answered.
        honest = CountReportRequest("alice", "chat", 0, os.urandom(32))
        assert service.peer_frame(2, frame(2, [honest])) == 0
        await asyncio.sleep(0)
        (report,) = opened(2, sent[2], COUNT_MESSAGES)
        assert isinstance(report, CountReport) and report.nonce == honest.nonce
        assert report.reporter == 1 and report.requester == 3
        # The flooding peer gets more as its bucket refills, at the set rate.
        clock.now += 1.0
        assert service.peer_frame(1, frame(1, flood[:100])) == 0
        assert metrics["count_reports_sent"] == COUNT_REQUEST_BURST + 1 + 50
        await service.stop()

    asyncio.run(scenario())


def test_an_open_request_is_sent_once_per_interval_and_stray_reports_go_unread(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        clock = Clock()
        service, sent = node_service(tmp_path, clock)
        keeper = service._firmware.shares
        key = EntryId("alice", "chat").to_bytes()
        keeper.distrust_stored_counts()
        for _ in range(5):  # a recovery touches the entry several times in a second
            keeper._want_reports(key, 1)
            service._ask_for_count_reports()
        await asyncio.sleep(0)
        assert [len(sent[p]) for p in (1, 2)] == [1, 1]
        (request,) = opened(1, sent[1], COUNT_MESSAGES)
        assert isinstance(request, CountReportRequest)
        clock.now += COUNT_ASK_INTERVAL
        keeper._want_reports(key, 1)
        service._ask_for_count_reports()
        await asyncio.sleep(0)
        assert [len(sent[p]) for p in (1, 2)] == [2, 2]  # still open: asked again
        # Reports to no open request, or repeated, are dropped before the store is read
        # or a signature checked.
        reads: list[bytes] = []
        held = service.replica.held_payload
        service.replica.held_payload = lambda k: reads.append(k) or held(k)  # type: ignore[method-assign]
        stray = CountReport("alice", "other", 1, 2, 1, 5, 0, request.nonce, bytes(64))
        assert service.peer_frame(1, frame(1, [stray] * 50)) == 0
        assert reads == [] and service.metrics["count_reports_ignored"] == 50
        # Misdirected ones (another reporter's index, or for another node) are refused,
        # unread too; the first refused one ends the frame (the rest are not opened).
        misdirected = [
            dataclasses.replace(stray, entry="chat", reporter=3),
            dataclasses.replace(stray, entry="chat", requester=2),
        ]
        assert service.peer_frame(1, frame(1, misdirected * 25)) == 1
        assert reads == []
        await service.stop()

    asyncio.run(scenario())
