"""Hostile nodes against the threshold flow (docs/threshold.md "The bound, derived"):
c = 2 of 5 hostile nodes with L = 10 get at most ⌊(N−c)·L/(t−c)⌋ = 30 combined OPRF
outputs per window, and reach it; with c = 0 a hostile relay gets exactly L. Hostile
nodes also forge values (lowered counters, resets, tombstones, substituted manifests,
inflated ballots), send wrong partials and substituted manifests: honest acceptors refuse
the values, honest users still recover and name the nodes that lied. A planted mutant
(a node that evaluates whatever B a request names) is caught by the same harness."""

from __future__ import annotations

import hashlib
import random

import pytest

from backupvault.codec import Message
from backupvault.crypto import oprf, threshold
from backupvault.errors import AuthenticationFailed
from backupvault.fleet.messages import Accept, Accepted, ReplicatedValue
from backupvault.hsm.shares import Answer, ShareKeeper, ShareWrite, error
from backupvault.hsm.state import Evaluation, ThresholdState
from backupvault.protocol import (
    EntryStatus,
    ErrorCode,
    EvaluateRequest,
    EvaluateResponse,
    ManifestResponse,
    Op,
)
from backupvault.sim.world import (
    Loot,
    Simulation,
    ThresholdClient,
    threshold_world,
    wrong_partial,
)

N, L = 5, 10
HOSTILE = 2  # the last two slots: 3 and 4
HONEST = (0, 1, 2)
RK = bytes(32)
SILENT = lambda slot, op, request: None  # noqa: E731 - hostile nodes answer no client


class EvaluatesAnyB(ShareKeeper):
    """The planted mutant: evaluates the B a request names for the committed attempt,
    without checking that this node accepted that B itself, and takes an attempt it has
    answered once as paid for any B."""

    def _evaluate_committed(
        self, key: bytes, request: EvaluateRequest, state: ThresholdState
    ) -> Answer:
        row = self.row(key)
        if row is None or not row.share:
            return Answer(error(ErrorCode.NOT_REGISTERED, "no share"))
        writes: tuple[ShareWrite, ...] = ()
        if row.evaluated_hash(state.attempt) is None:
            if row.count >= self.shape.guess_limit:
                return Answer(error(ErrorCode.DESTROYED, "count at L"))
            blinded_hash = hashlib.sha256(request.blinded).digest()
            row = row.with_(evaluated=[*row.evaluated, Evaluation(state.attempt, blinded_hash)])
            writes = (self._write(key, row),)
        partial = threshold.evaluate_partial(
            threshold.KeyShare.from_bytes(row.share), request.blinded
        )
        response = EvaluateResponse(
            state.attempt, partial.index, partial.evaluated, partial.proof, 0
        )
        return Answer(response, writes)


def _setup(
    keeper_class: type[ShareKeeper] = ShareKeeper, hostile: int = HOSTILE, collect: bool = False
) -> tuple[Simulation, ThresholdClient, Loot]:
    world = threshold_world(
        N,
        L,
        hostile,
        seed=7,
        leader=False,
        keeper_class=keeper_class,
        attacker=SILENT,
        collect=collect,
    )
    client = ThresholdClient(world)
    loot, acks = client.register(b"the right password", RK)
    assert acks == N - hostile
    return world, client, loot


