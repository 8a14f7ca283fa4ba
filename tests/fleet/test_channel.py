"""The node-to-node channel: only the named receiver opens a message, and only from its
real sender; forgeries, reflections and garbage are refused."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fleet.channel import PeerChannel
from backupvault.fleet.messages import PEER_MESSAGES, Prepare

KEYS = [X25519PrivateKey.generate() for _ in range(3)]
PUBLIC = {i: k.public_key().public_bytes_raw() for i, k in enumerate(KEYS)}


def channel(node: int, fleet_id: bytes = b"fleet") -> PeerChannel:
    return PeerChannel(node, KEYS[node].private_bytes_raw(), PUBLIC, fleet_id, os.urandom)


MESSAGE = Prepare(b"op", b"key", 7, 0)


def test_round_trip() -> None:
    sender, message = channel(1).open(channel(0).seal(1, MESSAGE), PEER_MESSAGES)
    assert (sender, message) == (0, MESSAGE)


def test_other_receiver_cannot_open() -> None:
    with pytest.raises(AuthenticationFailed):
        channel(2).open(channel(0).seal(1, MESSAGE), PEER_MESSAGES)


def test_rewritten_sender_or_receiver_is_refused() -> None:
    envelope = bytearray(channel(0).seal(1, MESSAGE))
    envelope[1] = 2  # claim node 2 sent it
    with pytest.raises(AuthenticationFailed):
        channel(1).open(bytes(envelope), PEER_MESSAGES)


def test_reflection_is_refused() -> None:
    # Node 1 sends to node 0; an attacker bounces it back to node 1 as if from node 0.
    envelope = bytearray(channel(1).seal(0, MESSAGE))
    envelope[0:4] = bytes([0, 0, 0, 1])
    with pytest.raises(AuthenticationFailed):
        channel(1).open(bytes(envelope), PEER_MESSAGES)


def test_other_fleet_is_refused() -> None:
    with pytest.raises(AuthenticationFailed):
        channel(1, b"fleet").open(channel(0, b"other").seal(1, MESSAGE), PEER_MESSAGES)


def test_bit_flip_is_refused() -> None:
    envelope = bytearray(channel(0).seal(1, MESSAGE))
    envelope[-3] ^= 1
    with pytest.raises(AuthenticationFailed):
        channel(1).open(bytes(envelope), PEER_MESSAGES)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_garbage_only_raises_our_errors(data: bytes) -> None:
    with pytest.raises((AuthenticationFailed, InvalidInput)):
        channel(1).open(data, PEER_MESSAGES)
