"""What one ordinary account can make a node store (review r1): sealed requests to one
node's service over its real store, as a device with a fleet token sends them.

Finding 1: every register-share for a new entry name, never committed, left a share row
holding only the staged share, for good (60 a minute per account on every node). Now a
node keeps at most STAGED_ENTRIES_PER_ACCOUNT such entries per account, counted from the
store's `staged` table (also after a restart), and refuses one more with
`too_many_pending`; what it acknowledged before stays promised.

Finding 2: evaluate, reset and delete-share for entry names nobody registered each ran a
consensus round and left a record row on the node for good; now they are answered
`not_registered` with no round and no row."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sealed_client import ACCOUNTS, EPOCH, FLEET_ID, NODE_KEY, seal, token

from backupvault.codec import Message
from backupvault.crypto import manifest, oprf
from backupvault.fleet.channel import PeerChannel
from backupvault.fleet.messages import AcceptorRecord, AppliedOp, ReplicatedValue
from backupvault.hsm import shares
from backupvault.hsm.firmware import NodeKey, VaultFirmware
from backupvault.hsm.shares import FleetShape
from backupvault.hsm.state import EntryId, NodeShare, StagedShare, ThresholdState
from backupvault.node.service import NodeService
from backupvault.node.store import SHARE_PREFIX, STORE_FORMAT, NodeStore, share_record
from backupvault.protocol import (
    AckKind,
    CommitAck,
    CommitSharesRequest,
    DeleteShareRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    Op,
    RegisterShareRequest,
    ResetRequest,
    ShareAck,
    decode_response,
    encode_commit_acks,
)
from backupvault.sim.clients import SIM_KSF

SIGNING = Ed25519PrivateKey.generate()
STORAGE_KEY = os.urandom(32)


TOKENS = {"mallory": token("mallory"), "alice": token("alice")}


def _service(path: Path) -> NodeService:
    store = NodeStore(path, 0, STORAGE_KEY)
    firmware = VaultFirmware(
        FLEET_ID,
        NodeKey(0, NODE_KEY, SIGNING),
        ACCOUNTS,
        FleetShape(EPOCH, 1, 1, 3),
        store.get_share,
        {1: SIGNING.public_key()},
    )
    channel = PeerChannel(
        0, X25519PrivateKey.generate().private_bytes_raw(), {0: b"\0" * 32}, FLEET_ID, os.urandom
    )
    return NodeService(0, {0: ("127.0.0.1", 0)}, firmware, channel, store, intact=True)


async def _send(
    service: NodeService, op: Op, entry: str, request: Message, account: str = "mallory"
) -> Message:
    sealed, key, _ = seal(op, request.to_bytes(), TOKENS[account])
    answer = await service.client_request(op, account, entry, sealed)
    assert answer.status == 200, answer
    return decode_response(op, key.open(answer.body))


def _dealt(entry: str, account: str = "mallory") -> manifest.Registration:
    return manifest.register(
        b"pw",
        bytes(32),
        fleet_id=FLEET_ID,
        account=account,
        entry=entry,
        epoch=EPOCH,
        nodes=1,
        threshold_count=1,
        ksf=SIM_KSF,
    )


async def _stage(
    service: NodeService, made: manifest.Registration, account: str = "mallory"
) -> Message:
    m = made.manifest
    request = RegisterShareRequest(
        account, m.entry, m.to_bytes(), made.shares[0].to_bytes(), b"", 0
    )
    return await _send(service, Op.REGISTER_SHARE, m.entry, request, account)


def _staged_names(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM staged").fetchone()
    return int(count)


def test_an_account_stages_at_most_its_cap_of_uncommitted_entries_also_after_a_restart(
    tmp_path: Path,
) -> None:
    """The attack of the review: a register-share for a new entry name each time, never
    a commit. The cap's refusal leaves the first stagings as they were: the first one
    still commits on the acknowledgement the node gave for it, and then makes room."""
    cap = 32  # the node's STAGED_ENTRIES_PER_ACCOUNT, checked at the end
    path = tmp_path / "store.sqlite"
    made = [_dealt(f"junk-{n}") for n in range(cap + 3)]

    async def first_run() -> ShareAck:
        service = _service(path)
        await service.start()
        try:
            acks = [await _stage(service, m) for m in made[:cap]]
            assert all(isinstance(a, ShareAck) and a.kind == AckKind.STAGED for a in acks)
            for extra in made[cap:]:
                refused = await _stage(service, extra)
                assert isinstance(refused, ErrorResponse), refused
                assert refused.code == ErrorCode.TOO_MANY_PENDING
                assert "never committed" in refused.detail
            # Staging again an entry already staged takes no new place.
            again = await _stage(service, _dealt("junk-1"))
            assert isinstance(again, ShareAck) and again.kind == AckKind.STAGED
            # Another account is not held back by this one's.
            other = await _stage(service, _dealt("root-key", "alice"), "alice")
            assert isinstance(other, ShareAck) and other.kind == AckKind.STAGED
            assert isinstance(acks[0], ShareAck)
            return acks[0]
        finally:
            await service.stop()

    first_ack = asyncio.run(first_run())
    assert _rows(path) == cap + 1  # before: a row per request, cap + 5 and growing
    assert _staged_names(path) == cap + 1

    async def after_restart() -> None:
        service = _service(path)  # a new process: the count is read from the store
        await service.start()
        try:
            refused = await _stage(service, made[cap])
            assert isinstance(refused, ErrorResponse)
            assert refused.code == ErrorCode.TOO_MANY_PENDING
            # The acknowledgement given before the cap was met is still good: M commits
            # with it, and this node holds its share (promoted from the staged one).
            m = made[0].manifest
            acks = encode_commit_acks(
                [CommitAck(first_ack.index, AckKind(first_ack.kind), first_ack.signature)]
            )
            commit = CommitSharesRequest("mallory", m.entry, m.to_bytes(), b"", 0, acks)
            held = await _send(service, Op.COMMIT_SHARES, m.entry, commit)
            assert isinstance(held, ShareAck) and held.kind == AckKind.HELD, held
            # That entry is no longer staged only: one more staging fits.
            taken = await _stage(service, made[cap])
            assert isinstance(taken, ShareAck) and taken.kind == AckKind.STAGED
            refused = await _stage(service, made[cap + 1])
            assert isinstance(refused, ErrorResponse)
            assert refused.code == ErrorCode.TOO_MANY_PENDING
        finally:
            await service.stop()

    asyncio.run(after_restart())
    assert _staged_names(path) == cap + 1
    assert cap == shares.STAGED_ENTRIES_PER_ACCOUNT


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM record").fetchone()
    return int(count)


@pytest.mark.parametrize("op", [Op.EVALUATE, Op.RESET, Op.DELETE_SHARE])
def test_requests_for_made_up_entries_leave_no_row_and_run_no_round(tmp_path: Path, op: Op) -> None:
    async def scenario() -> None:
        path = tmp_path / "store.sqlite"
        service = _service(path)
        await service.start()
        try:
            for n in range(20):
                entry = f"made-up-{n}"
                request: Message
                if op is Op.EVALUATE:
                    blinded = oprf.blind(b"guess")[1]
                    request = EvaluateRequest("mallory", entry, 1, blinded, 1_000 + n)
                elif op is Op.RESET:
                    request = ResetRequest("mallory", entry, 1, 1, os.urandom(64))
                else:
                    request = DeleteShareRequest("mallory", entry, 1, 1_000 + n, os.urandom(64))
                answer = await _send(service, op, entry, request)
                assert isinstance(answer, ErrorResponse)
                assert answer.code == ErrorCode.NOT_REGISTERED
            assert service.metrics["committed"] == 0  # not one round
        finally:
            await service.stop()
        assert _rows(path) == 0  # before: 20, one per request, for good

    asyncio.run(scenario())


def test_the_staged_table_follows_every_save_and_a_stale_name_never_counts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, STORAGE_KEY)
    staged_only = NodeShare(0, b"", b"", [], staged=[StagedShare(b"\x01" + b"s" * 32, b"M")])
    held = NodeShare(1, b"\x01" + b"k" * 32, b"M", [])
    keys = [EntryId.of("mallory", f"entry-{n}").to_bytes() for n in range(3)]
    store.save([share_record(key, staged_only) for key in keys])
    store.save([share_record(EntryId.of("alice", "entry-0").to_bytes(), held)])
    assert store.count_staged("mallory", {}, 10) == 3
    assert store.count_staged("alice", {}, 10) == 0
    # Rows handed out and not yet durable stand in for the stored ones.
    other = EntryId.of("mallory", "entry-9").to_bytes()
    assert store.count_staged("mallory", {keys[0]: False}, 10) == 2
    assert store.count_staged("mallory", {other: True}, 10) == 4
    store.save([share_record(keys[0], held)])  # committed here: its share now
    assert store.count_staged("mallory", {}, 10) == 2
    # A name an earlier version's write left behind (it kept no table): counted below the
    # cap, but never once the cap is met, where each listed row is opened and checked.
    with sqlite3.connect(path) as db:
        (tag,) = db.execute("SELECT account FROM staged LIMIT 1").fetchone()
        name = store.name_of(SHARE_PREFIX + keys[0])
        db.execute("INSERT INTO staged (name, account) VALUES (?, ?)", (name, tag))
    assert store.count_staged("mallory", {}, 10) == 3
    assert store.count_staged("mallory", {}, 3) == 2
    store.close()
    reopened = NodeStore(path, 0, STORAGE_KEY)  # a restart reads the table as it was
    assert reopened.count_staged("mallory", {}, 3) == 2
    reopened.close()


def _entry_names(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM account_entries").fetchone()
    return int(count)


def test_an_account_has_at_most_its_cap_of_entries_on_a_node_also_after_a_restart(
    tmp_path: Path,
) -> None:
    """Finding 4: a new entry name per request, each committed, grew every node by a
    value and a share row per request for good. Now a node stages no share of an entry
    it holds nothing of once it holds the values of the cap's number of the account's
    entries, counted from the store's `account_entries` table (also after a restart);
    another account is not held back."""
    cap = 3  # small, to reach it; a node's is ENTRIES_PER_ACCOUNT
    path = tmp_path / "store.sqlite"
    made = [_dealt(f"entry-{n}") for n in range(cap + 2)]

    def capped(path: Path) -> NodeService:
        service = _service(path)
        service._firmware.shares._entries_cap = cap
        return service

    async def first_run() -> None:
        service = capped(path)
        await service.start()
        try:
            for m in made[:cap]:  # committed: a value each
                ack = await _stage(service, m)
                assert isinstance(ack, ShareAck) and ack.kind == AckKind.STAGED, ack
                acks = encode_commit_acks([CommitAck(ack.index, AckKind(ack.kind), ack.signature)])
                entry = m.manifest.entry
                commit = CommitSharesRequest("mallory", entry, m.manifest.to_bytes(), b"", 0, acks)
                held = await _send(service, Op.COMMIT_SHARES, entry, commit)
                assert isinstance(held, ShareAck) and held.kind == AckKind.HELD, held
            refused = await _stage(service, made[cap])
            assert isinstance(refused, ErrorResponse), refused
            assert refused.code == ErrorCode.TOO_MANY_ENTRIES
            assert f"counts {cap} entries of this account" in refused.detail
            other = await _stage(service, _dealt("root-key", "alice"), "alice")
            assert isinstance(other, ShareAck) and other.kind == AckKind.STAGED
        finally:
            await service.stop()

    asyncio.run(first_run())
    assert _rows(path) == 2 * cap + 1  # each entry's value and share row, alice's share row
    assert _entry_names(path) == cap + 1  # mallory's entries, and alice's by its share row

    async def after_restart() -> None:
        service = capped(path)  # a new process: the count is read from the store
        await service.start()
        try:
            refused = await _stage(service, made[cap + 1])
            assert isinstance(refused, ErrorResponse)
            assert refused.code == ErrorCode.TOO_MANY_ENTRIES
        finally:
            await service.stop()

    asyncio.run(after_restart())
    assert _rows(path) == 2 * cap + 1
    assert shares.ENTRIES_PER_ACCOUNT == 256


def test_two_new_entries_at_once_never_pass_the_cap_together(tmp_path: Path) -> None:
    """One place left, two stagings of new names in the same moment: the second counts
    the first's row, handed out and not yet durable, and is refused (review s46)."""
    cap = 2
    path = tmp_path / "store.sqlite"

    async def scenario() -> list[Message]:
        service = _service(path)
        service._firmware.shares._entries_cap = cap
        await service.start()
        try:
            first = await _stage(service, _dealt("entry-0"))
            assert isinstance(first, ShareAck)
            return list(
                await asyncio.gather(
                    _stage(service, _dealt("entry-1")), _stage(service, _dealt("entry-2"))
                )
            )
        finally:
            await service.stop()

    answers = asyncio.run(scenario())
    assert sorted(type(a).__name__ for a in answers) == ["ErrorResponse", "ShareAck"]
    refused = next(a for a in answers if isinstance(a, ErrorResponse))
    assert refused.code == ErrorCode.TOO_MANY_ENTRIES
    assert _entry_names(path) == cap


