"""What a peer's message may hold is bounded while it is decoded, not after (review s60):
a catch-up page of more than `SYNC_PAGE` records and a value with more than `RECENT_OPS`
recent ops are refused at their count. Before, a 45 MB page of a million empty records
was decoded whole (3 s of a node's event loop) and only then dropped, and a frame of
values packed with empty ops held it 7 s and left 369 MB in the decoded-value cache."""

from __future__ import annotations

import os

import pytest

from backupvault.errors import InvalidInput
from backupvault.fleet.messages import (
    RECENT_OPS,
    SYNC_PAGE,
    AcceptorRecord,
    AppliedOp,
    ReplicatedValue,
    SyncResponse,
    decode_value,
    well_formed,
)


def test_a_page_of_more_records_than_a_page_holds_is_refused_at_its_count() -> None:
    full = SyncResponse(os.urandom(16), True, [AcceptorRecord(b"k")] * SYNC_PAGE)
    assert SyncResponse.from_bytes(full.to_bytes()) == full
    over = SyncResponse(os.urandom(16), True, [AcceptorRecord(b"k")] * (SYNC_PAGE + 1))
    with pytest.raises(InvalidInput, match="list too long"):
        SyncResponse.from_bytes(over.to_bytes())


def test_a_value_with_more_ops_than_a_node_keeps_is_refused_and_not_remembered() -> None:
    kept = ReplicatedValue([AppliedOp(os.urandom(16), 1)] * RECENT_OPS, b"payload").to_bytes()
    assert well_formed(kept)
    packed = ReplicatedValue([AppliedOp(b"", 0)] * (RECENT_OPS + 1), b"payload").to_bytes()
    with pytest.raises(InvalidInput, match="list too long"):
        ReplicatedValue.from_bytes(packed)
    before = decode_value.cache_info().currsize
    assert not well_formed(packed)
    assert decode_value.cache_info().currsize == before  # a refusal is not cached
