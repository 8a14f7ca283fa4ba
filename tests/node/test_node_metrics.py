"""The node's metrics that the firmware counts, read through a running node's service
(docs/operations.md, "Metrics"): sealed requests to one node over its real store."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from pathlib import Path

from test_one_account_resource_limits import STORAGE_KEY, _dealt, _send, _service, _stage

from backupvault.crypto import oprf
from backupvault.fleet.messages import ReplicatedValue
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.node.store import NodeStore
from backupvault.protocol import (
    AckKind,
    CommitAck,
    CommitSharesRequest,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    Op,
    ShareAck,
    encode_commit_acks,
)

ENTRY = "root-key"


def test_an_attempt_answered_for_another_b_is_refused_and_counted_in_the_metrics(
    tmp_path: Path,
) -> None:
    """The node answered attempt 1 for one B; its value then says the fleet numbered
    attempt 1 for another B (as hostile peers' votes can make it: sim seed 10821178). The
    request for that other B is answered `stale_attempt`, nothing evaluated, and the
    metric `attempts_answered_for_another_b` says so."""
    path = tmp_path / "store.sqlite"
    made = _dealt(ENTRY)
    version = made.manifest.version
    _, first_b = oprf.blind(b"first device")
    _, other_b = oprf.blind(b"second device")
    now_ms = time.time_ns() // 1_000_000

    async def answer_the_first_b() -> None:
        service = _service(path)
        await service.start()
        try:
            ack = await _stage(service, made)
            assert isinstance(ack, ShareAck) and ack.kind == AckKind.STAGED, ack
            acks = encode_commit_acks([CommitAck(ack.index, AckKind(ack.kind), ack.signature)])
            commit = CommitSharesRequest("mallory", ENTRY, made.manifest.to_bytes(), b"", 0, acks)
            held = await _send(service, Op.COMMIT_SHARES, ENTRY, commit)
            assert isinstance(held, ShareAck) and held.kind == AckKind.HELD, held
            request = EvaluateRequest("mallory", ENTRY, version, first_b, now_ms)
            answer = await _send(service, Op.EVALUATE, ENTRY, request)
            assert isinstance(answer, EvaluateResponse), answer
            assert service.metrics["attempts_answered_for_another_b"] == 0
        finally:
            await service.stop()

    asyncio.run(answer_the_first_b())
    # The fleet's value, as one that numbered attempt 1 for the other B would hold it.
    store = NodeStore(path, 0, STORAGE_KEY)
    key = EntryId.of("mallory", ENTRY).to_bytes()
    record = store.get(key)
    assert record is not None
    value = ReplicatedValue.from_bytes(record.value)
    state = ThresholdState.from_bytes(value.payload)
    assert state.attempt == 1 and state.attempt_hash == hashlib.sha256(first_b).digest()
    renumbered = state.with_(attempt_hash=hashlib.sha256(other_b).digest())
    value = dataclasses.replace(value, payload=renumbered.to_bytes())
    store.save([dataclasses.replace(record, value=value.to_bytes())])
    store.close()

    async def ask_for_the_other_b() -> None:
        service = _service(path)
        await service.start()
        try:
            request = EvaluateRequest("mallory", ENTRY, version, other_b, now_ms)
            answer = await _send(service, Op.EVALUATE, ENTRY, request)
            assert isinstance(answer, ErrorResponse), answer
            assert answer.code == ErrorCode.STALE_ATTEMPT
            assert "answered for another B" in answer.detail
            assert service.metrics["attempts_answered_for_another_b"] == 1
        finally:
            await service.stop()

    asyncio.run(ask_for_the_other_b())
