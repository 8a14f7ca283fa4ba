"""Known protocol bugs, planted into the real code by monkeypatching, to prove the
simulation catches each one."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from backupvault.codec import Message
from backupvault.crypto import opaque
from backupvault.fleet.messages import Accept, Accepted, AcceptorRecord, Ballot, Prepare
from backupvault.fleet.replica import Effect, Replica
from backupvault.hsm.firmware import Update, VaultFirmware, _destroyed
from backupvault.hsm.state import EntryId, EntryState
from backupvault.protocol import (
    EntryStatus,
    ErrorResponse,
    RecoverFinishRequest,
    RecoverStartRequest,
)

Reply = Callable[[], Message]


def evaluate_before_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """(a) The OPRF is evaluated while the increment is only proposed, not committed."""

    def recover_start(self: VaultFirmware, request: RecoverStartRequest, now: float) -> Update:
        ke1 = opaque.KE1.from_bytes(request.ke1)

        def apply(state: EntryState) -> tuple[EntryState, Reply]:
            if state.status != EntryStatus.LIVE or state.attempts_used >= state.guess_limit:
                return state, lambda: ErrorResponse("not_registered", "", 0)
            counted = state.changed(
                attempts_used=state.attempts_used + 1, attempt_seq=state.attempt_seq + 1
            )
            response = self._evaluate(request.account, request.entry, ke1, counted, now)
            return counted, lambda: response

        return Update(EntryId.of(request.account, request.entry).to_bytes(), apply)

    monkeypatch.setattr(VaultFirmware, "_recover_start", recover_start)


def accept_stale_ke3(monkeypatch: pytest.MonkeyPatch) -> None:
    """(b) recover-finish without the attempt_seq / success_seq check."""

    def recover_finish(self: VaultFirmware, request: RecoverFinishRequest, now: float) -> Update:
        from backupvault.hsm.tickets import RecoveryTicket

        ticket = self._tickets.open(RecoveryTicket, request.recovery_ticket, now)
        ke3 = opaque.KE3.from_bytes(request.ke3)
        verified = ke3.client_mac == ticket.expected_client_mac

        def apply(state: EntryState) -> tuple[EntryState, Reply]:
            if state.status != EntryStatus.LIVE:
                return state, _destroyed
            if not verified:
                return state, lambda: ErrorResponse("wrong_password", "", 0)
            released = state.changed(attempts_used=0, success_seq=ticket.attempt_seq)
            return released, lambda: self._release(request, ticket, released, now)

        return Update(EntryId.of(request.account, request.entry).to_bytes(), apply)

    monkeypatch.setattr(VaultFirmware, "_recover_finish", recover_finish)


def skip_catch_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """(c) A restarted (maybe rolled-back) node votes at once, without catching up."""
    monkeypatch.setattr(Replica, "_sync_complete", lambda self, now: True)


def accept_lower_ballot(monkeypatch: pytest.MonkeyPatch) -> None:
    """(d) The acceptor takes an Accept below its promise."""
    original = Replica._acceptor

    def acceptor(self: Replica, message: Prepare | Accept) -> tuple[list[Effect], Any]:
        if not isinstance(message, Accept):
            return original(self, message)
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


BUGS = {
    "evaluate-before-commit": evaluate_before_commit,
    "accept-stale-ke3": accept_stale_ke3,
    "skip-catch-up": skip_catch_up,
    "accept-lower-ballot": accept_lower_ballot,
    "leader-skips-base-check": leader_skips_base_check,
}
