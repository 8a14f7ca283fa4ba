"""A node whose value is older than the share it holds (it took a password change's share
and answered its M to the client's read, but has not accepted the change's commit
itself) answers an evaluate, reset or delete of that version "send again", not "the
entry changed": the second sent the client away while t nodes could serve it (sim seed
11610198: the answer joined an older chosen value, `Replica._joined`)."""

from __future__ import annotations

import contextlib

import pytest

from backupvault.crypto import oprf
from backupvault.errors import AuthenticationFailed
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.protocol import (
    DeleteShareRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    Message,
    Op,
    ResetRequest,
)
from backupvault.sim.world import Simulation, ThresholdClient, threshold_world

RK = bytes(range(32))


def _changed() -> tuple[Simulation, bytes, ThresholdState, ThresholdState]:
    """Version 1 registered, then changed to version 2 on every node: node 0's value of
    version 1 (as it was before the change) and of version 2."""
    world = threshold_world(3, 5, seed=7)
    client = ThresholdClient(world)
    client.register(b"old", RK)
    before = world.replicated(0, client.key)
    recovered = client.recover(b"old")
    assert recovered is not None
    client.change_password(recovered[0], b"new", RK)
    after = world.replicated(0, client.key)
    assert (before.version, after.version) == (1, 2)
    assert world.honest[0].keeper is not None
    assert world.honest[0].keeper.row(client.key).version == 2  # type: ignore[union-attr]
    return world, client.key, before, after


def _requests(key: bytes, version: int) -> dict[Op, Message]:
    entry = EntryId.from_bytes(key)
    _, blinded = oprf.blind(b"new")
    return {
        Op.EVALUATE: EvaluateRequest(entry.account, entry.entry, version, blinded, 2**40),
        Op.RESET: ResetRequest(entry.account, entry.entry, version, 1, bytes(64)),
        Op.DELETE_SHARE: DeleteShareRequest(entry.account, entry.entry, version, 1, bytes(64)),
    }


def _answer(world: Simulation, op: Op, request: Message, value: ThresholdState) -> Message:
    """Node 0's answer to `request` applied to `value`, and that it left the value as is."""
    keeper = world.honest[0].keeper
    assert keeper is not None
    new, build = keeper.handle(op, request).apply(value)
    assert new == value
    return build().response


@pytest.mark.parametrize("op", [Op.EVALUATE, Op.RESET, Op.DELETE_SHARE])
def test_a_value_older_than_the_share_asks_for_the_request_again(op: Op) -> None:
    world, key, before, _ = _changed()
    answer = _answer(world, op, _requests(key, 2)[op], before)
    assert isinstance(answer, ErrorResponse)
    assert answer.code == ErrorCode.FLEET_UNAVAILABLE, answer.detail
    assert "send again" in answer.detail


@pytest.mark.parametrize("op", [Op.EVALUATE, Op.RESET, Op.DELETE_SHARE])
def test_a_request_for_an_older_version_is_still_told_the_entry_changed(op: Op) -> None:
    """The client's read is the old one here, not the node's value."""
    world, key, _, after = _changed()
    answer = _answer(world, op, _requests(key, 1)[op], after)
    assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.STALE_MANIFEST


def test_a_node_without_the_versions_share_still_says_the_entry_changed() -> None:
    """Only a node that took the named version's share knows its value is behind: a node
    holding none of it answers as before."""
    world, key, before, _ = _changed()
    keeper = world.honest[0].keeper
    assert keeper is not None
    row = keeper.row(key)
    assert row is not None
    keeper._cache[key] = row.with_(share=b"")  # as a node whose share of version 2 never came
    answer = _answer(world, Op.EVALUATE, _requests(key, 2)[Op.EVALUATE], before)
    assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.STALE_MANIFEST


def test_a_tombstone_older_than_the_share_asks_for_the_request_again() -> None:
    """A node whose value is version 1's tombstone (every guess used) but which took the
    share of a registration over it (version 2) said "destroyed", as final (review s59)."""
    world = threshold_world(3, 2, seed=7)
    client = ThresholdClient(world)
    client.register(b"old", RK)
    while world.replicated(0, client.key).status != EntryStatus.DESTROYED:
        with contextlib.suppress(AuthenticationFailed):
            assert client.recover(b"wrong") is None
    tomb = world.replicated(0, client.key)
    client.register(b"new", RK, version=tomb.version + 1)
    keeper = world.honest[0].keeper
    assert keeper is not None and keeper.row(client.key).version == tomb.version + 1  # type: ignore[union-attr]
    answer = _answer(world, Op.EVALUATE, _requests(client.key, tomb.version + 1)[Op.EVALUATE], tomb)
    assert isinstance(answer, ErrorResponse)
    assert answer.code == ErrorCode.FLEET_UNAVAILABLE, answer.detail
