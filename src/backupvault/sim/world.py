"""The deterministic simulation: the real `Replica` and `VaultFirmware` of every node in one
process, driven by a seeded scheduler over a simulated clock and a faulty network.

A run is a `Plan` (made from the seed: fleet size, network chaos, client operations,
faults, relay replays) executed by `Simulation`. Everything random in a run (message
loss, delays, duplicates, which node the relay picks, the replicas' and firmware's
random bytes) comes from the seed, so a seed reproduces exactly; the plan can be shrunk
by removing steps (see `shrink.py`).
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.codec import Message, decode_any
from backupvault.crypto import opaque
from backupvault.crypto.seal import Kem, NodePrivateKey
from backupvault.fleet.messages import PEER_MESSAGES, Accept, Forward, payload_of
from backupvault.fleet.records import MemoryRecords
from backupvault.fleet.replica import (
    DEFAULT_TIMING,
    Committed,
    Effect,
    Failed,
    Persist,
    Replica,
    Send,
)
from backupvault.hsm.ceremony import make_fleet_secrets
from backupvault.hsm.firmware import FleetSecrets, NodeKey, Reply, Update, VaultFirmware
from backupvault.hsm.state import EntryId, EntryState
from backupvault.protocol import (
    REQUEST_TYPES,
    EntryStatus,
    ErrorResponse,
    Op,
    RecoverFinishRequest,
    RecoverFinishResponse,
    RecoverStartResponse,
    decode_response,
    pad_response,
)
from backupvault.sim.clients import (
    OPS,
    SIM_KSF,
    Call,
    ClientViolation,
    Credentials,
    Flow,
    FlowContext,
)
from backupvault.sim.clients import run_op as client_op
from backupvault.sim.observer import InvariantViolation, Observer, describe
from backupvault.tokens import TokenVerifier, fleet_audience

EPOCH = 1_700_000_000.0  # sim time 0 as the firmware's wall clock
TICK = 0.02
CLIENT_TIMEOUT = 6.0
CLIENT_TRIES = 4
SETTLE = 6.0  # after the heal: restarts catch up, in-flight proposals finish or fail


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 0  # 0: 3 or 5, from the seed
    chaos_seconds: float = 25.0
    quiet_seconds: float = 40.0
    max_faulty: int = -1  # -1: a minority (the fault model); more shows unavailability
    disk_faults: bool = True
    network_faults: bool = True
    replays: bool = True
    leader: bool = True  # False: every change is a leaderless CASPaxos round
    leader_faults: bool = True  # leader crashes and nodes that pass the leader over


DEFAULT_CONFIG = SimConfig()


@dataclass(frozen=True)
class Step:
    t: float
    kind: str  # crash | restart | backup | partition | heal | op | replay | suspect
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
            what = rng.choice(("KE3", "any"))
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


@lru_cache(maxsize=1)
def fleet_secrets() -> FleetSecrets:
    """Made once per process: nothing in a run's control flow depends on their bytes."""
    return make_fleet_secrets(b"sim-fleet", os.urandom)


@lru_cache(maxsize=16)
def node_key(index: int) -> NodeKey:
    """Each node's own HPKE key; requests reach the sim's firmware already opened, so only
    that every node has its own matters."""
    return NodeKey(index, NodePrivateKey.generate(Kem.X25519))


@dataclass
class _Pending:
    client: int  # -1: the relay's replay (answer discarded)
    req_id: int
    op: Op
    request: Message
    key: bytes
    child: bytes = b""
    parent: bytes = b""


@dataclass
class _Node:
    index: int
    firmware: VaultFirmware
    rng: random.Random
    # The node's store: the replica reads and writes it directly (a write is durable
    # the moment it is made); `backups` are older images a rollback restores.
    disk: MemoryRecords = field(default_factory=MemoryRecords)
    backups: list[MemoryRecords] = field(default_factory=list)
    replica: Replica | None = None
    refusing: bool = False  # bit-flipped store: refuses to start until the row is removed
    corrupt: bytes = b""
    pending: dict[bytes, _Pending] = field(default_factory=dict)
    incarnation: int = 0

    @property
    def up(self) -> bool:
        return self.replica is not None

    @property
    def ready(self) -> bool:
        return self.replica is not None and self.replica.ready


