"""Signed count reports after a rollback (hsm/shares.py; docs/threshold.md, "Counters and
erasure"): a node whose store was rolled back asks its peers how far an entry's attempts
went, and counts every attempt up to the highest as evaluated once t peers reported."""

from __future__ import annotations

import dataclasses

import pytest

from backupvault.crypto import oprf, threshold
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.hsm.shares import UNKNOWN_B, ShareKeeper, ShareWrite
from backupvault.hsm.state import EntryId, Evaluation
from backupvault.protocol import (
    CountReport,
    CountReportRequest,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    ManifestResponse,
    Op,
    count_report_message,
)
from backupvault.sim.world import (
    FLEET_ID,
    Simulation,
    ThresholdClient,
    signing_key,
    threshold_world,
)

RK = bytes(range(32))
L = 4


@pytest.fixture
def world() -> Simulation:
    """Reports are delivered by the tests (`_deliver`), not by the world's nodes."""
    world = threshold_world(limit=L)
    world.count_reports = False
    return world


@pytest.fixture
def client(world: Simulation) -> ThresholdClient:
    client = ThresholdClient(world)
    _, acks = client.register(b"right", RK)
    assert acks == 5
    return client


def _keeper(world: Simulation, slot: int) -> ShareKeeper:
    keeper = world.honest[slot].keeper
    assert keeper is not None
    return keeper


def _held(world: Simulation, slot: int, key: bytes) -> bytes:
    replica = world.members[slot].replica
    assert replica is not None
    return replica.held_payload(key)


def _report(world: Simulation, reporter: int, to: int, request: CountReportRequest) -> CountReport:
    key = EntryId.of(request.account, request.entry).to_bytes()
    report = _keeper(world, reporter).count_report(to + 1, request, _held(world, reporter, key))
    assert report is not None
    return report


def _take(world: Simulation, slot: int, sender: int, report: CountReport) -> bool | None:
    """Give node `slot` a report from node `sender` as its shell does (persisting what
    it writes). None: not taken; else whether rows were written."""
    key = EntryId.of(report.account, report.entry).to_bytes()
    keeper = _keeper(world, slot)
    writes = keeper.take_count_report(sender + 1, report, _held(world, slot, key))
    if writes is None:
        return None
    for write in writes:
        world.honest[slot].rows[write.key] = write.row
    keeper.durable(writes)
    return bool(writes)


def _deliver(world: Simulation, slot: int, reporters: tuple[int, ...] = ()) -> int:
    """Node `slot`'s pending requests, answered by `reporters` (default: every peer)."""
    taken = 0
    for request in _keeper(world, slot).take_report_requests():
        for peer in reporters or tuple(p for p in range(5) if p != slot):
            taken += _take(world, slot, peer, _report(world, peer, slot, request)) is not None
    return taken


def _ask(world: Simulation, client: ThresholdClient, slot: int) -> object:
    """One fresh evaluate request to node `slot` alone (a new attempt)."""
    _, blinded = oprf.blind(b"guess")
    client.clock_ms += 1000
    return world.request(
        slot, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, blinded, client.clock_ms)
    )


def _code(answer: object) -> str:
    assert isinstance(answer, ErrorResponse), answer
    return answer.code


def _roll_back(
    world: Simulation, client: ThresholdClient, slots: tuple[int, ...], wrong: int
) -> None:
    """`wrong` wrong guesses, then `slots` restart with their rows from before them (their
    tokens' counters show it)."""
    disks = {slot: world.snapshot(slot) for slot in slots}
    for _ in range(wrong):
        assert client.recover(b"wrong") is None
    for slot in slots:  # one after the other: each catches up before the next goes
        world.restart_rolled_back(slot, disks[slot])
        world.settle(30)
        assert world.members[slot].replica.ready  # type: ignore[union-attr]
        assert world.honest[slot].rows[client.key].count == 0


