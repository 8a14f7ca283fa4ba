"""An answer leaves a node only once every row of this node's it rests on is durable,
also a row an earlier request wrote and the store has not finished writing (review s48):
through the real `ShareKeeper` on the simulator's real replicas."""

from __future__ import annotations

from backupvault.crypto import oprf
from backupvault.hsm.shares import Answer, ShareKeeper, ShareWrite, decode_threshold
from backupvault.hsm.state import NodeShare, ThresholdState
from backupvault.protocol import EvaluateRequest, EvaluateResponse, Op
from backupvault.sim import clients
from backupvault.sim.world import ThresholdClient, threshold_world

RK = bytes(range(32))


def _one_attempt_counted() -> tuple[
    ShareKeeper, bytes, EvaluateRequest, ThresholdState, EvaluateResponse, NodeShare
]:
    """A registered entry and one wrong guess node 0 answered: its keeper, the entry's key,
    the request, the value node 0 holds, its partial and its row with the attempt counted."""
    world = threshold_world(limit=4)
    client = ThresholdClient(world)
    made = clients.deal(client.ctx, b"right", RK, 1)
    assert client._run(clients.deliver(client.ctx, Op.REGISTER_SHARE, made)).acks == 5
    _, blinded = oprf.blind(b"guess")
    request = EvaluateRequest("alice", "chat", 1, blinded, client.clock_ms + 1000)
    first = world.request(0, Op.EVALUATE, request)
    assert isinstance(first, EvaluateResponse)
    node = world.honest[0]
    assert node.keeper is not None and node.replica is not None
    counted = node.rows[client.key]
    assert counted.evaluated_hash(first.attempt) is not None
    state = decode_threshold(node.replica.held_payload(client.key))
    assert state is not None
    return node.keeper, client.key, request, state, first, counted


def test_a_resend_of_an_attempt_waits_for_the_count_its_first_copy_is_writing() -> None:
    """The first copy of an attempt counts it (a row the shell is writing); a resend of
    the same B finds that count and writes nothing of its own, so without the row among
    its writes its partial left at once: a crash before the first write landed let out a
    partial whose count the store never held."""
    keeper, key, request, state, _, counted = _one_attempt_counted()
    still_writing = keeper._write(key, counted)  # as if the store were writing it still
    resend = keeper._evaluate_committed(key, request, state)
    assert isinstance(resend.response, EvaluateResponse) and resend.writes == ()
    held = keeper.held_until_durable(key, resend)
    assert held.response is resend.response
    assert held.writes == (still_writing,)
    keeper.durable(held.writes)
    assert keeper.held_until_durable(key, resend) is resend  # durable: nothing to wait for


def test_an_answer_that_writes_the_row_itself_is_not_given_it_twice() -> None:
    keeper, key, _, _, first, counted = _one_attempt_counted()
    keeper._write(key, counted)
    newer = ShareWrite(key, counted.with_(evaluated=[]))
    answer = Answer(first, (newer,))
    assert keeper.held_until_durable(key, answer) is answer
    # Another entry's row still being written is no concern of this answer.
    assert keeper.held_until_durable(b"another entry", Answer(first)).writes == ()
