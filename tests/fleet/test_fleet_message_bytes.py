"""docs/fleet.md, "Node-to-node messages", byte by byte: each message built by hand from
the page's table (tag, then the fields in order, in the codec of docs/protocol.md,
"Encoding") is what the code encodes and decodes, and a record's value is a
`ReplicatedValue` whose payload is the threshold flow's `ThresholdState` (tag 42)."""

from __future__ import annotations

import struct

import pytest

from backupvault.codec import Message
from backupvault.errors import InvalidInput
from backupvault.fleet.messages import (
    Accept,
    Accepted,
    AcceptorRecord,
    AppliedOp,
    Forward,
    ForwardAnswer,
    NotReady,
    Prepare,
    Promise,
    ReplicatedValue,
    SyncRequest,
    SyncResponse,
)
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.protocol import EntryStatus


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def _blob(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _list(items: list[bytes]) -> bytes:
    """A list of messages: u32 count, then each as a byte string of its encoding."""
    return struct.pack(">I", len(items)) + b"".join(_blob(item) for item in items)


KEY = EntryId.of("alice", "chat").to_bytes()
OP = b"o" * 16


def test_every_node_to_node_message_is_the_bytes_the_fleet_page_names() -> None:
    record = AcceptorRecord(KEY, 5, 1, 4, 2, b"value")
    record_wire = b"\x3c" + _blob(KEY) + _u64(5) + _u64(1) + _u64(4) + _u64(2) + _blob(b"value")
    documented: list[tuple[Message, bytes]] = [
        (record, record_wire),
        (Prepare(OP, KEY, 7, 2), b"\x3d" + _blob(OP) + _blob(KEY) + _u64(7) + _u64(2)),
        (
            Promise(OP, KEY, 7, 2, True, 4, 1, b"v", 7, 2),
            b"\x3e"
            + _blob(OP)
            + _blob(KEY)
            + _u64(7)
            + _u64(2)
            + b"\x01"
            + _u64(4)
            + _u64(1)
            + _blob(b"v")
            + _u64(7)
            + _u64(2),
        ),
        (
            Accept(OP, KEY, 7, 2, b"v", 3, True),
            b"\x3f" + _blob(OP) + _blob(KEY) + _u64(7) + _u64(2) + _blob(b"v") + _u64(3) + b"\x01",
        ),
        (
            Accepted(OP, KEY, 7, 2, False, 9, 1, b""),
            b"\x40"
            + _blob(OP)
            + _blob(KEY)
            + _u64(7)
            + _u64(2)
            + b"\x00"
            + _u64(9)
            + _u64(1)
            + _blob(b""),
        ),
        (
            SyncRequest(b"s" * 16, b"i" * 16, 12),
            b"\x41" + _blob(b"s" * 16) + _blob(b"i" * 16) + _u64(12),
        ),
        (
            SyncResponse(b"s" * 16, True, [record], b"i" * 16, 12, 30, False),
            b"\x42"
            + _blob(b"s" * 16)
            + b"\x01"
            + _list([record_wire])
            + _blob(b"i" * 16)
            + _u64(12)
            + _u64(30)
            + b"\x00",
        ),
        (NotReady(OP), b"\x43" + _blob(OP)),
        (AppliedOp(OP, 7), b"\x44" + _blob(OP) + _u64(7)),
        (
            ReplicatedValue([AppliedOp(OP, 7)], b"state"),
            b"\x45" + _list([b"\x44" + _blob(OP) + _u64(7)]) + _blob(b"state"),
        ),
        (
            Forward(OP, KEY, 4, 1, b"v"),
            b"\x4c" + _blob(OP) + _blob(KEY) + _u64(4) + _u64(1) + _blob(b"v"),
        ),
        (
            ForwardAnswer(OP, KEY, True, 8, 3, b"v"),
            b"\x4d" + _blob(OP) + _blob(KEY) + b"\x01" + _u64(8) + _u64(3) + _blob(b"v"),
        ),
    ]
    for message, wire in documented:
        assert message.to_bytes() == wire, type(message).__name__
        assert type(message).from_bytes(wire) == message
        with pytest.raises(InvalidInput):
            type(message).from_bytes(wire + b"\x00")


def test_a_record_value_s_payload_is_the_threshold_state_the_page_names() -> None:
    """fleet.md: tag 42, then status, version, manifest, attempt, attempt_hash,
    attempt_client_time_ms, reset_attempt, reset_hash, reset_signature, change_counter,
    change_signature, acks."""
    state = ThresholdState(
        EntryStatus.DESTROYED,
        3,
        b"",
        9,
        b"h" * 32,
        1_700_000_000_000,
        4,
        b"r" * 32,
        b"s" * 64,
        2,
        b"c" * 64,
        b"",
    )
    wire = (
        b"\x2a"
        + _u64(2)
        + _u64(3)
        + _blob(b"")
        + _u64(9)
        + _blob(b"h" * 32)
        + _u64(1_700_000_000_000)
        + _u64(4)
        + _blob(b"r" * 32)
        + _blob(b"s" * 64)
        + _u64(2)
        + _blob(b"c" * 64)
        + _blob(b"")
    )
    assert state.to_bytes() == wire
    assert ThresholdState.from_bytes(wire) == state