def test_three_of_five_rolled_back_recover_on_reports_and_the_limit_stays_l(
    world: Simulation, client: ThresholdClient
) -> None:
    """Today's lockout: with three nodes distrusting their counts, only two evaluate and
    the owner never succeeds. With t reports each, they count the whole window and serve."""
    _roll_back(world, client, (0, 1, 2), wrong=2)
    with pytest.raises(threshold.NotEnoughPartials):
        client.recover(b"right")  # attempt 3: nodes 0-2 refuse, 2 partials
    for slot in (0, 1, 2):
        assert _deliver(world, slot) == 3  # settled at t; the 4th comes too late
        row = world.honest[slot].rows[client.key]
        # Attempts 1-3 are assumed evaluated: 2 wrong guesses and the failed attempt.
        assert [e.attempt for e in row.evaluated] == [1, 2, 3]
        assert all(e.blinded_hash == UNKNOWN_B for e in row.evaluated)
    assert client.recover(b"right") is not None  # attempt 4: every node evaluates
    assert [world.honest[s].rows[client.key].count for s in range(5)] == [0] * 5
    # With every node honest the limit is exactly L again: L wrong outputs, then gone.
    outputs = world.observer.outputs
    wrong = 0
    for _ in range(L + 2):
        try:
            if client.recover(b"wrong") is None:
                wrong += 1
        except (threshold.NotEnoughPartials, AuthenticationFailed):
            break
    assert wrong == L and world.observer.outputs - outputs == L


def test_fewer_than_t_reports_keep_the_node_refusing(
    world: Simulation, client: ThresholdClient
) -> None:
    _roll_back(world, client, (0,), wrong=1)
    refused = _ask(world, client, 0)
    assert _code(refused) == ErrorCode.FLEET_UNAVAILABLE
    # What the user and the operator read says both ways out, not only the owner's success
    # (which needs t other nodes to evaluate: with one of them down too, none comes).
    assert isinstance(refused, ErrorResponse)
    assert "peers have reported" in refused.detail and "successful recovery" in refused.detail
    assert _deliver(world, 0, reporters=(1, 2)) == 2  # taken, but only 2 of t = 3
    assert world.honest[0].rows[client.key].count == 0
    assert _code(_ask(world, client, 0)) == ErrorCode.FLEET_UNAVAILABLE
    assert _deliver(world, 0, reporters=(3,)) == 1  # the same nonce: now 3 peers
    assert world.honest[0].rows[client.key].count == 3  # attempts 1-3 (1 wrong, 2 asked)
    # Every attempt up to the highest reported is refused; the next is served.
    answer = _ask(world, client, 0)
    assert isinstance(answer, EvaluateResponse) and answer.guesses_remaining == 0


def test_a_hostile_peer_reporting_a_huge_attempt_stalls_but_never_erases(
    world: Simulation, client: ThresholdClient
) -> None:
    _roll_back(world, client, (0,), wrong=1)
    assert _code(_ask(world, client, 0)) == ErrorCode.FLEET_UNAVAILABLE
    (request,) = _keeper(world, 0).take_report_requests()
    honest = [_report(world, peer, 0, request) for peer in (1, 2)]
    huge = dataclasses.replace(honest[0], reporter=5, attempt=10**9)
    huge = _signed(huge, 4)
    for peer, report in ((1, honest[0]), (2, honest[1]), (4, huge)):
        assert _take(world, 0, peer, report) is not None
    row = world.honest[0].rows[client.key]
    assert row.share and row.count == 0  # a count above L: still distrusted, kept
    assert _code(_ask(world, client, 0)) == ErrorCode.FLEET_UNAVAILABLE
    assert world.honest[0].rows[client.key].share
    # The owner's success through the other four makes node 0 whole again.
    assert client.recover(b"right") is not None
    assert isinstance(_ask(world, client, 0), EvaluateResponse)


def test_a_report_at_exactly_l_stalls_the_node_but_never_erases(
    world: Simulation, client: ThresholdClient
) -> None:
    _roll_back(world, client, (0,), wrong=1)
    assert _code(_ask(world, client, 0)) == ErrorCode.FLEET_UNAVAILABLE
    (request,) = _keeper(world, 0).take_report_requests()
    at_limit = _signed(dataclasses.replace(_report(world, 4, 0, request), attempt=L), 4)
    for peer in (1, 2):
        assert _take(world, 0, peer, _report(world, peer, 0, request)) is not None
    assert _take(world, 0, 4, at_limit) is True
    assert world.honest[0].rows[client.key].count == L  # trusted, at L on reports
    # Attempts 3 and 4 are at or below the reported one; at attempt 5 the window is
    # used up and the fleet destroys the entry: node 0 keeps its share all the same.
    codes = [_code(_ask(world, client, 0)) for _ in range(3)]
    assert codes == [ErrorCode.STALE_ATTEMPT, ErrorCode.STALE_ATTEMPT, ErrorCode.DESTROYED]
    row = world.honest[0].rows[client.key]
    assert row.share and row.count == L  # not erased on a peer's word


