"""A hostile account holder (or a relay forwarding what it likes) against honest nodes: any
mix of well-formed and malformed requests, to any node, in any order, several at once,
for an entry whose owner it is (it knows the password, export_key and every share, so
it can sign any owner statement and deal any polynomial). A node must answer each with
a response or an error, never raise: since a broken invariant stops the node
(node/service.py), an exception on a request's path is a way to stop nodes one after
another; any other becomes a 500 or wedges the entry's proposals at that node. The sim
world's observer checks the guess counting all along (no evaluation without a counted,
committed attempt; at most L per window)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupvault.codec import Message
from backupvault.crypto import manifest, oprf, owner, threshold
from backupvault.hsm.state import ThresholdState
from backupvault.protocol import (
    RESPONSE_TYPES,
    AckKind,
    CommitAck,
    CommitSharesRequest,
    DeleteShareRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    Op,
    RegisterShareRequest,
    ResetRequest,
    ShareAck,
    encode_commit_acks,
    pad_response,
    share_ack_message,
)
from backupvault.sim.clients import SIM_KSF
from backupvault.sim.world import EPOCH, FLEET_ID, Simulation, ThresholdClient, threshold_world

NODES = 3
LIMIT = 3
U64_MAX = 2**64 - 1
KNOWN_CODES = {str(code) for code in ErrorCode}
#: What the observer flags as a replay because an honest client never does it, and the
#: owner may: send an older attempt's B again with a later clock (a new attempt, charged
#: like any other), and sign a reset for that attempt.
OWNER_MAY = {"replays-change-nothing", "success-resets-only-its-attempt"}


def _scalar(value: int) -> bytes:
    return (value % oprf.GROUP_ORDER).to_bytes(oprf.SCALAR_LEN, "little")


def deal_with_zero_share(
    account: str, entry: str, version: int, zero_at: int
) -> manifest.Registration:
    """A registration whose polynomial is 0 at `zero_at` (f(x) = a1·(x − zero_at)): the
    commitments give that node the identity as its key K_i. Only a hostile dealer makes
    one (`threshold.deal` never does); its shares for the other nodes all verify."""
    a1 = int.from_bytes(oprf.random_scalar(), "little")
    coefficients = [_scalar(-zero_at * a1), _scalar(a1)]

    def f(x: int) -> bytes:
        return _scalar((x - zero_at) * a1)

    dealing = threshold.Dealing(
        coefficients[0],
        tuple(threshold.KeyShare(i, f(i) if i != zero_at else _scalar(1)) for i in (1, 2, 3)),
        threshold.Commitments(tuple(oprf.scalar_mult_base(a) for a in coefficients)),
    )
    real_deal = threshold.deal
    threshold.deal = lambda t, n, coefficients=None: dealing  # type: ignore[assignment]
    try:
        return manifest.register(
            b"pw",
            bytes(32),
            fleet_id=FLEET_ID,
            account=account,
            entry=entry,
            epoch=EPOCH,
            nodes=NODES,
            threshold_count=2,
            ksf=SIM_KSF,
            version=version,
        )
    finally:
        threshold.deal = real_deal


class Attacker:
    """What the hostile account holder knows and makes: its registrations (export keys,
    shares, so any owner statement), the acknowledgements nodes gave it, the B values it
    sent, its clock."""

    def __init__(self, world: Simulation) -> None:
        self.world = world
        self.client = ThresholdClient(world)
        self.account, self.entry = self.client.account, self.client.entry
        self.made: list[manifest.Registration] = []
        self.staged: dict[bytes, dict[int, ShareAck]] = {}
        self.blinded: list[bytes] = [_element()]
        self.clock = 1_000

    def state(self, slot: int) -> ThresholdState:
        return self.world.replicated(slot, self.client.key)

    def new_registration(self, version: int, zero_at: int = 0) -> manifest.Registration:
        if zero_at:
            made = deal_with_zero_share(self.account, self.entry, version, zero_at)
        else:
            made = manifest.register(
                b"pw",
                bytes(32),
                fleet_id=FLEET_ID,
                account=self.account,
                entry=self.entry,
                epoch=EPOCH,
                nodes=NODES,
                threshold_count=2,
                ksf=SIM_KSF,
                version=version,
            )
        self.made.append(made)
        return made

    def register(self, made: manifest.Registration) -> None:
        """The owner's own registration of `made`, as the client makes it: staged on every
        node, then committed with their acknowledgements."""
        encoded = made.manifest.to_bytes()
        for slot in range(NODES):
            request = RegisterShareRequest(
                self.account, self.entry, encoded, made.shares[slot].to_bytes(), b"", 0
            )
            ack = self.world.request(slot, Op.REGISTER_SHARE, request)
            assert isinstance(ack, ShareAck), ack
            self.staged.setdefault(encoded, {})[ack.index] = ack
        acks = [
            CommitAck(s.index, AckKind(s.kind), s.signature) for s in self.staged[encoded].values()
        ]
        commit = CommitSharesRequest(
            self.account, self.entry, encoded, b"", 0, encode_commit_acks(acks)
        )
        for slot in range(NODES):
            assert isinstance(self.world.request(slot, Op.COMMIT_SHARES, commit), ShareAck)

    def sign(
        self,
        made: manifest.Registration,
        kind: owner.StatementKind,
        version: int,
        counter: int,
        payload_hash: bytes,
    ) -> bytes:
        statement = owner.OwnerStatement(
            kind, FLEET_ID, self.account, self.entry, version, counter, payload_hash
        )
        return owner.sign_statement(made.export_key, statement)


def _stage_everywhere(a: Attacker, made: manifest.Registration) -> dict[int, Message]:
    encoded = made.manifest.to_bytes()
    answers: dict[int, Message] = {}
    for slot in range(NODES):
        request = RegisterShareRequest(
            a.account, a.entry, encoded, made.shares[slot].to_bytes(), b"", 0
        )
        answers[slot] = a.world.request(slot, Op.REGISTER_SHARE, request)
    return answers


def test_a_manifest_that_gives_a_node_no_key_is_refused_before_it_can_commit() -> None:
    """The owner deals f with f(3) = 0: K_3 is the identity. Nodes 1 and 2 took their
    shares (each verifies) and signed STAGED, so the commit took M with node 3 holding
    nothing; the owner's delete then committed everywhere, and node 3's answer raised
    building its ERASED acknowledgement over K_3 (a 500, after the delete took effect).
    Now every node refuses such a manifest at stage and at commit, with the reason."""
    world = threshold_world(nodes=NODES, limit=LIMIT)
    a = Attacker(world)
    made = a.new_registration(1, zero_at=3)
    answers = _stage_everywhere(a, made)
    for slot in (0, 1):  # their own shares verify; node 3's cannot (it would be 0)
        answer = answers[slot]
        assert isinstance(answer, ErrorResponse), answer
        assert answer.code == ErrorCode.BAD_REQUEST
        assert "give node 3 no key" in answer.detail
    # Acknowledgements signed over this M by nodes 1 and 2 (their signatures are real)
    # do not make a commit of it either.
    encoded = made.manifest.to_bytes()
    acks = [
        CommitAck(
            index,
            AckKind.STAGED,
            world.signing[index - 1].sign(
                share_ack_message(
                    AckKind.STAGED,
                    FLEET_ID,
                    a.account,
                    a.entry,
                    1,
                    made.shares[index - 1].public_key(),
                    encoded,
                )
            ),
        )
        for index in (1, 2)
    ]
    commit = CommitSharesRequest(a.account, a.entry, encoded, b"", 0, encode_commit_acks(acks))
    for slot in range(NODES):
        answer = world.request(slot, Op.COMMIT_SHARES, commit)
        assert isinstance(answer, ErrorResponse) and "no key" in answer.detail, answer
        assert a.state(slot).status == EntryStatus.EMPTY


def _change_racing_a_guess(seed: int) -> tuple[Attacker, manifest.Registration, int] | None:
    """The owner changes the password (v2) while a guess on v1 is under way, on a
    leaderless fleet: node 3's copy of the commit is applied over the value before the
    guess, the others' over the value after it. If node 3 took its sibling and then the
    chosen commit, its row of v2 starts its window below the chosen value's latest
    attempt number, which carries no B: the world, the new manifest's registration and
    the attempt number; None if this seed's schedule did not do so."""
    world = threshold_world(nodes=NODES, limit=LIMIT, seed=seed, leader=False)
    a = Attacker(world)
    old = a.new_registration(1)
    a.register(old)
    new = a.new_registration(2)
    encoded = new.manifest.to_bytes()
    counter = 1
    sig = a.sign(old, owner.StatementKind.CHANGE_PASSWORD, 1, counter, owner.payload_hash(encoded))
    acks = []
    for slot in range(NODES):
        request = RegisterShareRequest(
            a.account, a.entry, encoded, new.shares[slot].to_bytes(), sig, counter
        )
        ack = world.request(slot, Op.CHANGE_SHARE, request)
        assert isinstance(ack, ShareAck), ack
        acks.append(CommitAck(ack.index, AckKind(ack.kind), ack.signature))
    commit = CommitSharesRequest(
        a.account, a.entry, encoded, sig, counter, encode_commit_acks(acks)
    )
    guess = EvaluateRequest(a.account, a.entry, 1, _element(), 5_000)
    sent = [(0, Op.EVALUATE, guess), (1, Op.EVALUATE, guess), (2, Op.COMMIT_SHARES, commit)]
    for answer in [_sender(world, slot, op, request) for slot, op, request in sent]:
        answer()
    world.settle(10)
    state = a.state(2)
    row = world.members[2].rows.get(a.client.key)
    if (
        state.version == 2
        and not state.attempt_hash
        and row is not None
        and row.version == 2
        and row.reset_at < state.attempt
    ):
        return a, new, state.attempt
    return None


