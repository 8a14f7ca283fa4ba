"""What a hostile peer (node 1, a member of the fleet with its own channel keys) sends an
honest node's shell, and what must come of it (docs/fleet.md, "What a peer's message may
name"): the node's share rows, which sit in the same table as the replicated records,
are out of every peer message's reach; values, store ids and rounds no honest node sends
are dropped before they reach the state machine or the disk."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from peer_shell import Clock, channel, frame, node_service, open_store, opened

from backupvault.errors import InvalidInput
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    Accept,
    Accepted,
    AcceptorRecord,
    Prepare,
    Promise,
    ReplicatedValue,
    SyncRequest,
    SyncResponse,
)
from backupvault.fleet.replica import MAX_ROUND_STEP
from backupvault.hsm.state import EntryId, NodeShare, ThresholdState, is_entry_key
from backupvault.node.peers import MAX_FRAME_MESSAGES, join_frame
from backupvault.node.service import NodeService
from backupvault.node.store import SHARE_PREFIX, NodeStore, share_record
from backupvault.protocol import EntryStatus

KEY = EntryId.of("alice", "chat").to_bytes()
SECRET_SHARE = b"\x01" + bytes(range(1, 33))  # stands for node 0's k_i
U64_MAX = (1 << 64) - 1


async def _settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0.005)


def _with_share(tmp_path: Path, store: NodeStore | None = None) -> NodeStore:
    store = store or open_store(tmp_path)
    store.save([share_record(KEY, NodeShare(1, SECRET_SHARE, b"M", []))])
    return store


def _share_after(tmp_path: Path, service: NodeService) -> bytes:
    """The share node 0 holds once stopped, read back from its disk."""
    reopened = open_store(tmp_path)
    try:
        row = reopened.get_share(KEY)
        assert row is not None
        return row.share
    finally:
        reopened.close()


def test_entry_keys_are_the_only_keys_a_peer_may_name() -> None:
    assert is_entry_key(KEY)
    assert not is_entry_key(SHARE_PREFIX + KEY)
    assert not is_entry_key(b"")
    assert not is_entry_key(KEY + b"\0")  # not as EntryId.of makes it
    assert not is_entry_key(EntryId("alice", "no/slash").to_bytes())  # a name it refuses
    assert not is_entry_key(b"\x28" + b"\xff" * 40)


def test_a_prepare_or_accept_naming_a_share_row_gets_no_answer_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """The node's share row (its key share, in the clear once unsealed) is a row of the
    same table as the replicated records. A Prepare on its key would have been answered
    with a Promise carrying the row as the "accepted value": with its own two shares, a
    hostile minority would then hold t of the key's shares. An empty Accept on it would
    have overwritten the share."""

    async def scenario() -> None:
        clock = Clock()
        store = _with_share(tmp_path)
        service, sent = node_service(tmp_path, clock, store)
        share_key = SHARE_PREFIX + KEY
        hostile = [
            Prepare(os.urandom(16), share_key, 1, 1),
            Accept(os.urandom(16), share_key, 2, 1, b"", 1, False),
            Accept(os.urandom(16), share_key, 3, 1, ReplicatedValue([], b"x").to_bytes(), 1, True),
        ]
        assert service.peer_frame(1, frame(1, hostile)) == 0
        await _settle()
        assert sent[1] == [] and sent[2] == []
        await service.stop()
        assert _share_after(tmp_path, service) == SECRET_SHARE

    asyncio.run(scenario())


def test_a_catch_up_page_naming_a_share_row_is_not_merged(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        store = _with_share(tmp_path)
        service, sent = node_service(tmp_path, clock, store)
        service._step(lambda: service.replica.start(clock(), intact=False))  # catching up
        await _settle()
        (ask,) = opened(1, sent[1], PEER_MESSAGES)
        assert isinstance(ask, SyncRequest)
        # An acceptance with no value was merged without the copy check: the share gone.
        forged = AcceptorRecord(SHARE_PREFIX + KEY, 9, 1, 9, 1, b"")
        page = SyncResponse(ask.sync_id, True, [forged], os.urandom(16), 0, 1, False)
        assert service.peer_frame(1, frame(1, [page])) == 0
        await _settle()
        await service.stop()
        assert _share_after(tmp_path, service) == SECRET_SHARE

    asyncio.run(scenario())


def test_an_accept_with_no_value_is_dropped_and_the_entry_stays(tmp_path: Path) -> None:
    """Every value a proposer sends holds at least the op that made it. An empty one used
    to skip the acceptor's check, so it replaced a live entry with "never written", which
    the check refuses when the same deletion is spelled out."""

    async def scenario() -> None:
        clock = Clock()
        store = open_store(tmp_path)
        live = ThresholdState(status=EntryStatus.LIVE, version=1, manifest=b"M", attempt=3)
        value = ReplicatedValue([], live.to_bytes()).to_bytes()
        store.save([AcceptorRecord(KEY, 4, 2, 4, 2, value)])
        service, sent = node_service(tmp_path, clock, store)
        spelled = ReplicatedValue([], ThresholdState(version=1).to_bytes()).to_bytes()
        assert (
            service.peer_frame(1, frame(1, [Accept(b"a" * 16, KEY, 5, 1, spelled, 1, False)])) == 0
        )
        await _settle()
        (refusal,) = opened(1, sent[1], PEER_MESSAGES)
        assert isinstance(refusal, Accepted) and not refusal.ok
        sent[1].clear()
        assert service.peer_frame(1, frame(1, [Accept(b"b" * 16, KEY, 6, 1, b"", 1, False)])) == 0
        await _settle()
        assert sent[1] == []
        assert service.replica.held_payload(KEY) == live.to_bytes()
        await service.stop()

    asyncio.run(scenario())


def _unchanged(payload: bytes) -> tuple[bytes, None]:
    return payload, None


def test_answers_claiming_a_round_near_2_64_do_not_stop_the_node(tmp_path: Path) -> None:
    """An unsolicited Promise or Accepted claiming a promise of 2^64 - 1 made the node's
    next ballot 2^64: its write failed and the node stopped serving, and with 2^64 - 2 the
    ballot was written first, so it stopped again after every restart."""

    async def scenario() -> None:
        clock = Clock()
        service, _ = node_service(tmp_path, clock)
        before = service.replica._max_round
        lies = [
            Promise(os.urandom(16), KEY, 1, 1, False, 0, 0, b"", U64_MAX, 1),
            Accepted(os.urandom(16), KEY, 1, 1, True, U64_MAX - 1, 1, b"\0" * 32),
        ]
        assert service.peer_frame(1, frame(1, lies)) == 0
        assert service.replica._max_round <= before + 2 * MAX_ROUND_STEP  # a step per answer
        task = asyncio.ensure_future(service._commit(KEY, _unchanged))
        await _settle()
        assert service._fatal is None
        task.cancel()
        await service.stop()
        reopened = open_store(tmp_path)
        assert reopened.max_round() <= before + 2 * MAX_ROUND_STEP + 1
        reopened.close()

    asyncio.run(scenario())


def test_a_promise_reporting_an_acceptance_above_its_own_ballot_is_dropped(
    tmp_path: Path,
) -> None:
    """No honest acceptor reports an acceptance at or above the ballot it promises; the
    leader built its next value on such a base and tripped its own assertion."""

    async def scenario() -> None:
        clock = Clock()
        service, sent = node_service(tmp_path, clock)
        task = asyncio.ensure_future(service._commit(KEY, _unchanged))  # node 0 leads
        await _settle()
        (prepare,) = opened(1, sent[1], PEER_MESSAGES)
        assert isinstance(prepare, Prepare)
        value = ReplicatedValue([], b"").to_bytes()
        lie = Promise(
            prepare.op_id,
            KEY,
            prepare.round,
            prepare.node,
            True,
            prepare.round + 5,
            1,
            value,
            prepare.round,
            prepare.node,
        )
        assert service.peer_frame(1, frame(1, [lie])) == 0  # no exception, no effect
        assert 1 not in service.replica._leads[KEY].promises  # only its own so far
        task.cancel()
        await service.stop()

    asyncio.run(scenario())


def test_a_catch_up_page_with_an_overlong_store_id_is_dropped(tmp_path: Path) -> None:
    """A peer's store id becomes this node's mark, which the store writes with a one-byte
    length: a 256-byte one stopped the node's next write, again at every restart."""

    async def scenario() -> None:
        clock = Clock()
        service, sent = node_service(tmp_path, clock)
        service._step(lambda: service.replica.start(clock(), intact=False))
        await _settle()
        (ask,) = opened(1, sent[1], PEER_MESSAGES)
        assert isinstance(ask, SyncRequest)
        record = AcceptorRecord(EntryId.of("bob", "x").to_bytes(), 1, 1, 0, 0, b"")
        page = SyncResponse(ask.sync_id, True, [record], b"s" * 256, 0, 1, False)
        assert service.peer_frame(1, frame(1, [page])) == 0
        await _settle()
        assert service._fatal is None
        assert service.records.mark(1).store_id == b""
        await service.stop()

    asyncio.run(scenario())


