"""A deterministic world for the threshold flow (docs/threshold.md) with hostile nodes.

Honest nodes run the real node-side code: `hsm.shares.ShareKeeper` (the firmware's
threshold logic) on a real `fleet.replica.Replica` with the acceptor's own checks and the
accept hook, on an in-memory network. Hostile nodes are the attacker's: they hold their
shares in the clear, evaluate anything for free, and as acceptors answer whatever the
attacker scripts (by default: promise anything, accept anything). The attacker also owns
the network (`reachable`), the relay and account tokens, so it can send any request to
any honest node. What it cannot do is make an honest node act on its word: the tests
(`tests/sim/test_threshold_hostile.py`) count the combined OPRF outputs it obtains.

Honest clients (`ThresholdClient`) register with `manifest.register`, recover with the
t-identical manifest, `threshold.combine` (naming bad partials) and `open_entry`, and
prove the password with a signed reset to every node.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.codec import Message, decode_any
from backupvault.crypto import ksf, manifest, oprf, owner, threshold
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fleet.messages import (
    PEER_MESSAGES,
    Accept,
    Accepted,
    Prepare,
    Promise,
    ReplicatedValue,
)
from backupvault.fleet.records import MemoryRecords
from backupvault.fleet.replica import Committed, Effect, Failed, Replica, Send, Timing
from backupvault.hsm.shares import (
    Answer,
    FleetShape,
    ShareKeeper,
    ThresholdRead,
    check_threshold_value,
    error,
)
from backupvault.hsm.state import EntryId, NodeShare, ThresholdState
from backupvault.protocol import (
    AckKind,
    DeleteShareRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    ManifestResponse,
    Op,
    RegisterShareRequest,
    ResetRequest,
    ShareAck,
    share_ack_message,
)

SIM_KSF = ksf.Argon2idParams(
    memory_kib=8, iterations=1, parallelism=1, salt=ksf.ZERO_SALT, output_len=64
)
FLEET_ID = b"sim-threshold-fleet"
EPOCH = 1
TICK = 0.01


@dataclass
class HonestNode:
    slot: int
    keeper: ShareKeeper
    replica: Replica
    records: MemoryRecords
    rows: dict[bytes, NodeShare] = field(default_factory=dict)  # this node's disk


@dataclass
class HostileAcceptor:
    """An acceptor the attacker runs. `report(key)` is the (round, node, value) it claims
    to have accepted when asked to promise; it accepts every Accept."""

    slot: int
    report: Callable[[bytes, int], tuple[int, int, bytes]] = lambda key, rnd: (0, 0, b"")

    def answer(self, message: Message) -> Message | None:
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
        return None


class ThresholdWorld:
    """N nodes, those in `hostile` run by the attacker. `keeper_class` lets a test plant
    a mutant honest node. `leader`: the replicas' stable-leader path (else leaderless)."""

    def __init__(
        self,
        nodes: int = 5,
        limit: int = 10,
        hostile: frozenset[int] = frozenset(),
        seed: int = 0,
        leader: bool = True,
        keeper_class: type[ShareKeeper] = ShareKeeper,
    ) -> None:
        self.rand = random.Random(seed)
        self.now = 0.0
        self.shape = FleetShape(EPOCH, nodes, nodes // 2 + 1, limit)
        self.timing = Timing(leader=leader)
        self.keeper_class = keeper_class
        self.signing = {
            i: Ed25519PrivateKey.from_private_bytes(self.rand.randbytes(32)) for i in range(nodes)
        }
        self.hostile: dict[int, HostileAcceptor] = {i: HostileAcceptor(i) for i in hostile}
        self.honest: dict[int, HonestNode] = {}
        for slot in range(nodes):
            if slot not in hostile:
                self.honest[slot] = self._boot(slot, {}, MemoryRecords(), intact=True)
        self.queue: deque[tuple[int, int, bytes]] = deque()
        self.results: dict[bytes, Committed | Failed] = {}
        #: None: every node reaches every other; else only nodes in the set talk (the
        #: attacker's partition of the network).
        self.reachable: set[int] | None = None
        self.down: set[int] = set()  # crashed honest nodes: no messages, no answers
        self.drop = 0.0  # the chance that a message between nodes is lost
        self.refusals: list[tuple[int, int, Message]] = []  # (acceptor, sender, message)

    @property
    def nodes(self) -> int:
        return self.shape.nodes

    def _boot(
        self, slot: int, rows: dict[bytes, NodeShare], records: MemoryRecords, *, intact: bool
    ) -> HonestNode:
        keeper = self.keeper_class(FLEET_ID, slot, self.shape, self.signing[slot], rows.get)
        shape = self.shape

        def check(key: bytes, payload: bytes, held: bytes) -> str | None:
            try:
                state = ThresholdState.from_bytes(payload)
            except InvalidInput:
                return "not a threshold entry"
            return check_threshold_value(FLEET_ID, key, shape, state, held)

        replica = Replica(
            slot,
            range(self.shape.nodes),
            self.rand.randbytes,
            records,
            self.timing,
            check_value=check,
            on_accept=keeper.on_accept,
            announce=lambda key, payload: True,  # every entry here is a threshold entry
        )
        node = HonestNode(slot, keeper, replica, records, rows)
        if not intact:
            keeper.distrust_stored_counts()
        replica.start(self.now, intact=True)
        return node

    # ---- disks: snapshots, rollback -----------------------------------------------------

    def snapshot(self, slot: int) -> dict[bytes, NodeShare]:
        return dict(self.honest[slot].rows)

    def restart_rolled_back(self, slot: int, rows: dict[bytes, NodeShare]) -> None:
        """Restart node `slot` with its share rows rolled back to `rows` (an older copy of
        its disk); its token's counter shows the rollback, so it starts distrusting."""
        old = self.honest[slot]
        self.honest[slot] = self._boot(slot, dict(rows), old.records, intact=False)

    def crash(self, slot: int) -> None:
        self.down.add(slot)

    def restart(self, slot: int) -> None:
        """Restart a crashed node from its disk (records and rows intact; what it kept
        only in memory, such as the attempts it accepted, is gone)."""
        self.down.discard(slot)
        old = self.honest[slot]
        self.honest[slot] = self._boot(slot, old.rows, old.records, intact=True)

    # ---- network ---------------------------------------------------------------------

    def _connected(self, a: int, b: int) -> bool:
        if a in self.down or b in self.down:
            return False
        return self.reachable is None or (a in self.reachable and b in self.reachable)

    def _run(self, slot: int, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Send(to, message):
                    lost = self.drop and self.rand.random() < self.drop
                    if self._connected(slot, to) and not lost:
                        self.queue.append((slot, to, message.to_bytes()))
                case Committed() | Failed():
                    self.results[effect.op_id] = effect

    def inject(self, sender: int, to: int, message: Message) -> Message | None:
        """A hostile node sends `message` to honest node `to`; returns its direct answer."""
        assert sender in self.hostile, "only hostile nodes' messages are forged"
        effects = self.honest[to].replica.receive(sender, message, self.now)
        answers = [e.message for e in effects if isinstance(e, Send) and e.to == sender]
        self._run(to, [e for e in effects if not (isinstance(e, Send) and e.to == sender)])
        for answer in answers:
            if isinstance(answer, Accepted | Promise) and not answer.ok:
                self.refusals.append((to, sender, message))
        return answers[0] if answers else None

    def settle(self, until: bytes | None = None, seconds: float = 10.0) -> None:
        deadline = self.now + seconds
        while self.now < deadline:
            while self.queue:
                sender, to, raw = self.queue.popleft()
                message = decode_any(raw, PEER_MESSAGES)
                if to in self.hostile:
                    answer = self.hostile[to].answer(message)
                    if answer is not None and self._connected(to, sender):
                        self.queue.append((to, sender, answer.to_bytes()))
                elif to not in self.down:
                    self._run(to, self.honest[to].replica.receive(sender, message, self.now))
            if until is not None and until in self.results:
                return
            if until is None and not any(n.replica.pending() for n in self.honest.values()):
                return
            self.now += TICK
            for slot, node in self.honest.items():
                if slot not in self.down:
                    self._run(slot, node.replica.tick(self.now))

    # ---- one honest node's client endpoint -------------------------------------------

    def request(self, slot: int, op: Op, request: Message) -> Message:
        """What honest node `slot` answers to `request` (as its service would)."""
        node = self.honest[slot]
        try:
            update = node.keeper.handle(op, request)
        except (InvalidInput, AuthenticationFailed) as err:
            return error(ErrorCode.BAD_REQUEST, err.message)
        if isinstance(update, ThresholdRead):
            return update.answer(node.replica.held_payload(update.key)).response
        op_id = self.rand.randbytes(16)
        effects = node.replica.propose(op_id, update.key, update.change, self.now, joinable=True)
        self._run(slot, effects)
        self.settle(until=op_id)
        result = self.results.pop(op_id, None)
        if not isinstance(result, Committed):
            return error(ErrorCode.FLEET_UNAVAILABLE, "no majority")
        answer: Answer = result.outcome()
        for write in answer.writes:  # durable before the answer leaves
            node.rows[write.key] = write.row
        node.keeper.durable(answer.writes)
        return answer.response

    def replicated(self, slot: int, key: bytes) -> ThresholdState:
        record = self.honest[slot].records.get(key)
        if record is None or not record.value:
            return ThresholdState()
        return ThresholdState.from_bytes(ReplicatedValue.from_bytes(record.value).payload)


@dataclass
class Loot:
    """What the attacker holds of one entry: the hostile nodes' shares, and the manifest."""

    shares: dict[int, threshold.KeyShare]
    manifest: manifest.Manifest


class ThresholdClient:
    """An honest user's device: real client-side crypto, requests to every node. Hostile
    nodes answer through `hostile_answer(slot, op, request)` (the attacker's choice)."""

    def __init__(
        self,
        world: ThresholdWorld,
        account: str = "alice",
        entry: str = "chat",
        hostile_answer: Callable[[int, Op, Message], Message | None] | None = None,
    ) -> None:
        self.world = world
        self.account = account
        self.entry = entry
        self.key = EntryId.of(account, entry).to_bytes()
        self.hostile_answer = hostile_answer or (lambda slot, op, request: None)
        self.clock_ms = 1_000
        self.last_rejected: tuple[int, ...] = ()
        self.guesses_remaining: dict[int, int] = {}

    def _ask(self, slot: int, op: Op, request: Message) -> Message | None:
        if slot in self.world.hostile:
            return self.hostile_answer(slot, op, request)
        if slot in self.world.down:
            return None
        return self.world.request(slot, op, request)

    def _ask_all(self, op: Op, request_for: Callable[[int], Message]) -> dict[int, Message]:
        answers: dict[int, Message] = {}
        for slot in range(self.world.nodes):
            answer = self._ask(slot, op, request_for(slot))
            if answer is not None:
                answers[slot] = answer
        return answers

    def _deal(self, password: bytes, root_key: bytes, version: int) -> manifest.Registration:
        """A fresh k dealt to this fleet's shape: the manifest and every node's share."""
        shape = self.world.shape
        return manifest.register(
            password,
            root_key,
            fleet_id=FLEET_ID,
            account=self.account,
            entry=self.entry,
            epoch=EPOCH,
            nodes=shape.nodes,
            threshold_count=shape.threshold,
            ksf=SIM_KSF,
            version=version,
        )

    def register(self, password: bytes, root_key: bytes, version: int = 1) -> tuple[Loot, int]:
        """Register; returns the attacker's loot (hostile nodes' shares) and the number of
        verified acknowledgements."""
        registration = self._deal(password, root_key, version)
        encoded = registration.manifest.to_bytes()
        answers = self._ask_all(
            Op.REGISTER_SHARE,
            lambda slot: RegisterShareRequest(
                self.account, self.entry, encoded, registration.shares[slot].to_bytes(), b"", 0
            ),
        )
        acks = sum(
            1
            for slot, answer in answers.items()
            if self._ack_verifies(slot, answer, AckKind.HELD, registration.manifest)
        )
        loot = Loot({i: registration.shares[i] for i in self.world.hostile}, registration.manifest)
        return loot, acks

    def _ack_verifies(
        self, slot: int, answer: Message, kind: AckKind, held: manifest.Manifest
    ) -> bool:
        if not isinstance(answer, ShareAck) or answer.index != slot + 1 or answer.kind != kind:
            return False
        share_key = held.commitments.node_public_key(slot + 1)
        signed = share_ack_message(
            kind, FLEET_ID, self.account, self.entry, held.version, share_key, held.to_bytes()
        )
        try:
            self.world.signing[slot].public_key().verify(answer.signature, signed)
        except InvalidSignature:
            return False
        return True

    def agreed(self) -> manifest.Manifest:
        answers = self._ask_all(Op.MANIFEST, lambda slot: ManifestRequest(self.account, self.entry))
        manifests = {
            slot: a.manifest
            for slot, a in answers.items()
            if isinstance(a, ManifestResponse) and a.manifest
        }
        return manifest.agreed_manifest(manifests, self.world.shape.threshold)

    def recover(self, password: bytes) -> tuple[bytes, bytes] | None:
        """(export_key, root_key), or None if the password is wrong. Raises
        AuthenticationFailed when fewer than t good partials came back."""
        agreed = self.agreed()
        blind, blinded = oprf.blind(password)
        self.clock_ms += 1000
        request = EvaluateRequest(self.account, self.entry, agreed.version, blinded, self.clock_ms)
        answers = self._ask_all(Op.EVALUATE, lambda slot: request)
        partials = []
        attempts: dict[int, int] = {}
        for slot, answer in answers.items():
            if isinstance(answer, EvaluateResponse) and answer.index == slot + 1:
                partials.append(answer.partial())
                attempts[answer.attempt] = attempts.get(answer.attempt, 0) + 1
                self.guesses_remaining[slot] = answer.guesses_remaining
        try:
            combination = threshold.combine(agreed.commitments, blinded, partials)
        except threshold.NotEnoughPartials as err:
            self.last_rejected = err.rejected
            raise
        self.last_rejected = combination.rejected
        output = oprf.finalize(password, blind, combination.evaluated)
        try:
            export_key, root_key = manifest.open_entry(agreed, output)
        except AuthenticationFailed:
            return None
        attempt = max(attempts, key=lambda a: attempts[a])
        statement = owner.OwnerStatement(
            owner.StatementKind.RESET,
            FLEET_ID,
            self.account,
            self.entry,
            agreed.version,
            attempt,
            owner.payload_hash(blinded),
        )
        signature = owner.sign_statement(export_key, statement)
        self._ask_all(
            Op.RESET,
            lambda slot: ResetRequest(self.account, self.entry, agreed.version, attempt, signature),
        )
        return export_key, root_key

    def change_password(
        self, export_key: bytes, new_password: bytes, root_key: bytes, counter: int = 1
    ) -> tuple[Loot, int]:
        """A fresh k for version + 1, authorized by the old owner's CHANGE_PASSWORD
        statement over SHA-256(M'); returns the new loot and the verified acks."""
        agreed = self.agreed()
        registration = self._deal(new_password, root_key, agreed.version + 1)
        encoded = registration.manifest.to_bytes()
        statement = owner.OwnerStatement(
            owner.StatementKind.CHANGE_PASSWORD,
            FLEET_ID,
            self.account,
            self.entry,
            agreed.version,
            counter,
            owner.payload_hash(encoded),
        )
        signature = owner.sign_statement(export_key, statement)
        answers = self._ask_all(
            Op.CHANGE_SHARE,
            lambda slot: RegisterShareRequest(
                self.account,
                self.entry,
                encoded,
                registration.shares[slot].to_bytes(),
                signature,
                counter,
            ),
        )
        acks = sum(
            1
            for slot, answer in answers.items()
            if self._ack_verifies(slot, answer, AckKind.HELD, registration.manifest)
        )
        loot = Loot({i: registration.shares[i] for i in self.world.hostile}, registration.manifest)
        return loot, acks

    def delete(self, export_key: bytes, counter: int = 1) -> int:
        """Delete the entry; returns how many nodes acknowledged the erasure (verified)."""
        agreed = self.agreed()
        statement = owner.OwnerStatement(
            owner.StatementKind.DELETE,
            FLEET_ID,
            self.account,
            self.entry,
            agreed.version,
            counter,
            owner.payload_hash(agreed.to_bytes()),
        )
        signature = owner.sign_statement(export_key, statement)
        answers = self._ask_all(
            Op.DELETE_SHARE,
            lambda slot: DeleteShareRequest(
                self.account, self.entry, agreed.version, counter, signature
            ),
        )
        return sum(
            1
            for slot, answer in answers.items()
            if self._ack_verifies(slot, answer, AckKind.ERASED, agreed)
        )


@dataclass
class ChaosResult:
    steps: int
    windows: int  # owner successes
    max_outputs: int  # the most combined outputs in one window
    destroyed: bool


def run_chaos(seed: int, steps: int, limit: int = 4) -> ChaosResult:
    """A seeded run with every node honest (c = 0): wrong and right recoveries, crashes
    and restarts (at most two nodes down), lost messages, and a relay replaying old
    requests to any node. Raises AssertionError if a window between two owner successes
    ever yields more than `limit` combined outputs, or if the owner cannot recover once
    the faults end (unless every guess was spent)."""
    rand = random.Random(seed)
    world = ThresholdWorld(5, limit, frozenset(), seed=seed, leader=rand.random() < 0.5)
    partials: dict[bytes, set[int]] = {}
    seen: list[EvaluateRequest] = []

    class Observed(ThresholdClient):
        def _ask(self, slot: int, op: Op, request: Message) -> Message | None:
            answer = super()._ask(slot, op, request)
            if isinstance(request, EvaluateRequest):
                seen.append(request)
                if isinstance(answer, EvaluateResponse):
                    partials.setdefault(request.blinded, set()).add(slot)
            return answer

    client = Observed(world)
    _, acks = client.register(b"right", bytes(32))
    assert acks == 5
    world.drop = 0.05
    windows = max_outputs = 0
    destroyed = False

    def outputs() -> int:
        return sum(1 for nodes in partials.values() if len(nodes) >= world.shape.threshold)

    def recover(password: bytes) -> tuple[bytes, bytes] | str | None:
        try:
            return client.recover(password)
        except AuthenticationFailed as err:
            return err.message

    for _ in range(steps):
        roll = rand.random()
        if roll < 0.35:
            recover(b"wrong")
        elif roll < 0.55:
            if isinstance(recover(b"right"), tuple):
                windows += 1
                max_outputs = max(max_outputs, outputs())
                assert outputs() <= limit, f"seed {seed}: {outputs()} outputs in one window"
                partials.clear()
        elif roll < 0.7 and len(world.down) < 2:
            world.crash(rand.choice([s for s in range(5) if s not in world.down]))
        elif roll < 0.85 and world.down:
            world.restart(rand.choice(sorted(world.down)))
        elif seen:
            replayed = rand.choice(seen)  # the relay resends a request it saw
            slot = rand.randrange(5)
            if slot not in world.down:
                answer = world.request(slot, Op.EVALUATE, replayed)
                if isinstance(answer, EvaluateResponse):
                    partials.setdefault(replayed.blinded, set()).add(slot)
        max_outputs = max(max_outputs, outputs())
        assert outputs() <= limit, f"seed {seed}: {outputs()} outputs in one window"
        if any(
            world.replicated(s, client.key).status == EntryStatus.DESTROYED for s in world.honest
        ):
            destroyed = True
            break
    # The faults end: the owner recovers, unless its guesses were all spent.
    for slot in sorted(world.down):
        world.restart(slot)
    world.drop = 0.0
    if not destroyed:
        result = recover(b"right")
        destroyed = any(
            world.replicated(s, client.key).status == EntryStatus.DESTROYED for s in world.honest
        )
        assert isinstance(result, tuple) or destroyed, f"seed {seed}: after healing: {result}"
    return ChaosResult(steps, windows, max_outputs, destroyed)


def wrong_partial(rand: random.Random, slot: int, attempt: int = 1) -> EvaluateResponse:
    """A hostile node's answer: a valid-looking point with a proof that does not verify."""
    element = oprf.hash_to_group(rand.randbytes(16))
    proof = oprf.hash_to_scalar(rand.randbytes(16)) + oprf.hash_to_scalar(rand.randbytes(16))
    return EvaluateResponse(attempt, slot + 1, element, proof, 9)


def refused(answer: Message) -> bool:
    return isinstance(answer, ErrorResponse)
