"""A hostile peer's value whose manifest gives one node no key (review s48): commitments
C_0, C_1 that are canonical points, every check of `Manifest.from_bytes` passes, yet
K_j = C_0 + j·C_1 is the identity for one j, with a commit acknowledgement naming node
j. No honest node stages a share of such an M (`ShareKeeper._check_dealt`), but the
acceptor's check met it only through a peer, and raised instead of refusing it: reported
in a Promise, an honest leader built on it and the exception stopped the node (from a
tick), answered a client 500 (from a request's round), or closed an honest peer's stream.

Node 0 of the 3-node shell of tests/node/peer_shell.py (t = 2), node 1 hostile."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pysodium
import pytest
from peer_shell import (
    FLEET_ID,
    SIGNING,
    Clock,
    firmware,
    frame,
    node_service,
    open_store,
    opened,
)

from backupvault.crypto import ksf, manifest, oprf, threshold
from backupvault.errors import InvalidInput
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    Accept,
    Accepted,
    AppliedOp,
    Forward,
    Prepare,
    Promise,
    ReplicatedValue,
)
from backupvault.hsm import firmware as firmware_module
from backupvault.hsm.shares import count_commit_acks
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.node.service import NodeService
from backupvault.protocol import AckKind, CommitAck, EntryStatus, encode_commit_acks

KEY = EntryId.of("alice", "chat").to_bytes()
NO_KEY_AT = 2
FAST_KSF = ksf.Argon2idParams(
    memory_kib=256, iterations=1, parallelism=1, salt=ksf.ZERO_SALT, output_len=64
)


def _unkeyed_manifest() -> bytes:
    """A real registration's M with its commitments replaced: a_1 = -a_0 / j, so
    f(j) = 0 and node j's K_j is the identity. Made by the hostile node alone."""
    real = manifest.register(
        b"pw",
        bytes(32),
        fleet_id=FLEET_ID,
        account="alice",
        entry="chat",
        epoch=0,
        nodes=3,
        threshold_count=2,
        ksf=FAST_KSF,
    ).manifest
    a0 = oprf.random_scalar()
    inverse = pysodium.crypto_core_ristretto255_scalar_invert(threshold._scalar_bytes(NO_KEY_AT))
    a1 = pysodium.crypto_core_ristretto255_scalar_negate(
        pysodium.crypto_core_ristretto255_scalar_mul(a0, bytes(inverse))
    )
    commitments = threshold.Commitments(
        (oprf.scalar_mult_base(a0), oprf.scalar_mult_base(bytes(a1)))
    )
    unkeyed = dataclasses.replace(real, commitments=commitments)
    with pytest.raises(InvalidInput, match="identity"):
        unkeyed.commitments.node_public_key(NO_KEY_AT)
    return unkeyed.to_bytes()


def _acks() -> bytes:
    return encode_commit_acks([CommitAck(NO_KEY_AT, AckKind.STAGED, bytes(64))])


def _poisoned_payload() -> bytes:
    return ThresholdState(
        status=EntryStatus.LIVE, version=1, manifest=_unkeyed_manifest(), acks=_acks()
    ).to_bytes()


def _value(payload: bytes) -> bytes:
    return ReplicatedValue([AppliedOp(os.urandom(16), 1)], payload).to_bytes()


def test_the_acceptor_refuses_a_manifest_that_gives_a_node_no_key(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        reason = firmware(store).check_value(KEY, _poisoned_payload(), b"")
        assert reason == "a manifest whose commitments give a node no key"
    finally:
        store.close()


def test_an_acknowledgement_of_a_node_with_no_key_counts_none() -> None:
    peers = {i + 1: k.public_key() for i, k in SIGNING.items()}
    assert count_commit_acks(FLEET_ID, KEY, _unkeyed_manifest(), _acks(), peers) == 0


def test_bad_input_met_deep_in_the_check_is_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever else in the check meets a value it cannot read, the replica gets a
    reason, never an exception in its step."""

    def raising(*args: object, **kwargs: object) -> str | None:
        raise InvalidInput("a field no check foresaw")

    monkeypatch.setattr(firmware_module, "check_threshold_value", raising)
    store = open_store(tmp_path)
    try:
        reason = firmware(store).check_value(KEY, ThresholdState().to_bytes(), b"")
        assert reason == "a value this node cannot check: a field no check foresaw"
    finally:
        store.close()


async def _settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0.005)


async def _poison_the_leaders_hold(service: NodeService, sent: dict[int, list[bytes]]) -> None:
    """Hostile node 1: an Accept of the empty value of a made-up entry (node 0 takes it,
    and settles it 3 s later), a Forward (node 0 leads: it prepares a hold on the entry),
    and a Promise reporting the poisoned value as accepted just below the hold's ballot."""
    empty = _value(ThresholdState().to_bytes())
    accept = Accept(os.urandom(16), KEY, 1, 1, empty, 1, False)
    assert service._peer_stream_frame(1, frame(1, [accept]))
    await _settle()
    assert service._peer_stream_frame(1, frame(1, [Forward(os.urandom(16), KEY, 0, 0, empty)]))
    await _settle()
    prepare = [m for m in opened(1, sent[1], PEER_MESSAGES) if isinstance(m, Prepare)][-1]
    lie = Promise(
        prepare.op_id,
        KEY,
        prepare.round,
        prepare.node,
        True,
        prepare.round - 1,
        7,
        _value(_poisoned_payload()),
        prepare.round,
        prepare.node,
    )
    assert service._peer_stream_frame(1, frame(1, [lie]))
    await _settle()
    assert service._fatal is None


def test_a_hostile_promise_cannot_make_an_honest_node_stop_serving(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        service, sent = node_service(tmp_path, clock)
        await _poison_the_leaders_hold(service, sent)
        clock.now += 3.5  # node 0 settles the value it accepted, in a tick
        stray = Accepted(os.urandom(16), KEY, 1, 1, False, 1, 1, b"")
        assert service._peer_stream_frame(1, frame(1, [stray]))
        ticker = asyncio.ensure_future(service._tick_forever())
        await _settle()
        ticker.cancel()
        assert service._fatal is None, service.stopped_because
        assert service.serving
        await service.stop()

    asyncio.run(scenario())


def test_a_hostile_promise_cannot_make_a_request_raise(tmp_path: Path) -> None:
    """A client request's round at node 0 on that hold ends Committed or Failed (a 503),
    never in an exception (the HTTP layer's 500)."""

    async def scenario() -> None:
        clock = Clock()
        service, sent = node_service(tmp_path, clock)
        await _poison_the_leaders_hold(service, sent)

        def unchanged(value: bytes) -> tuple[bytes, None]:
            return value, None

        task = asyncio.ensure_future(service._commit(KEY, unchanged))
        try:
            await _settle()
            assert not task.done() or task.exception() is None
        finally:
            task.cancel()
            await service.stop()

    asyncio.run(scenario())