def test_the_entries_table_names_live_values_and_share_rows_and_nothing_else(
    tmp_path: Path,
) -> None:
    """Counted, for good: an entry this store wrote a live value or a share row of. Not
    counted: a promise alone, or a tombstone alone, which one hostile node can make an
    honest node keep for any made-up name (review s46: 256 of them filled an account
    that had registered nothing)."""
    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, STORAGE_KEY)
    held = NodeShare(1, b"\x01" + b"k" * 32, b"M", [])
    key = [EntryId.of("mallory", f"entry-{n}").to_bytes() for n in range(6)]
    live = ThresholdState(status=EntryStatus.LIVE, version=1, manifest=b"M")
    gone = ThresholdState(status=EntryStatus.DESTROYED, version=1)

    def value(key: bytes, state: ThresholdState) -> AcceptorRecord:
        payload = ReplicatedValue([AppliedOp(os.urandom(16), 1)], state.to_bytes())
        return AcceptorRecord(key, 1, 0, 1, 0, payload.to_bytes())

    def mallory() -> tuple[int, bool]:
        return store.count_entries(key[0])

    store.save([value(key[0], live), value(key[1], live)])
    store.save([value(EntryId.of("alice", "entry-0").to_bytes(), live)])
    store.save([share_record(key[2], held)])  # a share row alone (staged, or owed a value)
    store.save([AcceptorRecord(key[3], 7, 4)])  # a promise alone
    store.save([value(key[4], gone)])  # a tombstone alone
    store.save([AcceptorRecord(b"not an entry key", 1, 0, 1, 0, b"x")])  # a tool's
    assert mallory() == (3, True)
    assert [store.count_entries(k)[1] for k in key] == [True, True, True, False, False, False]
    assert store.count_entries(EntryId.of("alice", "x").to_bytes()) == (1, False)
    store.save([value(key[0], live)])  # written again: still one name
    store.save([value(key[1], gone)])  # destroyed: counted for good (a delete frees none)
    store.save([share_record(key[0], held), value(key[0], gone)])
    assert mallory() == (3, True)
    store.close()
    reopened = NodeStore(path, 0, STORAGE_KEY)  # a restart reads the table as it was
    assert reopened.count_entries(key[5]) == (3, False)
    assert reopened.count_entries(EntryId.of("nobody", "x").to_bytes()) == (0, False)
    reopened.close()
    assert _entry_names(path) == 4


