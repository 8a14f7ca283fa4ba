"""The deterministic simulation: the real node code of every node in one process (a real
`fleet.replica.Replica` and the firmware's threshold logic, `hsm.shares.ShareKeeper`),
driven by a seeded scheduler over a simulated clock and a faulty network, with threshold
clients (`clients.py`) and, as a world option, hostile nodes run by an attacker.

A run is a `Plan` (made from the seed: fleet size, network chaos, client operations,
faults, relay replays) executed by `Simulation`. Everything random in a run that decides
anything (message loss, delays, duplicates, the replicas' random bytes) comes from the
seed, so a seed reproduces exactly; the plan can be shrunk by removing steps (see
`shrink.py`). Tests that script an attacker drive the same world synchronously
(`threshold_world`, `Simulation.request`, `ThresholdClient`).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
import traceback
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.codec import Message, decode_any
from backupvault.crypto import manifest, oprf, threshold
from backupvault.crypto.seal import Kem, NodePrivateKey
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    Accept,
    Accepted,
    AcceptorRecord,
    Forward,
    Prepare,
    Promise,
    ReplicatedValue,
    SyncRequest,
    SyncResponse,
    payload_of,
)
from backupvault.fleet.records import MAX_ROUND_STEP, MemoryRecords
from backupvault.fleet.replica import (
    DEFAULT_TIMING,
    JOIN_WAIT_CAP,
    JOIN_WAIT_MARGIN,
    ROUND_CEILING,
    Committed,
    Effect,
    Failed,
    Persist,
    Replica,
    Send,
    Timing,
)
from backupvault.hsm.firmware import delivered_share
from backupvault.hsm.shares import (
    EXHAUSTED_GRACE_SECONDS,
    UNKNOWN_B,
    Answer,
    FleetShape,
    ShareKeeper,
    ThresholdRead,
    ThresholdUpdate,
    check_threshold_value,
    count_entries_in,
    count_staged_in,
    error,
    holds_live_value,
    is_live_payload,
)
from backupvault.hsm.state import EntryId, NodeShare, ThresholdState, is_entry_key
from backupvault.invariants import require
from backupvault.protocol import (
    COUNT_MESSAGES,
    REQUEST_TYPES,
    CountReport,
    CountReportRequest,
    DeliverShareRequest,
    EntryStatus,
    ErrorCode,
    EvaluateRequest,
    EvaluateResponse,
    Op,
    decode_response,
    pad_response,
)
from backupvault.sim import clients
from backupvault.sim.clients import (
    OPS,
    Answers,
    Call,
    ClientViolation,
    Credentials,
    Flow,
    FlowContext,
    Outcome,
)
from backupvault.sim.observer import InvariantViolation, Observer, describe

FLEET_ID = b"sim-fleet"
EPOCH = 1  # the node-set epoch of the fleet's deployment record
CLOCK_ZERO_MS = 1_700_000_000_000  # sim time 0 on the clients' clocks
TICK = 0.02
FANOUT_DEADLINE = 4.0  # the relay's wait for a node's answer
FANOUT_GRACE = 0.5  # after a majority answered: as long again as that took, at least this
SETTLE = 6.0  # after the heal: restarts catch up, in-flight proposals finish or fail
#: After the heal, the longest one client operation may take (the probe's too): about 3
#: times the longest seen, a password change beside a silent hostile node (10.6 s).
OP_DEADLINE = 30.0
#: While t honest nodes can serve an operation on a calm network, during the faults too,
#: the longest it may take (`Simulation._check_served`). The longest seen on 2026-12-07
#: over about 7,000 seeds of every mode: a recovery 8.5 s, a status read 3.7 s; a
#: registration 11.0 s, a password change 14.7 s, a delete 10.9 s, the last three beside a
#: silent hostile node, whose every phase waits out the resends to it (a registration
#: asks every node to stage before it settles for t). A copy that never stops waiting for
#: a crashed leader (a planted bug, `tests/sim/injections.py`) takes recoveries to 13-18 s.
SERVED_DEADLINES = {
    "status": 12.0,
    "recover_right": 12.0,
    "recover_wrong": 12.0,
    "register": 20.0,
    "change_password": 20.0,
    "delete": 20.0,
}


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 0  # 0: 3 or 5, from the seed
    chaos_seconds: float = 25.0
    quiet_seconds: float = 60.0  # past a restarted node's quarantine (40 s) beside a silent node
    max_faulty: int = -1  # -1: a minority (the fault model); more shows unavailability
    disk_faults: bool = True
    network_faults: bool = True
    replays: bool = True
    leader: bool = True  # False: every change is a leaderless CASPaxos round
    leader_faults: bool = True  # leader crashes and nodes that pass the leader over
    hostile: int = 0  # the last `hostile` slots are the attacker's (docs/simulation.md)
    #: Hostile nodes hand a node catching up stale values at high ballots (else silence).
    stale_catch_up: bool = False
    #: Hostile nodes walk entries' rounds up at honest nodes (`walk` steps; off: the plans
    #: hostile seeds had before session 49).
    walks: bool = True
    #: Hostile nodes send honest ones an entry's newest value with the owner's reset
    #: cleared (`strip` steps; off: the plans hostile seeds had before session 56).
    strips: bool = True
    #: Strip steps also clear the owner's password change (`change_*`), which every node
    #: takes (docs/threshold.md, "The next version is taken on its acknowledgements").
    strip_changes: bool = False
    #: A share left at a node's own count of L is erased this long after (simulated
    #: seconds; the nodes' EXHAUSTED_GRACE_SECONDS scaled to a run's length).
    exhausted_grace: float = 10.0
    #: Followers' copies wait for the leader's round from the first timed join on, and
    #: long (`eager_join_wait`): with the nodes' own settings most runs never wait.
    eager_wait: bool = False


DEFAULT_CONFIG = SimConfig()


@dataclass(frozen=True)
class Step:
    t: float
    kind: str  # crash | restart | backup | partition | heal | op | replay | suspect | walk | strip
    node: int = -1
    client: int = -1
    arg: str = ""
    nodes: tuple[int, ...] = ()
    n: int = 0

    def describe(self) -> str:
        match self.kind:
            case "crash" | "backup":
                return f"node{self.node} {self.kind}"
            case "restart":
                return f"node{self.node} restart (disk: {self.arg})"
            case "partition":
                return f"partition: {{{','.join(f'node{n}' for n in self.nodes)}}} cut off"
            case "heal":
                return "partition healed"
            case "suspect":
                return f"node{self.node} passes over node{self.n} as leader (a false timeout)"
            case "op":
                return f"client c{self.client} starts {self.arg}"
            case "walk":
                at = ",".join(f"node{n}" for n in self.nodes)
                return f"node{self.node} walks an entry's rounds {self.arg} steps up at {at}"
            case "strip":
                at = ",".join(f"node{n}" for n in self.nodes)
                cleared = f"the owner's {self.arg} cleared"
                return f"node{self.node} sends {at} an entry's value with {cleared}"
            case _:
                return f"relay replays captured request #{self.n} ({self.arg}) to node{self.node}"


@dataclass(frozen=True)
class Plan:
    seed: int
    nodes: int
    clients: int
    entries: int
    guess_limit: int
    drop: float
    dup: float
    long_delay: float
    steps: tuple[Step, ...]

    def calm(self) -> Plan:
        return replace(self, drop=0.0, dup=0.0, long_delay=0.0)


def make_plan(seed: int, config: SimConfig = DEFAULT_CONFIG) -> Plan:
    rng = random.Random(seed)
    n = config.nodes or rng.choice((3, 5))
    clients = rng.randint(2, 4)
    entries = rng.randint(1, 2)
    chaos = config.chaos_seconds
    steps: list[Step] = []
    for c in range(clients):
        t = rng.uniform(0.0, 1.0)
        steps.append(Step(t, "op", client=c, arg="register"))
        for _ in range(rng.randint(3, 8)):
            t += rng.expovariate(1 / 2.5)
            name = rng.choices(OPS, weights=(0.5, 3, 3, 1, 0.5, 1))[0]
            steps.append(Step(min(t, chaos), "op", client=c, arg=name))
    for _ in range(rng.randint(0, 7)):
        t = rng.uniform(0.5, chaos)
        length = rng.choice((0.3, 1.0, 3.0, 8.0))
        kind = rng.choices(("crash", "partition", "backup"), weights=(3, 2, 1))[0]
        node = rng.randrange(n)
        if kind == "crash":
            modes = ["keep"]
            if config.disk_faults:
                modes += ["wipe", "rollback", "bitflip"]
            mode = rng.choice(modes)
            steps.append(Step(t, "crash", node=node))
            steps.append(Step(t + length, "restart", node=node, arg=mode, n=rng.randrange(4)))
        elif kind == "partition":
            size = rng.randint(1, max(1, (n - 1) // 2))
            group = tuple(sorted(rng.sample(range(n), size)))
            steps.append(Step(t, "partition", nodes=group))
            steps.append(Step(t + length, "heal"))
        else:
            steps.append(Step(t, "backup", node=node))
    if config.replays:
        for _ in range(rng.randint(0, 8)):
            what = rng.choice(("reset", "any"))
            steps.append(
                Step(
                    rng.uniform(1, chaos),
                    "replay",
                    node=rng.randrange(n),
                    n=rng.randrange(1000),
                    arg=what,
                )
            )
    if config.leader and config.leader_faults:
        steps += _leader_faults(seed, n, config)
    if config.hostile and config.walks:
        steps += _walks(seed, n, config)
    if config.hostile and config.strips:
        steps += _strips(seed, n, config)
    net = config.network_faults
    steps.sort(key=lambda s: s.t)
    return Plan(
        seed=seed,
        nodes=n,
        clients=clients,
        entries=entries,
        guess_limit=rng.randint(2, 4),
        drop=rng.choice((0.0, 0.02, 0.1, 0.25)) if net else 0.0,
        dup=rng.choice((0.0, 0.05, 0.2)) if net else 0.0,
        long_delay=rng.choice((0.0, 0.05, 0.2)) if net else 0.0,
        steps=tuple(steps),
    )


def _leader_faults(seed: int, n: int, config: SimConfig) -> list[Step]:
    """Faults aimed at the leader path, drawn from their own generator so that adding them
    left every older seed's plan as it was: the leader (node 0, unless passed over)
    crashes, with any disk fault, and nodes pass over a live leader, so that two nodes
    lead at once."""
    rng = random.Random(seed * 7907 + 3)
    steps: list[Step] = []
    for _ in range(rng.randint(0, 2)):
        t = rng.uniform(0.5, config.chaos_seconds)
        modes = ["keep", "wipe", "rollback"] if config.disk_faults else ["keep"]
        steps.append(Step(t, "crash", node=0))
        restart_at = t + rng.choice((0.3, 1.0, 3.0))
        steps.append(Step(restart_at, "restart", node=0, arg=rng.choice(modes), n=rng.randrange(4)))
    for _ in range(rng.randint(0, 4)):
        t = rng.uniform(0.5, config.chaos_seconds)
        steps.append(Step(t, "suspect", node=rng.randrange(1, n), n=rng.randrange(2)))
    return steps


def _walks(seed: int, n: int, config: SimConfig) -> list[Step]:
    """A hostile node walks one entry's rounds up at some honest nodes, a Prepare a step
    above each one's floor at a time (review s49: the others are left more than a step
    below and must be climbed by rungs). Drawn from their own generator, as the leader's
    faults are, so that plans without hostile nodes stay as they were."""
    return _hostile_steps(random.Random(seed * 7919 + 5), "walk", n, config, ("3", "30", "300"))


def _strips(seed: int, n: int, config: SimConfig) -> list[Step]:
    """A hostile node sends some honest nodes the newest value of one entry with the
    owner's reset cleared, at a ballot above each one's promise (review s55: taken by the
    nodes that held the reset, it cut a node that had missed the reset out of the entry's
    rounds); with `strip_changes`, or the owner's password change. From their own
    generator, as the walks are."""
    fields = ("reset", "change") if config.strip_changes else ("reset",)
    return _hostile_steps(random.Random(seed * 7933 + 9), "strip", n, config, fields)


def _hostile_steps(
    rng: random.Random, kind: str, n: int, config: SimConfig, args: tuple[str, ...]
) -> list[Step]:
    """Up to three `kind` steps in the chaos of a fleet of `n` nodes, each by one hostile
    node at some honest targets, with one of `args` and a number that picks the entry
    (`Step.n`, modulo the entries the step can act on)."""
    honest = range(n - config.hostile)
    steps: list[Step] = []
    for _ in range(rng.randint(0, 3)):
        targets = tuple(sorted(rng.sample(honest, rng.randint(1, len(honest)))))
        steps.append(
            Step(
                rng.uniform(1.0, config.chaos_seconds),
                kind,
                node=n - 1 - rng.randrange(config.hostile),
                nodes=targets,
                n=rng.randrange(1000),
                arg=rng.choice(args),
            )
        )
    return steps


@lru_cache(maxsize=16)
def signing_key(index: int) -> Ed25519PrivateKey:
    """Node `index`'s own signing key (share acknowledgements), as in its deployment
    record. Made once per process: nothing in a run's control flow depends on its bytes."""
    return Ed25519PrivateKey.generate()