def test_answers_naming_huge_keys_are_not_kept(tmp_path: Path) -> None:
    """The replica counts Accepted answers per entry (to know when a value is chosen);
    keys a megabyte long used to be kept, 4,096 of them."""

    async def scenario() -> None:
        clock = Clock()
        service, _ = node_service(tmp_path, clock)
        for i in range(8):
            big = Accepted(os.urandom(16), bytes([i]) * (1 << 20), 1, 1, True, 1, 1, b"\0" * 32)
            assert service.peer_frame(1, frame(1, [big])) == 0
        assert sum(len(k) for k in service.replica._chosen) == 0
        await service.stop()

    asyncio.run(scenario())


def test_a_promise_of_a_value_that_does_not_decode_closes_no_honest_stream(
    tmp_path: Path,
) -> None:
    """Node 1 promises every ballot of node 0's reporting, as accepted, bytes that are no
    value. Node 0 built on them while handling the Promise and the InvalidInput escaped
    the step: the frame was refused, and so was honest node 2's Promise after it (its
    stream closed), at every round, and the change never went on. Then the lie counted
    as lost (the leader, handed it as the newest value, went leaderless); since review s35
    a value that does not decode is dropped with the Promise that carries it, as no honest
    node's (`Replica._admissible`), and the leader's round goes on with node 2's
    promise."""

    async def scenario() -> None:
        clock = Clock()
        service, sent = node_service(tmp_path, clock)
        task = asyncio.ensure_future(service._commit(KEY, _unchanged))  # node 0 leads
        await _settle()
        # The leader's Prepare: nothing sends it leaderless.
        prepare = opened(2, sent[2], PEER_MESSAGES)[-1]
        assert isinstance(prepare, Prepare)
        ballot = (prepare.round, prepare.node)
        garbage = Promise(prepare.op_id, KEY, *ballot, True, prepare.round - 1, 1,
                          b"\xffno value", *ballot)  # fmt: skip
        honest = Promise(prepare.op_id, KEY, *ballot, True, 0, 0, b"", *ballot)
        assert service._peer_stream_frame(1, frame(1, [garbage]))
        assert service._peer_stream_frame(2, frame(2, [honest]))  # its stream stays open
        await _settle()
        accepts = [m for m in opened(2, sent[2], PEER_MESSAGES) if isinstance(m, Accept)]
        assert len(accepts) == 1 and accepts[0].round == prepare.round  # the round went on
        assert service._fatal is None
        task.cancel()
        await service.stop()

    asyncio.run(scenario())