def _signed(report: CountReport, slot: int, fleet_id: bytes | None = None) -> CountReport:
    message = count_report_message(fleet_id or FLEET_ID, report)
    return dataclasses.replace(report, signature=signing_key(slot).sign(message))


def test_forged_misdirected_and_stale_reports_are_refused(
    world: Simulation, client: ThresholdClient
) -> None:
    _roll_back(world, client, (0,), wrong=2)
    assert _code(_ask(world, client, 0)) == ErrorCode.FLEET_UNAVAILABLE
    (request,) = _keeper(world, 0).take_report_requests()
    good = _report(world, 1, 0, request)
    bad_signature = dataclasses.replace(good, signature=bytes(64))
    with pytest.raises(AuthenticationFailed):
        _take(world, 0, 1, bad_signature)
    with pytest.raises(AuthenticationFailed):  # node 1's report, sent by node 2
        _take(world, 0, 2, good)
    with pytest.raises(AuthenticationFailed):  # made for node 3, not node 0
        _take(world, 0, 1, _report(world, 1, 2, request))
    # Node 1 is not heard again on this request: its own report now goes unchecked.
    assert _take(world, 0, 1, good) is None
    with pytest.raises(AuthenticationFailed):  # signed for another fleet
        _take(world, 0, 3, _signed(_report(world, 3, 0, request), 3, fleet_id=b"another fleet"))
    other_entry = _signed(dataclasses.replace(good, entry="other"), 1)
    other_version = _signed(dataclasses.replace(good, version=2), 1)
    assert _take(world, 0, 1, other_entry) is None
    assert _take(world, 0, 1, other_version) is None
    # An old nonce: node 0 restarts rolled back again and asks anew.
    world.restart_rolled_back(0, dict(world.honest[0].rows))
    world.settle(30)
    assert _code(_ask(world, client, 0)) == ErrorCode.FLEET_UNAVAILABLE
    (fresh,) = _keeper(world, 0).take_report_requests()
    assert fresh.nonce != request.nonce
    for peer in (1, 2, 3):
        assert _take(world, 0, peer, _report(world, peer, 0, request)) is None
    assert world.honest[0].rows[client.key].count == 0  # none of them counted
    for peer in (1, 2, 3):
        assert _take(world, 0, peer, _report(world, peer, 0, fresh)) is not None
    assert world.honest[0].rows[client.key].count == 4
    # Settled: a late report to it is dropped too, unchecked.
    assert _take(world, 0, 4, _report(world, 4, 0, fresh)) is None


def test_status_after_a_rollback_shows_the_conservative_count(
    world: Simulation, client: ThresholdClient
) -> None:
    _roll_back(world, client, (0,), wrong=2)
    answer = world.request(0, Op.MANIFEST, ManifestRequest("alice", "chat"))
    assert isinstance(answer, ManifestResponse)
    assert answer.guesses_remaining == L - 2  # not L, the rolled-back row's figure
    # The status read asked for reports too; once taken, the row's own count answers.
    assert _deliver(world, 0) == 3
    answer = world.request(0, Op.MANIFEST, ManifestRequest("alice", "chat"))
    assert isinstance(answer, ManifestResponse) and answer.guesses_remaining == L - 2


def test_a_row_at_l_on_assumed_evaluations_refuses_without_erasing(
    world: Simulation, client: ThresholdClient
) -> None:
    """The evaluate path's own guard: a row whose count reaches L only with evaluations
    assumed on reports is never erased by the next request."""
    row = world.honest[0].rows[client.key]
    assumed = row.with_(evaluated=[Evaluation(100 + a, UNKNOWN_B) for a in range(L)])
    world.honest[0].rows[client.key] = assumed
    _keeper(world, 0).durable((ShareWrite(client.key, assumed),))
    answer = _ask(world, client, 0)
    assert _code(answer) == ErrorCode.FLEET_UNAVAILABLE
    assert world.honest[0].rows[client.key].share