@lru_cache(maxsize=16)
def sealing_key(index: int) -> NodePrivateKey:
    """Node `index`'s HPKE key: the device seals the shares it owes the node to it
    (`client.pending`). X25519, the cheaper KEM: nothing in a run depends on which."""
    return NodePrivateKey.generate(Kem.X25519)


#: What the attacker answers a client in place of hostile node `slot` (None: silence).
AttackerAnswer = Callable[[int, Op, Message], Message | None]


#: Whether an acceptor's check lets one replicated value follow another: (key, newer,
#: older) -> bool.
Follows = Callable[[bytes, bytes, bytes], bool]


class HostileAcceptor:
    """An acceptor the attacker runs. `report(key, round)` is the (round, node, value) it
    claims to have accepted when asked to promise; it accepts every Accept, and hands a
    node catching up stale copies (`stale_copies`) when given `follows`, else nothing."""

    def __init__(self, slot: int, follows: Follows | None = None) -> None:
        self.slot = slot
        self.report: Callable[[bytes, int], tuple[int, int, bytes]] = lambda key, rnd: (
            0,
            0,
            b"",
        )
        #: What it answers a node catching up (None: silence).
        self.sync: Callable[[SyncRequest], SyncResponse | None] = self.stale_copies
        self._follows = follows
        #: Per entry, the values it accepted (oldest first) and the highest round it saw.
        self._accepted: dict[bytes, list[bytes]] = {}
        self._top: dict[bytes, int] = {}

    def stale_copies(self, request: SyncRequest) -> SyncResponse | None:
        """Per entry, the oldest value it accepted that its latest follows (an ancestor
        on the line the fleet chose, which passes every check of its own), claimed as
        accepted one round above the highest it saw: a wiped node that took copies by
        their ballot kept that stale value for good (review s40-R3). A sibling of the
        chosen value so claimed still wins a catch-up (ballots are all a node has to
        order siblings by): docs/simulation.md, "Known limits"."""
        if self._follows is None:
            return None
        records = []
        for key, values in self._accepted.items():
            latest = values[-1]
            stale = next((v for v in values if v != latest and self._follows(key, latest, v)), None)
            if stale is not None:
                top = self._top[key] + 1
                records.append(AcceptorRecord(key, top, self.slot, top, self.slot, stale))
        return SyncResponse(request.sync_id, True, records, b"hostile%d" % self.slot, 0, 1)

    def answer(self, message: Message) -> Message | None:
        if isinstance(message, (Prepare, Accept)):
            self._top[message.key] = max(self._top.get(message.key, 0), message.round)
            if isinstance(message, Accept) and message.value:
                values = self._accepted.setdefault(message.key, [])
                if message.value not in values:
                    values.append(message.value)
        match message:
            case Prepare():
                accepted_round, accepted_node, value = self.report(message.key, message.round)
                return Promise(
                    message.op_id,
                    message.key,
                    message.round,
                    message.node,
                    True,
                    accepted_round,
                    accepted_node,
                    value,
                    message.round,
                    message.node,
                )
            case Accept():
                return Accepted(
                    message.op_id,
                    message.key,
                    message.round,
                    message.node,
                    True,
                    message.round,
                    message.node,
                    hashlib.sha256(message.value).digest(),
                )
            case SyncRequest():
                return self.sync(message)
        return None


def wrong_partial(rand: random.Random, slot: int, attempt: int = 1) -> EvaluateResponse:
    """A hostile node's answer: a valid-looking point with a proof that does not verify."""
    element = oprf.hash_to_group(rand.randbytes(16))
    proof = oprf.hash_to_scalar(rand.randbytes(16)) + oprf.hash_to_scalar(rand.randbytes(16))
    return EvaluateResponse(attempt, slot + 1, element, proof, 9)


@dataclass
class _Pending:
    client: int  # -1: the relay's replay (answer discarded); -2: a synchronous request
    call_id: int
    op: Op
    key: bytes = b""


@dataclass
class _Node:
    index: int
    rng: random.Random
    #: The attacker's acceptor for a hostile node (no replica, no keeper, never faulty).
    hostile: HostileAcceptor | None = None
    keeper: ShareKeeper | None = None
    # The node's store: the replica reads and writes `disk` directly (a write is durable
    # the moment it is made), the shell writes the keeper's share rows to `rows`;
    # `backups` are older images of both that a rollback restores.
    disk: MemoryRecords = field(default_factory=MemoryRecords)
    rows: dict[bytes, NodeShare] = field(default_factory=dict)
    backups: list[tuple[MemoryRecords, dict[bytes, NodeShare]]] = field(default_factory=list)
    #: Keys of the entries this node wrote a live value of: counted against their account
    #: for good (the store's `account_entries`); a wipe clears it, a rollback keeps it (a
    #: node's store takes the table back with its rows: here the count errs high).
    live: set[bytes] = field(default_factory=set)
    replica: Replica | None = None
    refusing: bool = False  # bit-flipped store: refuses to start until the operator acts
    pending: dict[bytes, _Pending] = field(default_factory=dict)
    incarnation: int = 0

    @property
    def up(self) -> bool:
        return self.replica is not None

    @property
    def ready(self) -> bool:
        return self.replica is not None and self.replica.ready

    def snapshot(self) -> tuple[MemoryRecords, dict[bytes, NodeShare]]:
        return self.disk.copy(), dict(self.rows)