def test_a_store_of_format_5_is_made_format_6_and_its_values_named_when_written_again(
    tmp_path: Path,
) -> None:
    """Format 5 kept no `account_entries` table: opened, the store is numbered 6 (so a
    version that would not keep the table refuses it), and its values, not named yet,
    count from their next write on: toward taking a new entry, never toward refusing
    one."""
    path = tmp_path / "store.sqlite"
    store = NodeStore(path, 0, STORAGE_KEY)
    state = ThresholdState(status=EntryStatus.LIVE, version=1, manifest=b"M").to_bytes()
    keys = [EntryId.of("mallory", f"entry-{n}").to_bytes() for n in range(2)]
    payload = ReplicatedValue([AppliedOp(b"op", 1)], state).to_bytes()
    store.save([AcceptorRecord(key, 1, 0, 1, 0, payload) for key in keys])
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE account_entries")
        db.execute("PRAGMA user_version=5")
    opened = NodeStore(path, 0, STORAGE_KEY)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (STORE_FORMAT,)
    assert opened.count_entries(keys[0]) == (0, False)
    assert {r.key for r in opened.records()} == set(keys)
    opened.save([AcceptorRecord(keys[0], 2, 0, 2, 0, payload)])  # written again
    assert opened.count_entries(keys[1]) == (1, False)
    opened.close()
