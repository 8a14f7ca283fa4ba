"""A hostile proposer renumbers the latest attempt: the same H(B) committed again one number
on (acceptors take it: the counter and the clock only go up). Review s60 found that every
honest node then counted the client's resend of that B as a new guess, so the owner's
right password, resent while a node was slow, ended the entry. A node now counts a B once
in a window and answers it again under the number it counted it as; the owner's reset
forgets that B under any number; and after the reset the B is refused, free."""

from __future__ import annotations

from typing import Any

import pytest

from backupvault.crypto import oprf, owner
from backupvault.hsm.state import ThresholdState
from backupvault.protocol import (
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    Op,
    ResetRequest,
    ResetResponse,
)
from backupvault.sim.world import FLEET_ID, Simulation, ThresholdClient, threshold_world

RK = bytes(range(32))
PROPOSER = 4  # plays the hostile proposer: any node's replica can propose any value


@pytest.fixture
def world() -> Simulation:
    # collect: the renumbering is what the observer exists to flag ("replays-change-nothing")
    return threshold_world(limit=4, collect=True)


@pytest.fixture
def client(world: Simulation) -> ThresholdClient:
    client = ThresholdClient(world)
    client.register(b"right", RK)
    return client


def _renumber(world: Simulation, key: bytes) -> None:
    """The latest attempt again, one number on, the same H(B), its clock one later."""

    def bump(payload: bytes) -> tuple[bytes, Any]:
        state = ThresholdState.from_bytes(payload)
        assert state.status == EntryStatus.LIVE and state.attempt > state.reset_attempt
        bumped = state.with_(
            attempt=state.attempt + 1, attempt_client_time_ms=state.attempt_client_time_ms + 1
        )
        return bumped.to_bytes(), None

    before = world.replicated(0, key).attempt
    node = world.honest[PROPOSER]
    assert node.replica is not None
    world._execute(node, node.replica.propose(b"renumber" + bytes(8), key, bump, world.now))
    world.settle(1.0)
    assert world.replicated(0, key).attempt == before + 1


def _count(world: Simulation, slot: int, key: bytes) -> int:
    return world.honest[slot].rows[key].count


def _reset(
    client: ThresholdClient, export_key: bytes, attempt: int, blinded: bytes
) -> ResetRequest:
    statement = owner.OwnerStatement(
        owner.StatementKind.RESET,
        FLEET_ID,
        client.account,
        client.entry,
        1,
        attempt,
        owner.payload_hash(blinded),
    )
    signature = owner.sign_statement(export_key, statement)
    return ResetRequest(client.account, client.entry, 1, attempt, signature)


def test_a_resend_after_a_renumbering_is_answered_under_its_first_number_uncharged(
    world: Simulation, client: ThresholdClient
) -> None:
    _, blinded = oprf.blind(b"guess")
    request = EvaluateRequest(client.account, client.entry, 1, blinded, 5_000)
    first = world.request(0, Op.EVALUATE, request)
    assert isinstance(first, EvaluateResponse) and first.attempt == 1
    _renumber(world, client.key)
    again = world.request(0, Op.EVALUATE, request)
    assert isinstance(again, EvaluateResponse), again
    assert (again.attempt, again.evaluated) == (1, first.evaluated)
    assert _count(world, 0, client.key) == 1  # was 2: the resend charged as attempt 2
    # A node whose first copy comes after the renumbering counts it there, once.
    late = world.request(1, Op.EVALUATE, request)
    assert isinstance(late, EvaluateResponse) and late.attempt == 2
    _renumber(world, client.key)
    assert isinstance(world.request(1, Op.EVALUATE, request), EvaluateResponse)
    assert [_count(world, slot, client.key) for slot in (0, 1)] == [1, 1]


def test_the_owner_s_reset_forgets_its_b_under_a_later_number_and_then_refuses_it(
    world: Simulation, client: ThresholdClient
) -> None:
    recovered = client.recover(b"right")
    assert recovered is not None
    export_key = recovered[0]
    _, blinded = oprf.blind(b"right")
    request = EvaluateRequest(client.account, client.entry, 1, blinded, 50_000)
    at_0 = world.request(0, Op.EVALUATE, request)
    assert isinstance(at_0, EvaluateResponse)
    _renumber(world, client.key)
    at_1 = world.request(1, Op.EVALUATE, request)  # node 1 counted it one number on
    assert isinstance(at_1, EvaluateResponse) and at_1.attempt == at_0.attempt + 1
    reset = _reset(client, export_key, at_0.attempt, blinded)
    for slot in (0, 1):
        assert isinstance(world.request(slot, Op.RESET, reset), ResetResponse)
    # Node 1 kept its count of the owner's B under the later number before (1, not 0).
    assert [_count(world, slot, client.key) for slot in (0, 1)] == [0, 0]
    # Renumbered again after the reset: the B the owner's reset answered is over.
    _renumber(world, client.key)
    for slot in (0, 1, 2):
        refused = world.request(slot, Op.EVALUATE, request)
        assert isinstance(refused, ErrorResponse) and refused.code == ErrorCode.STALE_ATTEMPT
        assert _count(world, slot, client.key) == 0
