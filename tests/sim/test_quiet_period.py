"""The liveness rule at the end of a run: a client still working through its queue when
the quiet period ends is given the time its operations take, one stuck in an operation is
reported (docs/simulation.md, "Invariants checked", `liveness`)."""

from __future__ import annotations

import pytest

from backupvault.protocol import ManifestRequest, Op
from backupvault.sim import clients
from backupvault.sim.clients import Call, Flow, FlowContext
from backupvault.sim.shrink import report
from backupvault.sim.world import OP_DEADLINE, Plan, SimConfig, Simulation, Step, _Node

HOSTILE = SimConfig(nodes=5, hostile=1)


def _plan(ops: list[str], at: float) -> Plan:
    steps = [Step(0.1, "op", client=0, arg="register")]
    steps += [Step(at, "op", client=0, arg=name) for name in ops]
    return Plan(1, 5, 1, 1, 4, 0.0, 0.0, 0.0, tuple(steps))


def test_a_long_queue_beside_a_silent_hostile_node_drains_after_the_quiet_period() -> None:
    # Seeds 10347067, 10347194, 10342295: beside the silent hostile node every phase of a
    # password change waits out the SDK's resends (about 10 s a change), so nine changes
    # queued at the heal outlast the 60 s of quiet. Each completes: the fleet is live.
    changes = ["change_password"] * 9
    world = Simulation(_plan(changes, 24.0), HOSTILE)
    result = world.run()
    assert result.violation is None, report(result)
    done = world.clients[0].done
    assert len(done) == 10 and all(d.endswith("registered (degraded)") for d in done[1:]), done
    assert result.at > HOSTILE.chaos_seconds + HOSTILE.quiet_seconds  # it needed the time


def test_a_client_stuck_in_one_operation_is_still_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A flow that resends for ever (as a retry rule without a bound would): its operation
    # never ends, and the run must say so instead of running on after the quiet period.
    run_op = clients.run_op

    def resends_for_ever(ctx: FlowContext, name: str) -> Flow:
        if name != "status":
            return (yield from run_op(ctx, name))
        while True:
            yield Call(Op.MANIFEST, (ManifestRequest(ctx.account, ctx.entry),) * 5, resend=True)

    monkeypatch.setattr(clients, "run_op", resends_for_ever)
    result = Simulation(_plan(["status"], 24.0), HOSTILE).run()
    assert result.violation is not None and result.violation.invariant == "liveness"
    assert "still busy with status" in result.violation.detail
    assert result.at < HOSTILE.chaos_seconds + OP_DEADLINE + HOSTILE.quiet_seconds


def test_a_node_not_caught_up_when_the_quiet_period_ends_is_reported_though_clients_run_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The clients' extra time is theirs: a node that catches up only after the quiet
    # period would have been reported without the busy client, and still is.
    late = HOSTILE.chaos_seconds + HOSTILE.quiet_seconds + 5.0
    world = Simulation(_plan(["change_password"] * 9, 24.0), HOSTILE)
    ready = _Node.ready.fget
    assert ready is not None

    def slow_node_two(n: _Node) -> bool:
        return bool(ready(n)) and (n.index != 2 or world.now < 24.0 or world.now > late)

    monkeypatch.setattr(_Node, "ready", property(slow_node_two))
    result = world.run()
    assert result.violation is not None, report(result)
    assert result.violation.detail == "node2 never caught up after the heal"
    assert result.at > late  # the run went on for the clients, past node 2's catch-up
