"""The node-to-node channel: only the named receiver opens a message, and only from its
real sender and epoch, once; forgeries, reflections, replays, other epochs and garbage are
refused, and store syncs are rate-limited per peer."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fleet.channel import (
    WINDOW,
    NonceSequence,
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
    rng: Callable[[int], bytes] = os.urandom,
) -> PeerChannel:
    return PeerChannel(
        node,
        KEYS[node].private_bytes_raw(),
        PUBLIC,
        fleet_id,
        rng,
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


def weak_rng(values: int) -> Callable[[int], bytes]:
    """A poor random source that cycles through `values` outputs: random nonces drawn from
    it repeat at once, counted ones must not."""
    count = 0

    def draw(n: int) -> bytes:
        nonlocal count
        count += 1
        return (count % values).to_bytes(n, "big")

    return draw


def nonce_of(envelope: bytes) -> bytes:
    return envelope[20:32]


def test_nonces_never_repeat_under_one_key_even_from_a_weak_rng() -> None:
    # Node 0 and node 1 share one key for both directions; both seal many messages from
    # the same poor source. No nonce may come twice under the key, and each envelope opens.
    rng = weak_rng(16)
    zero, one = channel(0, rng=rng), channel(1, rng=rng)
    zero_in, one_in = channel(0), channel(1)
    nonces: set[bytes] = set()
    for _ in range(2_000):
        up, down = zero.seal(1, MESSAGE), one.seal(0, MESSAGE)
        nonces.update((nonce_of(up), nonce_of(down)))
        assert one_in.open(up, PEER_MESSAGES) == (0, MESSAGE)
        assert zero_in.open(down, PEER_MESSAGES) == (1, MESSAGE)
    assert len(nonces) == 4_000


def test_the_two_ends_of_a_pair_never_share_a_nonce_even_with_the_same_rng_seed() -> None:
    # Deterministic rngs seeded alike (a simulator's, say) at both ends of a shared key.
    zero = channel(0, rng=random.Random(7).randbytes)
    one = channel(1, rng=random.Random(7).randbytes)
    up = {nonce_of(zero.seal(1, MESSAGE)) for _ in range(100)}
    down = {nonce_of(one.seal(0, MESSAGE)) for _ in range(100)}
    assert len(up) == len(down) == 100
    assert not up & down


def test_a_nonce_counter_wrap_draws_a_prefix_never_used_before() -> None:
    # The rng offers the first prefix again at the wrap; the sequence must not take it.
    offered = iter([b"\x11" * 8, b"\x11" * 8, b"\x22" * 8])
    sequence = NonceSequence(lambda n: next(offered), start=NonceSequence.PER_PREFIX - 3)
    nonces = [sequence.next(upward=True) for _ in range(6)]
    assert len(set(nonces)) == 6
    prefixes = [struct.unpack(">QI", n)[0] for n in nonces]
    counters = [struct.unpack(">QI", n)[1] for n in nonces]
    assert counters == [2**32 - 3, 2**32 - 2, 2**32 - 1, 0, 1, 2]
    assert prefixes[:3] == [int.from_bytes(b"\x91" + b"\x11" * 7, "big")] * 3
    assert prefixes[3:] == [int.from_bytes(b"\xa2" + b"\x22" * 7, "big")] * 3


def test_a_source_that_only_repeats_itself_is_refused_rather_than_reused() -> None:
    sequence = NonceSequence(lambda n: b"\x05" * n, start=NonceSequence.PER_PREFIX - 1)
    sequence.next(upward=False)
    with pytest.raises(RuntimeError, match="random source"):
        sequence.next(upward=False)


def test_an_envelope_with_a_random_nonce_from_an_older_node_still_opens_once() -> None:
    # What the previous release sealed, byte for byte (docs/crypto.md): a random nonce.
    clock = Clock()
    shared = KEYS[0].exchange(KEYS[1].public_key())
    key = HKDF(
        hashes.SHA256(),
        32,
        salt=b"fleet",
        info=b"backupvault/v2 peer " + bytes([0, 0, 0, 1]) + (1).to_bytes(8, "big"),
    ).derive(shared)
    header = struct.pack(">HHQQ", 0, 1, 1, int(clock.now * 1000))
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(
        nonce, MESSAGE.to_bytes(), b"backupvault/v2 peer message" + b"fleet" + header
    )
    envelope = header + nonce + sealed
    receiver = channel(1, clock=clock)
    assert receiver.open(envelope, PEER_MESSAGES) == (0, MESSAGE)
    with pytest.raises(AuthenticationFailed, match="replay"):
        receiver.open(envelope, PEER_MESSAGES)
    # And a counted-nonce message from a current node opens beside it, once.
    current = channel(0, clock=clock).seal(1, MESSAGE)
    assert receiver.open(current, PEER_MESSAGES) == (0, MESSAGE)
    with pytest.raises(AuthenticationFailed, match="replay"):
        receiver.open(current, PEER_MESSAGES)


@pytest.mark.parametrize("bad", [bytes(32), (1).to_bytes(32, "little")])
def test_a_small_order_peer_identity_key_is_refused_with_our_error(bad: bytes) -> None:
    # X25519 with a small-order point gives an all-zero secret, which OpenSSL refuses with
    # a bare ValueError: the node would stop on a traceback naming no node.
    with pytest.raises(InvalidInput, match="node 2's identity key"):
        PeerChannel(0, KEYS[0].private_bytes_raw(), {**PUBLIC, 2: bad}, b"fleet", os.urandom)