def test_a_reset_for_the_attempt_number_a_commit_landed_on_is_refused_not_raised() -> None:
    """The owner signs a reset of v2 for that attempt number (over any B): node 3 had
    no B to rebuild the statement with, and its change function raised inside the
    replica (InvalidInput "statement payload hash"). On the leader path (the default)
    the proposal stayed at the head of the entry's queue for good, so every later
    request for the entry at that node went unanswered (and the first was a 500);
    leaderless, it raised while the node read a peer's Promise, which dropped the rest
    of that peer's frame. Now the node refuses the reset, and keeps serving the entry."""
    found = next(filter(None, map(_change_racing_a_guess, range(40))), None)
    assert found is not None, "no schedule raced the commit and the guess as intended"
    a, new, attempt = found
    for replica in (m.replica for m in a.world.members if m.replica is not None):
        replica.timing = dataclasses.replace(replica.timing, leader=True)
    signature = a.sign(new, owner.StatementKind.RESET, 2, attempt, hashlib.sha256(b"").digest())
    refused = a.world.request(2, Op.RESET, ResetRequest(a.account, a.entry, 2, attempt, signature))
    assert isinstance(refused, ErrorResponse) and refused.code == ErrorCode.REFUSED, refused
    assert "no attempt of this version" in refused.detail
    # The entry is still served at that node: a guess on v2 is counted and evaluated.
    guess = EvaluateRequest(a.account, a.entry, 2, _element(), 9_000)
    assert isinstance(a.world.request(2, Op.EVALUATE, guess), EvaluateResponse)
    assert a.world.members[2].replica.pending() == 0


