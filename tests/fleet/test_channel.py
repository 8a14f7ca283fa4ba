"""The node-to-node channel: only the named receiver opens a message, and only from its
real sender and epoch, once; forgeries, reflections, replays, other epochs and garbage are
refused, and store syncs are rate-limited per peer."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fleet.channel import (
    WINDOW,
    PeerChannel,
    PeerRateLimit,
    PeerRateLimited,
    SentBeforeStart,
)
from backupvault.fleet.messages import PEER_MESSAGES, Prepare, SyncRequest

KEYS = [X25519PrivateKey.generate() for _ in range(3)]
PUBLIC = {i: k.public_key().public_bytes_raw() for i, k in enumerate(KEYS)}


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


def channel(
    node: int,
    fleet_id: bytes = b"fleet",
    epoch: int = 1,
    clock: Clock | None = None,
    not_before: float = 0.0,
) -> PeerChannel:
    return PeerChannel(
        node,
        KEYS[node].private_bytes_raw(),
        PUBLIC,
        fleet_id,
        os.urandom,
        epoch=epoch,
        clock=clock or Clock(),
        not_before=not_before,
    )


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


def test_replayed_message_is_refused() -> None:
    receiver = channel(1)
    envelope = channel(0).seal(1, MESSAGE)
    assert receiver.open(envelope, PEER_MESSAGES) == (0, MESSAGE)
    with pytest.raises(AuthenticationFailed, match="replay"):
        receiver.open(envelope, PEER_MESSAGES)
    # A fresh seal of the same message is a new message.
    assert receiver.open(channel(0).seal(1, MESSAGE), PEER_MESSAGES) == (0, MESSAGE)


def test_message_outside_the_window_is_refused() -> None:
    clock = Clock()
    receiver, sender = channel(1, clock=clock), channel(0, clock=clock)
    old = sender.seal(1, MESSAGE)
    clock.now += WINDOW + 1
    with pytest.raises(AuthenticationFailed, match="outside"):
        receiver.open(old, PEER_MESSAGES)  # e.g. replayed after the receiver restarted
    future = channel(0, clock=Clock()).seal(1, MESSAGE)  # its clock is behind ours now
    with pytest.raises(AuthenticationFailed, match="outside"):
        receiver.open(future, PEER_MESSAGES)
    # The window's memory is pruned as time passes, and new messages still open.
    for _ in range(3):
        receiver.open(sender.seal(1, MESSAGE), PEER_MESSAGES)
        clock.now += WINDOW
    assert len(receiver._windows[0]) <= 2


def test_redated_message_is_refused() -> None:
    clock = Clock()
    receiver = channel(1, clock=clock)
    envelope = bytearray(channel(0, clock=clock).seal(1, MESSAGE))
    clock.now += WINDOW + 1
    envelope[12:20] = int(clock.now * 1000).to_bytes(8, "big")  # claim it was sent now
    with pytest.raises(AuthenticationFailed, match="forged"):
        receiver.open(bytes(envelope), PEER_MESSAGES)


def test_previous_epoch_message_is_refused() -> None:
    old = channel(0, epoch=1).seal(1, MESSAGE)
    with pytest.raises(AuthenticationFailed, match="epoch 1"):
        channel(1, epoch=2).open(old, PEER_MESSAGES)
    # Relabelled as epoch 2, it does not authenticate: the epoch is in the key.
    relabelled = bytearray(old)
    relabelled[4:12] = (2).to_bytes(8, "big")
    with pytest.raises(AuthenticationFailed, match="forged"):
        channel(1, epoch=2).open(bytes(relabelled), PEER_MESSAGES)


def test_sync_requests_are_rate_limited_per_peer() -> None:
    clock = Clock()
    receiver = PeerChannel(
        1,
        KEYS[1].private_bytes_raw(),
        PUBLIC,
        b"fleet",
        os.urandom,
        epoch=1,
        clock=clock,
        sync_limit=PeerRateLimit(per_second=0.5, burst=2),
    )
    sync = SyncRequest(b"sync")
    from_0, from_2 = channel(0, clock=clock), channel(2, clock=clock)
    for _ in range(2):
        receiver.open(from_0.seal(1, sync), PEER_MESSAGES)
    with pytest.raises(PeerRateLimited):
        receiver.open(from_0.seal(1, sync), PEER_MESSAGES)
    receiver.open(from_2.seal(1, sync), PEER_MESSAGES)  # another peer has its own bucket
    receiver.open(from_0.seal(1, MESSAGE), PEER_MESSAGES)  # other messages are not limited
    clock.now += 2.0  # one token back
    receiver.open(from_0.seal(1, sync), PEER_MESSAGES)


def test_a_stream_hello_proves_its_sender_once_and_never_passes_for_a_message() -> None:
    clock = Clock()
    sender, receiver = channel(0, clock=clock), channel(1, clock=clock)
    hello = sender.hello(1)
    assert receiver.open_hello(hello) == 0
    with pytest.raises(AuthenticationFailed, match="replay"):
        receiver.open_hello(hello)
    with pytest.raises(AuthenticationFailed):  # the same key, another label: no message
        receiver.open(sender.hello(1), PEER_MESSAGES)
    empty = bytearray(sender.seal(1, MESSAGE))
    with pytest.raises(InvalidInput):  # a message is never a hello's size
        receiver.open_hello(bytes(empty))
    with pytest.raises(AuthenticationFailed):  # nor opens as one when cut to that size
        receiver.open_hello(bytes(empty[: len(hello)]))
    with pytest.raises(AuthenticationFailed):  # for another node
        channel(2, clock=clock).open_hello(sender.hello(1))
    with pytest.raises(AuthenticationFailed):  # another epoch
        channel(1, epoch=2, clock=clock).open_hello(sender.hello(1))
    old = sender.hello(1)
    clock.now += WINDOW + 1
    with pytest.raises(AuthenticationFailed, match="window"):
        receiver.open_hello(old)


@pytest.mark.parametrize("kind", ["message", "hello"])
def test_a_clock_stepped_back_does_not_reopen_the_replay_window(kind: str) -> None:
    """Attack: capture a message, wait until the receiver forgot its nonce, step the
    receiver's clock back (NTP, an operator, or whoever can set it) and replay it."""
    clock = Clock()
    sender, receiver = channel(0, clock=clock), channel(1, clock=clock)

    def open_(envelope: bytes) -> None:
        if kind == "hello":
            receiver.open_hello(envelope)
        else:
            receiver.open(envelope, PEER_MESSAGES)

    captured = sender.hello(1) if kind == "hello" else sender.seal(1, MESSAGE)
    open_(captured)
    clock.now += WINDOW + 5
    open_(sender.hello(1) if kind == "hello" else sender.seal(1, MESSAGE))  # prunes the nonce
    assert len(receiver._windows[0]) == 1
    clock.now -= WINDOW - 5  # the captured message is inside the window by this reading
    with pytest.raises(AuthenticationFailed, match="went back"):
        open_(captured)
    # Once the clock has caught up, messages sent now open again.
    clock.now += WINDOW
    open_(sender.hello(1) if kind == "hello" else sender.seal(1, MESSAGE))


def test_a_message_sent_before_the_node_started_is_not_taken() -> None:
    """What an earlier process of the receiver opened, this one has no nonce for. It is
    dropped as sent before the start (peers flush what they queued for a node that was
    down), not refused as forged: the node keeps the stream. A hello from before the start
    is still refused."""
    clock = Clock()
    sender = channel(0, clock=clock)
    before = sender.seal(1, MESSAGE)
    hello = sender.hello(1)
    clock.now += 1.0  # the receiver restarts
    receiver = channel(1, clock=clock, not_before=clock.now)
    with pytest.raises(SentBeforeStart, match="before this node started"):
        receiver.open(before, PEER_MESSAGES)
    with pytest.raises(InvalidInput, match="before this node started"):
        receiver.open_hello(hello)
    assert receiver.open(sender.seal(1, MESSAGE), PEER_MESSAGES) == (0, MESSAGE)
