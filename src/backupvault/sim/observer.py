"""The global observer: ghost state the nodes cannot see, and the invariants over it.

The simulation reports every durable write, every change-function application, every OPRF
evaluation and every key release as it happens; each report is checked at once, so a
violation stops the run at the step that caused it (docs/simulation.md lists the checks).

"Chosen" is the Paxos notion: a value is chosen at ballot b once a majority of acceptors
has *accepted* (b, value) in answer to an Accept: copies made while catching up do not
count, and a node losing the record later (rollback, wipe) does not un-choose it.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from backupvault.errors import InvalidInput
from backupvault.fleet.messages import AcceptorRecord, Ballot, payload_of
from backupvault.hsm.state import EntryId, EntryState
from backupvault.protocol import EntryStatus

ZERO = Ballot(0, 0)


class InvariantViolation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


def _state(value: bytes) -> EntryState:
    return EntryState.from_bytes(value) if value else EntryState()


def describe(value: bytes) -> str:
    s = _state(value)
    status = {0: "empty", 1: "live", 2: "destroyed"}.get(s.status, str(s.status))
    return (
        f"{status} gen={s.generation} used={s.attempts_used}/{s.guess_limit} "
        f"seq={s.attempt_seq} ok_seq={s.success_seq} v={s.version}"
    )


@dataclass
class _Key:
    # ballot -> (value, nodes that genuinely accepted it)
    accepted: dict[Ballot, tuple[bytes, set[int]]] = field(default_factory=dict)
    chosen: list[Ballot] = field(default_factory=list)  # sorted
    chosen_value: dict[Ballot, bytes] = field(default_factory=dict)
    parents: dict[bytes, list[bytes]] = field(default_factory=dict)
    bad: dict[bytes, str] = field(default_factory=dict)  # values made by an invalid change
    #: attempt_seq -> the hash of the KE1 evaluated for it (one KE1 per attempt).
    evaluated_ke1: dict[int, bytes] = field(default_factory=dict)
    epoch_evals: dict[tuple[int, int], int] = field(default_factory=dict)
    evaluations: int = 0


class Observer:
    def __init__(self, quorum: int, log: Callable[[str], None]) -> None:
        self.quorum = quorum
        self._log = log
        self._keys: dict[bytes, _Key] = {}
        # recovery ticket -> (key, generation, attempt) of the evaluation that made it
        self.ticket_seq: dict[bytes, tuple[bytes, int, int]] = {}
        self.released: set[bytes] = set()
        self.evaluations = 0
        self.releases = 0

    def key(self, key: bytes) -> _Key:
        return self._keys.setdefault(key, _Key())

    def keys(self) -> list[bytes]:
        return list(self._keys)

    # ---- lineage -------------------------------------------------------------------------

    def on_apply(self, key: bytes, parent: bytes, child: bytes, bad: str = "") -> None:
        """A change function turned `parent` into `child` (at some proposer)."""
        k = self.key(key)
        if child != parent:
            parents = k.parents.setdefault(child, [])
            if parent not in parents:
                parents.append(parent)
        if bad:
            k.bad.setdefault(child, bad)

    def descends(self, key: bytes, child: bytes, ancestor: bytes) -> bool:
        """Whether `child` was derived from `ancestor` by zero or more changes."""
        if child == ancestor or ancestor == b"":
            return True
        k = self.key(key)
        seen = {child}
        todo = [child]
        while todo:
            for parent in k.parents.get(todo.pop(), []):
                if parent == ancestor:
                    return True
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return False

    # ---- acceptor writes -----------------------------------------------------------------

    def on_accept(self, node: int, record: AcceptorRecord) -> None:
        """`node` durably accepted (ballot, value) in answer to an Accept."""
        ballot = record.accepted
        if ballot == ZERO:
            return
        k = self.key(record.key)
        # Lineage is tracked on what the change functions see: the entry state itself,
        # without the replica's record of recently applied op ids around it.
        mine = payload_of(record.value)
        value, nodes = k.accepted.setdefault(ballot, (mine, set()))
        if value != mine:
            raise InvariantViolation(
                "one-value-per-ballot",
                f"ballot {ballot.round}.{ballot.node} carries two values: "
                f"{describe(value)} and {describe(mine)}",
            )
        self._check_above_chosen(record.key, ballot, value, f"node{node} accepted")
        if node in nodes:
            return
        nodes.add(node)
        if len(nodes) == self.quorum:
            self._on_chosen(record.key, ballot, value)

    def _check_above_chosen(self, key: bytes, ballot: Ballot, value: bytes, who: str) -> None:
        """Paxos P2c: a value accepted at b descends from the value chosen below b."""
        k = self.key(key)
        i = bisect.bisect_left(k.chosen, ballot)
        if i == 0:
            return
        below = k.chosen[i - 1]
        base = k.chosen_value[below]
        if not self.descends(key, value, base):
            raise InvariantViolation(
                "committed-state-never-goes-back",
                f"{who} at ballot {ballot.round}.{ballot.node} the value [{describe(value)}], "
                f"which does not build on the value committed at "
                f"{below.round}.{below.node} [{describe(base)}]",
            )

    def _on_chosen(self, key: bytes, ballot: Ballot, value: bytes) -> None:
        k = self.key(key)
        self._log(f"commit  {_short(key)} @{ballot.round}.{ballot.node}: {describe(value)}")
        self._check_above_chosen(key, ballot, value, "a majority committed")
        bisect.insort(k.chosen, ballot)
        k.chosen_value[ballot] = value
        # Values already accepted above this ballot must build on it too.
        for other, (accepted, _) in k.accepted.items():
            if other > ballot and not self.descends(key, accepted, value):
                raise InvariantViolation(
                    "committed-state-never-goes-back",
                    f"value accepted at {other.round}.{other.node} [{describe(accepted)}] "
                    f"does not build on the one now committed at {ballot.round}.{ballot.node} "
                    f"[{describe(value)}]",
                )
        i = k.chosen.index(ballot)
        if i > 0:
            prev = _state(k.chosen_value[k.chosen[i - 1]])
            cur = _state(value)
            self._check_step(prev, cur)
        if value in k.bad:
            invariant, _, detail = k.bad[value].partition(": ")
            raise InvariantViolation(invariant, detail)

    def _check_step(self, prev: EntryState, cur: EntryState) -> None:
        where = f"[{describe(prev.to_bytes())}] -> [{describe(cur.to_bytes())}]"
        if cur.version < prev.version or (cur.version == prev.version and cur != prev):
            raise InvariantViolation("committed-state-never-goes-back", where)
        if cur.generation < prev.generation or cur.attempt_seq < prev.attempt_seq:
            raise InvariantViolation("committed-state-never-goes-back", where)
        # A destroyed key never comes back: the entry stays destroyed, or its owner clears
        # it (delete: empty, secrets still gone) so a new key may be registered later.
        cleared = cur.status == EntryStatus.EMPTY and not (cur.record or cur.wrapped_root_key)
        if (
            prev.status == EntryStatus.DESTROYED
            and cur.generation == prev.generation
            and cur.status != EntryStatus.DESTROYED
            and not cleared
        ):
            raise InvariantViolation("destroyed-stays-destroyed", where)

    def is_chosen(self, key: bytes, value: bytes) -> Ballot | None:
        k = self.key(key)
        for ballot in k.chosen:
            if k.chosen_value[ballot] == value:
                return ballot
        return None

    def committed_in(self, key: bytes, value: bytes) -> Ballot | None:
        """The first ballot whose chosen value is `value` or builds on it: a change is
        committed once a value carrying it is chosen, even if a later change was folded in
        before the majority formed (a retried proposal finds its change already applied)."""
        k = self.key(key)
        for ballot in k.chosen:
            if self.descends(key, k.chosen_value[ballot], value):
                return ballot
        return None

    def latest(self, key: bytes) -> bytes:
        k = self.key(key)
        return k.chosen_value[k.chosen[-1]] if k.chosen else b""

    # ---- outcomes ------------------------------------------------------------------------

    def on_evaluate(
        self, node: int, key: bytes, state: EntryState, ticket: bytes, ke1: bytes
    ) -> int:
        """An OPRF evaluation (a KE2) was made for `state` and `ke1`. Returns its number, or
        0 for one that is not new: a fake record's (no entry), or the same KE1 answered
        again for the same attempt (a resend reveals nothing new, invariant 1)."""
        k = self.key(key)
        value = state.to_bytes()
        if state.status == EntryStatus.EMPTY:
            return 0
        if hashlib.sha256(ke1).digest() != state.attempt_ke1_hash:
            raise InvariantViolation(
                "at-most-L-evaluations", f"a KE1 other than the one paid for, [{describe(value)}]"
            )
        seen = k.evaluated_ke1.get(state.attempt_seq)
        if seen is not None:
            if seen != state.attempt_ke1_hash:
                raise InvariantViolation(
                    "at-most-L-evaluations",
                    f"attempt {state.attempt_seq} evaluated for two KE1s [{describe(value)}]",
                )
            self.ticket_seq[ticket] = (key, state.generation, state.attempt_seq)
            return 0
        self.evaluations += 1
        k.evaluations += 1
        what = f"KE2 #{k.evaluations} at node{node} for [{describe(value)}]"
        if state.status != EntryStatus.LIVE or state.attempts_used > state.guess_limit:
            raise InvariantViolation("at-most-L-evaluations", f"{what}: not a live, counted state")
        ballot = self.committed_in(key, value)
        if ballot is None:
            raise InvariantViolation(
                "evaluate-only-after-commit", f"{what}: the guess paying for it is not committed"
            )
        for other in k.chosen:
            before = _state(k.chosen_value[other])
            if (
                other < ballot
                and before.status == EntryStatus.DESTROYED
                and before.generation == state.generation
            ):
                raise InvariantViolation("destroyed-gets-no-evaluation", what)
        k.evaluated_ke1[state.attempt_seq] = state.attempt_ke1_hash
        epoch = (state.generation, state.success_seq)
        k.epoch_evals[epoch] = k.epoch_evals.get(epoch, 0) + 1
        if k.epoch_evals[epoch] > state.guess_limit:
            raise InvariantViolation(
                "at-most-L-evaluations",
                f"{what}: {k.epoch_evals[epoch]} evaluations since the last success "
                f"(limit {state.guess_limit})",
            )
        self.ticket_seq[ticket] = (key, state.generation, state.attempt_seq)
        return k.evaluations

    def check_finish(self, key: bytes, ticket: bytes, parent: bytes, child: bytes) -> str:
        """A recover-finish change turned `parent` into `child`: if it reset the counter,
        it must answer the latest attempt, not yet used. Returns "" or what is wrong."""
        before, after = _state(parent), _state(child)
        reset = after.success_seq != before.success_seq or (
            after.status == EntryStatus.LIVE and after.attempts_used < before.attempts_used
        )
        if not reset:
            return ""
        _, generation, seq = self.ticket_seq.get(ticket, (key, -1, -1))
        if (
            seq != before.attempt_seq
            or generation != before.generation
            or before.success_seq >= seq
            or after.success_seq != seq
        ):
            return (
                f"success-resets-only-its-attempt: a KE3 for attempt {seq} of registration "
                f"{generation} reset [{describe(parent)}] to [{describe(child)}]"
            )
        return ""

    def on_release(self, node: int, key: bytes, ticket: bytes, value: bytes) -> None:
        self.releases += 1
        if ticket in self.released:
            raise InvariantViolation(
                "replays-change-nothing", f"node{node} released the key twice for one KE3"
            )
        self.released.add(ticket)
        if self.committed_in(key, value) is None:
            raise InvariantViolation(
                "evaluate-only-after-commit",
                f"node{node} released a key before the reset committed",
            )


def _short(key: bytes) -> str:
    try:
        entry = EntryId.from_bytes(key)
    except InvalidInput:
        return key.hex()[:12]
    return f"{entry.account}/{entry.entry}"
