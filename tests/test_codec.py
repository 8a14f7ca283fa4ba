"""The wire codec: exact round trips, and random bytes never raise anything but InvalidInput."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backupvault.codec import Message, decode_any
from backupvault.errors import InvalidInput
from backupvault.fleet.messages import PEER_MESSAGES, AcceptorRecord, SyncResponse
from backupvault.hsm.state import EntryId, Evaluation, NodeShare, ThresholdState
from backupvault.protocol import COUNT_MESSAGES, REQUEST_TYPES, RESPONSE_TYPES, ErrorResponse

ALL_MESSAGES: list[type[Message]] = sorted(
    {
        *REQUEST_TYPES.values(),
        *RESPONSE_TYPES.values(),
        ErrorResponse,
        *PEER_MESSAGES,
        *COUNT_MESSAGES,
        EntryId,
        ThresholdState,
        Evaluation,
        NodeShare,
    },
    key=lambda cls: cls.TAG,
)


#: Tags of the removed single-seed flow's messages (protocol 1-12, its entry state 41,
#: tickets 50-52, fleet secrets 71): reserved, never given to another message.
REMOVED_TAGS = {*range(1, 13), 41, 50, 51, 52, 71}


def test_tags_are_unique_and_removed_ones_stay_reserved() -> None:
    tags = [cls.TAG for cls in ALL_MESSAGES]
    assert len(tags) == len(set(tags))
    assert not REMOVED_TAGS & set(tags)


@dataclass(frozen=True)
class Sample(Message):
    TAG = 200
    number: int
    flag: bool
    blob: bytes
    text: str


def test_layout_is_as_documented() -> None:
    encoded = Sample(258, True, b"\x01\x02", "é").to_bytes()
    assert encoded == (
        bytes([200])
        + (258).to_bytes(8, "big")
        + b"\x01"
        + (2).to_bytes(4, "big")
        + b"\x01\x02"
        + (2).to_bytes(4, "big")
        + "é".encode()
    )


def test_round_trip_with_nested_lists() -> None:
    records = [AcceptorRecord(b"k1", 1, 2, 3, 4, b"v"), AcceptorRecord(b"k2")]
    message = SyncResponse(b"id", True, records)
    assert SyncResponse.from_bytes(message.to_bytes()) == message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes([200]),
        Sample(1, True, b"", "").to_bytes() + b"\x00",  # trailing byte
        Sample(1, True, b"", "").to_bytes()[:-1],  # truncated
        bytes([200]) + bytes(8) + b"\x02" + bytes(8),  # boolean 2
        bytes([200]) + bytes(8) + b"\x00" + b"\xff\xff\xff\xff",  # absurd length
        bytes([200]) + bytes(8) + b"\x00" + bytes(4) + b"\x00\x00\x00\x01\xff",  # bad UTF-8
        bytes([201]) + bytes(30),  # wrong tag
    ],
)
def test_malformed_is_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        Sample.from_bytes(data)


def test_integers_must_fit_u64() -> None:
    with pytest.raises(InvalidInput):
        Sample(1 << 64, False, b"", "").to_bytes()


@given(st.binary(max_size=400))
def test_random_bytes_only_raise_invalid_input(data: bytes) -> None:
    for cls in ALL_MESSAGES:
        try:
            decoded = cls.from_bytes(data)
        except InvalidInput:
            continue
        assert decoded.to_bytes() == data  # whatever decodes is canonical


@given(st.sampled_from(ALL_MESSAGES), st.binary(max_size=300))
def test_tagged_random_bodies_only_raise_invalid_input(cls: type[Message], body: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        decode_any(bytes([cls.TAG]) + body, ALL_MESSAGES)


@dataclass(frozen=True)
class Outer(Message):
    TAG = 201
    items: list[Sample]
    inner: Sample
    flags: list[bool]


def _outer(sample: Sample) -> bytes:
    return Outer([sample, sample], sample, [True, False]).to_bytes()


@given(
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.booleans(),
    st.binary(max_size=40),
    st.text(max_size=20),
)
def test_nested_round_trips(number: int, flag: bool, blob: bytes, text: str) -> None:
    sample = Sample(number, flag, blob, text)
    outer = Outer([sample] * (number % 4), sample, [flag, not flag])
    assert Outer.from_bytes(outer.to_bytes()) == outer


def test_a_nested_message_must_fill_its_length_exactly() -> None:
    """A nested message is read in place, within its length: one shorter than its length
    says leaves bytes inside that length, which is refused, not skipped."""
    sample = Sample(1, True, b"ab", "c")
    wire = bytearray(_outer(sample))
    inner = sample.to_bytes()
    at = wire.index(inner)  # the first item of `items`, after its u32 length
    padded = wire[: at - 4] + (len(inner) + 1).to_bytes(4, "big") + inner + b"\x00"
    padded += wire[at + len(inner) :]
    with pytest.raises(InvalidInput, match="1 unexpected trailing bytes after Sample"):
        Outer.from_bytes(bytes(padded))
    # A length that runs past the end of the outer message is truncation.
    with pytest.raises(InvalidInput, match="truncated"):
        Outer.from_bytes(bytes(wire[: at - 4] + (1 << 20).to_bytes(4, "big") + inner))
    # A field of the nested message that runs past its own length, even with the outer
    # message's bytes after it, is truncation too (no read across the boundary).
    short = wire[: at - 4] + (len(inner) - 1).to_bytes(4, "big") + wire[at:]
    with pytest.raises(InvalidInput):
        Outer.from_bytes(bytes(short))


def test_a_list_count_beyond_the_bytes_is_invalid_input() -> None:
    sample = Sample(1, False, b"", "")
    wire = _outer(sample)
    count_at = 1  # `items` is the first field: its u32 count right after the tag
    bigger = wire[:count_at] + (3).to_bytes(4, "big") + wire[count_at + 4 :]
    with pytest.raises(InvalidInput):
        Outer.from_bytes(bigger)
    with pytest.raises(InvalidInput, match="list too long"):
        Outer.from_bytes(wire[:count_at] + ((1 << 20) + 1).to_bytes(4, "big") + wire[5:])


@dataclass(frozen=True)
class Limited(Message):
    TAG = 202
    LIST_LIMITS: ClassVar[dict[str, int]] = {"items": 2}
    items: list[Sample]
    flags: list[bool]


def test_a_list_past_its_field_s_limit_is_refused_at_its_count() -> None:
    """A field's `LIST_LIMITS` entry bounds that list alone, and a longer one is refused
    at its count, before any item is read (review s60: a peer's page of a million records
    was decoded whole, then dropped)."""
    sample = Sample(1, False, b"", "")
    fits = Limited([sample] * 2, [True] * 3)  # `flags` is not limited
    assert Limited.from_bytes(fits.to_bytes()) == fits
    with pytest.raises(InvalidInput, match="list too long"):
        Limited.from_bytes(Limited([sample] * 3, []).to_bytes())
    with pytest.raises(InvalidInput, match="list too long"):  # not "truncated": no item read
        Limited.from_bytes(bytes([Limited.TAG]) + (3).to_bytes(4, "big"))


def test_a_bytearray_or_memoryview_decodes_as_bytes() -> None:
    wire = _outer(Sample(7, True, b"xy", "z"))
    assert Outer.from_bytes(bytearray(wire)) == Outer.from_bytes(wire)
    assert Outer.from_bytes(memoryview(wire)) == Outer.from_bytes(wire)  # type: ignore[arg-type]