@dataclass
class _Client:
    index: int
    ctx: FlowContext
    todo: list[str] = field(default_factory=list)
    flow: Flow | None = None
    op_name: str = ""
    op_started: float = 0.0
    call: Call | None = None
    call_id: int = 0
    sent_at: float = 0.0
    answers: Answers = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    #: Through the operation so far: the fewest honest nodes that could serve it at once
    #: (`Simulation._serving`), and whether the network stayed calm (no drops, no long
    #: delays); together they say whether the operation had to complete.
    fewest_serving: int = 0
    calm: bool = True
    faults_seen: bool = False  # a node was down, behind or cut off at some sample


@dataclass
class RunResult:
    plan: Plan
    violation: InvariantViolation | None
    at: float
    trace: list[str]
    stats: dict[str, int]

    @property
    def failed(self) -> bool:
        return self.violation is not None


class Simulation:
    """`keeper_class` plants a mutant honest node; `attacker` answers clients for hostile
    nodes (default: a wrong partial to every evaluate, silence otherwise); `collect`: the
    observer records violations instead of stopping the run (see Observer)."""

    def __init__(
        self,
        plan: Plan,
        config: SimConfig = DEFAULT_CONFIG,
        keep_trace: bool = True,
        *,
        keeper_class: type[ShareKeeper] = ShareKeeper,
        attacker: AttackerAnswer | None = None,
        collect: bool = False,
    ) -> None:
        self.plan = plan
        self.config = config
        self.rng = random.Random(plan.seed * 7919 + 1)
        self.now = 0.0
        self.keep_trace = keep_trace
        self.trace: list[str] = []
        self.keeper_class = keeper_class
        #: Nodes send the count report requests their keepers make (a test that
        #: delivers reports itself turns this off).
        self.count_reports = True
        self.shape = FleetShape(EPOCH, plan.nodes, plan.nodes // 2 + 1, plan.guess_limit)
        hostile = set(range(plan.nodes - config.hostile, plan.nodes))
        attack_rng = random.Random(plan.seed * 31 + 7)
        self.attacker: AttackerAnswer = attacker or (
            lambda slot, op, request: wrong_partial(attack_rng, slot) if op is Op.EVALUATE else None
        )
        self.observer = Observer(
            plan.nodes, plan.guess_limit, self.log, hostile=len(hostile), collect=collect
        )
        # Availability needs t honest nodes: c hostile ones leave N - t - c crashes.
        minority = plan.nodes // 2 - len(hostile)
        self.max_faulty = minority if config.max_faulty < 0 else config.max_faulty
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._call_ids = itertools.count(1)
        self._clock = itertools.count()  # keeps the clients' clocks strictly increasing
        self.isolated: frozenset[int] = frozenset()
        #: None: every node reaches every other; else only nodes in the set talk to each
        #: other (the attacker's own partition of the network, for scripted tests).
        self.reachable: set[int] | None = None
        self.drop, self.dup, self.long_delay = plan.drop, plan.dup, plan.long_delay
        self.heal_at = config.chaos_seconds
        #: Honest nodes not caught up when the quiet period ended while clients ran on.
        self.late_nodes: set[int] | None = None
        self.captured: list[tuple[Op, Message]] = []
        self._sync: dict[int, Message] = {}
        #: Scripted calls given up on (`request`, `fanout_together`): late answers dropped.
        self._abandoned: set[int] = set()
        #: Nodes a scripted test has taken off the network (no messages, no answers).
        self.down: set[int] = set()
        self.stats = {
            "messages": 0,
            "dropped": 0,
            "unavailable": 0,
            "gave_up": 0,
            "skipped": 0,
            "forwarded": 0,  # changes sent to a leader (Forward)
            "one_round": 0,  # Accepts a leader sent on a held promise
            "no_shares": 0,  # probes that found fewer than t nodes able to evaluate
            "own_rounds": 0,  # rounds a node proposed on its own (a share at L, a look again)
            "served_checked": 0,  # operations `_check_served` held to completing
            "served_through_faults": 0,  # of them, those with a node faulty at a sample
        }
        self.credentials = Credentials()
        self.members = [self._make_node(i, i in hostile) for i in range(plan.nodes)]
        self.entry_keys = [EntryId(f"acct{e}", "root-key").to_bytes() for e in range(plan.entries)]
        self.clients = [self._make_client(c) for c in range(plan.clients)]

    # ---- setup --------------------------------------------------------------------------

    def log(self, line: str) -> None:
        if self.keep_trace:
            self.trace.append(f"t={self.now:7.3f} {line}")

    @property
    def nodes(self) -> int:
        return self.plan.nodes

    @property
    def signing(self) -> dict[int, Ed25519PrivateKey]:
        """Each node's signing key (a test that builds its own keeper uses it)."""
        return {i: signing_key(i) for i in range(self.plan.nodes)}

    @property
    def honest(self) -> dict[int, _Node]:
        return {n.index: n for n in self.members if n.hostile is None}

    @property
    def hostile(self) -> dict[int, HostileAcceptor]:
        return {n.index: n.hostile for n in self.members if n.hostile is not None}

    def _make_node(self, i: int, hostile: bool) -> _Node:
        node = _Node(i, random.Random(self.rng.getrandbits(64)))
        if hostile:
            follows = self._follows if self.config.stale_catch_up else None
            node.hostile = HostileAcceptor(i, follows)
        node.backups.append(node.snapshot())
        return node

    def _follows(self, key: bytes, newer: bytes, older: bytes) -> bool:
        """Whether an honest acceptor holding the replicated value `older` takes `newer`."""
        try:
            state = ThresholdState.from_bytes(payload_of(newer))
            held = payload_of(older)
        except InvalidInput:
            return False
        keys = self.node_keys
        return check_threshold_value(FLEET_ID, key, self.shape, state, held, node_keys=keys) is None

    def _make_keeper(self, n: _Node) -> ShareKeeper:
        keeper = self.keeper_class(
            FLEET_ID,
            n.index,
            self.shape,
            signing_key(n.index),
            n.rows.get,
            peer_signing_keys=self.node_keys,
            exhausted_grace=self.config.exhausted_grace,
        )
        original = keeper._evaluate_committed

        def evaluate_committed(
            key: bytes, request: EvaluateRequest, state: ThresholdState
        ) -> Answer:
            answer = original(key, request, state)
            if isinstance(answer.response, EvaluateResponse):
                attempt = answer.response.attempt
                self.observer.on_partial(n.index, key, state, request.blinded, attempt)
                self.log(f"node{n.index} evaluates its share for {_short(key)} (attempt {attempt})")
            return answer

        keeper._evaluate_committed = evaluate_committed  # type: ignore[method-assign]

        def count_staged(account: str, overlay: Mapping[bytes, bool], limit: int) -> int:
            return count_staged_in(n.rows)(account, overlay, limit)  # n.rows as it is now

        keeper.count_staged = count_staged

        # n.live and n.rows as they are now (a wipe or a rollback replaces them).
        keeper.count_entries = lambda key: count_entries_in(n.live, n.rows)(key)
        return keeper

    def _make_client(
        self, c: int, entry: int | None = None, account: str = "", name: str = "root-key"
    ) -> _Client:
        entry = c % max(1, self.plan.entries) if entry is None else entry
        account = account or f"acct{entry}"
        key = EntryId(account, name).to_bytes()

        def current_password() -> bytes | None:
            state = self.ghost_state(key)
            if state.status != EntryStatus.LIVE:
                return None
            found = self.credentials.by_manifest.get(state.manifest)
            return found[0] if found else None

        ctx = FlowContext(
            account,
            name,
            FLEET_ID,
            EPOCH,
            self.plan.nodes,
            self.shape.threshold,
            tuple(signing_key(i).public_key() for i in range(self.plan.nodes)),
            self.credentials,
            random.Random(self.rng.getrandbits(64)),
            current_password,
            lambda: CLOCK_ZERO_MS + int(self.now * 1000) * 1000 + next(self._clock),
            lambda version, blinded: self.observer.on_success(key, version, blinded),
            tuple(sealing_key(i).public_key() for i in range(self.plan.nodes)),
            now=lambda: self.now,
        )
        return _Client(c, ctx)

    def ghost_state(self, key: bytes) -> ThresholdState:
        """The entry's committed value as the ghost knows it: the observer's chosen one.
        With hostile nodes the observer tracks no choices (consensus no longer holds), so
        the newest value that t − c honest nodes hold: with the c hostile acceptors that
        accept anything, a majority took it."""
        if not self.hostile:
            return ThresholdState.from_bytes(
                self.observer.latest(key) or ThresholdState().to_bytes()
            )
        held = [self.replicated(slot, key) for slot in self.honest]
        enough = self.shape.threshold - len(self.hostile)
        taken = [s for s in held if held.count(s) >= enough]
        return max(taken, key=lambda s: (s.version, s.attempt), default=ThresholdState())

    # ---- scheduler ----------------------------------------------------------------------

    def at(self, t: float, kind: str, data: Any = None) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, data))

    def run(self) -> RunResult:
        violation: InvariantViolation | None = None
        try:
            self._run()
        except InvariantViolation as err:
            violation = err
        except ClientViolation as err:
            violation = InvariantViolation("released-key-is-the-registered-one", str(err))
        except AssertionError as err:
            # An invariant checked inside the replica or the firmware stopped the step: named
            # by the line that checked it, not by `require` itself.
            frames = traceback.extract_tb(err.__traceback__)
            frame = next(f for f in reversed(frames) if Path(f.filename).name != "invariants.py")
            where = f"{Path(frame.filename).name}:{frame.lineno} {frame.line}"
            violation = InvariantViolation("core-assertion", f"{where} {err}".strip())
        if violation is not None:
            self.log(f"VIOLATION {violation.invariant}: {violation.detail}")
        stats = dict(
            self.stats,
            partials=self.observer.partials,
            outputs=self.observer.outputs,
            max_window=self.observer.max_window,
        )
        return RunResult(self.plan, violation, self.now, self.trace, stats)

    def boot(self) -> None:
        for node in self.members:
            if node.hostile is None:
                self._start(node, intact=True)

    def _run(self) -> None:
        self.boot()
        for step in self.plan.steps:
            if step.t < self.heal_at or step.kind == "op":
                self.at(step.t, "step", step)
        self.at(self.heal_at, "heal_all")
        end = self.heal_at + self.config.quiet_seconds
        while self._events:
            t, _, kind, data = heapq.heappop(self._events)
            if t > end:
                if not self._clients_progressing(t):
                    break
                if self.late_nodes is None:
                    # The time given to busy clients is theirs: a node not caught up by
                    # the end of the quiet period fails as it would have without them.
                    self.late_nodes = {i for i, n in self.honest.items() if not n.ready}
            self.now = t
            self._dispatch(kind, data)
            if t > self.heal_at + SETTLE and self._quiet():
                break
        self._final_checks()

    def _dispatch(self, kind: str, data: Any) -> None:
        match kind:
            case "deliver":
                self._deliver(*data)
            case "tick":
                node, incarnation = data
                n = self.members[node]
                if n.replica is not None and n.incarnation == incarnation:
                    self._execute(n, n.replica.tick(self.now))
                    self._expire_shares(n)
                    self.at(self.now + TICK, "tick", data)
            case "step":
                self._step(data)
            case "client_request":
                self._client_request(*data)
            case "client_answer":
                self._client_answer(*data)
            case "fanout_end":
                client, call_id = data
                c = self.clients[client]
                if c.call is not None and c.call_id == call_id:
                    self._fanout_done(c)
            case "client_send":
                self._send_call(self.clients[data])
            case "operator_fix":
                n = self.members[data]
                if n.refusing:
                    self._remove_corrupt(n)
                    self.log(f"node{data} operator wipes the store, as the error says; restart")
                    self._start(n)
            case "heal_all":
                self._heal_all()
            case "client_wake":
                self._client_next(self.clients[data])

    # ---- faults -------------------------------------------------------------------------

    def faulty(self) -> set[int]:
        honest = self.honest
        return {i for i, n in honest.items() if not n.ready} | (set(self.isolated) & set(honest))

    def _step(self, step: Step) -> None:
        n = self.members[step.node] if step.node >= 0 else None
        if n is not None and n.hostile is not None and step.kind not in ("replay", "walk", "strip"):
            return  # the attacker's node: no faults of ours
        match step.kind:
            case "op":
                c = self.clients[step.client]
                c.todo.append(step.arg)
                if c.flow is None:
                    self._client_next(c)
                return
            case "crash":
                assert n is not None
                if not n.up or len(self.faulty() | {n.index}) > self.max_faulty:
                    self.stats["skipped"] += 1
                    return
                self.log(step.describe())
                self.crash(n.index)
            case "restart":
                assert n is not None
                if n.up or n.refusing:
                    return
                self.log(step.describe())
                self._disk_fault(n, step.arg, step.n)
                # A kept disk matches the token's counter: the node takes part at once.
                self._start(n, intact=step.arg == "keep")
            case "backup":
                assert n is not None
                self.log(step.describe())
                n.backups.append(n.snapshot())
            case "partition":
                group = frozenset(step.nodes)
                if len((self.faulty() - set(self.isolated)) | group) > self.max_faulty:
                    self.stats["skipped"] += 1
                    return
                self.log(step.describe())
                self.isolated = group
            case "heal":
                if self.isolated:
                    self.log(step.describe())
                self.isolated = frozenset()
            case "suspect":
                if n is not None and n.replica is not None:
                    self.log(step.describe())
                    n.replica.suspect(step.n, self.now)
            case "replay":
                self._replay(step)
            case "walk":
                self._walk(step)
            case "strip":
                self._strip(step)
        for c in self.clients:
            if c.flow is not None:
                self._note_serving(c)

    def _entry_keys(self) -> list[bytes]:
        """The entries the honest nodes hold records of, in order."""
        return sorted(
            {
                r.key
                for i in self.honest
                for r in self.members[i].disk.records()
                if is_entry_key(r.key)
            }
        )

    def _reachable(self, targets: tuple[int, ...]) -> list[int]:
        """The honest targets a hostile node's messages reach now."""
        return [
            t
            for t in targets
            if (replica := self.members[t].replica) is not None
            and replica.ready
            and t not in self.isolated
        ]

    def _walk(self, step: Step) -> None:
        """Hostile node `step.node` sends each honest target it can reach `step.arg`
        Prepares for one entry, each a step above that node's floor."""
        keys = self._entry_keys()
        if not keys:
            return
        key = keys[step.n % len(keys)]
        self.log(step.describe())
        for target in self._reachable(step.nodes):
            replica = self.members[target].replica
            assert replica is not None
            for i in range(int(step.arg)):
                round_ = min(replica._max_round + MAX_ROUND_STEP, ROUND_CEILING - 1)
                self.inject(step.node, target, Prepare(b"walk%d" % i, key, round_, step.node))

    def _strip(self, step: Step) -> None:
        """Hostile node `step.node` sends each honest target it can reach, one round above
        its promise, the newest value an honest node holds of one entry (by accepted
        ballot) with the owner's reset (or, `step.arg` "change", password change) cleared;
        the entry is one of those whose newest value holds it, nothing when none does."""
        candidates = [c for key in self._entry_keys() if (c := self._cleared(key, step.arg))]
        if not candidates:
            return
        key, cleared, forged = candidates[step.n % len(candidates)]
        self.log(step.describe())
        for target in self._reachable(step.nodes):
            record = self.members[target].disk.get(key)
            round_ = (record.promised_round if record is not None else 0) + 1
            held = payload_of(record.value) if record is not None and record.value else b""
            why = check_threshold_value(
                FLEET_ID, key, self.shape, cleared, held, node_keys=self.node_keys
            )
            accept = Accept(b"strip", key, round_, step.node, forged, step.node, False)
            answer = self.inject(step.node, target, accept)
            taken = isinstance(answer, Accepted) and answer.ok
            self.log(
                f"node{target} {'takes' if taken else 'refuses'} it" + (f": {why}" if why else "")
            )

    def _cleared(self, key: bytes, field: str) -> tuple[bytes, ThresholdState, bytes] | None:
        """(key, the state, the replicated value) of `key`'s newest value at an honest node
        with the owner's `field` ("reset" or "change") cleared, or None when that value is
        not live or holds none."""
        records = [r for i in self.honest if (r := self.members[i].disk.get(key)) is not None]
        newest = max(records, key=lambda r: (r.accepted_round, r.accepted_node))
        if not newest.value:
            return None
        value = ReplicatedValue.from_bytes(newest.value)
        state = ThresholdState.from_bytes(value.payload) if value.payload else None
        if state is None or state.status != EntryStatus.LIVE:
            return None
        if field == "change":
            if not state.change_signature:
                return None
            cleared = state.with_(change_counter=0, change_signature=b"")
        else:
            if not state.reset_signature:
                return None
            cleared = state.with_(reset_hash=b"", reset_signature=b"")
        return key, cleared, replace(value, payload=cleared.to_bytes()).to_bytes()

    def crash(self, slot: int) -> None:
        """Node `slot` loses its memory (replica, keeper, requests in progress)."""
        n = self.members[slot]
        n.replica = None
        n.keeper = None
        n.pending.clear()
        n.backups.append(n.snapshot())

    def _disk_fault(self, n: _Node, mode: str, which: int) -> None:
        if mode == "wipe":
            n.disk = MemoryRecords()
            n.rows = {}
            n.live = set()
            self.log(f"node{n.index} disk wiped")
        elif mode == "rollback":
            old, rows = n.backups[max(0, len(n.backups) - 1 - which)]
            n.disk, n.rows = old.copy(), dict(rows)
            self.log(f"node{n.index} disk rolled back to an older copy ({len(old)} records)")
        elif mode == "bitflip" and (n.disk or n.rows):
            n.refusing = True
            self.log(f"node{n.index} a bit flips in a stored row: the store refuses to open")

    def _remove_corrupt(self, n: _Node) -> None:
        """What the store's error tells the operator (node/store.py): restore the whole
        database from one backup, or wipe it so the node catches up from the fleet. The
        sim wipes it: removing only the damaged row would leave the node's catch-up marks
        claiming it holds what it lost, and no catch-up would bring the row back."""
        n.disk = MemoryRecords()
        n.rows = {}
        n.live = set()
        n.refusing = False

    def _start(self, n: _Node, intact: bool = False) -> None:
        """Start node `n` from its disk. Not `intact` (the store does not match the token's
        counter: rolled back, wiped, or a row removed): it catches up before it votes, and
        distrusts the counts in its share rows (docs/threshold.md, "Counters")."""
        if n.refusing:
            self.at(self.now + 2.0, "operator_fix", n.index)
            return
        n.incarnation += 1
        # A catch-up the node stopped during is not finished: its store matches the
        # token's counter (raised when the catch-up began), but not the fleet.
        intact = intact and not n.disk.catching_up
        if not intact:
            n.disk.begin_catch_up()
            # As the node's store does when it finds itself behind the token's counter:
            # versions it hands out from here may repeat older ones, so a new store id.
            n.disk.renew(f"node{n.index}/{n.incarnation}".encode())
        keeper = self._make_keeper(n)
        if not intact:
            keeper.distrust_stored_counts()
        shape = self.shape

        def check(key: bytes, payload: bytes, held: bytes) -> str | None:
            try:
                state = ThresholdState.from_bytes(payload)
            except InvalidInput:
                return "not a threshold entry"
            return check_threshold_value(
                FLEET_ID, key, shape, state, held, node_keys=keeper.node_keys
            )

        rng = random.Random(n.rng.getrandbits(64))
        timing = replace(DEFAULT_TIMING, leader=self.config.leader)
        if self.config.eager_wait:
            timing = eager_join_wait(timing, f"{self.plan.seed}/{n.index}/{n.incarnation}")
        n.keeper = keeper
        n.replica = Replica(
            n.index,
            range(self.plan.nodes),
            rng.randbytes,
            n.disk,
            timing,
            check_value=check,
            on_accept=keeper.on_accept,
            announce=lambda key, payload: True,  # every entry is a threshold entry
            check_key=is_entry_key,
            worth_fetching=lambda key, payload: is_live_payload(payload),
        )
        self._execute(n, n.replica.start(self.now, intact))
        self.at(self.now + TICK * (1 + n.index / self.plan.nodes), "tick", (n.index, n.incarnation))

    @property
    def node_keys(self) -> dict[int, Ed25519PublicKey]:
        """Every node's signing key by share index, as the deployment record lists them."""
        return {i + 1: signing_key(i).public_key() for i in range(self.plan.nodes)}

    def snapshot(self, slot: int) -> dict[bytes, NodeShare]:
        """Node `slot`'s share rows now (an older copy of its disk, for a rollback)."""
        return dict(self.members[slot].rows)

    def restart_rolled_back(self, slot: int, rows: dict[bytes, NodeShare]) -> None:
        self.restart(slot, rows)

    def restart(self, slot: int, rows: dict[bytes, NodeShare] | None = None) -> None:
        """Restart crashed node `slot` from its disk, or with its share rows rolled back to
        `rows` (its token's counter then shows the rollback)."""
        n = self.members[slot]
        if n.up:
            self.crash(slot)
        if rows is not None:
            n.rows = dict(rows)
        self._start(n, intact=rows is None)

    def _heal_all(self) -> None:
        self.log("heal: faults end, network reliable, crashed nodes restart")
        self.isolated = frozenset()
        self.drop = self.dup = self.long_delay = 0.0
        for n in self.honest.values():
            fixed = n.refusing
            if n.refusing:
                self._remove_corrupt(n)
            if not n.up:
                self._start(n, intact=not fixed)  # crashed, disk untouched unless fixed

    # ---- network ------------------------------------------------------------------------

    def _delay(self) -> float:
        if self.long_delay and self.rng.random() < self.long_delay:
            return self.rng.uniform(0.1, 3.0)
        return self.rng.uniform(0.001, 0.02)

    def _transmit(self, kind: str, data: tuple[Any, ...]) -> None:
        self.stats["messages"] += 1
        if self.drop and self.rng.random() < self.drop:
            self.stats["dropped"] += 1
            return
        self.at(self.now + self._delay(), kind, data)
        if self.dup and self.rng.random() < self.dup:
            self.at(self.now + self._delay(), kind, data)

    def _connected(self, a: int, b: int) -> bool:
        if a in self.down or b in self.down or (a in self.isolated) != (b in self.isolated):
            return False
        return self.reachable is None or (a in self.reachable and b in self.reachable)

    def _deliver(self, sender: int, to: int, raw: bytes) -> None:
        n = self.members[to]
        if not self._connected(sender, to):
            return
        message = decode_any(raw, PEER_MESSAGES + COUNT_MESSAGES)
        if isinstance(message, CountReport | CountReportRequest):
            if n.hostile is None:  # the attacker's nodes stay silent to these
                self._count_message(n, sender, message)
            return
        if n.hostile is not None:
            answer = n.hostile.answer(message)
            if answer is not None:
                self._transmit("deliver", (to, sender, answer.to_bytes()))
            return
        if n.replica is not None:
            self._execute(n, n.replica.receive(sender, message, self.now))

    def _count_message(
        self, n: _Node, sender: int, message: CountReport | CountReportRequest
    ) -> None:
        """Count reports after a rollback, as the node's service handles them
        (node/service.py): answered only when caught up; a settled row is durable at once."""
        if n.replica is None or n.keeper is None:
            return
        key = EntryId.of(message.account, message.entry).to_bytes()
        held = n.replica.held_payload(key)
        if isinstance(message, CountReportRequest):
            if n.replica.ready:
                report = n.keeper.count_report(sender + 1, message, held)
                if report is not None:
                    self._transmit("deliver", (n.index, sender, report.to_bytes()))
            return
        writes = n.keeper.take_count_report(sender + 1, message, held)
        if writes:
            self.log(f"node{n.index} settles its rolled-back count for {_short(key)} on reports")
            for write in writes:
                n.rows[write.key] = write.row
            n.keeper.durable(writes)

    def _ask_for_reports(self, n: _Node) -> None:
        if n.keeper is None or not self.count_reports:
            return
        for request in n.keeper.take_report_requests():
            for peer in range(self.plan.nodes):
                if peer != n.index:
                    self._transmit("deliver", (n.index, peer, request.to_bytes()))

    def _execute(self, n: _Node, effects: list[Effect]) -> None:
        if n.disk.catching_up and n.ready:
            # Every copy it caught up with is on its disk (writes are durable at once
            # here), as the node's next group commit after it is ready records.
            n.disk.end_catch_up()
        if n.keeper is not None:
            # Erasures the keeper made while its acceptor took a value (on a verified
            # owner statement): durable at once here, like the replica's own writes.
            erased = n.keeper.take_writes()
            for write in erased:
                n.rows[write.key] = write.row
            n.keeper.durable(erased)
        for effect in effects:
            match effect:
                case Persist(record, kind):
                    # Already in n.disk: the replica wrote it there (durable at once).
                    self.observer.on_persist(n.index, record, kind)
                    if holds_live_value(record):
                        n.live.add(record.key)
                case Send(to, message):
                    # A node has no channel to itself (a real node's shell raises): what it
                    # says to itself the replica delivers in the same step.
                    require(to != n.index, "a node sent a peer message to itself")
                    if isinstance(message, Forward):
                        self.stats["forwarded"] += 1
                    elif (
                        isinstance(message, Accept) and message.pipeline and message.node == n.index
                    ):
                        self.stats["one_round"] += 1
                    self._transmit("deliver", (n.index, to, message.to_bytes()))
                case Committed(op_id, outcome):
                    pending = n.pending.pop(op_id, None)
                    if pending is not None:
                        self._answer(n, pending, outcome())
                case Failed(op_id, _):
                    pending = n.pending.pop(op_id, None)
                    if pending is not None:
                        unavailable = error(ErrorCode.FLEET_UNAVAILABLE, "no majority in time")
                        self._answer(n, pending, Answer(unavailable))

    def inject(self, sender: int, to: int, message: Message) -> Message | None:
        """Hostile node `sender` sends `message` to honest node `to`; its direct answer."""
        assert self.members[sender].hostile is not None, "only hostile nodes' messages are forged"
        replica = self.members[to].replica
        assert replica is not None
        effects = replica.receive(sender, message, self.now)
        direct = [e.message for e in effects if isinstance(e, Send) and e.to == sender]
        self._execute(
            self.members[to], [e for e in effects if not (isinstance(e, Send) and e.to == sender)]
        )
        return direct[0] if direct else None

    def replicated(self, slot: int, key: bytes) -> ThresholdState:
        """The value node `slot` holds for `key`."""
        record = self.members[slot].disk.get(key)
        payload = payload_of(record.value) if record is not None and record.value else b""
        return ThresholdState.from_bytes(payload) if payload else ThresholdState()

    # ---- the node's client endpoint ----------------------------------------------------

    def _client_request(self, node: int, client: int, call_id: int, op: Op, raw: bytes) -> None:
        n = self.members[node]
        request = REQUEST_TYPES[op].from_bytes(raw)
        pending = _Pending(client, call_id, op)
        if n.hostile is not None:
            forged = self.attacker(node, op, request)
            if forged is not None:
                self._reply(n, pending, forged)
            return
        if n.replica is None or n.keeper is None:
            return
        if not n.replica.ready:
            unavailable = error(ErrorCode.FLEET_UNAVAILABLE, "this node is catching up")
            self._answer(n, pending, Answer(unavailable))
            return
        try:
            if op is Op.DELIVER_SHARE and isinstance(request, DeliverShareRequest):
                # As the firmware: opened with this node's key, taken as a register-share.
                request = delivered_share(sealing_key(node), FLEET_ID, node, request)
            update = n.keeper.handle(op, request)
        except (InvalidInput, AuthenticationFailed) as err:
            self._answer(n, pending, Answer(error(ErrorCode.BAD_REQUEST, err.message)))
            return
        fresh = False
        if isinstance(update, ThresholdRead):
            read = update.answer(n.replica.held_payload(update.key))
            if read.repair is None:
                self._answer(n, pending, read)
                return
            # As the node's service: the value held is too old to answer from; a round
            # (joined only to a value chosen after it came) that leaves it as it is brings
            # this node the newest, and its outcome answers.
            update, fresh = read.repair, True
        else:
            unheld = update.without_round(n.replica.held_payload(update.key))
            if unheld is not None:  # an entry this node holds nothing of: no round (review r1)
                self._answer(n, pending, unheld)
                return
        op_id = n.rng.randbytes(16)
        pending.key = update.key
        n.pending[op_id] = pending

        self._execute(
            n,
            n.replica.propose(
                op_id, update.key, self._observed(update), self.now, joinable=True, fresh=fresh
            ),
        )

    def _observed(self, update: ThresholdUpdate) -> Callable[[bytes], tuple[bytes, Any]]:
        """`update`'s change, told to the observer as it is applied."""

        def change(value: bytes) -> tuple[bytes, Any]:
            child, build = update.change(value)
            self.observer.on_apply(update.key, value, child)
            return child, build

        return change

    def _expire_shares(self, n: _Node) -> None:
        """The rounds the keeper proposes on its own (a share left at L past the grace, a
        no-op round for an entry asked about live with no guess left); their answers go
        nowhere, their rows to the disk as a request's do."""
        if n.keeper is None or n.replica is None or not n.replica.ready:
            return
        for update in n.keeper.tick(self.now):
            op_id = n.rng.randbytes(16)
            n.pending[op_id] = _Pending(-1, 0, Op.EVALUATE, update.key)
            self.stats["own_rounds"] += 1
            self.log(f"node{n.index} proposes a round of its own for {_short(update.key)}")
            self._execute(n, n.replica.propose(op_id, update.key, self._observed(update), self.now))

    def _answer(self, n: _Node, pending: _Pending, answer: Answer) -> None:
        """The shell: this node's share rows are durable before its answer leaves."""
        for write in answer.writes:
            n.rows[write.key] = write.row
        if n.keeper is not None:
            n.keeper.durable(answer.writes)
        self._reply(n, pending, answer.response)
        self._ask_for_reports(n)

    def _reply(self, n: _Node, pending: _Pending, response: Message) -> None:
        if pending.client == -2:
            if pending.call_id in self._abandoned:
                self._abandoned.discard(pending.call_id)
            else:
                self._sync[pending.call_id] = response
        elif pending.client >= 0:
            padded = pad_response(pending.op, response.to_bytes())
            self._transmit("client_answer", (pending.client, pending.call_id, n.index, padded))

    # ---- clients: fan-outs through the relay -------------------------------------------

    def _client_next(self, c: _Client) -> None:
        if c.flow is not None or not c.todo:
            return
        c.op_name = c.todo.pop(0)
        c.op_started = self.now
        c.fewest_serving, c.calm, c.faults_seen = self.plan.nodes, True, False
        self._note_serving(c)
        self.log(f"client c{c.index} starts {c.op_name}")
        c.flow = clients.run_op(c.ctx, c.op_name)
        self._advance(c, None)

    def _advance(self, c: _Client, answers: Answers | None) -> None:
        assert c.flow is not None
        try:
            call = next(c.flow) if answers is None else c.flow.send(answers)
        except StopIteration as stop:
            outcome: Outcome = stop.value
            self.log(f"client c{c.index} {c.op_name} → {outcome.text}")
            c.done.append(f"{c.op_name}: {outcome.text}")
            c.flow = None
            c.call = None
            if "unavailable" in outcome.text:
                self.stats["gave_up"] += 1
                if c.op_started >= self.heal_at + SETTLE and self._recoverable(c):
                    raise InvariantViolation(
                        "liveness",
                        f"client c{c.index} {c.op_name} started at t={c.op_started:.2f}, after "
                        f"the faults ended, did not complete: {outcome.text}",
                    ) from None
            self._check_served(c, outcome)
            self.at(self.now + 0.01, "client_wake", c.index)
            return
        c.call = call
        self.captured += [(call.op, request) for request in call.requests]
        if call.resend or call.again:
            if call.again:
                self.log(f"client c{c.index} makes its overtaken attempt again")
            else:
                self.stats["unavailable"] += 1
                self.log(f"client c{c.index} resends its {call.op}")
            self.at(self.now + self.rng.uniform(0.2, 1.0), "client_send", c.index)
        else:
            self._send_call(c)

    def _send_call(self, c: _Client) -> None:
        """The relay's fan-out: copy i to node i; it returns when every node answered, or
        a majority answered and a grace passed, or the deadline passed."""
        if c.call is None:
            return
        c.call_id = next(self._call_ids)
        c.sent_at = self.now
        self._note_serving(c)
        c.answers = {}
        for slot, request in enumerate(c.call.requests):
            data = (slot, c.index, c.call_id, c.call.op, request.to_bytes())
            self._transmit("client_request", data)
        self.at(self.now + FANOUT_DEADLINE, "fanout_end", (c.index, c.call_id))

    def _client_answer(self, client: int, call_id: int, node: int, raw: bytes) -> None:
        c = self.clients[client]
        if c.call is None or c.call_id != call_id or node in c.answers:
            return  # a late or duplicated answer to an earlier fan-out
        c.answers[node] = decode_response(c.call.op, raw)
        if len(c.answers) == self.plan.nodes:
            self._fanout_done(c)
        elif len(c.answers) == self.shape.threshold:
            grace = max(FANOUT_GRACE, self.now - c.sent_at)
            self.at(self.now + grace, "fanout_end", (c.index, c.call_id))

    def _fanout_done(self, c: _Client) -> None:
        c.call_id = -1
        self._note_serving(c)
        self._advance(c, c.answers)

    def _replay(self, step: Step) -> None:
        choices = [(op, m) for op, m in self.captured if step.arg != "reset" or op is Op.RESET]
        if not choices:
            return
        op, request = choices[step.n % len(choices)]
        self.log(f"relay replays a captured {op} to node{step.node}")
        self._transmit("client_request", (step.node, -1, 0, op, request.to_bytes()))

    # ---- synchronous driving, for tests that script an attacker -------------------------

    def request(self, slot: int, op: Op, request: Message, seconds: float = 10.0) -> Message:
        """What node `slot` answers to `request` (as its service would), running the world
        until it answers. A crashed node gives no answer: fleet_unavailable."""
        call_id = next(self._call_ids)
        self._client_request(slot, -2, call_id, op, request.to_bytes())
        deadline = self.now + seconds
        while call_id not in self._sync and self._events and self._events[0][0] <= deadline:
            t, _, kind, data = heapq.heappop(self._events)
            self.now = t
            self._dispatch(kind, data)
        answer = self._sync.pop(call_id, None)
        if answer is None:
            self._abandoned.add(call_id)
            return error(ErrorCode.FLEET_UNAVAILABLE, "no answer")
        return answer

    def settle(self, seconds: float) -> None:
        """Let the world run for `seconds` (repairs, catch-up, retries)."""
        self.run_until(lambda: False, seconds)

    def run_until(self, done: Callable[[], bool], seconds: float) -> bool:
        """Run the world event by event until `done()` (True) or for `seconds` (False): a
        test cuts the network at the exact step it wants."""
        deadline = self.now + seconds
        while self._events and self._events[0][0] <= deadline:
            if done():
                return True
            t, _, kind, data = heapq.heappop(self._events)
            self.now = t
            self._dispatch(kind, data)
        return done()

    def send(self, slot: int, op: Op, request: Message) -> None:
        """Send `request` to node `slot` alone, without waiting for its answer."""
        self._client_request(slot, -2, next(self._call_ids), op, request.to_bytes())

    def _honest_copies(self, call: Call) -> dict[int, Message]:
        """The copies for the honest nodes that are up and on the network, by slot."""
        return {
            slot: request
            for slot, request in enumerate(call.requests)
            if self.members[slot].hostile is None
            and self.members[slot].up
            and slot not in self.down
        }

    def _forged_answers(self, call: Call) -> Answers:
        """What the attacker answers for its nodes, at once (none where it says nothing)."""
        answers: Answers = {}
        for slot, request in enumerate(call.requests):
            if self.members[slot].hostile is not None:
                forged = self.attacker(slot, call.op, request)
                if forged is not None:
                    answers[slot] = forged
        return answers

    def fanout_together(self, call: Call, seconds: float = FANOUT_DEADLINE) -> Answers:
        """Each node's answer to its copy, the copies sent at once as the relay sends them
        (so followers' copies can wait for the leader's round, docs/fleet.md "Copies that
        wait for the leader"), running the world until every honest node that is up
        answered or `seconds` (the relay's deadline) passed. Crashed nodes give none;
        hostile nodes answer what the attacker says, at once (or nothing)."""
        calls: dict[int, int] = {}
        for slot, request in self._honest_copies(call).items():
            calls[slot] = next(self._call_ids)
            self._client_request(slot, -2, calls[slot], call.op, request.to_bytes())
        answers = self._forged_answers(call)
        self.run_until(lambda: all(c in self._sync for c in calls.values()), seconds)
        for slot, c in calls.items():
            if c in self._sync:
                answers[slot] = self._sync.pop(c)
            else:
                self._abandoned.add(c)  # its answer, if it comes, is nobody's
        return dict(sorted(answers.items()))

    def fanout_now(self, call: Call) -> Answers:
        """Each node's answer to its copy, one node after the other (crashed nodes give
        none; hostile nodes, the last slots, answer what the attacker says)."""
        answers = {
            slot: self.request(slot, call.op, request)
            for slot, request in self._honest_copies(call).items()
        }
        return answers | self._forged_answers(call)

    # ---- the end of a run ---------------------------------------------------------------

    def _quiet(self) -> bool:
        if any(c.flow is not None or c.todo for c in self.clients):
            return False
        return all(
            n.replica is not None
            and n.replica.ready
            and not n.replica.pending()
            and not n.replica.lagging()
            and not n.replica.unsettled()
            for n in self.honest.values()
        )

    def _busy(self) -> list[_Client]:
        return [c for c in self.clients if c.flow is not None or c.todo]

    def _clients_progressing(self, now: float) -> bool:
        """Past the quiet period, whether clients are still working through their queues
        with no operation stuck: each busy one's operation began less than OP_DEADLINE
        ago. Beside a silent hostile node every phase of an operation waits out the
        resends (a password change takes about 10 s), so queued operations can outlast
        the quiet period while each one completes (seeds 10347067, 10347194, 10342295)."""
        busy = self._busy()
        return bool(busy) and all(now - c.op_started < OP_DEADLINE for c in busy)

    def _final_checks(self) -> None:
        busy = self._busy()
        if busy:
            c = max(busy, key=lambda c: self.now - c.op_started)
            raise InvariantViolation(
                "liveness",
                f"client c{c.index} still busy with {c.op_name} after the quiet period"
                f" (begun at t={c.op_started:.2f})",
            )
        for n in self.honest.values():
            if not n.ready or n.index in (self.late_nodes or ()):
                raise InvariantViolation(
                    "liveness", f"node{n.index} never caught up after the heal"
                )
        for key in self.entry_keys:
            latest = self.ghost_state(key)
            if latest.status != EntryStatus.DESTROYED:
                continue
            for n in self.honest.values():
                held = self.replicated(n.index, key)
                if held.version < latest.version or held.status == EntryStatus.LIVE:
                    raise InvariantViolation(
                        "tombstone-everywhere",
                        f"node{n.index} still holds [{describe(held.to_bytes())}] for a "
                        "destroyed entry",
                    )
        self._check_disks_agree()
        self._probe()
        self._check_no_share_left_at_limit()

    def _check_no_share_left_at_limit(self) -> None:
        """One grace after the probe, no honest node keeps a share at its own count of L
        (not one assumed on peers' reports, nor a rolled-back row it does not trust):
        it erased it, or the owner's reset brought the count down (docs/threshold.md,
        "Counters and erasure")."""
        self.settle(self.config.exhausted_grace + SETTLE)
        for key in self.entry_keys:
            for n in self.honest.values():
                row = n.rows.get(key)
                keeper = n.keeper
                if row is None or keeper is None or not row.share:
                    continue
                if row.count < self.shape.guess_limit or keeper._row_distrusted(key):
                    continue
                if any(e.blinded_hash == UNKNOWN_B for e in row.evaluated):
                    continue
                raise InvariantViolation(
                    "share-at-limit",
                    f"node{n.index} still keeps its share of {_short(key)} at its own count "
                    f"of L ({row!r}) one grace after the run",
                )

    def _check_disks_agree(self) -> None:
        """After the heal every honest node holds the same value of every entry (what the
        chaos soak checks on the nodes' disks, docs/soak.md): a destroyed entry destroyed
        everywhere, with exactly L attempts, never live on some nodes."""
        for key in self.entry_keys:
            held = {n.index: self.replicated(n.index, key) for n in self.honest.values()}
            seen = {(s.version, s.status, s.attempt, s.attempts_used) for s in held.values()}
            if len(seen) > 1:
                raise InvariantViolation(
                    "disks-agree",
                    f"{_short(key)}: "
                    + "; ".join(f"node{i} [{describe(s.to_bytes())}]" for i, s in held.items()),
                )
            for s in held.values():
                if s.status == EntryStatus.DESTROYED and s.attempts_used != self.shape.guess_limit:
                    raise InvariantViolation(
                        "disks-agree",
                        f"{_short(key)}: destroyed with {s.attempts_used} attempts used, "
                        f"not L = {self.shape.guess_limit}",
                    )

    def _recoverable(self, c: _Client) -> bool:
        """Whether t honest nodes can still evaluate `c`'s entry (else an "unavailable"
        after the heal is the lost shares' doing, counted in `no_shares`)."""
        key = EntryId(c.ctx.account, c.ctx.entry).to_bytes()
        state = self.ghost_state(key)
        if state.status != EntryStatus.LIVE:
            return True
        # t honest ones, not t - c: the attacker's nodes answer a client with silence, so
        # a recovery combines t honest partials or none (seed 10347011: two honest holders
        # left by a wipe and a rollback beside the hostile node).
        if self._able(key, state) >= self.shape.threshold:
            return True
        self.stats["no_shares"] += 1
        return False

    def _able(self, key: bytes, state: ThresholdState, leaving_out: Set[int] = frozenset()) -> int:
        """Honest nodes that can evaluate the entry now: they hold the current version's
        share, with a count they trust and guesses left. A share lost with a wiped disk is
        not dealt again before the owner's next password change, and a rolled-back count
        is trusted again only after the owner's next success (docs/threshold.md). Nodes in
        `leaving_out` are not counted."""
        able = 0
        for n in self.honest.values():
            if n.index in leaving_out:
                continue
            row = n.rows.get(key)
            keeper = n.keeper
            if row is None or row.manifest != state.manifest or not row.share or keeper is None:
                # A share of another M of the same version (a registration that lost the
                # race) evaluates nothing a client can combine for this one.
                continue
            if keeper._distrusted and key not in keeper._trusted:
                continue
            able += row.count < self.shape.guess_limit
        return able

    def _serving(self, c: _Client) -> int:
        """Honest nodes that could serve `c`'s operation now: up, caught up, not cut off,
        and able to answer what it needs of the entry's newest value. To evaluate a live
        entry, they can (`_able`); to read its manifest, or a tombstone, they hold
        something of the entry (asked to confirm, such a node commits and answers the
        newest value; one that holds nothing, wiped or rolled back past the entry,
        answers "empty") and no share of another M of its version or a later one (a node
        answers the M it checked its share against: a sibling registration's that lost,
        say); a deleted or never registered entry, any, and to register it again, any once
        one of them holds its newest version's end (a read that sees "empty" of two
        versions has that node confirm it, which writes it to a majority), else none. A
        hostile node never counts: it answers a client with silence or lies."""
        faulty = self.faulty()
        key = EntryId(c.ctx.account, c.ctx.entry).to_bytes()
        state = self.ghost_state(key)
        up = {i: n for i, n in self.honest.items() if i not in faulty}
        if c.op_name == "register" and state.status != EntryStatus.LIVE:
            # Staging version v + 1 takes a node that holds the end of version v: one that
            # missed it (or the entry) stages another version (review s58), until a read
            # that saw "empty" of two versions has a node that holds the end confirm it,
            # which writes it to a majority.
            at_end = sum(self.replicated(i, key).version == state.version for i in up)
            return len(up) if at_end else 0
        if state.status == EntryStatus.EMPTY:
            return len(up)
        if state.status == EntryStatus.LIVE and c.op_name not in ("register", "status"):
            return self._able(key, state, leaving_out=faulty)

        def answers_newest(i: int, n: _Node) -> bool:
            row = n.rows.get(key)
            if row is None:
                return self.replicated(i, key) != ThresholdState()
            if state.status == EntryStatus.LIVE and row.share and row.version >= state.version:
                return row.manifest == state.manifest
            return True

        return sum(answers_newest(i, n) for i, n in up.items())

    def _note_serving(self, c: _Client) -> None:
        """Samples `_serving` into `c`'s operation: at its start, at each fan-out sent and
        ended, and after every step of the plan (the only moments faults begin or end)."""
        c.fewest_serving = min(c.fewest_serving, self._serving(c))
        c.calm = c.calm and not self.drop and not self.long_delay
        c.faults_seen = c.faults_seen or bool(self.faulty())

    def _check_served(self, c: _Client, outcome: Outcome) -> None:
        """The fleet serves whenever a majority is up, during the faults too: an operation
        that t honest nodes could serve at every sample, on a calm network, completes
        within its `SERVED_DEADLINES` (the soak's goal, made a rule). Faults
        that cut the fleet below t (more than a minority, or shares lost to wiped disks)
        and lossy networks are left to the liveness checks after the heal."""
        if not c.calm or c.fewest_serving < self.shape.threshold:
            return
        self.stats["served_checked"] += 1
        self.stats["served_through_faults"] += c.faults_seen
        took = self.now - c.op_started
        if "unavailable" in outcome.text or took > SERVED_DEADLINES[c.op_name]:
            raise InvariantViolation(
                "available-during-faults",
                f"client c{c.index} {c.op_name} begun at t={c.op_started:.2f}, which "
                f"{c.fewest_serving} honest nodes could serve throughout (t = "
                f"{self.shape.threshold}) on a calm network: {outcome.text} after {took:.1f} s",
            )

    def _probe(self) -> None:
        """With every fault gone, a status read of every entry must complete, and a
        right-password recovery of every live entry with guesses left must succeed when t
        nodes can still evaluate it."""
        self.heal_at = -SETTLE  # from here on, every operation must complete
        for e, key in enumerate(self.entry_keys):
            state = self.ghost_state(key)
            c = self._make_client(len(self.clients), entry=e)
            self.clients.append(c)
            c.todo.append("status")
            able = self._able(key, state) if state.status == EntryStatus.LIVE else 0
            if able >= self.shape.threshold:  # honest partials only (`_recoverable`)
                if state.attempts_used < self.shape.guess_limit:
                    c.todo.append("recover_right")
            elif state.status == EntryStatus.LIVE:
                self.stats["no_shares"] += 1
                self.log(f"probe: only {able} nodes can evaluate acct{e} (shares lost)")
            self._client_next(c)
            deadline = self.now + OP_DEADLINE
            while self._events and (c.flow is not None or c.todo):
                t, _, kind, data = heapq.heappop(self._events)
                if t > deadline:
                    break
                self.now = t
                self._dispatch(kind, data)
            if c.flow is not None or c.todo:
                raise InvariantViolation("liveness", f"probe of entry {e} did not complete")
            if len(c.done) > 1 and not c.done[1].endswith("recovered"):
                raise InvariantViolation(
                    "liveness", f"right-password recovery after the heal: {c.done[1]}"
                )