class Attacker:
    """Controls the hostile nodes (their shares in the clear), the network, the relay and
    the account's tokens: it asks honest nodes for anything, one at a time, cut off from
    the other honest nodes, and combines each honest partial with its own."""

    def __init__(self, world: Simulation, client: ThresholdClient, loot: Loot) -> None:
        self.world = world
        self.client = client
        self.loot = loot
        self.clock = 10**9
        self.outputs: set[bytes] = set()  # distinct combined outputs k·B
        self.rand = random.Random(3)
        self.last: Message | None = None
        self.tricks: list[str] = []  # how each second-B trick was answered

    def ask(
        self, slot: int, blinded: bytes, group: tuple[int, ...] = (), clock: int = 0
    ) -> EvaluateResponse | None:
        self.world.reachable = {slot, *group, *self.world.hostile}
        if not clock:
            self.clock += 1
        request = EvaluateRequest(
            self.client.account,
            self.client.entry,
            self.loot.manifest.version,
            blinded,
            clock or self.clock,
        )
        answer = self.world.request(slot, Op.EVALUATE, request)
        self.last = answer
        return answer if isinstance(answer, EvaluateResponse) else None

    def combine(self, blinded: bytes, honest: list[threshold.Partial]) -> bool:
        own = [threshold.evaluate_partial(share, blinded) for share in self.loot.shares.values()]
        try:
            combined = threshold.combine(self.loot.manifest.commitments, blinded, honest + own)
        except threshold.NotEnoughPartials:
            return False
        self.outputs.add(combined.evaluated)
        return True

    def round_robin(self) -> None:
        """One fresh B per guess, to the next t − c honest nodes in turn (cut off from the
        rest): spends every honest node's L evenly, the strategy that reaches the bound."""
        honest = sorted(self.world.honest)
        need = self.world.shape.threshold - len(self.world.hostile)
        idle = 0
        turn = 0
        while idle < len(honest):
            group = tuple(honest[(turn * need + j) % len(honest)] for j in range(need))
            turn += 1
            _, blinded = oprf.blind(self.rand.randbytes(16))
            self.clock += 1
            answers = [self.ask(slot, blinded, group, self.clock) for slot in group]
            partials = [a.partial() for a in answers if a is not None]
            if self.combine(blinded, partials):
                idle = 0
            else:
                idle += 1

    def second_b_for_an_answered_attempt(self, slot: int) -> None:
        """After `slot` answered attempt a for B1, the hostile acceptors claim (at a higher
        ballot) a value one attempt back, so that `slot`'s next proposal commits attempt a
        again, now with B2."""
        _, first = oprf.blind(self.rand.randbytes(16))
        answer = self.ask(slot, first)
        if answer is None:
            return
        self.combine(first, [answer.partial()])
        held = self.world.replicated(slot, self.client.key)
        back = held.with_(attempt=held.attempt - 1, attempt_hash=self.rand.randbytes(32))
        value = ReplicatedValue([], back.to_bytes()).to_bytes()
        for hostile in self.world.hostile.values():
            hostile.report = lambda key, rnd, value=value, node=hostile.slot: (rnd - 1, node, value)
        try:
            _, second = oprf.blind(self.rand.randbytes(16))
            again = self.ask(slot, second)
            self.tricks.append(getattr(self.last, "code", "evaluated"))
            if again is not None:
                assert again.attempt == answer.attempt  # the trick did land on attempt a
                self.combine(second, [again.partial()])
        finally:
            for hostile in self.world.hostile.values():
                hostile.report = lambda key, rnd: (0, 0, b"")


def test_two_hostile_nodes_get_exactly_the_bound_of_30_outputs() -> None:
    world, client, loot = _setup()
    attacker = Attacker(world, client, loot)
    for slot in HONEST:
        attacker.second_b_for_an_answered_attempt(slot)
    # Each trick landed on an answered attempt with another B, and was refused (as
    # overtaken: an honest device makes its attempt again under a new number).
    assert attacker.tricks == [ErrorCode.STALE_ATTEMPT] * 3
    attacker.round_robin()
    assert len(attacker.outputs) == (N - 2) * L // (3 - 2) == 30
    for slot in HONEST:
        row = world.honest[slot].rows[client.key]
        assert row.count == L and row.share == b""  # spent, then erased on its own count


def test_one_hostile_node_gets_exactly_the_bound_of_20_outputs() -> None:
    world, client, loot = _setup(hostile=1)
    attacker = Attacker(world, client, loot)
    attacker.round_robin()
    assert len(attacker.outputs) == (N - 1) * L // (3 - 1) == 20