def _pick(
    data: st.DataObject, made: list[manifest.Registration], what: str
) -> manifest.Registration:
    return made[data.draw(st.integers(0, len(made) - 1), what)]


def _versions(attacker: Attacker, slot: int) -> list[int]:
    v = attacker.state(slot).version
    return [0, 1, v, v + 1, max(v - 1, 0), U64_MAX]


def _attempts(attacker: Attacker, slot: int) -> list[int]:
    s = attacker.state(slot)
    return [0, 1, s.attempt, s.attempt + 1, max(s.attempt - 1, 0), s.reset_attempt, U64_MAX]


def _draw_request(data: st.DataObject, a: Attacker, slot: int) -> tuple[Op, Message]:
    """One request, built from what the attacker holds and the node's state, valid or not."""
    op = data.draw(st.sampled_from([o for o in Op if o is not Op.DELIVER_SHARE]), "op")
    account = data.draw(st.sampled_from([a.account] * 5 + ["mallory"]), "account")
    entry = a.entry
    if op is Op.MANIFEST:
        return op, ManifestRequest(account, entry)
    if op is Op.EVALUATE:
        state = a.state(slot)
        version = data.draw(st.sampled_from([state.version] * 4 + _versions(a, slot)), "version")
        if data.draw(st.booleans(), "fresh B"):
            a.blinded.append(_element())
        blinded = data.draw(st.sampled_from(a.blinded[-4:]), "blinded")
        a.clock += data.draw(st.sampled_from([1000, 0, -1000]), "clock step")
        when = data.draw(st.sampled_from([max(a.clock, 0), 0, 2**63 - 1]), "client time")
        return op, EvaluateRequest(account, entry, version, blinded, when)
    state = a.state(slot)
    if op in (Op.REGISTER_SHARE, Op.CHANGE_SHARE, Op.COMMIT_SHARES):
        if not a.made or data.draw(st.booleans(), "new manifest"):
            version = data.draw(st.sampled_from([state.version + 1] * 3 + [state.version, 1]), "v")
            zero_at = data.draw(st.sampled_from([0, 0, 1, 3]), "zero share at")
            made = a.new_registration(max(version, 1), zero_at)
        else:
            made = _pick(data, a.made[-2:] * 3 + a.made, "manifest")
        encoded = made.manifest.to_bytes()
        changing = op is Op.CHANGE_SHARE or (
            op is Op.COMMIT_SHARES and data.draw(st.booleans(), "a change")
        )
        authorization, counter = b"", 0
        if changing:
            live = [m for m in a.made if m.manifest.to_bytes() == state.manifest]
            old = _pick(data, live * 3 + a.made, "old owner")
            counter = data.draw(st.sampled_from([1, 2, U64_MAX]), "counter")
            authorization = a.sign(
                old,
                owner.StatementKind.CHANGE_PASSWORD,
                max(made.manifest.version - 1, 0),
                counter,
                owner.payload_hash(encoded),
            )
        if op is Op.COMMIT_SHARES:
            staged = a.staged.get(encoded, {})
            acks = [CommitAck(s.index, AckKind(s.kind), s.signature) for s in staged.values()]
            chosen = data.draw(st.sampled_from(["staged"] * 4 + ["none", "garbage"]), "acks")
            raw = b""
            if chosen == "staged" and acks:
                raw = encode_commit_acks(acks)
            elif chosen == "garbage":
                raw = encode_commit_acks(
                    [CommitAck(i, AckKind.STAGED, bytes(64)) for i in (1, 2, 3)]
                )
            return op, CommitSharesRequest(account, entry, encoded, authorization, counter, raw)
        index = data.draw(st.sampled_from([slot, slot, (slot + 1) % NODES]), "share of")
        share = made.shares[index].to_bytes()
        return op, RegisterShareRequest(account, entry, encoded, share, authorization, counter)
    live = [m for m in a.made if m.manifest.to_bytes() == state.manifest]
    signers = live * 3 + a.made
    made_for = _pick(data, signers, "signer") if signers else None
    version = data.draw(st.sampled_from([state.version] * 4 + _versions(a, slot)), "version")
    if op is Op.RESET:
        attempt = data.draw(st.sampled_from([state.attempt] * 3 + _attempts(a, slot)), "attempt")
        latest = [b for b in a.blinded if hashlib.sha256(b).digest() == state.attempt_hash]
        blinded = data.draw(st.sampled_from(latest * 3 + a.blinded[-4:]), "B signed")
        signature = bytes(64)
        if made_for is not None:
            signature = a.sign(
                made_for,
                owner.StatementKind.RESET,
                min(version, U64_MAX),
                attempt,
                hashlib.sha256(blinded).digest(),
            )
        return op, ResetRequest(account, entry, version, attempt, signature)
    counter = data.draw(st.sampled_from([1, 2, U64_MAX]), "counter")
    signature = bytes(64)
    if made_for is not None:
        signature = a.sign(
            made_for,
            owner.StatementKind.DELETE,
            version,
            counter,
            owner.payload_hash(made_for.manifest.to_bytes()),
        )
    return op, DeleteShareRequest(account, entry, version, counter, signature)