def test_a_refused_message_ends_its_frame_and_a_frame_has_a_bounded_number_of_messages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review s39-A: node 1 (its identity key stolen) sent one frame of 1.27 million forged
    messages; node 0 opened and logged each (20 s without serving, 130 MiB of log). A
    refused message now ends its frame (one log line; what follows is not opened, the
    stream closes), and a frame of more than MAX_FRAME_MESSAGES is refused whole. An
    honest node's batches are split to fit."""

    async def scenario() -> None:
        clock = Clock()
        service, _ = node_service(tmp_path, clock)
        forged = channel(2).seal(0, Prepare(os.urandom(16), KEY, 1, 2))  # node 2's, on 1's
        honest = join_frame([channel(1).seal(0, Prepare(os.urandom(16), KEY, 1, 1))])
        many = join_frame([forged] * MAX_FRAME_MESSAGES)
        stepped: list[object] = []
        receive = service.replica.receive
        service.replica.receive = lambda *a: stepped.append(a) or receive(*a)  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="backupvault.node"):
            assert service.peer_frame(1, many) == 1
            assert service.peer_frame(1, join_frame([forged]) + honest) == 1
        assert stepped == []  # the honest message after the refused one was not opened
        assert len([r for r in caplog.records if "refused peer message" in r.message]) == 2
        too_many = frame(1, [Prepare(os.urandom(16), KEY, 1, 1)] * (MAX_FRAME_MESSAGES + 1))
        with pytest.raises(InvalidInput, match=f"more than {MAX_FRAME_MESSAGES} messages"):
            service.peer_frame(1, too_many)
        assert stepped == []
        assert service.peer_frame(1, frame(1, [Prepare(os.urandom(16), KEY, 1, 1)])) == 0
        assert len(stepped) == 1
        # An honest batch larger than a frame holds leaves as several frames.
        frames: list[list[bytes]] = []
        links, service._links = service._links, {1: SimpleNamespace(send=frames.append)}  # type: ignore[dict-item]
        NodeService._send_frame(service, 1, [forged] * (2 * MAX_FRAME_MESSAGES + 1))
        assert [len(f) for f in frames] == [MAX_FRAME_MESSAGES, MAX_FRAME_MESSAGES, 1]
        service._links = links
        await service.stop()

    asyncio.run(scenario())
