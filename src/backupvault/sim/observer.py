"""The global observer: ghost state the nodes cannot see, and the invariants over it.

The simulation reports every durable write, every change-function application, every
partial OPRF evaluation and every owner success as it happens; each report is checked at
once, so a violation stops the run at the step that caused it (docs/simulation.md lists
the checks).

"Chosen" is the Paxos notion: a value is chosen at ballot b once a majority of acceptors
has *accepted* (b, value) in answer to an Accept: copies made while catching up do not
count, and a node losing the record later (rollback, wipe) does not un-choose it.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from backupvault.errors import InvalidInput
from backupvault.fleet.messages import AcceptorRecord, Ballot, payload_of
from backupvault.hsm.shares import decode_threshold
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.protocol import EntryStatus

ZERO = Ballot(0, 0)


class InvariantViolation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


@lru_cache(maxsize=4096)
def _state(value: bytes) -> ThresholdState:
    """The entry state a payload holds (decoded once: the same values come back often)."""
    try:
        state = decode_threshold(value)
    except InvalidInput:
        state = None
    return state if state is not None else ThresholdState()


def describe(value: bytes) -> str:
    s = _state(value)
    status = {0: "empty", 1: "live", 2: "destroyed"}.get(s.status, str(s.status))
    return f"{status} v={s.version} attempt={s.attempt} reset={s.reset_attempt}"


@dataclass
class _Version:
    """What the observer saw of one manifest version (one OPRF key k) of an entry."""

    #: attempt -> SHA-256(B) evaluated for it by any honest node (one B per attempt).
    attempt_b: dict[int, bytes] = field(default_factory=dict)
    #: (node, attempt) -> SHA-256(B) that node evaluated for it.
    node_b: dict[tuple[int, int], bytes] = field(default_factory=dict)
    #: SHA-256(B) -> (attempt, honest nodes that gave a partial on it).
    partials: dict[bytes, tuple[int, set[int]]] = field(default_factory=dict)
    #: attempts whose B reached a combined output (enough partials).
    outputs: list[int] = field(default_factory=list)
    #: attempt numbers of committed owner resets and registrations: window boundaries.
    boundaries: set[int] = field(default_factory=set)
    #: SHA-256(B) of every blinded password the owner opened the entry with.
    successes: set[bytes] = field(default_factory=set)
    #: SHA-256(B) -> the attempt number committed for it (a B is charged once).
    charged: dict[bytes, int] = field(default_factory=dict)
    #: The attempt number the tombstone of this version carries, once committed.
    destroyed_at: int | None = None


@dataclass
class _Key:
    # ballot -> (value, nodes that genuinely accepted it)
    accepted: dict[Ballot, tuple[bytes, set[int]]] = field(default_factory=dict)
    chosen: list[Ballot] = field(default_factory=list)  # sorted
    chosen_value: dict[Ballot, bytes] = field(default_factory=dict)
    parents: dict[bytes, list[bytes]] = field(default_factory=dict)
    versions: dict[int, _Version] = field(default_factory=dict)
    #: node -> (version, attempt, SHA-256(B)) of every value it durably accepted itself.
    own: dict[int, set[tuple[int, int, bytes]]] = field(default_factory=dict)

    def version(self, number: int) -> _Version:
        return self.versions.setdefault(number, _Version())


class Observer:
    """`threshold` t, `guess_limit` L (per node), `hostile` c: with c = 0 every window
    between two owner successes has at most L combined outputs; with c hostile nodes (who
    give their partials for free) at most floor((N - c) * L / (t - c)) per window.
    Consensus is checked only with c = 0. `collect`: record violations in `violations`
    instead of raising (for a test that plants a mutant and looks at all it saw)."""

    def __init__(
        self,
        nodes: int,
        guess_limit: int,
        log: Callable[[str], None],
        hostile: int = 0,
        collect: bool = False,
    ) -> None:
        self.nodes = nodes
        self.quorum = nodes // 2 + 1
        self.threshold = nodes // 2 + 1
        self.guess_limit = guess_limit
        self.hostile = hostile
        self.bound = (
            guess_limit
            if hostile == 0
            else (nodes - hostile) * guess_limit // (self.threshold - hostile)
        )
        self._log = log
        self._keys: dict[bytes, _Key] = {}
        self.collect = collect
        #: Whether every owner signature comes from a client flow (a seeded run) rather
        #: than from a test that signs statements of its own.
        self.owner_ghost = True
        self.violations: list[InvariantViolation] = []
        self.partials = 0
        self.outputs = 0
        self.max_window = 0  # the most combined outputs seen in one window

    def violate(self, invariant: str, detail: str) -> None:
        violation = InvariantViolation(invariant, detail)
        if not self.collect:
            raise violation
        self.violations.append(violation)

    def key(self, key: bytes) -> _Key:
        return self._keys.setdefault(key, _Key())

    def keys(self) -> list[bytes]:
        return list(self._keys)

    # ---- lineage -------------------------------------------------------------------------

    def on_apply(self, key: bytes, parent: bytes, child: bytes) -> None:
        """A change function turned `parent` into `child` (at some proposer)."""
        k = self.key(key)
        if child != parent:
            parents = k.parents.setdefault(child, [])
            if parent not in parents:
                parents.append(parent)

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

    def on_persist(self, node: int, record: AcceptorRecord, kind: str) -> None:
        """`node` made `record` durable; `kind` is the replica's reason (replica.Persist).
        Only a write answering an Accept makes the node one of the value's acceptors: a
        copy made while catching up does not, and neither does a promise that carries an
        earlier acceptance along. Each (node, ballot) counts once, however often the same
        Accept arrives, and whether or not a copy of the same ballot came first."""
        if kind == "accept":
            self.on_accept(node, record)

    def on_accept(self, node: int, record: AcceptorRecord) -> None:
        """`node` durably accepted (ballot, value) in answer to an Accept."""
        ballot = record.accepted
        if ballot == ZERO:
            return
        k = self.key(record.key)
        # Lineage is tracked on what the change functions see: the entry state itself,
        # without the replica's record of recently applied op ids around it.
        mine = payload_of(record.value)
        state = _state(mine)
        if state.attempt_hash:
            k.own.setdefault(node, set()).add((state.version, state.attempt, state.attempt_hash))
        if self.hostile:
            # Hostile acceptors accept anything and report anything: consensus holds no
            # longer, and nothing security-relevant rests on it (docs/threshold.md). What
            # is checked is what each honest node checks itself.
            return
        value, nodes = k.accepted.setdefault(ballot, (mine, set()))
        if value != mine:
            self.violate(
                "one-value-per-ballot",
                f"ballot {ballot.round}.{ballot.node} carries two values: "
                f"{describe(value)} and {describe(mine)}",
            )
            return
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
            self.violate(
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
                self.violate(
                    "committed-state-never-goes-back",
                    f"value accepted at {other.round}.{other.node} [{describe(accepted)}] "
                    f"does not build on the one now committed at {ballot.round}.{ballot.node} "
                    f"[{describe(value)}]",
                )
        cur = _state(value)
        i = k.chosen.index(ballot)
        if i > 0:
            self._check_step(k, _state(k.chosen_value[k.chosen[i - 1]]), cur)
        version = k.version(cur.version)
        if cur.status == EntryStatus.DESTROYED and version.destroyed_at is None:
            version.destroyed_at = cur.attempt
        if cur.status == EntryStatus.LIVE:
            if cur.attempts_used > self.guess_limit:
                self.violate(
                    "at-most-L-evaluations", f"a committed value counts [{describe(value)}]"
                )
            version.boundaries.add(cur.reset_attempt)
            if cur.attempt_hash and cur.attempt > cur.reset_attempt:
                charged = version.charged.setdefault(cur.attempt_hash, cur.attempt)
                if charged != cur.attempt:
                    # A resent or replayed request is answered again or refused, never
                    # charged again (invariants 1 and 10).
                    self.violate(
                        "replays-change-nothing",
                        f"one B charged as attempts {charged} and {cur.attempt} "
                        f"[{describe(value)}]",
                    )

    def _check_step(self, k: _Key, prev: ThresholdState, cur: ThresholdState) -> None:
        where = f"[{describe(prev.to_bytes())}] -> [{describe(cur.to_bytes())}]"
        if cur.version < prev.version or cur.attempt < prev.attempt:
            self.violate("committed-state-never-goes-back", where)
        if cur.version == prev.version:
            if cur.reset_attempt < prev.reset_attempt:
                self.violate("committed-state-never-goes-back", where)
            if prev.manifest and cur.manifest and cur.manifest != prev.manifest:
                self.violate("committed-state-never-goes-back", f"manifest replaced {where}")
            # A destroyed key never comes back: only a new registration (a new version,
            # a new k) makes the entry live again.
            if prev.status == EntryStatus.DESTROYED and cur.status != EntryStatus.DESTROYED:
                self.violate("destroyed-stays-destroyed", where)
            # A reset takes effect only for the attempt it names, with that attempt's B
            # (the owner signed (version, attempt, H(B))); in a seeded run, only for a B the
            # owner did open the entry with.
            if cur.reset_attempt > prev.reset_attempt and cur.reset_signature:
                version = k.version(cur.version)
                charged = version.charged.get(cur.reset_hash)
                if (charged is not None and charged != cur.reset_attempt) or (
                    self.owner_ghost and cur.reset_hash not in version.successes
                ):
                    self.violate(
                        "success-resets-only-its-attempt",
                        f"a reset for attempt {cur.reset_attempt} the owner did not open {where}",
                    )

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

    def on_partial(
        self, node: int, key: bytes, state: ThresholdState, blinded: bytes, attempt: int
    ) -> None:
        """Honest `node` gave its partial evaluation on `blinded` for `attempt` of the
        value `state` (the value its evaluation rests on)."""
        k = self.key(key)
        version = k.version(state.version)
        blinded_hash = hashlib.sha256(blinded).digest()
        what = f"node{node}'s partial for attempt {attempt} of [{describe(state.to_bytes())}]"
        self.partials += 1
        # A B the node counted is answered again under that number, also once a hostile
        # proposer renumbered it (the value one number on, the same B): no new count.
        again = version.node_b.get((node, attempt)) == blinded_hash
        if state.status != EntryStatus.LIVE or (attempt != state.attempt and not again):
            self.violate("at-most-L-evaluations", f"{what}: not a live, counted attempt")
        if state.attempt_hash != blinded_hash:
            self.violate("at-most-L-evaluations", f"{what}: a B other than the one paid for")
        if not self.hostile and self.committed_in(key, state.to_bytes()) is None:
            self.violate("evaluate-only-after-commit", f"{what}: its attempt is not committed")
        if (state.version, attempt, blinded_hash) not in k.own.get(node, set()):
            self.violate(
                "evaluate-only-after-own-acceptance",
                f"{what}: this node never accepted that attempt itself",
            )
        if version.node_b.setdefault((node, attempt), blinded_hash) != blinded_hash:
            self.violate("one-b-per-attempt", f"{what}: this node answered it for another B")
        seen = version.attempt_b.setdefault(attempt, blinded_hash)
        if seen != blinded_hash and self.hostile == 0:
            self.violate("one-b-per-attempt", f"{what}: attempt {attempt} evaluated for two B")
        first_attempt, nodes = version.partials.setdefault(blinded_hash, (attempt, set()))
        if node in nodes:
            return  # a resend answered again: nothing new
        if version.destroyed_at is not None and attempt > version.destroyed_at:
            # A late partial for an attempt counted before the tombstone is one of the L;
            # nothing after it is.
            self.violate("destroyed-gets-no-evaluation", what)
        nodes.add(node)
        if len(nodes) == self.threshold - self.hostile:
            self._on_output(key, version, first_attempt, what)

    def _on_output(self, key: bytes, version: _Version, attempt: int, what: str) -> None:
        """A combined output k·B exists (or, with hostile nodes, can be made)."""
        self.outputs += 1
        version.outputs.append(attempt)
        if self.hostile == 0:
            # Windows between committed resets (and registrations) of this version.
            below = max((b for b in version.boundaries if b < attempt), default=0)
            above = min((b for b in version.boundaries if b >= attempt), default=1 << 64)
            window = sum(1 for a in version.outputs if below < a <= above)
        else:
            # Hostile acceptors make windows meaningless; each owner success opens one.
            window = len(version.outputs) - self.bound * len(version.successes)
        self.max_window = max(self.max_window, window)
        if window > self.bound:
            self.violate(
                "at-most-L-evaluations",
                f"{what}: {window} combined outputs in one window (bound {self.bound})",
            )

    def on_success(self, key: bytes, version: int, blinded_hash: bytes) -> None:
        """The owner opened version `version` with the blinded password of that hash."""
        self.key(key).version(version).successes.add(blinded_hash)


def _short(key: bytes) -> str:
    try:
        entry = EntryId.from_bytes(key)
    except InvalidInput:
        return key.hex()[:12]
    return f"{entry.account}/{entry.entry}"