def _check_answer(op: Op, answer: Message) -> None:
    """Each answer is the operation's response or an error with a known code, and fits
    the operation's padded size (else the node's service raises while sealing it)."""
    if isinstance(answer, ErrorResponse):
        assert answer.code in KNOWN_CODES, answer
    else:
        assert isinstance(answer, RESPONSE_TYPES[op]), answer
    pad_response(op, answer.to_bytes())


def _remember(a: Attacker, op: Op, request: Message, answer: Message) -> None:
    if isinstance(request, RegisterShareRequest) and isinstance(answer, ShareAck):
        a.staged.setdefault(request.manifest, {})[answer.index] = answer


@settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_no_request_of_a_hostile_owner_makes_a_node_raise(data: st.DataObject) -> None:
    """Requests drawn from what the owner holds and each node's state (versions, attempt
    numbers and counters around the current ones and at 2^64 - 1, its own and stale
    manifests, a dealing with no key for a node, shares of other nodes, forged and
    real acknowledgements and owner signatures, old B, clocks going back), one to three
    at a time, each to one node or to all, on a fleet with and without a leader: every
    answer is the operation's response or a known error that fits its padded size, and
    the observer sees no evaluation the rules do not allow."""
    seed, leader = data.draw(st.integers(0, 99), "seed"), data.draw(st.booleans(), "leader")
    world = threshold_world(nodes=NODES, limit=LIMIT, seed=seed, leader=leader, collect=True)
    a = Attacker(world)
    a.register(a.new_registration(1))
    steps = data.draw(st.integers(1, 14), "steps")
    for _ in range(steps):
        together = data.draw(st.integers(1, 3), "requests at once")
        sent: list[tuple[Op, Message, Callable[[], Message]]] = []
        for _ in range(together):
            slot = data.draw(st.integers(0, NODES - 1), "node")
            op, request = _draw_request(data, a, slot)
            # As the client's fan-out: the same request to every node (a share request
            # carries each node's own share), or to this one node alone.
            fanout = data.draw(st.booleans(), "to every node")
            for to in range(NODES) if fanout else (slot,):
                copy = _for_node(a, request, to) if fanout else request
                sent.append((op, copy, _sender(world, to, op, copy)))
        for op, request, answer_of in sent:
            answer = answer_of()
            _check_answer(op, answer)
            _remember(a, op, request, answer)
    world.settle(10)
    broken = [v for v in world.observer.violations if v.invariant not in OWNER_MAY]
    assert not broken, broken


def _for_node(a: Attacker, request: Message, slot: int) -> Message:
    """`request` as the copy for node `slot`: a share request carries that node's share."""
    if not isinstance(request, RegisterShareRequest):
        return request
    made = next((m for m in a.made if m.manifest.to_bytes() == request.manifest), None)
    if made is None:
        return request
    return dataclasses.replace(request, share=made.shares[slot].to_bytes())


def _element() -> bytes:
    return oprf.scalar_mult_base(oprf.random_scalar())


def _sender(world: Simulation, slot: int, op: Op, request: Message) -> Callable[[], Message]:
    """Send `request` to node `slot` now; the returned call runs the world until it
    answers (so requests sent together race inside the fleet)."""
    call_id = next(world._call_ids)
    world._client_request(slot, -2, call_id, op, request.to_bytes())

    def answer() -> Message:
        world.run_until(lambda: call_id in world._sync, 10.0)
        found = world._sync.pop(call_id, None)
        return found if found is not None else ErrorResponse("fleet_unavailable", "no answer", 0)

    return answer