def test_report_messages_check_every_length_and_index() -> None:
    request = CountReportRequest("alice", "chat", 1, bytes(32))
    assert CountReportRequest.from_bytes(request.to_bytes()) == request
    with pytest.raises(InvalidInput):
        CountReportRequest("alice", "chat", 1, bytes(31))
    report = CountReport("alice", "chat", 1, 2, 1, 5, 0, bytes(32), bytes(64))
    assert CountReport.from_bytes(report.to_bytes()) == report
    for bad in ({"reporter": 0}, {"requester": 256}, {"nonce": b""}, {"signature": bytes(63)}):
        with pytest.raises(InvalidInput):
            dataclasses.replace(report, **bad)


def test_the_worlds_nodes_settle_on_reports_by_themselves(
    world: Simulation, client: ThresholdClient
) -> None:
    """As the node's service does: a request that touches a distrusted row sends the
    report requests over the network, and the peers' reports come back and settle it,
    with nothing delivered by the test. The recovery's manifest read asks; whether the
    reports are in before its evaluate reaches a node is a race of the network's delays
    (a node that refused attempt 3 counts it once settled, as the test above shows), so
    the owner's first recovery may fail for want of partials. The next one succeeds, and
    every node's count is reset."""
    _roll_back(world, client, (0, 1, 2), wrong=2)
    world.count_reports = True
    try:
        recovered = client.recover(b"right")
    except threshold.NotEnoughPartials:
        # Settled by themselves: attempts 1-3 assumed evaluated on the three of them.
        assert [world.honest[s].rows[client.key].count for s in range(3)] == [3] * 3
        recovered = client.recover(b"right")
    assert recovered is not None
    assert [world.honest[s].rows[client.key].count for s in range(5)] == [0] * 5


class _CountingKey:
    """A peer's public key that counts the signature checks made with it."""

    def __init__(self, key: object) -> None:
        self.key = key
        self.checks = 0

    def verify(self, signature: bytes, message: bytes) -> None:
        self.checks += 1
        self.key.verify(signature, message)  # type: ignore[attr-defined]


def test_a_flood_of_reports_costs_at_most_one_signature_check_per_peer_and_request(
    world: Simulation, client: ThresholdClient
) -> None:
    """A hostile peer that knows the nonce (it was asked) sends its report again and
    again, with ever higher or forged contents, and reports to nothing: the node checks
    one signature of it per request, and the honest peers still settle the entry."""
    _roll_back(world, client, (0,), wrong=1)
    keeper = _keeper(world, 0)
    counting = {peer: _CountingKey(keeper._peer_keys[peer + 1]) for peer in range(1, 5)}
    for peer, key in counting.items():
        keeper._peer_keys[peer + 1] = key  # type: ignore[assignment]
    stray = CountReportRequest("alice", "other", 0, bytes(32))
    for _ in range(200):  # reports to no request of node 0's: never checked
        assert _take(world, 0, 4, _report(world, 4, 0, stray)) is None
    assert counting[4].checks == 0
    assert _code(_ask(world, client, 0)) == ErrorCode.FLEET_UNAVAILABLE
    (request,) = keeper.take_report_requests()
    forged = dataclasses.replace(_report(world, 4, 0, request), signature=bytes(64))
    with pytest.raises(AuthenticationFailed):
        _take(world, 0, 4, forged)
    for attempt in range(200):
        again = _signed(dataclasses.replace(forged, attempt=attempt), 4)
        assert _take(world, 0, 4, again) is None
    assert counting[4].checks == 1
    for peer in (1, 2, 3):
        assert _take(world, 0, peer, _report(world, peer, 0, request)) is not None
    assert [counting[p].checks for p in (1, 2, 3)] == [1, 1, 1]
    assert world.honest[0].rows[client.key].count == 2  # attempts 1 and 2, honest figures