def _short(key: bytes) -> str:
    entry = EntryId.from_bytes(key)
    return f"{entry.account}/{entry.entry}"


def eager_join_wait(timing: Timing, name: str) -> Timing:
    """`timing` with a follower's copy waiting for the leader's round from the first join
    it timed on, and for up to a second (`SimConfig.eager_wait`). Drawn from a generator
    of its own, named for the seed, node and start, so the plan and the rest of the run
    draw what they would draw without it."""
    rng = random.Random(f"join-wait/{name}")
    return replace(
        timing,
        join_wait_margin=rng.uniform(JOIN_WAIT_MARGIN, 0.3),
        join_wait_cap=rng.choice((0.05, JOIN_WAIT_CAP, 0.5, 1.0)),
        join_wait_min_samples=1,
    )


def run_seed(seed: int, config: SimConfig = DEFAULT_CONFIG, keep_trace: bool = True) -> RunResult:
    return Simulation(make_plan(seed, config), config, keep_trace).run()


# ---- the same world, scripted ------------------------------------------------------------


def threshold_world(
    nodes: int = 5,
    limit: int = 10,
    hostile: int = 0,
    seed: int = 0,
    leader: bool = True,
    *,
    keeper_class: type[ShareKeeper] = ShareKeeper,
    attacker: AttackerAnswer | None = None,
    collect: bool = False,
    exhausted_grace: float = EXHAUSTED_GRACE_SECONDS,
) -> Simulation:
    """A booted world with no plan: the last `hostile` nodes are the attacker's, the
    network is reliable, and a test drives it (`request`, `inject`, `ThresholdClient`).
    `exhausted_grace`: the nodes' own (a scripted test runs well within it unless it
    says otherwise)."""
    config = SimConfig(nodes=nodes, leader=leader, hostile=hostile, exhausted_grace=exhausted_grace)
    plan = Plan(seed, nodes, 0, 0, limit, 0.0, 0.0, 0.0, ())
    world = Simulation(
        plan,
        config,
        keep_trace=False,
        keeper_class=keeper_class,
        attacker=attacker,
        collect=collect,
    )
    world.heal_at = -SETTLE
    world.observer.owner_ghost = False  # tests sign owner statements of their own
    world.boot()
    return world