def test_the_mutant_that_evaluates_any_b_is_caught() -> None:
    world, client, loot = _setup(EvaluatesAnyB, collect=True)
    attacker = Attacker(world, client, loot)
    for slot in HONEST:
        attacker.second_b_for_an_answered_attempt(slot)
    assert attacker.tricks == ["evaluated"] * 3
    attacker.round_robin()
    assert len(attacker.outputs) > 30
    # The world's observer saw it too: a second B for an answered attempt at one node,
    # and more combined outputs than the bound.
    seen = {v.invariant for v in world.observer.violations}
    assert {"one-b-per-attempt", "at-most-L-evaluations"} <= seen


def test_the_honest_nodes_keep_the_observer_quiet() -> None:
    """The same attack on honest nodes: the observer, collecting, records nothing."""
    world, client, loot = _setup(collect=True)
    attacker = Attacker(world, client, loot)
    for slot in HONEST:
        attacker.second_b_for_an_answered_attempt(slot)
    attacker.round_robin()
    assert world.observer.violations == []
    assert world.observer.max_window == 30


def test_with_no_hostile_node_a_hostile_relay_gets_exactly_l() -> None:
    """c = 0: the relay sends each guess's copies to chosen subsets, different B to
    different nodes for the same moment; it never gets more than L outputs (each needs
    t = 3 partials on one B), and the honest fan-out gets exactly L."""
    world = threshold_world(N, L, 0, seed=11, leader=True)
    client = ThresholdClient(world)
    manifest_loot, acks = client.register(b"pw", RK)
    assert acks == N
    commitments = manifest_loot.manifest.commitments
    rand = random.Random(5)
    partials: dict[bytes, list[threshold.Partial]] = {}
    clock = 10**6
    for _ in range(4 * L):
        clock += 1
        split = rand.sample(range(N), N)
        b1 = oprf.blind(rand.randbytes(8))[1]
        b2 = oprf.blind(rand.randbytes(8))[1]
        for position, slot in enumerate(split):
            blinded = b1 if position < 3 else b2
            answer = world.request(
                slot, Op.EVALUATE, EvaluateRequest("alice", client.entry, 1, blinded, clock)
            )
            if isinstance(answer, EvaluateResponse):
                partials.setdefault(blinded, []).append(answer.partial())
    outputs = 0
    for blinded, got in partials.items():
        try:
            threshold.combine(commitments, blinded, got)
            outputs += 1
        except threshold.NotEnoughPartials:
            pass
    assert outputs <= L
    # The honest fan-out on a fresh entry: exactly L outputs, then destroyed.
    honest = ThresholdClient(world, account="other")
    honest.register(b"pw", RK)
    count = 0
    for _ in range(L + 2):
        try:
            if honest.recover(b"wrong") is None:
                count += 1
        except threshold.NotEnoughPartials:
            break
    assert count == L


def _forge(
    world: Simulation, slot: int, key: bytes, value: bytes, round_step: int = 1
) -> Message | None:
    record = world.honest[slot].disk.get(key)
    assert record is not None
    accept = Accept(b"forged", key, record.promised_round + round_step, 3, value, 3, False)
    return world.inject(3, slot, accept)


def _value(state: ThresholdState) -> bytes:
    return ReplicatedValue([], state.to_bytes()).to_bytes()


