"""One node's share of the fleet: a sans-IO CASPaxos replica (docs/fleet.md).

Every entry is its own compare-and-set register. A change to an entry is a function from
the current value to the next; the proposing node runs two phases against a majority:

  1. Prepare(ballot) → Promise(accepted ballot, value) from a majority;
  2. apply the change to the value with the highest ballot, Accept(ballot, new value)
     → Accepted from a majority. Only then is the change committed and reported.

The stable-leader path makes a change one Accept round: the node that took the request
applies its change to the newest value it knows and forwards the result to the leader
(`Forward`); the leader, holding a majority's promise for the entry (from its last Accept,
which promised the next ballot in the same write, or from one Prepare), sends the Accept
at once if the value was built on the newest one, and hands back the newest one if not.
The acceptors answer the leader and the asking node, which commits on a majority of
answers naming its own value, as on the leaderless path. Leaderless rounds remain the
fallback when the leader is slow, gone or refuses.

The replica does no I/O. It takes messages, clock readings and random bytes, and returns
effects the shell carries out *in order*: `Persist` must be durable before any later
`Send` or `Committed` in the same list leaves the node. A restarted node trusts nothing
it holds (its disk may have been rolled back) and takes no part until it has caught up
from enough peers (see `_sync_complete`).

Records live in a `RecordSource` (fleet/records.py): the replica reads one entry's record
when it needs it and never holds all of them, so a node with millions of entries starts
without loading them. Catching up asks each peer only for what it wrote since this node
last merged from it, a page at a time.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from backupvault.codec import Message
from backupvault.errors import InvalidInput
from backupvault.fleet.messages import (
    RECENT_OPS,
    SYNC_PAGE,
    Accept,
    Accepted,
    AcceptorRecord,
    AppliedOp,
    Ballot,
    Forward,
    ForwardAnswer,
    NotReady,
    Prepare,
    Promise,
    ReplicatedValue,
    SyncRequest,
    SyncResponse,
    decode_value,
    payload_of,
    well_formed,
)
from backupvault.fleet.records import (
    MAX_ROUND_STEP,
    Mark,
    MemoryRecords,
    RecordSource,
    raised_floor,
)
from backupvault.invariants import require

ChangeFn = Callable[[bytes], tuple[bytes, Any]]
#: The application's own check of a value an acceptor is asked to accept: (key, payload,
#: the payload this acceptor holds for the key) -> why it is refused, or None. Acceptors
#: refuse what they can tell is wrong without trusting the proposer (docs/threshold.md,
#: "Recovery"): a malformed value, a counter going down, a field changing unsigned.
ValueCheck = Callable[[bytes, bytes, bytes], str | None]
#: The check for a value a peer hands a node catching up (`Replica._on_sync_response`):
#: never one that goes back against what it holds or that fails its own checks
#: (docs/threshold.md, "Catching up"). None: `ValueCheck` itself, which is what the
#: firmware uses (every value it takes as a copy it would take in an Accept).
CopyCheck = ValueCheck
#: Told (key, payload) as this node writes a value it accepts (an "accept" persist), so
#: the application knows what this node itself durably accepted (docs/threshold.md: a node
#: evaluates an attempt only for the B of the value it accepted itself). Called before the
#: write's `Persist` is returned; the shell makes it durable before anything later leaves.
AcceptHook = Callable[[bytes, bytes], None]
#: (key, payload) -> whether an acceptor that took this value tells every node, not only
#: the proposer and the origin: for entries whose changes arrive as N copies at once (the
#: threshold flow), so the other copies can join the chosen value (`Replica._joined`).
AnnounceHook = Callable[[bytes, bytes], bool]
#: (key, payload) -> whether a node that holds nothing for `key` fetches a value like this
#: one, with a no-op round of its own, when a stand-in says it was chosen (`_relayed`): the
#: firmware says so for a live entry's value, which needs t nodes' acknowledgements, never
#: for an empty value or a tombstone, which anyone can name. None: never (tests).
FetchHook = Callable[[bytes, bytes], bool]
#: (key) -> whether it names an entry the application replicates. Every key a peer's
#: message or catch-up page names is checked before the replica reads or writes anything
#: under it: the node's store keeps other rows in the same key space (its own share rows,
#: which hold its key share), and a peer must never reach them. None: any key (tests).
KeyCheck = Callable[[bytes], bool]
#: The largest value a peer may send. An entry's value is a few KB (its manifest, the
#: owner's signatures, the recent op ids); without a bound a hostile peer could have a
#: node decode and keep values of the codec's 16 MiB limit in its caches.
MAX_VALUE_BYTES = 1 << 18
#: A store id is 16 random bytes (node/store.py); a catch-up page naming a longer one is
#: not an honest node's, and the mark it would leave could not be written.
MAX_STORE_ID_BYTES = 64
#: No ballot at or above this round is taken or learned, so rounds (and the next round
#: after them) always fit the store's u64 fields. Inflating an honest node this far takes
#: 2^46 messages each `MAX_ROUND_STEP` higher (about 67 years of what the channel admits
#: from one peer); it then stalls (liveness, not safety).
ROUND_CEILING = 1 << 62
#: Steps a second, and at once, a peer may lift an acceptor's rounds for an entry beyond
#: the one step every message may (`Replica._reach`; per peer and entry, review s50). A
#: ballot further above than that is refused, and the acceptor climbs toward it as far as
#: the budget allows (a promise of that lower round of the same node's: only stricter, as
#: any Prepare's), so each round, resend or repair climbs on from where the last left it,
#: in whatever order messages arrive. Without a climb, a
#: hostile node that walked two honest acceptors' rounds up 50 steps (100 Prepares) left
#: the other honest ones a step per refused round behind: every change to the entry failed
#: for minutes (review s49). Until session 50 proposers climbed them with rungs, Prepares
#: a step apart sent in order; links that reorder (the simulator's) delivered a few of 256
#: a round, and an entry stayed out of reach (sim seeds 10580507, 10586150, 10586427).
#: The same rate bounds how far above a refused ballot a proposer learns (`_learn_round`):
#: one lying refusal per forwarded change had every honest floor walk 257 steps for two
#: hostile messages (review s49r). At this rate the fleet's five nodes walk the ceiling in
#: centuries; the one step a message is what sets that (`ROUND_CEILING`).
CLIMB_STEPS_PER_SECOND = 1024
CLIMB_BURST_STEPS = 256
SYNC_ASKS_KEPT = 8  # answers to older asks than this are ignored
FORWARDS_PER_PROPOSAL = 3  # stale-base answers from the leader before going leaderless
#: A follower's copy of a joinable change waits for the leader's own round before it
#: forwards (`_begin`, `_JoinWait`): `JOIN_WAIT_FACTOR` times the 90th percentile of the
#: last `JOIN_WAIT_SAMPLES` delays from a copy's start here to the arrival of the leader's
#: Accept of the value it then joined, plus a margin, at most a cap (which also bounds a
#: copy's whole wait); no wait before a number of delays. The last three are `Timing`'s
#: (these defaults), so the simulator can make copies wait early and long.
JOIN_WAIT_FACTOR = 1.5
JOIN_WAIT_MARGIN = 0.002
JOIN_WAIT_CAP = 0.1
JOIN_WAIT_SAMPLES = 64
JOIN_WAIT_MIN_SAMPLES = 8
LEADER_ENTRIES = 4096  # entries the leader keeps a promise for (least recently used out)
CHOSEN_ENTRIES = 4096  # entries whose acceptors' answers are counted for joining
CHOSEN_BALLOTS = 4  # ballots counted per entry (the newest rounds; older ones go first)
LEARNED_ENTRIES = 4096  # entries whose refusals' promises are kept for the next ballot
LIFTS_KEPT = 4096  # lifted entries remembered before those past the repair window go
#: Words of chosen values a node keeps from one peer before it drops that peer's next
#: (`Replica._relayed`): a peer can crowd out only its own, never an honest stand-in's.
HINTS_PER_PEER = 1024
TAKEN_ENTRIES = 4096  # entries whose last Accept this process took, for answering it again


@dataclass(frozen=True)
class Send:
    to: int
    message: Message


@dataclass(frozen=True)
class Persist:
    """Write `record` durably. `kind` says why: "promise" (answering a Prepare), "accept"
    (answering an Accept: the only write that makes this node one of a value's acceptors)
    or "copy" (merged from peers while catching up)."""

    record: AcceptorRecord
    kind: str = "promise"


@dataclass(frozen=True)
class Committed:
    """The change proposed under `op_id` is durable on a majority; `outcome` is what the
    change function returned alongside the committed value."""

    op_id: bytes
    outcome: Any


@dataclass(frozen=True)
class Failed:
    """No majority answered before the deadline. The change may still take effect later
    (another proposer may finish it), but its outcome was never acted on."""

    op_id: bytes
    reason: str


Effect = Send | Persist | Committed | Failed


@dataclass(frozen=True)
class Timing:
    round_timeout: float = 0.5  # re-prepare with a higher ballot after this long, doubling
    deadline: float = 6.0  # give up (fleet unavailable) after this long
    backoff_min: float = 0.002
    backoff_max: float = 0.1
    sync_retry: float = 0.5  # ask silent or not-ready peers again after this long, doubling …
    sync_retry_max: float = 2.0  # … up to this: well inside the time a healed fleet gets
    # A node that restarts while a peer is unreachable waits this long before it trusts
    # a majority of caught-up peers alone: longer than any round that could still use a
    # vote it gave before the restart, messages included (see _sync_complete). A round
    # lives `deadline`, and a peer's message opens up to the channel's window (30 s,
    # `channel.WINDOW`) after it was sent, plus a clock difference of a few seconds: 20 s
    # let an Accept held on the wire for 21 s make a value chosen after the node's fresh
    # answers (review s51b).
    quarantine: float = 40.0
    repair_interval: float = 1.0  # resend a committed value to nodes that missed it …
    repair_window: float = 120.0  # … for this long (restarts catch up by themselves)
    leader: bool = True  # False: every change is a leaderless CASPaxos round
    # The leader sends a one-round Accept only if a majority answered it within this
    # long; otherwise it runs a Prepare first, which changes nothing if no majority is up.
    leader_lease: float = 1.0
    suspect_for: float = 5.0  # a leader that did not answer is passed over this long
    # A value this node accepted that it has not seen every node take (an announced
    # entry's, `AnnounceHook`) is settled by this node after this long: a no-op round if
    # no majority took it, a repair of the nodes that did not if one did (`_settle`).
    settle_after: float = 3.0
    settle_max: float = 24.0  # … asking again after twice as long each time, up to this
    # A follower's copy of a joinable change waits for the leader's round (`_JoinWait`):
    # the margin added to the learnt delay, the cap on a copy's whole wait, and how many
    # delays are learnt before any copy waits.
    join_wait_margin: float = JOIN_WAIT_MARGIN
    join_wait_cap: float = JOIN_WAIT_CAP
    join_wait_min_samples: int = JOIN_WAIT_MIN_SAMPLES


DEFAULT_TIMING = Timing()


@dataclass
class _Repair:
    """A committed value some peers have not acknowledged yet (down or cut off): it is
    sent again until they do, so a destroyed entry is overwritten on every node."""

    accept: Accept
    pending: set[int]
    until: float
    next_at: float
    refused: bool = False  # a pending node promised a higher ballot: resending cannot help
    # Made by the no-op round a refusal set off (`tick`): a pending node that refuses this
    # one too is given up on, not lifted again (its restart or the entry's next change
    # brings it the value).
    lifted: bool = False


@dataclass
class _Unsettled:
    """A value this node accepted for an announced entry, not yet seen taken by every
    node: at `due`, `_settle` looks again."""

    ballot: Ballot
    digest: bytes
    due: float
    until: float
    tries: int = 0
    #: SHA-256 of the entry's payload in the value (what a no-op round leaves as it is).
    payload: bytes = b""


@dataclass
class _Proposal:
    op_id: bytes
    key: bytes
    change: ChangeFn
    deadline: float
    ballot: Ballot = field(default_factory=lambda: Ballot(0, 0))
    phase: str = "queued"  # queued | wait | forward | prepare | accept | backoff
    round_started: float = 0.0
    retry_at: float = 0.0
    conflicts: int = 0
    timeouts: int = 0
    promises: dict[int, Promise] = field(default_factory=dict)
    accepts: set[int] = field(default_factory=set)
    refusals: set[int] = field(default_factory=set)  # acceptors that refused this ballot
    accepted_value: bytes = b""
    outcome: Any = None
    outcomes: dict[int, Any] = field(default_factory=dict)  # by the computation that made it
    computations: int = 0
    # A change that may be answered from a chosen value it leaves unchanged (`_joined`),
    # with `fresh_after`: only from one this node saw chosen after it was proposed (the
    # count of chosen values then: `Replica._chosen_seq`).
    joinable: bool = False
    fresh_after: int | None = None
    # A no-op round that writes a committed value above a laggard's promise (`tick`).
    lifts: bool = False
    # The leader path: values forwarded (by digest: the value and its outcome), the
    # acceptors that answered each (ballot, digest), and where it was forwarded.
    leaderless: bool = False
    forwards: int = 0
    # When it first went to the leader, or began to wait for its round (None: not yet).
    began: float | None = None
    leader: int = -1
    forwarded: dict[bytes, tuple[bytes, Any]] = field(default_factory=dict)
    votes: dict[tuple[Ballot, bytes], set[int]] = field(default_factory=dict)


class _JoinWait:
    """How long a follower's copy of a joinable change waits for the leader's round for
    the leader's own copy before forwarding (docs/fleet.md, "Copies that wait for the
    leader"), from the delays seen so far."""

    def __init__(self, timing: Timing) -> None:
        self.delays: deque[float] = deque(maxlen=JOIN_WAIT_SAMPLES)
        self.seconds = 0.0
        self._margin = timing.join_wait_margin
        #: No copy waits longer than this from its start (`_note_leader_round` too).
        self.cap = timing.join_wait_cap
        self._min_samples = timing.join_wait_min_samples

    def learn(self, delay: float) -> None:
        """One copy's delay: from its start to the leader's Accept of what it joined (0 if
        that Accept came first)."""
        self.delays.append(max(0.0, delay))
        if len(self.delays) >= self._min_samples:
            ordered = sorted(self.delays)
            p90 = ordered[(len(ordered) * 9) // 10]
            self.seconds = min(self.cap, JOIN_WAIT_FACTOR * p90 + self._margin)


@dataclass
class _Votes:
    """The acceptors that took one value at one ballot, and when they became a majority."""

    acceptors: set[int] = field(default_factory=set)
    chosen_at: float | None = None
    chosen_seq: int = 0  # this node's count of values it saw chosen, when this one was


@dataclass
class _Lead:
    """The leader's hold on one entry: the acceptors in `promised` promised ballot `held`
    (gathered at `since`), and the newest value among them is `value` at `base`."""

    key: bytes
    phase: str = "idle"  # idle | prepare | ready | accept
    held: Ballot = field(default_factory=lambda: Ballot(0, 0))
    base: Ballot = field(default_factory=lambda: Ballot(0, 0))
    value: bytes = b""
    since: float = 0.0
    started: float = 0.0
    prepare_id: bytes = b""
    promised: set[int] = field(default_factory=set)
    promises: dict[int, Promise] = field(default_factory=dict)
    accept: Accept | None = None
    origin: int = -1
    accepts: set[int] = field(default_factory=set)
    refusals: set[int] = field(default_factory=set)  # acceptors that refused `held`
    queue: deque[tuple[int, Forward]] = field(default_factory=deque)
    # The highest round this node reserved for the entry outside the hold (a leaderless
    # round): `held` moves up one per chosen value, and reaching that ballot it sent a
    # second value under it (review s49rr: a committed change was lost). The hold is
    # prepared anew above it instead (`_holds`).
    floor: int = -1


class Replica:
    def __init__(
        self,
        node: int,
        nodes: Iterable[int],
        rng: Callable[[int], bytes],
        source: RecordSource | None = None,
        timing: Timing = DEFAULT_TIMING,
        check_value: ValueCheck | None = None,
        on_accept: AcceptHook | None = None,
        announce: AnnounceHook | None = None,
        check_copy: CopyCheck | None = None,
        check_key: KeyCheck | None = None,
        worth_fetching: FetchHook | None = None,
    ) -> None:
        self.node = node
        self._check_key = check_key
        self._worth_fetching = worth_fetching
        self._announce = announce
        self._check_value = check_value
        self._check_copy = check_copy if check_copy is not None else check_value
        self._on_accept = on_accept
        self.nodes = sorted(set(nodes))
        if node not in self.nodes or len(self.nodes) % 2 == 0:
            raise ValueError("a fleet has an odd number of nodes, this one among them")
        self.quorum = len(self.nodes) // 2 + 1
        self.peers = [n for n in self.nodes if n != node]
        self.timing = timing
        self._rng = rng
        self.source: RecordSource = MemoryRecords() if source is None else source
        self.ready = False
        self._sync_ids: dict[bytes, int] = {}  # id of each recent ask -> its number
        self._sync_asks = 0
        # The number of the ask sent to every peer once the quarantine had passed: on the
        # quarantine path only answers to it or later asks count (`_sync_complete`).
        self._fresh_ask: int | None = None
        self._sync_responses: dict[int, tuple[int, SyncResponse]] = {}  # last page, per peer
        self._sync_progress: dict[int, Mark] = {}  # how far each peer's store is merged
        # Per peer, the id of the latest ask and when a page from it was last merged: a
        # page chain continues only from the latest ask, and a peer whose pages keep
        # coming is not asked again (`tick`), so each peer has one chain of asks at most.
        self._latest_ask: dict[int, bytes] = {}
        self._paged_at: dict[int, float] = {}
        # Each ask sent and not yet answered, by peer: an ask is answered by one page, so a
        # second copy of its answer (a hostile peer's, under the ask's id) merges nothing
        # (review s60: copies of a page "from the start" were each merged, a million
        # records from one ask in one frame).
        self._unanswered: set[tuple[int, bytes]] = set()
        # While catching up: the value this node itself held for each entry whose value a
        # peer's copy has replaced in this catch-up (`_copy_taken` checks against it).
        # Not kept when the store was empty at the start (wiped): every own value is then
        # empty, and a wiped node's memory stays flat however many entries it copies.
        self._own_values: dict[bytes, bytes] = {}
        self._started_empty = False
        self._sync_retry_at = 0.0
        self._sync_interval = timing.sync_retry
        self._started_at = 0.0
        self._queues: dict[bytes, deque[_Proposal]] = {}
        self._by_op: dict[bytes, _Proposal] = {}
        self._repairs: dict[bytes, _Repair] = {}
        # When this node last lifted each key (a no-op round over a repair's refusal): a
        # settling repair of it within the repair window is not lifted again. Each lift
        # makes a new value that every node settles afresh, so a node that refuses every
        # Accept had each announced entry lifted every few seconds for ever (review s41-A).
        self._lifted_at: dict[bytes, float] = {}
        # Stand-ins' word that a value this node lacks was chosen (`_relayed`): per key the
        # ballot named, when to look again and the peer that said it first; and how many
        # of them each peer's words hold (at most HINTS_PER_PEER).
        self._hints: OrderedDict[bytes, tuple[Ballot, float, int]] = OrderedDict()
        self._hints_from: Counter[int] = Counter()
        self._round_seconds = 0.0  # moving average of a committed round's duration
        # How long a follower's copy waits for the leader's own round, and per entry the
        # latest such round's (ballot, value digest, arrival) (`_note_leader_round`).
        self._join_wait = _JoinWait(timing)
        self._chosen_seq = 0  # values this node saw chosen so far (`_Votes.chosen_seq`)
        self._leader_rounds: OrderedDict[bytes, tuple[Ballot, bytes, float]] = OrderedDict()
        # The highest round this node's acceptor has promised: how far above it a ballot
        # is taken (`_refused`). Not where this node's own ballots start: those follow the
        # entry's own rounds (`_next_round`).
        self._max_round = self.source.max_round()
        # Per peer and entry, rounds this node may still learn beyond a step above a ballot
        # the peer refused (`_learn_round`; per entry since review s50: one pool per peer
        # let a hostile node have an honest peer's refusals of a made-up entry spend it),
        # and per peer, rounds the peer may still lift this node's acceptor beyond a step
        # above its floor (`_reach`; kept under the key b""); each with when it was last
        # topped up. The latter is one pool for every entry: per entry (review s50) a
        # hostile peer walked every entry it poked 257 steps a Prepare, and two messages a
        # second per entry stalled as many entries as it liked (review s50b). One pool
        # lets a hostile node have an honest peer spend it on a made-up entry (a forwarded
        # change) just before a round that needed it: that change, not every entry, stalls
        # (docs/fleet.md, "Rounds walked up by a hostile node").
        self._climb_budgets: OrderedDict[tuple[int, bytes], tuple[int, float]] = OrderedDict()
        self._reach_budgets: OrderedDict[tuple[int, bytes], tuple[int, float]] = OrderedDict()
        # Per entry, the promise refusals of this node's ballots reported (`_learn_round`).
        self._learned: OrderedDict[bytes, int] = OrderedDict()
        self._leads: OrderedDict[bytes, _Lead] = OrderedDict()
        # Per entry, the ballot and value digest of the last Accept this process itself
        # took (`_took`): an Accept arriving again after the promise moved past it is
        # answered again only for these (`_repeated`). Not kept on disk: after a restart a
        # repeat is refused, which may cost a no-op round, never safety.
        self._taken: OrderedDict[bytes, tuple[Ballot, bytes]] = OrderedDict()
        # Entries with a Prepare or Accept in flight (a dict: ordered, so runs reproduce).
        self._leading: dict[bytes, None] = {}
        self._heard: dict[int, float] = {}  # when each peer last answered as an acceptor
        self._suspected: dict[int, float] = {}  # leader candidates passed over, until
        # Per entry: the acceptors that answered Accepted for each (ballot, value digest),
        # so this node knows when the value it accepted itself is chosen (`_joined`).
        self._chosen: OrderedDict[bytes, dict[tuple[Ballot, bytes], _Votes]] = OrderedDict()
        # Announced entries whose value this node accepted and has not seen every node
        # take (`_settle`).
        self._unsettled: dict[bytes, _Unsettled] = {}
        self._now = 0.0  # the clock of the call being handled (receive, tick, propose)

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, now: float, intact: bool = False) -> list[Effect]:
        """Begin catching up: a start is treated as if the disk might be stale, unless the
        shell vouches that it holds every record this node ever persisted (`intact`: its
        store matches the token's monotonic counter, which covers every persist before
        anything depending on it left the node). Such a node forgot nothing it promised
        or accepted, so it takes part at once, like an acceptor with stable storage."""
        self._now = now
        if intact:
            self.ready = True
            self._started_at = now
            return []
        self.ready = False
        self._sync_ids = {}
        self._fresh_ask = None
        self._sync_responses = {}
        self._sync_progress = {peer: self.source.mark(peer) for peer in self.peers}
        self._latest_ask = {}
        self._paged_at = {}
        self._unanswered = set()
        self._own_values = {}
        # Every record holds a promise of round 1 or more: no round, no record. A store
        # still in a catch-up that began empty holds only peers' copies: checked against
        # them, the chosen value was refused against a sibling copied before a restart.
        self._started_empty = self.source.max_round() == 0 or self.source.catch_up_began_empty()
        self._sync_interval = self.timing.sync_retry
        self._sync_retry_at = now + self._sync_interval
        self._started_at = now
        if self._sync_complete():  # a fleet of one has nobody to ask
            self.ready = True
            return []
        return self._ask_sync(self.peers)

    def _ask_sync(self, peers: Iterable[int]) -> list[Effect]:
        """Ask `peers` for what they wrote since this node last merged from them. Every
        ask gets a fresh id, so an answer is matched to the ask it answers and a late
        answer never replaces a newer one."""
        self._sync_asks += 1
        for old in [i for i, n in self._sync_ids.items() if n <= self._sync_asks - SYNC_ASKS_KEPT]:
            del self._sync_ids[old]
        self._unanswered = {(p, i) for p, i in self._unanswered if i in self._sync_ids}
        return self._ask_pages(peers)

    def _ask_pages(self, peers: Iterable[int]) -> list[Effect]:
        """Ask for the next page, as part of the current round of asks."""
        sync_id = self._rng(16)
        self._sync_ids[sync_id] = self._sync_asks
        effects: list[Effect] = []
        for peer in peers:
            mark = self._sync_progress.get(peer, Mark())
            self._latest_ask[peer] = sync_id
            self._unanswered.add((peer, sync_id))
            effects.append(Send(peer, SyncRequest(sync_id, mark.store_id, mark.upto)))
        return effects

    # ---- client side: proposing ----------------------------------------------------

    def propose(
        self,
        op_id: bytes,
        key: bytes,
        change: ChangeFn,
        now: float,
        *,
        joinable: bool = False,
        fresh: bool = False,
    ) -> list[Effect]:
        """Commit `change` to `key`. A `joinable` change (one the application is content to
        see linearized right after any chosen value, as the threshold flow's N copies of
        one request are) that leaves the chosen value this node accepted unchanged is
        answered from that value with no round: the N copies make one round, not N. A
        `fresh` one joins only a value chosen after it was proposed, which is at least as
        new as every value chosen before: a repair that must bring this node the newest
        value (and write it to a majority) cannot be answered from the one it holds, but
        N copies of it still make one round, not N that duel (review s59)."""
        self._now = now
        # Checked always: a record under another key could overwrite this node's own rows.
        require(self._key_ok(key), "a proposal for a key the application does not replicate")
        proposal = _Proposal(
            op_id,
            key,
            change,
            deadline=now + self.timing.deadline,
            joinable=joinable or fresh,
            fresh_after=self._chosen_seq if fresh else None,
        )
        return self._submit(proposal, now)

    def _submit(self, proposal: _Proposal, now: float) -> list[Effect]:
        joined = self._joined(proposal, now)
        if joined is not None:
            return [joined]
        queue = self._queues.setdefault(proposal.key, deque())
        queue.append(proposal)
        self._by_op[proposal.op_id] = proposal
        # One proposal per entry at a time from this node: its own changes never race.
        return self._begin(proposal, now) if len(queue) == 1 else []

    def pending(self) -> int:
        return len(self._by_op)

    def leader(self, now: float) -> int:
        """The node this one forwards changes to: the lowest-numbered one it has not
        passed over lately. Only liveness rests on every node picking the same one: two
        leaders at once are two proposers, which Paxos keeps safe."""
        for node in self.nodes:
            if self._suspected.get(node, 0.0) <= now or node == self.node:
                return node
        return self.node  # unreachable: this node is among self.nodes

    def suspect(self, node: int, now: float) -> None:
        """Pass `node` over as leader for a while (it did not answer in time)."""
        if node != self.node:
            self._suspected[node] = now + self.timing.suspect_for

    def held_payload(self, key: bytes) -> bytes:
        """The payload of the newest value this node holds for `key` (accepted here or
        copied while catching up; b"" if none). Not necessarily committed: only for reads
        whose answer the client trusts when enough nodes agree (docs/threshold.md)."""
        record = self.source.get(key)
        return payload_of(record.value) if record is not None and record.value else b""

    def lagging(self) -> int:
        """Committed values not yet acknowledged by every node."""
        return len(self._repairs)

    def unsettled(self) -> int:
        """Values this node accepted and has not yet seen every node take (`_settle`)."""
        return len(self._unsettled)

    # ---- messages --------------------------------------------------------------------

    def receive(self, sender: int, message: Message, now: float) -> list[Effect]:
        self._now = now
        if sender not in self.nodes or not self._admissible(sender, message):
            return []
        match message:
            case Prepare() | Accept() | Forward():
                if not self.ready:
                    return [Send(sender, NotReady(message.op_id))]
                if isinstance(message, Forward):
                    return self._lead(sender, message, now)
                if isinstance(message, Accept):
                    if message.node != sender:
                        return self._relayed(sender, message, now)
                    self._note_leader_round(sender, message, now)
                effects, reply = self._acceptor(sender, message)
                return effects + self._reply(sender, message, reply, now)
            case Promise():
                self._heard[sender] = now  # only a caught-up acceptor answers these
                return self._on_promise(sender, message, now)
            case Accepted():
                self._heard[sender] = now
                return self._on_accepted(sender, message, now)
            case ForwardAnswer():
                return self._on_forward_answer(sender, message, now)
            case NotReady():
                return self._on_not_ready(sender, message, now)
            case SyncRequest():
                page = self.source.changed_since(message.store_id, message.since, SYNC_PAGE)
                answer = SyncResponse(
                    message.sync_id,
                    self.ready,
                    page.records,
                    page.store_id,
                    page.since,
                    page.upto,
                    page.more,
                )
                return [Send(sender, answer)]
            case SyncResponse():
                return self._on_sync_response(sender, message, now)
            case _:
                return []  # anything unknown: treated as no answer

    def _admissible(self, sender: int, message: Message) -> bool:
        """Whether a peer's message may reach the state machine at all. What no honest
        node sends is dropped here, as if lost: a Prepare under another node's ballot (an
        Accept under one is a stand-in's word, never taken: `_relayed`), a key outside the
        application's key space, a value over `MAX_VALUE_BYTES` or one no proposer makes
        (it does not decode, or it is padded through its recent ops: `well_formed`), an
        Accept or Forward with no value (every proposed value holds at least the op that
        made it; an empty one would skip the acceptor's check and wipe the entry), a round
        far above any seen (ballot inflation, also through answers), a Promise reporting
        an acceptance at or above the ballot it promises, a catch-up page with an overlong
        store id, more records than `SYNC_PAGE` or a record that claims an acceptance
        without a value."""
        match message:
            case Prepare():
                return message.node == sender and self._key_ok(message.key)
            case Accept() | Forward():
                return self._key_ok(message.key) and _value_ok(message.value, empty=False)
            case Promise():
                return (
                    self._key_ok(message.key)
                    and _value_ok(message.value)
                    and not (
                        message.ok
                        and Ballot(message.accepted_round, message.accepted_node)
                        >= Ballot(message.round, message.node)
                    )
                )
            case Accepted():
                return self._key_ok(message.key)
            case ForwardAnswer():
                return self._key_ok(message.key) and _value_ok(message.value)
            case SyncResponse():
                return (
                    len(message.store_id) <= MAX_STORE_ID_BYTES
                    and len(message.records) <= SYNC_PAGE
                    and all(
                        self._key_ok(r.key)
                        and _value_ok(r.value)
                        and (r.accepted == Ballot(0, 0)) == (not r.value)
                        for r in message.records
                    )
                )
        return True

    def _key_ok(self, key: bytes) -> bool:
        return self._check_key is None or self._check_key(key)

    def _learn_round(self, key: bytes, sender: int, promised_round: int, refused: Ballot) -> None:
        """Note for `key`'s next ballot the promise an acceptor reported when it refused
        `refused`, a ballot this node sent (its own, or one it resends as a repair): a step
        above that ballot, and beyond it (up to `CLIMB_BURST_STEPS` + 1 steps, as far as an
        acceptor lets a ballot climb at once, `_reach`) only as far as the climbing budget
        this node keeps for `sender` allows (`CLIMB_STEPS_PER_SECOND`; one pool for every
        peer let a hostile one spend it before each honest refusal: review s49rr); never
        to `ROUND_CEILING`.

        A peer's answer is its word. Learned from any answer, and a step above this node's
        highest round each time, two answers made up by a hostile peer (unsolicited ones
        too) lifted this node's next ballot more than a step above every honest
        acceptor's rounds: they all refused it as inflated, for good (until a restart),
        and this node's own rounds never committed again. Every acceptor that answered
        the refused ballot (or whose promise is higher) has seen its round, so a ballot
        at most a step above it is never refused as inflated. Without the budget,
        refusals claiming promises far above (two hostile messages: a forwarded change,
        and its refusal) had honest ballots walk every honest floor 257 steps up each
        time (review s49r): the ceiling in days."""
        step = refused.round + MAX_ROUND_STEP - 1
        learned = min(promised_round, step)
        climb = min(promised_round, refused.round + (CLIMB_BURST_STEPS + 1) * MAX_ROUND_STEP - 1)
        known = max(step, self._learned.get(key, 0))
        if climb > known:
            beyond = _spend(self._climb_budgets, (sender, key), climb - known, self._now)
            learned = max(learned, known + beyond)
        learned = min(learned, ROUND_CEILING - 1)
        self._learned[key] = max(self._learned.pop(key, 0), learned)
        if len(self._learned) > LEARNED_ENTRIES:
            self._learned.popitem(last=False)  # forgetting costs a refused round, no more

    def _next_round(self, key: bytes, after: Ballot) -> int:
        """The round of this node's next ballot for `key`: above its own acceptor's promise
        for the entry (which covers every ballot this node used for it: each is promised
        there before it leaves), above `after` (the ballot it replaces), above what
        refusals reported (`_learn_round`), and above the successor of a held ballot,
        which the leader may still use without a Prepare (`_lead_next`).

        Until 2026-12-04 every ballot was one above the highest round this node's acceptor
        had promised for any entry. Two Prepares from a hostile peer for made-up entries,
        each a step above the last, lifted that for good (it is on disk): every honest
        acceptor then refused this node's ballots for every entry as inflated, and none
        of its leaderless rounds committed again, not even after a restart."""
        lead = self._leads.get(key)
        held = lead.held.round + 1 if lead is not None else 0
        promised = self._record(key).promised.round
        return max(promised, held, after.round, self._learned.get(key, 0)) + 1

    def _reserved(self, prepare: Prepare) -> bool:
        """Whether this node's own acceptor promised `prepare`'s ballot, which reserves it:
        `_next_round` goes above that promise, so the ballot is never used for another
        value. Refused there (too far above its rounds for its climbing budget, `_reach`),
        it must not leave: a Prepare sent unreserved had a leaderless round and the node's
        own leader hold take one ballot for two values, and a committed change was lost
        (review s49r, with a hostile node walking rounds and lying in refusals). Its
        acceptor has climbed toward the ballot; the next round climbs on from there."""
        return self._record(prepare.key).promised == Ballot(prepare.round, prepare.node)

    def tick(self, now: float) -> list[Effect]:
        self._now = now
        effects: list[Effect] = []
        if not self.ready and self._sync_responses and self._sync_complete():
            effects += self._finish_sync()
        if (
            not self.ready
            and self._fresh_ask is None
            and now >= self._started_at + self.timing.quarantine
        ):
            # Every peer asked again for what changed since its last page (one whose
            # pages are coming goes on: its next pages are asked from now on): answers
            # given before a round that used a vote this node forgot had ended do not
            # show what that round chose (`_sync_complete`).
            effects += self._ask_sync(p for p in self.peers if not self._paging(p, now))
            self._fresh_ask = self._sync_asks
            self._sync_interval = self.timing.sync_retry
            self._sync_retry_at = now + self._sync_interval
        if not self.ready and now >= self._sync_retry_at:
            self._sync_interval = min(self._sync_interval * 2, self.timing.sync_retry_max)
            self._sync_retry_at = now + self._sync_interval
            # Peers that never answered, peers that answered "not ready" (they may be
            # caught up by now: without them, a node can wait forever on a majority), and
            # once the quarantine has passed, peers whose answer to the ask sent then was
            # lost. Not a peer whose pages are still coming: asked again, it answered both
            # asks, and a hostile peer paging for ever gained a chain of asks per retry.
            again = [
                peer
                for peer in self.peers
                if not self._paging(peer, now)
                and (peer not in self._sync_responses or self._stale(*self._sync_responses[peer]))
            ]
            effects += self._ask_sync(again)
        for op_id, repair in list(self._repairs.items()):
            if now >= repair.until:
                del self._repairs[op_id]
            elif now >= repair.next_at:
                repair.next_at = now + self.timing.repair_interval
                if not repair.refused:
                    for peer in sorted(repair.pending):
                        if peer == self.node:
                            # Its own acceptor (a committing node repairs itself too), without
                            # the network: a node has no channel to itself. Sent, it raised
                            # in the node's shell and ended its ticks.
                            effects += self._deliver_locally(repair.accept, now)
                        else:
                            effects.append(Send(peer, repair.accept))
                elif repair.accept.key not in self._queues:
                    # A laggard promised higher: one no-op round (value unchanged) writes the
                    # value above its promise and repairs whoever still lags in turn.
                    del self._repairs[op_id]
                    effects += self._lift(repair.accept.key, now)
        if self.ready:
            effects += self._settle(now)
            effects += self._act_on_hints(now)
        for key in list(self._leading):
            lead = self._leads[key]
            if now >= lead.started + self.timing.round_timeout:
                effects += self._drop_lead(lead, now)
        for proposal in list(self._by_op.values()):
            if proposal.phase == "queued":
                continue
            if now >= proposal.deadline:
                effects += self._finish(proposal, Failed(proposal.op_id, "no majority"), now)
            elif proposal.phase == "backoff" and now >= proposal.retry_at:
                effects += self._begin(proposal, now)
            elif proposal.phase == "wait" and now >= proposal.retry_at:
                effects += self._begin(proposal, now)  # it began already: it forwards now
            elif proposal.phase in ("prepare", "accept", "forward") and (
                now
                >= proposal.round_started
                + (self.timing.round_timeout * 2 ** min(proposal.timeouts, 3))
            ):
                # A slow fleet (load, fsync) gets more time each round rather than a storm
                # of new ballots that would only slow it down further.
                proposal.timeouts += 1
                if proposal.phase == "forward":
                    # The leader did not get the change through in time: pass it over,
                    # and finish this change leaderless.
                    self.suspect(proposal.leader, now)
                    proposal.leaderless = True
                effects += self._start_round(proposal, now)
        return effects

    # ---- acceptor ---------------------------------------------------------------------

    def _record(self, key: bytes) -> AcceptorRecord:
        return self.source.get(key) or AcceptorRecord(key)

    def _store(self, record: AcceptorRecord, kind: str = "promise") -> Persist:
        before = self._record(record.key)
        # Ballots only grow: an acceptor never forgets a promise or an acceptance it holds.
        require(record.promised >= before.promised, "promise went backwards")
        require(record.accepted >= before.accepted, "accepted ballot went backwards")
        require(record.promised >= record.accepted, "accepted above the promise")
        self.source.put(record)
        self._max_round = raised_floor(self._max_round, record.promised.round)
        if kind == "accept" and record.value:
            payload = payload_of(record.value)
            if self._on_accept is not None:
                self._on_accept(record.key, payload)
            if self._announce is not None and self._announce(record.key, payload):
                earlier = self._unsettled.pop(record.key, None)
                settling = _Unsettled(
                    record.accepted,
                    _digest(record.value),
                    self._now + self.timing.settle_after,
                    self._now + self.timing.repair_window,
                    payload=_digest(payload),
                )
                if earlier is not None and earlier.payload == settling.payload:
                    # The same entry state again: a no-op round (a settle's own, most
                    # likely) goes on settling it, not from the start. Restarted, settling
                    # kept itself going for good once more entries were unsettled than
                    # `_chosen` keeps (a hostile node's made-up names: review s48).
                    settling.tries, settling.until = earlier.tries, earlier.until
                self._unsettled[record.key] = settling
        return Persist(record, kind)

    def _reach(self, sender: int, round_: int, record: AcceptorRecord) -> int:
        """How far this acceptor lets `sender` lift `record`'s entry toward a ballot of
        `round_`: `round_` itself if it stands at most a step above any round the acceptor
        has promised (for any entry, or for this one: a copy's rounds stand wherever its
        peer's stood, and do not move the node's floor), or beyond that as far as the
        climbing budget the acceptor keeps for `sender` allows (`CLIMB_STEPS_PER_SECOND`);
        short of it, the highest round the budget reaches, where the entry climbs while the
        ballot is refused; -1 at or above `ROUND_CEILING`. The sender is the peer the
        channel vouches for, whatever node the ballot names: the budget is its own."""
        if round_ >= ROUND_CEILING:
            return -1
        free = max(self._max_round, record.promised.round) + MAX_ROUND_STEP
        if round_ <= free:
            return round_
        return free + _spend(self._reach_budgets, (sender, b""), round_ - free, self._now)

    def _check_refuses(self, message: Accept, record: AcceptorRecord) -> bool:
        """Whether the application's check refuses the Accept's value over `record`'s."""
        if self._check_value is None:
            return False
        try:
            payload = payload_of(message.value)
            held = payload_of(record.value)
        except InvalidInput:
            return True
        return self._check_value(message.key, payload, held) is not None

    def _climb(
        self, message: Prepare | Accept, record: AcceptorRecord, reach: int
    ) -> tuple[list[Effect], Message]:
        """Refuse a ballot out of reach (`_reach`), having promised the highest round of
        its node's that is within reach: the next ballot, resend or repair climbs on from
        there. A promise only refuses lower ballots and answers no round (the refusal names
        it, below the ballot asked), so it is as safe as any Prepare of that ballot, which
        its node may still use later (its leader hold may pipeline onto it); it is what
        rungs a step apart, sent in order, did until session 50."""
        effects: list[Effect] = []
        climbed = Ballot(reach, message.node)
        if climbed > record.promised:
            record = replace(record, promised_round=climbed.round, promised_node=climbed.node)
            effects.append(self._store(record))
        if isinstance(message, Accept):
            return effects, _answer(message, record.promised, False)
        return effects, _promise(message, record, False)

    def _acceptor(self, sender: int, message: Prepare | Accept) -> tuple[list[Effect], Message]:
        record = self._record(message.key)
        ballot = Ballot(message.round, message.node)
        reach = self._reach(sender, message.round, record)
        if reach < message.round:
            return self._climb(message, record, reach)
        if isinstance(message, Prepare):
            ok = ballot >= record.promised
            effects: list[Effect] = []
            if ok and ballot != record.promised:
                record = AcceptorRecord(
                    record.key,
                    ballot.round,
                    ballot.node,
                    record.accepted_round,
                    record.accepted_node,
                    record.value,
                )
                effects.append(self._store(record))
            # A Promise leaves only once the promise it makes is persisted.
            require(
                not ok or self._record(message.key).promised == ballot,
                "a Promise before its promise is persisted",
            )
            return effects, _promise(message, record, ok)
        refused = self._check_refuses(message, record)
        if (
            not refused
            and ballot == record.accepted
            and ballot < record.promised
            and self._taken.get(message.key) == (ballot, _digest(message.value))
        ):
            return self._repeated(message, record)
        if ballot == record.accepted and message.value != record.value:
            # One value per ballot: its proposer sends one. Another value under the same
            # ballot is forged (a hostile node can name any node's ballot in an Accept),
            # and taking it would swap the value a majority may already have chosen.
            return [], _answer(message, record.promised, False)
        if not refused and ballot >= record.promised:
            # A pipelined Accept also promises the ballot's successor, in the same write:
            # exactly a Prepare of it delivered right after, answered "accepted: this".
            promised = Ballot(ballot.round + 1, ballot.node) if message.pipeline else ballot
            record = AcceptorRecord(
                record.key, *_ballot(promised), ballot.round, ballot.node, message.value
            )
            return self._took(message, record, promised)
        if refused and ballot > record.promised:
            # Refused by the check at a ballot it could take: promised, and named in the
            # answer, which so tells the check's refusal (final for this value) from the
            # promise's (higher) and a climb's (lower): a repair stays on a node climbing.
            record = replace(record, promised_round=ballot.round, promised_node=ballot.node)
            return [self._store(record)], _answer(message, ballot, False)
        return [], _answer(message, record.promised, False)

    def _repeated(self, message: Accept, record: AcceptorRecord) -> tuple[list[Effect], Message]:
        """The same Accept again (a duplicate, a repair, a replay with the pipeline flag
        changed) after the promise moved past its ballot, which this process took itself:
        answered as taken, with no write (the acceptance is on disk, and nothing this node
        sends overtakes a write made before it). A value held as a catch-up copy was never
        this node's acceptance: answered for below a promise that reported an older value,
        it could be chosen behind that promise's proposer (review s51). A pipelined one
        also promises the successor of its ballot if the promise is below it, as a Prepare
        of it would: the leader counts an answer towards its next ballot only if it
        promises that (`_lead_on_accepted`). Until session 51 only pipelined repeats were
        answered so: a replay with the flag cleared was refused, and three refusals dropped
        the hold (s50r3)."""
        ballot = Ballot(message.round, message.node)
        successor = ballot.next_above(ballot.node)
        if message.pipeline and successor > record.promised:
            record = replace(record, promised_round=successor.round, promised_node=successor.node)
            return [self._store(record)], _answer(message, successor, True)
        return [], _answer(message, record.promised, True)

    def _took(
        self, message: Accept, record: AcceptorRecord, promised: Ballot
    ) -> tuple[list[Effect], Message]:
        """Accept `message`: write `record` (its acceptance) and answer Accepted."""
        persist = self._store(record, "accept")
        reply = _answer(message, promised, True)
        self._taken[message.key] = (Ballot(message.round, message.node), reply.digest)
        self._taken.move_to_end(message.key)
        if len(self._taken) > TAKEN_ENTRIES:
            self._taken.popitem(last=False)
        # An Accepted leaves only behind the write of the acceptance it reports.
        require(
            self._record(message.key).accepted == Ballot(message.round, message.node),
            "an Accepted before its acceptance is persisted",
        )
        return [persist], reply

    def _reply(
        self, sender: int, message: Prepare | Accept, reply: Message, now: float
    ) -> list[Effect]:
        """Send an acceptor's answer to whoever asked, and an Accepted also to the node
        whose client asked for the change (the leader path); to itself without the network."""
        to = [sender]
        if isinstance(message, Accept) and message.origin != sender:
            to.append(message.origin)
        if self._announced(message, reply):
            # Every node learns which value a majority took, so one whose own copy of the
            # same change is pending (or arrives next) joins it (`_joined`).
            to += [node for node in self.nodes if node not in to]
        effects: list[Effect] = []
        for node in to:
            if node == self.node:
                effects += self.receive(self.node, reply, now)
            elif node in self.nodes:
                effects.append(Send(node, reply))
        return effects

    def _announced(self, message: Prepare | Accept, reply: Message) -> bool:
        return (
            isinstance(message, Accept)
            and isinstance(reply, Accepted)
            and reply.ok
            and self._announce is not None
            and self._announce(message.key, payload_of(message.value))
        )

    def _deliver_locally(self, message: Prepare | Accept, now: float) -> list[Effect]:
        """The proposer's own acceptor answers without the network, persisting first."""
        if not self.ready:
            return []
        effects, reply = self._acceptor(self.node, message)
        return effects + self._reply(self.node, message, reply, now)

    def _send_accept(self, accept: Accept, now: float) -> list[Effect]:
        """Phase 2 of this node's ballot: the Accept to every peer, then to its own
        acceptor, whose write is made while the others are on the wire (as a Raft leader
        writes its log while replicating it; docs/fleet.md, "The leader's own write").

        Safe because the ballot is already reserved by a write of this node: its own
        record promises it (a Prepare's ballot, promised here first; or `held`, promised
        in the same write as its last acceptance), and the shell sends nothing past a
        write still under way. A node that crashes before its own acceptance is durable
        restarts from that promise, so its next ballots are higher and this one carries
        one value only. Its own acceptance counts in memory at once; what that count sets
        off (Committed, the next Accept, its Accepted to the others) queues behind the
        write. If its own acceptor refused the last value (its check), nothing reserved
        this ballot yet: it is promised here first, a write the Accept waits for."""
        ballot = Ballot(accept.round, accept.node)
        record = self._record(accept.key)
        effects: list[Effect] = []
        if record.promised < ballot:
            effects.append(
                self._store(replace(record, promised_round=ballot.round, promised_node=ballot.node))
            )
        # An Accept leaves only at a ballot this node's own record has promised.
        require(self._record(accept.key).promised >= ballot, "an Accept at an unreserved ballot")
        effects += [Send(peer, accept) for peer in self.peers]
        return effects + self._deliver_locally(accept, now)

    # ---- proposer ---------------------------------------------------------------------

    def _begin(self, proposal: _Proposal, now: float) -> list[Effect]:
        """Start (or restart) a proposal: through the leader unless it went leaderless.
        A lift (`_lift`) is a round of this node's own: its repair gives up on a node that
        refuses it too, which only the proposer knows (a leader's repair of a forwarded
        change lifts a refusing node once: review s54b, sim seed 10756088); and one from
        an empty record, for a name nobody holds, cost the leader a round its acceptors
        refused before this node's own."""
        if proposal.lifts:
            proposal.leaderless = True
        if not self.ready or proposal.leaderless or not self.timing.leader:
            return self._start_round(proposal, now)
        first = proposal.began is None
        if first:
            proposal.began = now
        wait = self._join_wait.seconds
        if first and wait > 0 and proposal.joinable and self.leader(now) != self.node:
            # Every node got its own copy of this change (the threshold flow's fan-out),
            # the leader too, and the leader's round for its copy usually reaches this
            # node first: this copy then joins the chosen value (`_count_chosen`). A
            # Forward sent now would reach the leader after its Accept, and its "retry"
            # answer come back after the join (8 of about 32 messages a fan-out). So it
            # waits about as long as the leader's round takes to come, then goes as
            # before: only a leader that missed its copy costs the wait.
            proposal.phase = "wait"
            proposal.retry_at = now + wait
            return []
        record = self._record(proposal.key)
        return self._forward(proposal, record.accepted, record.value, now)

    def _note_leader_round(self, sender: int, accept: Accept, now: float) -> None:
        """Note when the leader's round for a change it took itself reached this node: a
        pipelined Accept at the sender's own ballot, for its own change (`origin`), from
        the node this one takes as leader, above what this node took for the entry (not a
        resend of an older round). A copy that then joins that very value is timed
        against it (`_time_join`). A copy waiting meanwhile waits on for the join, as long
        again, but never past the cap (`Timing.join_wait_cap`, `_JoinWait.cap`) from its
        start."""
        if not (accept.pipeline and accept.origin == sender == accept.node == self.leader(now)):
            return
        ballot = Ballot(accept.round, accept.node)
        if ballot <= self._record(accept.key).accepted:
            return
        self._leader_rounds[accept.key] = (ballot, _digest(accept.value), now)
        self._leader_rounds.move_to_end(accept.key)
        if len(self._leader_rounds) > CHOSEN_ENTRIES:
            self._leader_rounds.popitem(last=False)
        queue = self._queues.get(accept.key)
        head = queue[0] if queue else None
        if head is not None and head.phase == "wait" and head.began is not None:
            longer = max(head.retry_at, now + self._join_wait.seconds)
            head.retry_at = min(longer, head.began + self._join_wait.cap)

    def _time_join(self, proposal: _Proposal) -> None:
        """Time a copy that joins the value of the leader's own round (`_note_leader_round`)
        from its start. Only such joins teach the wait: the leader's copy comes to it from
        the relay, not from any follower, so how long followers wait does not move these
        delays (session 39 timed every join and the wait learnt its own length; nor does a
        leaderless round after a failover, a resend, or the leader's round for another
        request teach it), nor a copy whose Forward timed out: after a failover the new
        leader's round comes a wait and a round timeout after the copy started, and eight
        such copies held the wait at its cap (review s52b)."""
        if proposal.began is None or proposal.leaderless or proposal.timeouts:
            return  # not started, or its Forward timed out (a failover: review s52b)
        noted = self._leader_rounds.get(proposal.key)
        record = self.source.get(proposal.key)
        if noted is None or record is None:
            return
        ballot, digest, arrived = noted
        if (ballot, digest) == (record.accepted, _digest(record.value)):
            self._join_wait.learn(arrived - proposal.began)

    def _forward(self, proposal: _Proposal, base: Ballot, value: bytes, now: float) -> list[Effect]:
        """Apply the change to `value` (the newest this node knows, accepted at `base`) and
        send the result to the leader, or lead it here if this node is the leader."""
        proposal.forwards += 1
        if proposal.forwards > FORWARDS_PER_PROPOSAL:
            proposal.leaderless = True  # the entry is busy: a leaderless round settles it
            return self._start_round(proposal, now)
        new_value = self._apply(proposal, value)
        if new_value is None:
            # Not a value to build on (a hostile leader's "newest", or one the change cannot
            # go past): a leaderless round finds the newest value itself.
            proposal.leaderless = True
            return self._start_round(proposal, now)
        proposal.forwarded[_digest(new_value)] = (new_value, proposal.outcome)
        proposal.phase = "forward"
        proposal.round_started = now
        proposal.leader = self.leader(now)
        forward = Forward(proposal.op_id, proposal.key, *_ballot(base), new_value)
        if proposal.leader == self.node:
            return self._lead(self.node, forward, now)
        return [Send(proposal.leader, forward)]

    def _on_forward_answer(self, sender: int, message: ForwardAnswer, now: float) -> list[Effect]:
        proposal = self._by_op.get(message.op_id)
        if proposal is None or proposal.phase != "forward" or proposal.leader != sender:
            return []
        if message.retry:
            joined = self._joined(proposal, now)  # the value it missed may be chosen by now
            if joined is not None:
                self._time_join(proposal)
                return self._finish(proposal, joined, now)
            base = Ballot(message.round, message.node)
            return self._forward(proposal, base, message.value, now)
        proposal.leaderless = True
        return self._start_round(proposal, now)

    def _on_not_ready(self, sender: int, message: NotReady, now: float) -> list[Effect]:
        """A leader that is catching up cannot lead: pass it over and try the next one."""
        proposal = self._by_op.get(message.op_id)
        if proposal is None or proposal.phase != "forward" or proposal.leader != sender:
            return []  # otherwise treated as no answer
        self.suspect(sender, now)
        return self._begin(proposal, now)

    def _start_round(self, proposal: _Proposal, now: float) -> list[Effect]:
        if not self.ready:
            # Not caught up: a proposal waits (and may time out) rather than act on stale state.
            proposal.phase = "backoff"
            proposal.retry_at = now + self.timing.sync_retry
            return []
        ballot = Ballot(self._next_round(proposal.key, proposal.ballot), self.node)
        require(ballot > proposal.ballot, "a proposal's ballots only grow")
        proposal.ballot = ballot
        proposal.phase = "prepare"
        proposal.round_started = now
        proposal.promises = {}
        proposal.accepts = set()
        proposal.refusals = set()
        prepare = Prepare(proposal.op_id, proposal.key, *_ballot(proposal.ballot))
        effects = self._deliver_locally(prepare, now)
        if not self._reserved(prepare):
            return effects + self._back_off(proposal, now)
        lead = self._leads.get(proposal.key)
        if lead is not None:
            lead.floor = max(lead.floor, ballot.round)
        return effects + [Send(peer, prepare) for peer in self.peers]

    def _current(self, op_id: bytes, round_: int, node: int, phase: str) -> _Proposal | None:
        proposal = self._by_op.get(op_id)
        if proposal is None or proposal.phase != phase:
            return None
        if proposal.ballot != Ballot(round_, node):
            return None
        return proposal

    def _on_promise(self, sender: int, message: Promise, now: float) -> list[Effect]:
        lead = self._leads.get(message.key)
        if lead is not None and lead.phase == "prepare" and lead.prepare_id == message.op_id:
            return self._lead_on_promise(lead, sender, message, now)
        proposal = self._current(message.op_id, message.round, message.node, "prepare")
        if proposal is None or message.key != proposal.key:
            return []  # also an answer about another entry under this op id (review s60)
        if not message.ok:
            return self._refused_by(proposal, sender, message.promised_round, now)
        proposal.promises[sender] = message
        if len(proposal.promises) < self.quorum:
            return []
        newest = max(
            proposal.promises.values(), key=lambda p: Ballot(p.accepted_round, p.accepted_node)
        )
        if proposal.lifts and not newest.value:
            # A lift writes again what a majority holds, and it holds nothing: word of a
            # value never chosen (a registration staged on t nodes and never committed, or
            # a hostile node's word of one). Retried to its deadline, one such word cost
            # every node about 115 rounds (review s54b).
            return self._finish(proposal, Failed(proposal.op_id, "nothing to write"), now)
        new_value = self._apply(proposal, newest.value)
        if new_value is None:
            # Not a value to build on: a hostile peer's (no acceptor of the fleet took it,
            # each checks what it takes), or one the change cannot go past. The promises
            # reporting it are dropped, as if lost, and the round waits for others (and
            # fails at its deadline, as with no majority, if none come).
            reported = (newest.accepted_round, newest.accepted_node, newest.value)
            for node, promise in list(proposal.promises.items()):
                if (promise.accepted_round, promise.accepted_node, promise.value) == reported:
                    del proposal.promises[node]
            return []
        proposal.accepted_value = new_value
        proposal.phase = "accept"
        accept = Accept(
            proposal.op_id, proposal.key, *_ballot(proposal.ballot), new_value, self.node, False
        )
        return self._send_accept(accept, now)

    def _apply(self, proposal: _Proposal, value: bytes) -> bytes | None:
        """The next value: the change applied once. If an earlier attempt of this proposal
        already got its change into the value (accepted somewhere, then carried forward by
        another proposer), the value is kept as it is and that attempt's outcome stands.

        None if `value` cannot be built on: it does not decode, or the change cannot read
        its payload or number its result (`InvalidInput`). Every acceptor checks the values
        it takes, so such a value reached this node in a hostile peer's Promise or
        ForwardAnswer, or is one a hostile proposer could get taken (a forged tombstone
        whose attempt counter is at 2^64 - 1: the next attempt does not fit). The exception
        used to escape the step: the node closed the stream of whichever peer's message
        came next (an honest one's too), or answered its client with an error, not 503."""
        try:
            current = decode_value(value) if value else ReplicatedValue([], b"")
        except InvalidInput:
            return None
        for applied in current.applied:
            if applied.op_id == proposal.op_id and applied.round in proposal.outcomes:
                proposal.outcome = proposal.outcomes[applied.round]
                return value
        try:
            payload, outcome = proposal.change(current.payload)
        except InvalidInput:
            return None
        proposal.computations += 1
        tag = proposal.computations
        proposal.outcomes[tag] = proposal.outcome = outcome
        recent = [*current.applied, AppliedOp(proposal.op_id, tag)][-RECENT_OPS:]
        return ReplicatedValue(recent, payload).to_bytes()

    def _on_accepted(self, sender: int, message: Accepted, now: float) -> list[Effect]:
        effects = self._lead_on_accepted(sender, message, now)
        proposal = self._by_op.get(message.op_id)
        if (
            proposal is not None
            and message.ok
            and message.key == proposal.key  # a vote for another entry is none for this one
            and message.digest in proposal.forwarded
        ):
            effects += self._forward_on_accepted(proposal, sender, message, now)
        effects += self._accepted_leaderless(sender, message, now)
        if message.ok:
            effects += self._count_chosen(sender, message, now)
        return effects

    # ---- joining: a change that a chosen value already answers ------------------------

    def _count_chosen(self, sender: int, message: Accepted, now: float) -> list[Effect]:
        """Count an acceptor's own answer towards its (ballot, value); once a majority took
        the value this node holds, pending joinable changes that leave it as it is are
        answered from it."""
        votes = self._chosen.get(message.key)
        if votes is None:
            votes = self._chosen[message.key] = {}
            if len(self._chosen) > CHOSEN_ENTRIES:
                self._chosen.popitem(last=False)
        self._chosen.move_to_end(message.key)
        ballot = Ballot(message.round, message.node)
        value = votes.setdefault((ballot, message.digest), _Votes())
        value.acceptors.add(sender)
        if value.chosen_at is None and len(value.acceptors) >= self.quorum:
            value.chosen_at = now
            self._chosen_seq += 1
            value.chosen_seq = self._chosen_seq
        unsettled = self._unsettled.get(message.key)
        if (
            unsettled is not None
            and len(value.acceptors) == len(self.nodes)
            and (unsettled.ballot, unsettled.digest) == (ballot, message.digest)
        ):
            del self._unsettled[message.key]  # every node took it: settled
        while len(votes) > CHOSEN_BALLOTS:
            del votes[min(votes)]
        queue = self._queues.get(message.key)
        if not queue:
            return []
        effects: list[Effect] = []
        # The head last: finishing it starts the next one in the queue.
        for proposal in [*list(queue)[1:], queue[0]]:
            joined = self._joined(proposal, now)
            if joined is None:
                continue
            self._time_join(proposal)
            if proposal is queue[0]:
                effects += self._finish(proposal, joined, now)
            else:
                queue.remove(proposal)
                del self._by_op[proposal.op_id]
                effects.append(joined)
        return effects

    def _joined(self, proposal: _Proposal, now: float) -> Committed | None:
        """The proposal answered from the value this node itself accepted for its entry, if
        a majority of acceptors answered that they took the same value at the same ballot
        (so it is chosen), lately, and the change leaves it as it is: the change is then
        linearized right after that value, and writing it again would only make N rounds
        of one. Lately (within a round's timeout): the copies of one request arrive
        together, and a node cut off from later values does not answer from an old one
        for long (its own round brings it the newest)."""
        if not proposal.joinable or not self.ready:
            return None
        record = self.source.get(proposal.key)
        if record is None or not record.value:
            return None
        votes = self._chosen.get(proposal.key, {}).get((record.accepted, _digest(record.value)))
        if votes is None or votes.chosen_at is None:
            return None
        if now > votes.chosen_at + self.timing.round_timeout:
            return None
        if proposal.fresh_after is not None and votes.chosen_seq <= proposal.fresh_after:
            return None  # chosen before this change was asked for: not news enough
        try:
            current = decode_value(record.value)
            if any(applied.op_id == proposal.op_id for applied in current.applied):
                return None  # its own round got it in: that round reports it
            payload, outcome = proposal.change(current.payload)
        except InvalidInput:
            return None  # not a value the change can build on: its round says so (`_apply`)
        if payload != current.payload:
            return None
        proposal.outcome = outcome
        return Committed(proposal.op_id, outcome)

    def _forward_on_accepted(
        self, proposal: _Proposal, sender: int, message: Accepted, now: float
    ) -> list[Effect]:
        """An acceptor took a value this node forwarded. Committed once a majority took the
        same value at the same ballot: counted here from the acceptors' own answers, so a
        leader that lies about a commit, or swaps the value, cannot make this node act."""
        ballot = Ballot(message.round, message.node)
        voters = proposal.votes.setdefault((ballot, message.digest), set())
        voters.add(sender)
        if len(voters) < self.quorum:
            return []
        value, outcome = proposal.forwarded[message.digest]
        # Kept as an assert: `forwarded` is keyed by digest and the count is checked just
        # above; an always-on check would hash the value again on every commit.
        assert _digest(value) == message.digest and len(voters) >= self.quorum
        proposal.outcome = outcome
        took = now - proposal.round_started
        self._round_seconds = 0.8 * self._round_seconds + 0.2 * took
        # Every node that did not vote, this one included: its own acceptor may have refused
        # (its abandoned leaderless round raised its promise). The leader repairs them
        # (`_lead_on_accepted`): an acceptor takes a ballot only from its own node. If
        # this node is that leader, its hold may have been dropped before the value was
        # chosen, and so made no repair: it makes it here. Another node's dropped hold
        # repairs nobody; that node settles the value it took, as the ballot's own node
        # (`_settle`: every entry the fleet holds is announced).
        laggards = set(self.nodes) - voters
        if laggards and ballot.node == self.node:
            accept = Accept(proposal.op_id, proposal.key, *_ballot(ballot), value, self.node, True)
            self._add_repair(accept, laggards, now, lifted=proposal.lifts)
        return self._finish(proposal, Committed(proposal.op_id, outcome), now)

    def _accepted_leaderless(self, sender: int, message: Accepted, now: float) -> list[Effect]:
        repair = self._repairs.get(message.op_id)
        if repair is not None and (message.key, message.round, message.node) == (
            repair.accept.key,
            repair.accept.round,
            repair.accept.node,
        ):
            if message.digest and message.digest != _digest(repair.accept.value):
                return []  # an answer to another value under the ballot: a forgery's
            # Acknowledged: that node no longer lags. Refused by its own check of the value
            # (not its promise): final for this value, since neither a resend nor a rewrite
            # above its promise changes what it checks (docs/threshold.md, "Catching up").
            # Refused by its promise: it promised a higher ballot, which need not carry
            # this value (a cut-off node's own failed proposal raises its promise); `tick`
            # then rewrites the value above that promise.
            # Refused again after a no-op round lifted the value above its promise: given
            # up. A hostile node refuses every ballot; lifted for each refusal, it had the
            # fleet run a round every two seconds for ever, for every entry it lagged on.
            # Refused with a promise below the ballot: it is climbing toward a ballot too far
            # above its rounds (a walk left it behind, `_reach`), and each resend climbs it
            # on, so it stays pending (a check's refusal names the ballot itself). Until
            # review s50 one whose promise did not rise was dropped as refused by its
            # check, and a refusal that came twice or late dropped a node still climbing.
            ballot = Ballot(message.round, message.node)
            promised = Ballot(message.promised_round, message.promised_node)
            climbing = not message.ok and promised < ballot
            if message.ok or _refused_by_check(message) or (repair.lifted and not climbing):
                repair.pending.discard(sender)
            elif not climbing:
                repair.refused = True
                self._learn_round(repair.accept.key, sender, message.promised_round, ballot)
            if not repair.pending:
                del self._repairs[message.op_id]
            return []
        proposal = self._current(message.op_id, message.round, message.node, "accept")
        if proposal is None or message.key != proposal.key:
            return []
        if _about_another_value(message, proposal.accepted_value):
            return []  # an answer to another value under the ballot: a forgery's
        if not message.ok:
            if sender in proposal.accepts:
                # It took this round's value, then refused another under the same ballot
                # (a forgery naming this node as origin): not a refusal of this value.
                return []
            return self._refused_by(proposal, sender, message.promised_round, now)
        proposal.accepts.add(sender)
        if len(proposal.accepts) < self.quorum:
            return []
        # Committed only on a majority of Accepted for this very ballot and value.
        require(
            len(proposal.promises) >= self.quorum and proposal.phase == "accept",
            "committed without a majority's promise",
        )
        # Both phases of the round that committed, averaged over recent commits.
        took = now - proposal.round_started
        self._round_seconds = 0.8 * self._round_seconds + 0.2 * took
        laggards = set(self.nodes) - proposal.accepts  # this node too, as above
        if laggards:
            accept = Accept(
                proposal.op_id,
                proposal.key,
                *_ballot(proposal.ballot),
                proposal.accepted_value,
                self.node,
                False,
            )
            self._add_repair(accept, laggards, now, lifted=proposal.lifts)
        return self._finish(proposal, Committed(proposal.op_id, proposal.outcome), now)

    def _add_repair(
        self,
        accept: Accept,
        laggards: set[int],
        now: float,
        lifted: bool,
        resend_at: float | None = None,
    ) -> None:
        """Resend this node's own `accept` to `laggards` from `resend_at` on (by default a
        round's timeout on: late answers name its op id and take nodes off the list first),
        for the repair window.
        An op id of a forwarded change is the forwarding node's choice: a repair of another
        entry under it already (a hostile node's Forward naming an honest change's id)
        keeps its place, and this one takes an id of its own (until review s54b the later
        replaced the earlier, or, kept, was itself left out); one of the same entry and
        ballot is this very repair, made on the other path that counted the commit."""
        existing = self._repairs.get(accept.op_id)
        if existing is not None and existing.accept.key == accept.key:
            if (existing.accept.round, existing.accept.node) == (accept.round, accept.node):
                return
        elif existing is not None:
            accept = replace(accept, op_id=self._rng(16))
        self._repairs[accept.op_id] = _Repair(
            accept,
            laggards,
            now + self.timing.repair_window,
            now + self.timing.round_timeout if resend_at is None else resend_at,
            lifted=lifted,
        )

    def _refused_by(
        self, proposal: _Proposal, sender: int, promised_round: int, now: float
    ) -> list[Effect]:
        """An acceptor refused this round's ballot (its promise is higher, or its check
        refuses the value): back off only once so many refused that no majority is left
        to answer yes. A refusal is a peer's word, and a hostile node refuses every
        ballot at once: backing off on the first refusal made one such node fail every
        round (and every leader hold, `_lead_refused`) while all the others promised."""
        self._learn_round(proposal.key, sender, promised_round, proposal.ballot)
        proposal.refusals.add(sender)
        if len(proposal.refusals) <= len(self.nodes) - self.quorum:
            return []
        return self._back_off(proposal, now)

    def _back_off(self, proposal: _Proposal, now: float) -> list[Effect]:
        """Another proposer holds a higher ballot: wait a random, growing while, then retry."""
        proposal.conflicts += 1
        # A backoff shorter than a round cannot separate duelling proposers: on a slow
        # fleet (load, fsync) the cap follows the rounds this node has seen commit.
        cap = max(self.timing.backoff_max, 2 * self._round_seconds)
        ceiling = min(cap, self.timing.backoff_min * (2 ** min(proposal.conflicts, 10)))
        jitter = int.from_bytes(self._rng(4), "big") / 2**32
        proposal.phase = "backoff"
        proposal.retry_at = now + self.timing.backoff_min + jitter * ceiling
        return []

    def _finish(self, proposal: _Proposal, result: Committed | Failed, now: float) -> list[Effect]:
        del self._by_op[proposal.op_id]
        queue = self._queues[proposal.key]
        queue.remove(proposal)
        effects: list[Effect] = []
        if queue:
            effects += self._begin(queue[0], now)
        else:
            del self._queues[proposal.key]
        # The result goes last: the next change's round may have this node's own acceptor
        # take a value in this same step (the leader's Accept to itself), which the
        # application's hook sees at once; what the result sets off (an evaluation that
        # rests on this node's own acceptance) must wait until that write is durable
        # (sim seed 10330086).
        return [*effects, result]

    # ---- settling: every value this node took reaches every node ---------------------

    def _settle(self, now: float) -> list[Effect]:
        """Values this node accepted that it has not seen every node take, once due.

        A proposer repairs the nodes that missed the value it committed (`_Repair`), but
        that repair lives in its memory, and a value that no proposer saw committed (its
        round lost its majority under faults, after some acceptors took it) is repaired by
        nobody. Either leaves nodes holding different values for good, once no client
        asks about the entry again: a destroyed entry live on some disks (docs/soak.md,
        runs J, L, M). So every acceptor of an announced entry's value looks again after
        `settle_after`: taken by every node (each acceptor announces its answer), nothing
        to do; chosen but not taken by some, the acceptors that took it, lowest-numbered
        first and each next one later (so a crashed repairer is stood in for), resend it
        to those as a repair; not seen chosen, this node runs a no-op round, which commits the
        newest value a majority holds (this node's own, unless a newer one exists) and
        repairs whoever lags in turn. Each acceptor still checks every value it is sent."""
        effects: list[Effect] = []
        # The keys under repair, listed at most once a tick and only when a chosen value
        # needs one: asked per key, the scan of every repair made settling N keys
        # quadratic in N (a tick settling 4,000 made-up names took 1.6 s: review s48).
        repairing: set[bytes] | None = None
        for key, unsettled in list(self._unsettled.items()):
            if unsettled.due > now:
                continue
            del self._unsettled[key]
            record = self.source.get(key)
            if (
                record is None
                or record.accepted != unsettled.ballot
                or _digest(record.value) != unsettled.digest
                or now >= unsettled.until
            ):
                continue  # a newer value here settles itself; or it is given up
            votes = self._chosen.get(key, {}).get((unsettled.ballot, unsettled.digest))
            if votes is not None and len(votes.acceptors) == len(self.nodes):
                continue
            if votes is not None and votes.chosen_at is not None:
                if repairing is None:
                    repairing = {repair.accept.key for repair in self._repairs.values()}
                if key not in repairing:
                    effects += self._repair_missing(key, record, votes, unsettled, now)
                    repairing.add(key)
                # Looked at again until its window ends, so a no-op round's value (the
                # same entry state) goes on settling where this one was (`_store`).
                self._again(key, unsettled, now)
                continue
            if key not in self._queues:
                effects += self.propose(self._rng(16), key, _unchanged, now)
            self._again(key, unsettled, now)
        return effects

    def _repair_missing(
        self, key: bytes, record: AcceptorRecord, votes: _Votes, unsettled: _Unsettled, now: float
    ) -> list[Effect]:
        """A chosen value some nodes have not taken: the node whose ballot chose it resends
        its Accept to them, and the other acceptors that took it stand in after it, one by
        one and later each time, while they still lag (the ballot's node may have crashed,
        and a repair lives in memory: sim seed 10440080, where the repairers crashed and a
        node that had missed the value came back intact with nobody left to repair it).

        A stand-in's copy of that Accept is not taken (an acceptor takes a ballot only
        from its own node, or a hostile node could send any value under an honest ballot
        and honest disks would hold two values under one: review s50b, S1): it tells each
        node that missed the value that it was chosen, and one that holds an older value
        brings itself the chosen one with a no-op round of its own (`_relayed`)."""
        ballot = record.accepted
        # The ballot's own node first, then the others that took it by number.
        acceptors = sorted(votes.acceptors, key=lambda node: (node != ballot.node, node))
        rank = acceptors.index(self.node) if self.node in acceptors else len(acceptors)
        if rank > unsettled.tries:
            return []
        missing = set(self.nodes) - votes.acceptors - {self.node}
        # Sent as it was sent to this node: a leader's Accept (pipelined) also promised the
        # ballot's successor, and a laggard that takes it promises what the others did.
        pipelined = record.promised == Ballot(ballot.round + 1, ballot.node)
        accept = Accept(self._rng(16), key, *_ballot(ballot), record.value, self.node, pipelined)
        if self.node != ballot.node:
            return [Send(peer, accept) for peer in sorted(missing)]
        lifted = now < self._lifted_at.get(key, -math.inf) + self.timing.repair_window
        self._add_repair(accept, missing, now, lifted, resend_at=now)  # settling is late already
        return []

    def _relayed(self, sender: int, accept: Accept, now: float) -> list[Effect]:
        """An Accept under another node's ballot: a stand-in's word that its value was
        chosen (`_repair_missing`), or a hostile node's forgery. Never taken, and not
        answered. A node that holds an older value for the entry, and whose check would
        take this one, looks again one round's timeout later (`_act_on_hints`): a real
        Accept on its way (a hostile node's copy of a fresh one can overtake it) then makes
        the word moot. A node holding nothing for the entry does so only for a value the
        application says is worth fetching (`FetchHook`: a live entry's, which needs t
        nodes' acknowledgements, where an empty value or a tombstone, which anyone can name,
        needs none; a staged name never committed passes too, and its round ends on finding
        nothing to write: `_on_promise`). Each peer's
        words hold at most `HINTS_PER_PEER` places: a flood of one peer's (a hostile
        node's, for entries it made) pushed an honest stand-in's out before it came due
        (review s54b)."""
        record = self._record(accept.key)
        ballot = Ballot(accept.round, accept.node)
        if record.accepted >= ballot or self._check_refuses(accept, record):
            return []
        if not record.value and not (
            self._worth_fetching is not None
            and self._worth_fetching(accept.key, payload_of(accept.value))
        ):
            return []
        held = self._hints.get(accept.key)
        if held is None and self._hints_from[sender] < HINTS_PER_PEER:
            self._hints[accept.key] = (ballot, now + self.timing.round_timeout, sender)
            self._hints_from[sender] += 1
        elif held is not None and held[0] < ballot:
            # A higher ballot keeps the time and place of the first word: moved back each
            # time, a hostile node's words a round apart put the round off for good.
            self._hints[accept.key] = (ballot, held[1], held[2])
        return []

    def _act_on_hints(self, now: float) -> list[Effect]:
        """A node still behind a value a stand-in said was chosen runs a no-op round of its
        own (`_lift`), at most once a `repair_interval` per entry (as often as a repair
        resends): a majority holds whatever was chosen, so the round brings it here under
        this node's own ballot, checked as any value is. One whose check refuses the value
        would refuse its own round's too (a node holding a tombstone the others never
        chose): it waits for the entry's next change. A hostile node's Accepts so cost each
        node at most a round an entry a second, as its Forwards to an honest leader do."""
        effects: list[Effect] = []
        for key, (ballot, due, sender) in list(self._hints.items()):
            if due > now:
                break  # kept in the order they come due: each waits the same time
            del self._hints[key]
            self._hints_from[sender] -= 1
            if (
                self._record(key).accepted >= ballot
                or key in self._queues
                or now < self._lifted_at.get(key, -math.inf) + self.timing.repair_interval
            ):
                continue
            effects += self._lift(key, now)
        return effects

    def _lift(self, key: bytes, now: float) -> list[Effect]:
        """A no-op round (value unchanged) that writes the chosen value above whoever lags
        and repairs them in turn; its repair gives up on a node that refuses it too."""
        if len(self._lifted_at) >= LIFTS_KEPT:  # only those within the window matter
            window = self.timing.repair_window
            self._lifted_at = {k: t for k, t in self._lifted_at.items() if now < t + window}
        self._lifted_at[key] = now
        lift = _Proposal(self._rng(16), key, _unchanged, now + self.timing.deadline, lifts=True)
        return self._submit(lift, now)

    def _again(self, key: bytes, unsettled: _Unsettled, now: float) -> None:
        unsettled.tries += 1
        wait = self.timing.settle_after * 2**unsettled.tries
        unsettled.due = now + min(wait, self.timing.settle_max)
        self._unsettled[key] = unsettled

    # ---- leader -----------------------------------------------------------------------

    def _lead(self, origin: int, forward: Forward, now: float) -> list[Effect]:
        """Take a forwarded change. Changes to one entry are served one at a time, in the
        order they arrive; different entries proceed independently."""
        lead = self._leads.get(forward.key)
        if lead is None:
            if not self._room_for_a_lead():
                answer = ForwardAnswer(forward.op_id, forward.key, False, 0, 0, b"")
                return self._to(origin, answer, now)  # every hold busy: go leaderless
            lead = self._leads[forward.key] = _Lead(forward.key)
        self._leads.move_to_end(forward.key)
        # An honest node has one change per entry in flight, so one Forward: the newest
        # takes the place of an older one from the same node, which is dropped as if lost
        # (a duplicate, or its change has gone leaderless or was sent again). A hostile
        # node's Forwards for one entry grew the queue without bound while a round was
        # in flight.
        waiting = [i for i, (queued, _) in enumerate(lead.queue) if queued == origin]
        if waiting:
            lead.queue[waiting[0]] = (origin, forward)
        else:
            lead.queue.append((origin, forward))
        return self._lead_next(lead, now)

    def _room_for_a_lead(self) -> bool:
        """Make room for one more entry's hold within `LEADER_ENTRIES`, forgetting the least
        recently used holds that have no round in flight; False if every hold has one.

        A hold with a round in flight (in `_leading`; only such a hold has changes waiting)
        stays until the round ends or `tick` drops it. One found at the front is moved behind the
        others, so it is passed over once per round of the table, not at every new entry.
        Room used to be made after the new entry went in, which, idle with its change not
        queued yet, was the one forgotten when every other hold had a round in flight: a
        KeyError escaped the step (a peer's 4,097 Forwards for new entries in one frame).
        """
        while len(self._leads) >= LEADER_ENTRIES:
            if len(self._leading) >= len(self._leads):
                return False
            key = next(iter(self._leads))
            if key in self._leading:
                self._leads.move_to_end(key)
            else:
                del self._leads[key]  # forgetting a promise is always safe
        return True

    def _holds(self, lead: _Lead, now: float) -> bool:
        """Whether the leader may send an Accept at `lead.held` without a Prepare: a
        majority promised it, recently enough that no acceptor can have forgotten the
        promise in a rollback and caught up around it (the quarantine in `_sync_complete`
        outlasts `deadline`, as for a proposer's round), and a majority answered this node
        lately (as an acceptor: a node catching up does not count), so a change with no
        majority up is refused before anything is written."""
        fresh = sum(
            1 for p in self.peers if now - self._heard.get(p, -1e9) <= self.timing.leader_lease
        )
        return (
            lead.phase == "ready"
            and lead.held.round > lead.floor
            and len(lead.promised) >= self.quorum
            and now < lead.since + self.timing.deadline
            and fresh + 1 >= self.quorum
        )

    def _lead_next(self, lead: _Lead, now: float) -> list[Effect]:
        effects: list[Effect] = []
        while lead.queue and lead.phase in ("idle", "ready"):
            if not self._holds(lead, now):
                return effects + self._lead_prepare(lead, now)
            origin, forward = lead.queue.popleft()
            if Ballot(forward.base_round, forward.base_node) != lead.base:
                answer = ForwardAnswer(
                    forward.op_id, lead.key, True, *_ballot(lead.base), lead.value
                )
                effects += self._to(origin, answer, now)
                continue
            # The one round: a majority promised `held`, and the value builds on the newest
            # value among them, so this Accept is phase 2 of a complete Paxos round.
            require(len(lead.promised) >= self.quorum, "leader Accept without a majority's promise")
            require(lead.base < lead.held, "a value built on a ballot at or above its own")
            accept = Accept(
                forward.op_id, lead.key, *_ballot(lead.held), forward.value, origin, True
            )
            lead.phase = "accept"
            self._leading[lead.key] = None
            lead.accept = accept
            lead.origin = origin
            lead.accepts = set()
            lead.refusals = set()
            lead.started = now
            effects += self._send_accept(accept, now)
        return effects

    def _lead_prepare(self, lead: _Lead, now: float) -> list[Effect]:
        """Phase 1 for one entry: a fresh ballot, promised by a majority before use."""
        lead.held = Ballot(self._next_round(lead.key, lead.held), self.node)
        lead.phase = "prepare"
        self._leading[lead.key] = None
        lead.prepare_id = self._rng(16)
        lead.promised = set()
        lead.promises = {}
        lead.refusals = set()
        lead.started = now
        prepare = Prepare(lead.prepare_id, lead.key, *_ballot(lead.held))
        effects = self._deliver_locally(prepare, now)
        if not self._reserved(prepare):
            return effects + self._drop_lead(lead, now)
        return effects + [Send(peer, prepare) for peer in self.peers]

    def _lead_on_promise(
        self, lead: _Lead, sender: int, message: Promise, now: float
    ) -> list[Effect]:
        if Ballot(message.round, message.node) != lead.held:
            return []
        if not message.ok:
            return self._lead_refused(lead, sender, message.promised_round, now)
        lead.promises[sender] = message
        if len(lead.promises) < self.quorum:
            return []
        newest = max(
            lead.promises.values(), key=lambda p: Ballot(p.accepted_round, p.accepted_node)
        )
        lead.base = Ballot(newest.accepted_round, newest.accepted_node)
        lead.value = newest.value
        lead.promised = set(lead.promises)
        lead.promises = {}
        lead.since = now
        lead.phase = "ready"
        self._leading.pop(lead.key, None)
        return self._lead_next(lead, now)

    def _lead_on_accepted(self, sender: int, message: Accepted, now: float) -> list[Effect]:
        lead = self._leads.get(message.key)
        if (
            lead is None
            or lead.phase != "accept"
            or lead.accept is None
            or lead.accept.op_id != message.op_id
            or Ballot(message.round, message.node) != lead.held
        ):
            return []
        if _about_another_value(message, lead.accept.value):
            return []  # not an answer to what this node sent
        if not message.ok:
            return self._lead_refused(lead, sender, message.promised_round, now)
        if Ballot(message.promised_round, message.promised_node) < lead.held.next_above(
            lead.held.node
        ):
            # Taken without the pipelined promise (a hostile node's replay with the flag
            # cleared, delivered first): it promised only `held`, so it is no phase 1 of
            # `held` + 1, which the next change skips (review s51). The real Accept, or its
            # repeat, is answered with that promise.
            return []
        lead.accepts.add(sender)
        if len(lead.accepts) < self.quorum:
            return []
        # Chosen; and each of these acceptors promised held + 1 in the same write, with
        # this value as its newest: phase 1 of the next ballot is already done.
        laggards = set(self.nodes) - lead.accepts
        if laggards:
            # Resent as sent, by this node alone: an acceptor takes a ballot only from its
            # own node. A node that refuses it for a higher promise is lifted once (a lift
            # never comes through here: `_begin`); a lift's own repair gives up on it.
            self._add_repair(lead.accept, laggards, now, lifted=False)
        lead.base = lead.held
        lead.value = lead.accept.value
        lead.held = Ballot(lead.held.round + 1, self.node)
        lead.promised = set(lead.accepts)
        lead.since = now
        lead.accept = None
        lead.phase = "ready"
        self._leading.pop(lead.key, None)
        return self._lead_next(lead, now)

    def _lead_refused(
        self, lead: _Lead, sender: int, promised_round: int, now: float
    ) -> list[Effect]:
        """As `_refused_by` for a proposal: the hold is given up only once no majority is
        left to answer yes, not on one (possibly hostile) refusal."""
        self._learn_round(lead.key, sender, promised_round, lead.held)
        lead.refusals.add(sender)
        if len(lead.refusals) <= len(self.nodes) - self.quorum:
            return []
        return self._drop_lead(lead, now)  # a majority is out of reach at this ballot

    def _drop_lead(self, lead: _Lead, now: float) -> list[Effect]:
        """Give the entry up (refused, or too slow): every change waiting here, and the one
        in flight, goes leaderless at the node that asked. The in-flight Accept may still
        be taken by a majority; the asking node counts that itself."""
        waiting = [(lead.origin, lead.accept.op_id)] if lead.accept is not None else []
        waiting += [(origin, forward.op_id) for origin, forward in lead.queue]
        del self._leads[lead.key]
        self._leading.pop(lead.key, None)
        effects: list[Effect] = []
        for origin, op_id in waiting:
            answer = ForwardAnswer(op_id, lead.key, False, 0, 0, b"")
            effects += self._to(origin, answer, now)
        return effects

    def _to(self, node: int, message: ForwardAnswer, now: float) -> list[Effect]:
        if node == self.node:
            return self._on_forward_answer(self.node, message, now)
        return [Send(node, message)]

    # ---- catching up ------------------------------------------------------------------

    def _on_sync_response(self, sender: int, message: SyncResponse, now: float) -> list[Effect]:
        asked = self._sync_ids.get(message.sync_id)
        if self.ready or asked is None or (sender, message.sync_id) not in self._unanswered:
            return []
        held = self._sync_responses.get(sender)
        if held is not None and held[0] > asked:
            return []  # an answer to an older ask, overtaken by a newer one
        progress = self._sync_progress.get(sender, Mark())
        if message.since and (message.store_id, message.since) != (
            progress.store_id,
            progress.upto,
        ):
            return []  # a page that does not continue what was merged (a duplicate)
        self._unanswered.discard((sender, message.sync_id))  # one page merged per ask
        # Merged as pages arrive: a merge only raises promises and takes newer accepted
        # values, and this node answers no Prepare or Accept before it is ready.
        effects: list[Effect] = []
        for theirs in message.records:
            mine = self._record(theirs.key)
            if not _holdable(theirs):
                continue  # no acceptor takes such a round: not an honest node's record
            if (
                not self._started_empty
                and theirs.key not in self._own_values
                and self.source.copied_before_start(theirs.key)
            ):
                # Copied by a catch-up the node was stopped during: what it held before
                # is lost with the map, and the copy (perhaps a sibling of the chosen
                # value) is no value of its own. Checked as a wiped node's copies are.
                self._own_values[theirs.key] = b""
            merged = _merge(mine, theirs, take_value=self._copy_taken(mine, theirs))
            if merged.value != mine.value and not self._started_empty:
                self._own_values.setdefault(theirs.key, mine.value)
            if merged != self.source.get(theirs.key):
                effects.append(self._store(merged, "copy"))
        mark = Mark(message.store_id, message.upto)
        self._sync_progress[sender] = mark
        self.source.set_mark(sender, mark)  # durable with the copies, never ahead of them
        self._paged_at[sender] = now
        if message.more:
            if self._latest_ask.get(sender) != message.sync_id:
                return effects  # a newer ask to this peer is out: its answer goes on
            return effects + self._ask_pages([sender])
        self._sync_responses[sender] = (asked, message)
        if self._sync_complete():
            effects += self._finish_sync()
        return effects

    def _copy_taken(self, mine: AcceptorRecord, theirs: AcceptorRecord) -> bool:
        """Whether a peer's newer accepted value passes this node's check for a copy: a
        peer may be hostile, and a value a copy puts here is what this acceptor checks
        every later proposal against (docs/threshold.md, "Catching up").

        Checked against what this node itself held before this catch-up, never against
        another peer's copy merged earlier in it: that copy may be a sibling of the chosen
        value (accepted by a minority, never chosen), and refusing the chosen value
        against it made the node forget an acceptance it had given before its disk was
        rolled back or wiped, so a majority could then commit a value that does not build
        on the chosen one (sim seeds 9300379, 9101607). Which peer answers first must not
        decide what the node holds."""
        if theirs.accepted <= mine.accepted or self._check_copy is None:
            return True  # not newer (only the promise is merged), or nothing to check
        try:
            payload = payload_of(theirs.value)
            own = b"" if self._started_empty else self._own_values.get(theirs.key, mine.value)
            held = payload_of(own)
        except InvalidInput:
            return False
        return self._check_copy(theirs.key, payload, held) is None

    def _finish_sync(self) -> list[Effect]:
        self.ready = True
        self._sync_responses = {}
        self._own_values = {}
        self._started_empty = False
        return []

    def _sync_complete(self) -> bool:
        """Whether this node may trust what it merged from the answers so far.

        Every peer answered: then every promise or acceptance this node gave before the
        restart and has forgotten is known to the proposer that asked for it (a proposer's
        own acceptor records its ballot before the messages leave), so the merge restores
        it. No timing assumption.

        Otherwise, a majority of caught-up peers covers every value a majority *accepted*,
        but not a promise or acceptance this node gave to a proposer that is not among
        them, which that proposer could still combine with new votes into a majority. So
        this path waits out the quarantine (longer than a proposer's deadline plus message
        transit, after which no round that used such a vote can still act) and counts only
        answers to asks sent after it: an answer given while such a round went on may
        miss the value it chose with this node's forgotten vote, and the node would then
        help choose another (docs/fleet.md, "Catching up")."""
        if len(self._sync_responses) == len(self.peers):
            return True
        ready = sum(1 for asked, r in self._sync_responses.values() if self._fresh(asked, r))
        return ready >= self.quorum  # fresh answers come only once the quarantine has passed

    def _fresh(self, asked: int, answer: SyncResponse) -> bool:
        """A ready peer's answer to an ask sent once the quarantine had passed."""
        return answer.ready and self._fresh_ask is not None and asked >= self._fresh_ask

    def _paging(self, peer: int, now: float) -> bool:
        """Whether `peer` has no complete answer yet and sent a page within `sync_retry`
        (its pages are still coming: asked again, it would start a second chain)."""
        return (
            peer not in self._sync_responses
            and now - self._paged_at.get(peer, -1e9) < self.timing.sync_retry
        )

    def _stale(self, asked: int, answer: SyncResponse) -> bool:
        """An answer to ask again: "not ready" (the peer may be caught up by now), or
        older than the ask sent once the quarantine had passed (its answer was lost)."""
        return not answer.ready or (self._fresh_ask is not None and asked < self._fresh_ask)


def _value_ok(value: bytes, *, empty: bool = True) -> bool:
    """Whether a peer's message may carry `value`: at most `MAX_VALUE_BYTES`, and (unless
    empty, where `empty` allows it) a value an honest proposer makes (`well_formed`)."""
    if not value:
        return empty
    return len(value) <= MAX_VALUE_BYTES and well_formed(value)


def _holdable(record: AcceptorRecord) -> bool:
    """Whether an honest acceptor can hold `record`: it takes no ballot at or above
    `ROUND_CEILING`, and promises at most the successor of one it took (a pipelined
    Accept). A catch-up copy is otherwise taken however far above this node's own rounds
    it is: a peer's honest record may stand many steps above them (a hostile node walked
    that entry up a step at a time, or this node's store was wiped), and skipping it made
    the node forget a promise or an acceptance it gave before the restart, so two values
    could be chosen (`test_a_wiped_node_keeps_an_acceptance_whose_round_a_hostile_node_
    walked_up`). A hostile peer can so lift this node's promise for an entry at once:
    that stalls this node alone on it, which its own refusal could do anyway."""
    return record.accepted.round < ROUND_CEILING and record.promised.round <= ROUND_CEILING


def _promise(message: Prepare, record: AcceptorRecord, ok: bool) -> Promise:
    """An acceptor's answer to `message` from `record`: its promise, and if it promised the
    ballot, its newest acceptance."""
    return Promise(
        message.op_id,
        message.key,
        message.round,
        message.node,
        ok,
        record.accepted_round,
        record.accepted_node,
        record.value if ok else b"",
        record.promised_round,
        record.promised_node,
    )


def _spend(
    budgets: OrderedDict[tuple[int, bytes], tuple[int, float]],
    peer_entry: tuple[int, bytes],
    want: int,
    now: float,
) -> int:
    """The rounds of `want` that a peer's climbing budget for an entry in `budgets` grants,
    spent: it holds `CLIMB_BURST_STEPS` at most and fills at `CLIMB_STEPS_PER_SECOND`. The
    `LEARNED_ENTRIES` last used are kept; one forgotten is full again, which a peer buys
    with that many messages for other entries (a free step each walks more)."""
    burst = CLIMB_BURST_STEPS * MAX_ROUND_STEP
    budget, at = budgets.pop(peer_entry, (burst, now))
    refill = int(max(0.0, now - at) * CLIMB_STEPS_PER_SECOND * MAX_ROUND_STEP)
    budget = min(budget + refill, burst)
    granted = min(want, budget)
    budgets[peer_entry] = (budget - granted, now)
    if len(budgets) > LEARNED_ENTRIES:
        budgets.popitem(last=False)
    return granted


def _answer(message: Accept, promised: Ballot, ok: bool) -> Accepted:
    """An acceptor's answer to `message`, naming its promise and the value's digest, taken
    or refused (the asking node counts only answers for its own value: a hostile node's
    Accept of another value under the ballot had its refusal, sent to the ballot's origin
    too, end a repair of an honest node, review s50b)."""
    digest = _digest(message.value)
    return Accepted(
        message.op_id, message.key, message.round, message.node, ok, *_ballot(promised), digest
    )


def _about_another_value(message: Accepted, value: bytes) -> bool:
    """Whether `message` answers for another value than `value` under its ballot (a
    forgery's): its digest names another, or it took a value it does not name. A refusal
    may name none (an older node's: refusals named no value before session 50)."""
    return message.digest != _digest(value) and (bool(message.digest) or message.ok)


def _refused_by_check(message: Accepted) -> bool:
    """A refusal by the acceptor's own check of the value (`Replica._check_refuses`): it
    promises the Accept's ballot and names it (`Replica._acceptor`). A refusal on its
    promise names a higher one; one out of its reach, a lower one (`Replica._climb`)."""
    promised = Ballot(message.promised_round, message.promised_node)
    return not message.ok and promised == Ballot(message.round, message.node)


def _unchanged(value: bytes) -> tuple[bytes, Any]:
    return value, None


def _ballot(ballot: Ballot) -> tuple[int, int]:
    return ballot.round, ballot.node


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _merge(mine: AcceptorRecord, theirs: AcceptorRecord, take_value: bool = True) -> AcceptorRecord:
    """The newest accepted value and the highest promise of two copies of a record; with
    `take_value` False, this node's own value whatever the ballots (a promise is only ever
    stricter: it refuses lower ballots, and carries no value)."""
    accepted = theirs if take_value and theirs.accepted > mine.accepted else mine
    promised = max(mine.promised, theirs.promised, accepted.accepted)
    return AcceptorRecord(
        mine.key,
        promised.round,
        promised.node,
        accepted.accepted_round,
        accepted.accepted_node,
        accepted.value,
    )
