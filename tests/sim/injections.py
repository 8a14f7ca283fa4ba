"""Known protocol bugs, planted into the real code by monkeypatching, to prove the
simulation catches each one."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from backupvault.fleet.messages import Accept, Accepted, AcceptorRecord, Ballot, Prepare
from backupvault.fleet.replica import Effect, Replica
from backupvault.hsm.shares import Answer, ShareKeeper, ThresholdUpdate
from backupvault.hsm.state import ThresholdState
from backupvault.protocol import EvaluateRequest


def evaluate_before_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """(a) The partial is evaluated while the attempt is only proposed, not committed, and
    on the proposer's word alone (no acceptance of its own)."""
    original = ShareKeeper._evaluate

    def evaluate(self: ShareKeeper, request: EvaluateRequest) -> ThresholdUpdate:
        update = original(self, request)

        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            new, build = update.apply(state)
            if new.attempt != state.attempt:
                self.on_accept(update.key, new.to_bytes())  # as if accepted already
                answer = build()
                return new, lambda: answer
            return new, build

        return ThresholdUpdate(update.key, apply)

    monkeypatch.setattr(ShareKeeper, "_evaluate", evaluate)


def replayed_evaluate_charged(monkeypatch: pytest.MonkeyPatch) -> None:
    """(b) The client's clock is not checked: a replayed evaluate (an older request the
    relay kept) is charged as a new attempt for a B already paid for."""
    original = ShareKeeper._evaluate

    def evaluate(self: ShareKeeper, request: EvaluateRequest) -> ThresholdUpdate:
        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            later = max(request.client_time_ms, state.attempt_client_time_ms + 1)
            return original(self, dataclasses.replace(request, client_time_ms=later)).apply(state)

        return ThresholdUpdate(original(self, request).key, apply)

    monkeypatch.setattr(ShareKeeper, "_evaluate", evaluate)


def skip_catch_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """(c) A restarted (maybe rolled-back) node votes at once, without catching up."""
    monkeypatch.setattr(Replica, "_sync_complete", lambda self: True)


def accept_lower_ballot(monkeypatch: pytest.MonkeyPatch) -> None:
    """(d) The acceptor takes an Accept below its promise."""
    original = Replica._acceptor

    def acceptor(self: Replica, sender: int, message: Prepare | Accept) -> tuple[list[Effect], Any]:
        if not isinstance(message, Accept):
            return original(self, sender, message)
        record = self._record(message.key)
        ballot = Ballot(message.round, message.node)
        promised = max(record.promised, ballot)
        new = AcceptorRecord(
            record.key, promised.round, promised.node, ballot.round, ballot.node, message.value
        )
        reply = Accepted(
            message.op_id,
            message.key,
            message.round,
            message.node,
            True,
            *promised.__dict__.values(),
            hashlib.sha256(message.value).digest(),
        )
        return [self._store(new, "accept")], reply

    monkeypatch.setattr(Replica, "_acceptor", acceptor)


def leader_skips_base_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """(e) The leader sends a forwarded value at its held ballot without checking that it
    was built on the newest value its promises reported."""
    original = Replica._lead_next

    def lead_next(self: Replica, lead: Any, now: float) -> list[Effect]:
        for i, (origin, forward) in enumerate(lead.queue):
            lead.queue[i] = (
                origin,
                replace(forward, base_round=lead.base.round, base_node=lead.base.node),
            )
        return original(self, lead, now)

    monkeypatch.setattr(Replica, "_lead_next", lead_next)


def wait_outlasts_the_leader(monkeypatch: pytest.MonkeyPatch) -> None:
    """(f) A follower's copy that waits for the leader's round never goes on by itself:
    only the leader's round or the copy's deadline ends the wait (session 53's planted
    wait). With the leader down, a recovery's attempt then fails at the copy's deadline
    where it should have been forwarded, and the client's resends carry it past the
    deadline of an operation the fleet could serve."""
    original = Replica.tick

    def tick(self: Replica, now: float) -> list[Effect]:
        waiting = {op_id: p.retry_at for op_id, p in self._by_op.items() if p.phase == "wait"}
        for op_id in waiting:
            self._by_op[op_id].retry_at = math.inf
        effects = original(self, now)
        for op_id, retry_at in waiting.items():
            proposal = self._by_op.get(op_id)
            if proposal is not None and proposal.phase == "wait":
                proposal.retry_at = retry_at
        return effects

    monkeypatch.setattr(Replica, "tick", tick)


BUGS = {
    "evaluate-before-commit": evaluate_before_commit,
    "replayed-evaluate-charged": replayed_evaluate_charged,
    "skip-catch-up": skip_catch_up,
    "accept-lower-ballot": accept_lower_ballot,
    "leader-skips-base-check": leader_skips_base_check,
    "wait-outlasts-the-leader": wait_outlasts_the_leader,
}
