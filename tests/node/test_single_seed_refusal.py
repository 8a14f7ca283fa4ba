"""A node whose store still holds keys on the removed single-seed flow does not start, and
says how many and what to do; with none, it deletes the single seed's files
(docs/threshold.md, "Decision")."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupvault.fleet.messages import AcceptorRecord, AppliedOp, ReplicatedValue
from backupvault.hsm.shares import Answer, ThresholdUpdate, decode_threshold
from backupvault.hsm.state import SINGLE_SEED_ENTRY_TAG, EntryId, ThresholdState
from backupvault.node.main import (
    SINGLE_SEED_CHECKED,
    SINGLE_SEED_SECRETS,
    SingleSeedEntries,
    refuse_single_seed_entries,
)
from backupvault.node.store import NodeStore
from backupvault.protocol import EntryStatus, ErrorResponse


def _single_seed(status: EntryStatus) -> bytes:
    """A single-seed entry state as earlier versions encoded it: tag 41, then its status
    (u64), then the rest (not read)."""
    return bytes([SINGLE_SEED_ENTRY_TAG]) + int(status).to_bytes(8, "big") + os.urandom(200)


def _record(account: str, payload: bytes) -> AcceptorRecord:
    value = ReplicatedValue([AppliedOp(b"op", 1)], payload).to_bytes()
    return AcceptorRecord(EntryId(account, "root-key").to_bytes(), 1, 0, 1, 0, value)


def _store(tmp_path: Path, *payloads: bytes) -> NodeStore:
    store = NodeStore(tmp_path / "store.sqlite", 0, b"k" * 32)
    store.save([_record(f"user-{i}", p) for i, p in enumerate(payloads)])
    for name in SINGLE_SEED_SECRETS:
        (tmp_path / name).write_bytes(b"sealed single seed")
    return store


def test_a_store_with_single_seed_keys_is_refused_and_keeps_everything(tmp_path: Path) -> None:
    store = _store(
        tmp_path,
        _single_seed(EntryStatus.LIVE),
        _single_seed(EntryStatus.LIVE),
        _single_seed(EntryStatus.DESTROYED),
        ThresholdState(status=EntryStatus.LIVE, version=1, manifest=b"m").to_bytes(),
    )
    with pytest.raises(SingleSeedEntries) as refused:
        refuse_single_seed_entries(store, 3, tmp_path)
    assert "node 3 holds 2 key(s) on the single-seed flow" in refused.value.message
    assert "previous version" in (refused.value.hint or "")
    # The seed stays: the previous version needs it to move those keys.
    assert all((tmp_path / name).exists() for name in SINGLE_SEED_SECRETS)
    assert len(store.load()) == 4
    assert not (tmp_path / SINGLE_SEED_CHECKED).exists()  # checked again at the next start


def test_without_single_seed_keys_the_seed_files_are_deleted(tmp_path: Path) -> None:
    store = _store(
        tmp_path,
        _single_seed(EntryStatus.DESTROYED),  # holds no key any more: read as empty
        _single_seed(EntryStatus.EMPTY),
        ThresholdState(status=EntryStatus.LIVE, version=1, manifest=b"m").to_bytes(),
    )
    refuse_single_seed_entries(store, 0, tmp_path)
    assert not any((tmp_path / name).exists() for name in SINGLE_SEED_SECRETS)
    # Checked once per data folder: the next start reads no row for it.
    assert (tmp_path / SINGLE_SEED_CHECKED).exists()
    store.close()
    refuse_single_seed_entries(_Unreadable(tmp_path / "store.sqlite", 0, b"k" * 32), 0, tmp_path)


class _Unreadable(NodeStore):
    def records(self) -> Iterator[AcceptorRecord]:
        raise AssertionError("the check ran again")


class _NoList(NodeStore):
    def load(self) -> list[AcceptorRecord]:
        raise AssertionError("the check held every record in memory at once")


def test_the_check_reads_one_row_at_a_time(tmp_path: Path) -> None:
    """The first start of a data folder on this version reads every row once: one at a
    time, so a node with millions of entries does not hold them all in memory (the
    1,000,000-entry fill's nodes grew past 900 MB, and were not ready in 120 s)."""
    _store(
        tmp_path,
        _single_seed(EntryStatus.LIVE),
        ThresholdState(status=EntryStatus.EMPTY).to_bytes(),
    ).close()
    with pytest.raises(SingleSeedEntries, match="holds 1 key"):
        refuse_single_seed_entries(_NoList(tmp_path / "store.sqlite", 0, b"k" * 32), 0, tmp_path)


def test_the_threshold_flow_reads_a_keyless_single_seed_value_as_empty() -> None:
    """A deleted or destroyed single-seed entry holds nothing: the threshold flow may
    register the key anew. A live one (only a catch-up copy from an older node could bring
    it) is answered with what to do and left as it is."""
    for status in (EntryStatus.EMPTY, EntryStatus.DESTROYED):
        assert decode_threshold(_single_seed(status)) == ThresholdState()
    live = _single_seed(EntryStatus.LIVE)
    assert decode_threshold(live) is None
    update = ThresholdUpdate(b"key", lambda state: (state, lambda: Answer(state)))
    payload, build = update.change(live)
    assert payload == live
    answer = build().response
    assert isinstance(answer, ErrorResponse) and "re-register" in answer.detail