@dataclass
class Loot:
    """What the attacker holds of one entry: the hostile nodes' shares, and the manifest."""

    shares: dict[int, threshold.KeyShare]
    manifest: manifest.Manifest


class ThresholdClient:
    """An honest user's device on a scripted world: the flows of `clients.py`, each fan-out
    answered at once, node after node (`Simulation.fanout_now`), or with every copy sent
    at once (`together`: `Simulation.fanout_together`). `hostile_answer`: what the
    attacker answers for hostile nodes (the world's `attacker`)."""

    def __init__(
        self,
        world: Simulation,
        account: str = "alice",
        entry: str = "chat",
        hostile_answer: AttackerAnswer | None = None,
        *,
        together: bool = False,
    ) -> None:
        self.world = world
        #: Each fan-out's copies sent at once (`Simulation.fanout_together`), else to one
        #: node after the other (`fanout_now`).
        self.together = together
        if hostile_answer is not None:
            world.attacker = hostile_answer
        self.ctx = world._make_client(-1, entry=0, account=account, name=entry).ctx
        self.ctx.now_ms = self._tick
        # A scripted fan-out answers at once, with no wait between resends: an evaluation
        # resends its EVALUATE_RESENDS times, not for its patience (which would never pass).
        self.ctx.now = lambda: math.inf
        self.key = EntryId(account, entry).to_bytes()
        self.clock_ms = 1_000
        self.last_rejected: tuple[int, ...] = ()

    def _tick(self) -> int:
        self.clock_ms += 1000
        return self.clock_ms

    @property
    def account(self) -> str:
        return self.ctx.account

    @property
    def entry(self) -> str:
        return self.ctx.entry

    def _fanout(self, call: Call) -> Answers:
        # Looked up at each call: a test may replace the world's fan-out meanwhile.
        return self.world.fanout_together(call) if self.together else self.world.fanout_now(call)

    def _run(self, flow: Flow) -> Outcome:
        try:
            call = next(flow)
            while True:
                call = flow.send(self._fanout(call))
        except StopIteration as stop:
            outcome: Outcome = stop.value
            return outcome

    def _loot(self, outcome: Outcome) -> Loot:
        made = outcome.registration
        assert made is not None
        return Loot({i: made.shares[i] for i in self.world.hostile}, made.manifest)

    def register(self, password: bytes, root_key: bytes, version: int = 1) -> tuple[Loot, int]:
        """Register; the attacker's loot (hostile nodes' shares) and the verified acks."""
        outcome = self._run(clients.register(self.ctx, password, root_key, version))
        return self._loot(outcome), outcome.acks

    def agreed(self) -> manifest.Manifest:
        """The manifest t nodes return identically (AuthenticationFailed if none)."""
        _, found = self._run_fetch()
        if found.agreed is None:
            raise found.error or AuthenticationFailed(found.text)
        return found.agreed

    def status(self) -> str:
        """The entry's status (finishing what this device owes on the way)."""
        return self._run(clients.status(self.ctx)).text

    def _run_fetch(self) -> tuple[Answers, Outcome]:
        flow = clients.fetch_manifest(self.ctx)
        try:
            call = next(flow)
            while True:
                call = flow.send(self._fanout(call))
        except StopIteration as stop:
            found: tuple[Answers, Outcome] = stop.value
            return found

    def recover(self, password: bytes) -> tuple[bytes, bytes] | None:
        """(export_key, root_key), or None if the password is wrong. Raises
        AuthenticationFailed (NotEnoughPartials, naming the nodes whose partial did not
        verify) when no manifest or fewer than t good partials came back."""
        outcome = self._run(clients.recover(self.ctx, password))
        self.last_rejected = outcome.rejected
        if outcome.error is not None:
            raise outcome.error
        if outcome.text.startswith("wrong password"):
            return None
        assert outcome.text == "recovered", outcome.text
        return outcome.export_key, outcome.root_key

    def _recovered(self, export_key: bytes, root_key: bytes = b"") -> Outcome:
        return Outcome("recovered", export_key=export_key, root_key=root_key, agreed=self.agreed())

    def change_password(
        self, export_key: bytes, new_password: bytes, root_key: bytes, counter: int = 1
    ) -> tuple[Loot, int]:
        """A fresh k for version + 1, authorized by the old owner's CHANGE_PASSWORD
        statement over the new manifest; the new loot and the verified acks."""
        recovered = self._recovered(export_key, root_key)
        flow = clients.change_password(self.ctx, recovered, new_password, counter)
        outcome = self._run(flow)
        return self._loot(outcome), outcome.acks

    def delete(self, export_key: bytes, counter: int = 1) -> int:
        """How many nodes acknowledged the erasure (verified)."""
        return self._run(clients.delete(self.ctx, self._recovered(export_key), counter)).acks