def test_honest_acceptors_refuse_forged_values() -> None:
    world, client, _ = _setup()
    recovered = client.recover(b"the right password")
    assert recovered is not None
    assert client.recover(b"wrong") is None
    held = world.replicated(0, client.key)
    assert held.reset_signature and held.attempt == held.reset_attempt + 1
    other = ThresholdClient(world, account="other")
    other_loot, _ = other.register(b"x", RK)
    forged = {
        "lowered counter": held.with_(attempt=held.attempt - 1),
        "reset without the owner": held.with_(
            reset_attempt=held.attempt, reset_hash=bytes(32), reset_signature=bytes(64)
        ),
        "reset with another entry's signature": held.with_(
            reset_attempt=held.attempt,
            reset_hash=held.attempt_hash,
            reset_signature=world.replicated(0, other.key).reset_signature or bytes(64),
        ),
        "the owner's reset dropped": held.with_(reset_hash=b"", reset_signature=b""),
        "tombstone with guesses left": held.with_(
            status=EntryStatus.DESTROYED, manifest=b"", acks=b""
        ),
        "unsigned delete": held.with_(status=EntryStatus.EMPTY, manifest=b"", acks=b""),
        "substituted commitments": held.with_(manifest=other_loot.manifest.to_bytes()),
        "version skipped": held.with_(version=held.version + 2),
    }
    for name, state in forged.items():
        answer = _forge(world, 0, client.key, _value(state))
        assert isinstance(answer, Accepted) and not answer.ok, name
    # A value of the removed single-seed flow (tag 41: status EMPTY) over a live entry.
    single_seed = ReplicatedValue([], bytes([41]) + bytes(8)).to_bytes()
    answer = _forge(world, 0, client.key, single_seed)
    assert isinstance(answer, Accepted) and not answer.ok
    inflated = _forge(world, 0, client.key, _value(held), round_step=1 << 33)
    assert isinstance(inflated, Accepted) and not inflated.ok
    # Control: the held value itself, at the next round, is accepted.
    control = _forge(world, 0, client.key, _value(held))
    assert isinstance(control, Accepted) and control.ok
    # Nothing the forgeries tried changed an honest node's own state.
    assert client.recover(b"the right password") is not None


def test_honest_users_recover_past_wrong_partials_and_forged_manifests() -> None:
    rand = random.Random(9)
    forged_manifest: dict[str, bytes] = {}

    def hostile(slot: int, op: Op, request: Message) -> Message | None:
        if op is Op.EVALUATE:
            return wrong_partial(rand, slot)
        if op is Op.MANIFEST and forged_manifest:
            return ManifestResponse(EntryStatus.LIVE, 1, forged_manifest["m"], L, L, True)
        return None

    world = threshold_world(N, L, HOSTILE, seed=2, leader=False, attacker=hostile)
    client = ThresholdClient(world)
    _, acks = client.register(b"pw", RK)
    assert acks == 3
    decoy = ThresholdClient(threshold_world(N, L, 0, seed=4))
    decoy_loot, _ = decoy.register(b"attacker knows this", RK)
    forged_manifest["m"] = decoy_loot.manifest.to_bytes()
    recovered = client.recover(b"pw")
    assert recovered is not None and recovered[1] == RK
    assert client.last_rejected == (4, 5)  # the share indices of hostile nodes 3 and 4
    # With one honest node down as well, two hostile nodes cannot pass off their
    # manifest (2 < t identical answers): the client refuses, nothing is opened.
    world.crash(2)
    with pytest.raises(AuthenticationFailed, match="no manifest is returned identically"):
        client.recover(b"pw")


def test_a_forged_tombstone_at_the_last_attempt_number_raises_nowhere() -> None:
    """A hostile proposer gets a tombstone taken whose attempt counter is 2^64 - 1 (a
    tombstone needs no owner statement, and over its version the attempt numbers are not
    compared). The owner registers again over it; the registration keeps counting from
    there, so the next attempt's number does not fit a u64. The evaluate change raised
    InvalidInput out of the replica at every honest node, out of the step that asked
    (the node answered its client with an error, not a refusal) and out of every
    Accepted that made a waiting copy look again. Now the change cannot be built on and
    fails as unavailable, the nodes go on serving, and nothing was evaluated."""
    world, client, _ = _setup()
    held = world.replicated(0, client.key)
    last = (1 << 64) - 1
    tombstone = held.with_(
        status=EntryStatus.DESTROYED, manifest=b"", acks=b"", attempt=last, reset_attempt=0
    )
    for slot in HONEST:
        answer = _forge(world, slot, client.key, _value(tombstone))
        assert isinstance(answer, Accepted) and answer.ok
    _, acks = client.register(b"again", RK, version=held.version + 1)
    assert acks == 3
    assert world.replicated(0, client.key).attempt == last
    partials = world.observer.partials
    with pytest.raises(threshold.NotEnoughPartials):
        client.recover(b"again")
    assert world.observer.partials == partials
    assert all(n.replica is not None and n.replica.ready for n in world.honest.values())