@dataclass
class _Client:
    index: int
    ctx: FlowContext
    todo: list[str] = field(default_factory=list)
    flow: Flow | None = None
    op_name: str = ""
    call: Call | None = None
    req_id: int = 0
    tries: int = 0
    first_sent: float = 0.0
    done: list[str] = field(default_factory=list)


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
    def __init__(
        self, plan: Plan, config: SimConfig = DEFAULT_CONFIG, keep_trace: bool = True
    ) -> None:
        self.plan = plan
        self.config = config
        self.rng = random.Random(plan.seed * 7919 + 1)
        self.now = 0.0
        self.keep_trace = keep_trace
        self.trace: list[str] = []
        self.secrets = fleet_secrets()
        # Requests reach the firmware here already opened (no seal, no tokens): the
        # simulation is about replication and counting; sealing has its own tests.
        self.accounts = TokenVerifier(
            Ed25519PrivateKey.generate().public_key(),
            issuer="sim",
            audience=fleet_audience(self.secrets.fleet_id),
        )
        self.observer = Observer(plan.nodes // 2 + 1, self.log)
        self.max_faulty = plan.nodes // 2 if config.max_faulty < 0 else config.max_faulty
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._req_ids = itertools.count(1)
        self.isolated: frozenset[int] = frozenset()
        self.drop, self.dup, self.long_delay = plan.drop, plan.dup, plan.long_delay
        self.heal_at = config.chaos_seconds
        self.captured: list[tuple[Op, Message]] = []
        self.stats = {
            "messages": 0,
            "dropped": 0,
            "unavailable": 0,
            "gave_up": 0,
            "skipped": 0,
            "forwarded": 0,  # changes sent to a leader (Forward)
            "one_round": 0,  # Accepts a leader sent on a held promise
        }
        self.credentials = Credentials()
        self.nodes = [self._make_node(i) for i in range(plan.nodes)]
        self.entry_keys = [EntryId(f"acct{e}", "root-key").to_bytes() for e in range(plan.entries)]
        self.clients = [self._make_client(c) for c in range(plan.clients)]

    # ---- setup --------------------------------------------------------------------------

    def log(self, line: str) -> None:
        if self.keep_trace:
            self.trace.append(f"t={self.now:7.3f} {line}")

    def _make_node(self, i: int) -> _Node:
        fw_rng = random.Random(self.rng.getrandbits(64))
        node = _Node(
            i,
            # A fake record's KE2 names the parameters this world's clients register with,
            # as the production default matches the SDK's: a client cannot tell it apart.
            VaultFirmware(
                self.secrets,
                node_key(i),
                fw_rng.randbytes,
                self.accounts,
                fake_ksf_params=SIM_KSF,
            ),
            random.Random(self.rng.getrandbits(64)),
        )
        original = node.firmware._evaluate

        def evaluate(
            account: str, entry: str, ke1: opaque.KE1, state: EntryState, now: float
        ) -> RecoverStartResponse:
            response = original(account, entry, ke1, state, now)
            key = EntryId(account, entry).to_bytes()
            number = self.observer.on_evaluate(
                i, key, state, response.recovery_ticket, ke1.to_bytes()
            )
            what = f"KE2 #{number}" if number else "a KE2 that is not a new evaluation"
            self.log(f"node{i} evaluates OPRF → {what} for {account} (attempt {state.attempt_seq})")
            return response

        node.firmware._evaluate = evaluate  # type: ignore[method-assign]
        node.backups.append(MemoryRecords())
        return node

    def _make_client(self, c: int) -> _Client:
        entry = c % self.plan.entries
        key = self.entry_keys[entry]

        def current_password() -> str | None:
            state = EntryState.from_bytes(self.observer.latest(key) or EntryState().to_bytes())
            if state.status != EntryStatus.LIVE:
                return None
            found = self.credentials.by_record.get(state.record)
            return found[0] if found else None

        ctx = FlowContext(
            f"acct{entry}",
            "root-key",
            self.secrets.fleet_id,
            self.secrets.server_public_key,
            self.credentials,
            random.Random(self.rng.getrandbits(64)),
            current_password,
            lambda: int((EPOCH + self.now) * 1000),
            self.plan.guess_limit,
        )
        return _Client(c, ctx)

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
            # An invariant asserted inside the replica or the firmware stopped the step.
            frame = traceback.extract_tb(err.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno} {frame.line}"
            violation = InvariantViolation("core-assertion", f"{where} {err}".strip())
        if violation is not None:
            self.log(f"VIOLATION {violation.invariant}: {violation.detail}")
        stats = dict(
            self.stats, evaluations=self.observer.evaluations, releases=self.observer.releases
        )
        return RunResult(self.plan, violation, self.now, self.trace, stats)

    def _run(self) -> None:
        for node in self.nodes:
            self._start(node)
        for step in self.plan.steps:
            if step.t < self.heal_at or step.kind == "op":
                self.at(step.t, "step", step)
        self.at(self.heal_at, "heal_all")
        end = self.heal_at + self.config.quiet_seconds
        while self._events:
            t, _, kind, data = heapq.heappop(self._events)
            if t > end:
                break
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
                n = self.nodes[node]
                if n.replica is not None and n.incarnation == incarnation:
                    self._execute(n, n.replica.tick(self.now))
                    self.at(self.now + TICK, "tick", data)
            case "step":
                self._step(data)
            case "client_request":
                self._client_request(*data)
            case "client_answer":
                self._client_answer(*data)
            case "client_timeout":
                client, req_id = data
                c = self.clients[client]
                if c.call is not None and c.req_id == req_id:
                    self.log(f"client c{client} {c.call.op}: no answer (timeout)")
                    self._retry(c)
            case "client_send":
                self._send_call(self.clients[data])
            case "operator_fix":
                n = self.nodes[data]
                if n.refusing:
                    n.disk.remove(n.corrupt)
                    n.refusing = False
                    self.log(f"node{data} operator removes the corrupted row; restart")
                    self._start(n)
            case "heal_all":
                self._heal_all()
            case "client_wake":
                self._client_next(self.clients[data])

    # ---- faults -------------------------------------------------------------------------

    def faulty(self) -> set[int]:
        return {n.index for n in self.nodes if not n.ready} | set(self.isolated)

    def _step(self, step: Step) -> None:
        n = self.nodes[step.node] if step.node >= 0 else None
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
                self._crash(n)
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
                n.backups.append(n.disk.copy())
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

    def _crash(self, n: _Node) -> None:
        n.replica = None
        n.pending.clear()
        n.backups.append(n.disk.copy())

    def _disk_fault(self, n: _Node, mode: str, which: int) -> None:
        if mode == "wipe":
            n.disk = MemoryRecords()
            self.log(f"node{n.index} disk wiped")
        elif mode == "rollback":
            old = n.backups[max(0, len(n.backups) - 1 - which)]
            n.disk = old.copy()
            self.log(f"node{n.index} disk rolled back to an older copy ({len(old)} records)")
        elif mode == "bitflip" and n.disk:
            keys = n.disk.keys()
            n.corrupt = keys[which % len(keys)]
            n.refusing = True
            self.log(f"node{n.index} a bit flips in a stored row: the store refuses to open")

    def _start(self, n: _Node, intact: bool = False) -> None:
        if n.refusing:
            self.at(self.now + 2.0, "operator_fix", n.index)
            return
        n.incarnation += 1
        if not intact:
            # As the node's store does when it finds itself behind the token's counter:
            # versions it hands out from here may repeat older ones, so a new store id.
            n.disk.renew(f"node{n.index}/{n.incarnation}".encode())
        rng = random.Random(n.rng.getrandbits(64))
        timing = replace(DEFAULT_TIMING, leader=self.config.leader)
        n.replica = Replica(
            n.index,
            range(self.plan.nodes),
            rng.randbytes,
            n.disk,
            timing,
            check_value=n.firmware.check_value,
        )
        self._execute(n, n.replica.start(self.now, intact))
        self.at(self.now + TICK * (1 + n.index / self.plan.nodes), "tick", (n.index, n.incarnation))

    def _heal_all(self) -> None:
        self.log("heal: faults end, network reliable, crashed nodes restart")
        self.isolated = frozenset()
        self.drop = self.dup = self.long_delay = 0.0
        for n in self.nodes:
            fixed = n.refusing
            if n.refusing:
                n.disk.remove(n.corrupt)
                n.refusing = False
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

    def _deliver(self, sender: int, to: int, raw: bytes) -> None:
        n = self.nodes[to]
        if n.replica is None or ((sender in self.isolated) != (to in self.isolated)):
            return
        message = decode_any(raw, PEER_MESSAGES)
        self._execute(n, n.replica.receive(sender, message, self.now))

    def _execute(self, n: _Node, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Persist(record, kind):
                    # Already in n.disk: the replica wrote it there (durable at once).
                    self.observer.on_persist(n.index, record, kind)
                case Send(to, message):
                    if isinstance(message, Forward):
                        self.stats["forwarded"] += 1
                    elif (
                        isinstance(message, Accept) and message.pipeline and message.node == n.index
                    ):
                        self.stats["one_round"] += 1
                    self._transmit("deliver", (n.index, to, message.to_bytes()))
                case Committed(op_id, outcome):
                    self._committed(n, op_id, outcome)
                case Failed(op_id, _):
                    pending = n.pending.pop(op_id, None)
                    if pending is not None:
                        self._answer(n, pending, ErrorResponse("fleet_unavailable", "", 0))

    # ---- the node's client endpoint ----------------------------------------------------

    def _client_request(self, node: int, client: int, req_id: int, op: Op, raw: bytes) -> None:
        n = self.nodes[node]
        if n.replica is None:
            return
        request = REQUEST_TYPES[op].from_bytes(raw)
        pending = _Pending(client, req_id, op, request, b"")
        if not n.replica.ready:
            self._answer(n, pending, ErrorResponse("node_not_ready", "", 0))
            return
        action = n.firmware.handle(op, request, EPOCH + self.now)
        if isinstance(action, Reply):
            self._answer(n, pending, action.response)
            return
        # The simulated clients use the single-seed flow (tests/sim/test_hostile_threshold
        # runs the threshold flow against hostile nodes).
        assert isinstance(action, Update), "threshold requests are not simulated here"
        op_id = n.rng.randbytes(16)
        pending.key = action.key
        n.pending[op_id] = pending
        ticket = request.recovery_ticket if isinstance(request, RecoverFinishRequest) else b""

        def change(value: bytes) -> tuple[bytes, Any]:
            state = EntryState.from_bytes(value) if value else EntryState()
            new_state, build = action.apply(state)
            child = new_state.to_bytes()
            bad = self.observer.check_finish(action.key, ticket, value, child) if ticket else ""
            self.observer.on_apply(action.key, value, child, bad)
            pending.parent, pending.child = value, child
            return child, build

        self._execute(n, n.replica.propose(op_id, action.key, change, self.now))

    def _committed(self, n: _Node, op_id: bytes, outcome: Any) -> None:
        pending = n.pending.pop(op_id, None)
        if pending is None:
            return
        build: Callable[[], Message] = outcome
        reply = build()
        if isinstance(reply, RecoverFinishResponse):
            assert isinstance(pending.request, RecoverFinishRequest)
            self.observer.on_release(
                n.index, pending.key, pending.request.recovery_ticket, pending.child
            )
            self.log(f"node{n.index} releases the wrapped key (success committed)")
        self._answer(n, pending, reply)

    def _answer(self, n: _Node, pending: _Pending, reply: Message) -> None:
        if pending.client >= 0:
            padded = pad_response(pending.op, reply.to_bytes())
            self._transmit("client_answer", (pending.client, pending.req_id, padded))

    # ---- clients ------------------------------------------------------------------------

    def _client_next(self, c: _Client) -> None:
        if c.flow is not None or not c.todo:
            return
        c.op_name = c.todo.pop(0)
        self.log(f"client c{c.index} starts {c.op_name}")
        c.flow = client_op(c.ctx, c.op_name)
        self._advance(c, None, first=True)

    def _advance(self, c: _Client, answer: Message | None, first: bool = False) -> None:
        assert c.flow is not None
        try:
            call = next(c.flow) if first else c.flow.send(answer)
        except StopIteration as stop:
            self.log(f"client c{c.index} {c.op_name} → {stop.value}")
            c.done.append(f"{c.op_name}: {stop.value}")
            c.flow = None
            c.call = None
            self.at(self.now + 0.01, "client_wake", c.index)
            return
        c.call = call
        c.tries = 0
        c.first_sent = self.now
        self.captured.append((call.op, call.request))
        self._send_call(c)

    def _send_call(self, c: _Client) -> None:
        if c.call is None:
            return
        c.tries += 1
        c.req_id = next(self._req_ids)
        up = [n.index for n in self.nodes if n.up]
        if not up:
            self.at(self.now + 0.05, "client_answer", (c.index, c.req_id, None))
        else:
            node = self.rng.choice(up)
            data = (node, c.index, c.req_id, c.call.op, c.call.request.to_bytes())
            self._transmit("client_request", data)
        self.at(self.now + CLIENT_TIMEOUT, "client_timeout", (c.index, c.req_id))

    def _client_answer(self, client: int, req_id: int, raw: bytes | None) -> None:
        c = self.clients[client]
        if c.call is None or c.req_id != req_id:
            return  # a late or duplicated answer to an abandoned try
        answer = decode_response(c.call.op, raw) if raw is not None else None
        if answer is None or (
            isinstance(answer, ErrorResponse)
            and answer.code in ("fleet_unavailable", "node_not_ready")
        ):
            self.stats["unavailable"] += 1
            self.log(f"client c{client} {c.call.op}: {answer.code if answer else 'no node up'}")
            self._retry(c)
            return
        self._advance(c, answer)

    def _retry(self, c: _Client) -> None:
        assert c.call is not None
        if c.first_sent >= self.heal_at + SETTLE:
            raise InvariantViolation(
                "liveness",
                f"client c{c.index} {c.call.op} sent at t={c.first_sent:.2f}, after the faults "
                f"ended, did not complete (try {c.tries})",
            )
        if c.tries >= CLIENT_TRIES and self.now < self.heal_at:
            self.stats["gave_up"] += 1
            self.log(f"client c{c.index} {c.call.op}: gives up after {c.tries} tries")
            c.req_id = -1
            self._advance(c, None)
            return
        c.req_id = -1
        self.at(self.now + self.rng.uniform(0.2, 1.0), "client_send", c.index)

    def _replay(self, step: Step) -> None:
        choices = [
            (op, m) for op, m in self.captured if step.arg != "KE3" or op is Op.RECOVER_FINISH
        ]
        if not choices:
            return
        op, request = choices[step.n % len(choices)]
        self.log(f"relay replays a captured {op} to node{step.node}")
        data = (step.node, -1, 0, op, request.to_bytes())
        self._transmit("client_request", data)

    # ---- the end of a run ---------------------------------------------------------------

    def _quiet(self) -> bool:
        if any(c.flow is not None or c.todo for c in self.clients):
            return False
        return all(
            n.replica is not None
            and n.replica.ready
            and not n.replica.pending()
            and not n.replica.lagging()
            for n in self.nodes
        )

    def _final_checks(self) -> None:
        busy = [c for c in self.clients if c.flow is not None or c.todo]
        if busy:
            c = busy[0]
            raise InvariantViolation(
                "liveness", f"client c{c.index} still busy with {c.op_name} after the quiet period"
            )
        for n in self.nodes:
            if not n.ready:
                raise InvariantViolation(
                    "liveness", f"node{n.index} never caught up after the heal"
                )
        for key in self.entry_keys:
            latest = self.observer.latest(key)
            if not latest or EntryState.from_bytes(latest).status != EntryStatus.DESTROYED:
                continue
            for n in self.nodes:
                record = n.disk.get(key)
                held = payload_of(record.value) if record else b""
                if not held or EntryState.from_bytes(held).status != EntryStatus.DESTROYED:
                    raise InvariantViolation(
                        "tombstone-everywhere",
                        f"node{n.index} still holds [{describe(held)}] for a destroyed entry",
                    )
        self._probe()

    def _probe(self) -> None:
        """With every fault gone, a status read and a right-password recovery of every live
        entry must complete and succeed."""
        self.heal_at = -SETTLE  # from here on, every request must complete at once
        for e, key in enumerate(self.entry_keys):
            state = EntryState.from_bytes(self.observer.latest(key) or EntryState().to_bytes())
            c = self._make_client(e)
            c.index = len(self.clients)
            self.clients.append(c)
            c.todo.append("status")
            if state.status == EntryStatus.LIVE and state.attempts_used < state.guess_limit:
                c.todo.append("recover_right")
            self._client_next(c)
            deadline = self.now + 20.0
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


def run_seed(seed: int, config: SimConfig = DEFAULT_CONFIG, keep_trace: bool = True) -> RunResult:
    return Simulation(make_plan(seed, config), config, keep_trace).run()
