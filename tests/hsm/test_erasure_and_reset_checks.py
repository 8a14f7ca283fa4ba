"""A node erases its share or resets its count only on the owner's statement verified
against its own share's M, and only for the version it verified: a hostile minority of
proposers (node 4 here, injecting Accepts) and a hostile client together cannot make it
do either on another word (docs/threshold.md, "Counters and erasure")."""

from __future__ import annotations

import hashlib

from backupvault.crypto import oprf, owner
from backupvault.crypto.manifest import Registration
from backupvault.fleet.messages import Accept, Accepted, ReplicatedValue
from backupvault.hsm.shares import Answer, error
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.protocol import (
    DeleteShareRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    Message,
    Op,
    RegisterShareRequest,
    ShareAck,
)
from backupvault.sim import clients
from backupvault.sim.world import FLEET_ID, Simulation, ThresholdClient, threshold_world

LIMIT = 4
HOSTILE = 4


def _forge(world: Simulation, slot: int, key: bytes, state: ThresholdState) -> bool:
    """Node 4 makes honest node `slot` accept `state`, at a ballot above its promise."""
    record = world.honest[slot].disk.get(key)
    assert record is not None
    value = ReplicatedValue([], state.to_bytes()).to_bytes()
    ballot = record.promised_round + 1
    answer = world.inject(HOSTILE, slot, Accept(b"forged", key, ballot, HOSTILE, value, 4, False))
    assert isinstance(answer, Accepted)
    return answer.ok


def test_a_delete_is_verified_even_when_the_value_already_holds_it() -> None:
    """Node 4 has each honest node accept a forged tombstone of the live version, then an
    empty value over it carrying a garbage "owner signature" (both are accepted: neither
    erases anything by itself). A hostile client then sends that same delete: the value
    already holds it, so it used to be taken as another node's copy of a verified delete
    and the share was erased unverified, on all three honest nodes."""
    world = threshold_world(5, LIMIT, 2, seed=12, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    client.register(b"pw", bytes(32))
    key = client.key
    live = world.replicated(0, key)
    garbage = bytes(64)
    tomb = live.with_(
        status=EntryStatus.DESTROYED,
        manifest=b"",
        acks=b"",
        attempt=live.reset_attempt + LIMIT,
    )
    empty = tomb.with_(
        status=EntryStatus.EMPTY,
        attempt_hash=b"",
        reset_attempt=tomb.attempt,
        reset_hash=b"",
        reset_signature=b"",
        change_counter=7,
        change_signature=garbage,
    )
    shares = {slot: world.honest[slot].rows[key].share for slot in (0, 1, 2)}
    for slot in (0, 1, 2):
        assert _forge(world, slot, key, tomb)
        assert _forge(world, slot, key, empty)
    forged = DeleteShareRequest(client.account, client.entry, 1, 7, garbage)
    for slot in (0, 1, 2):
        answer = world.request(slot, Op.DELETE_SHARE, forged)
        assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.REFUSED
    assert {slot: world.honest[slot].rows[key].share for slot in (0, 1, 2)} == shares


def test_a_reset_verified_for_one_version_never_resets_the_next() -> None:
    """The owner's reset of version 1 is verified, and its round runs; meanwhile node 4
    has the node take version 2 (the owner's committed change, with its window moved) and
    the node evaluates L guesses on it. When the reset's outcome is built, the row is of
    version 2: it must answer "entry changed", not wipe version 2's count (which would
    also keep version 2's tombstone from erasing the share)."""
    world = threshold_world(5, LIMIT, 2, seed=11, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    client.register(b"old", bytes(32))
    for _ in range(LIMIT - 1):
        assert client.recover(b"wrong") is None
    held: dict[str, Message] = {}
    original = world.request

    def relay(slot: int, op: Op, request: Message, seconds: float = 10.0) -> Message:
        """Holds node 0's copy of the reset, and keeps node 0 out of the change."""
        if slot == 0 and op is Op.RESET:
            held.setdefault("reset", request)
            return error(ErrorCode.FLEET_UNAVAILABLE, "held by the relay")
        if slot == 0 and op is Op.COMMIT_SHARES:
            world.isolated = {0}
            return error(ErrorCode.FLEET_UNAVAILABLE, "held by the relay")
        return original(slot, op, request, seconds)

    world.request = relay  # type: ignore[method-assign]
    recovered = client.recover(b"old")
    assert recovered is not None
    client.change_password(recovered[0], b"new", bytes([7]) * 32)
    key = client.key
    keeper = world.honest[0].keeper
    _, build = keeper.handle(Op.RESET, held["reset"]).apply(world.replicated(0, key))

    version_2 = world.replicated(1, key).with_(attempt=0, reset_attempt=0, attempt_client_time_ms=0)
    assert _forge(world, 0, key, version_2)
    value = version_2
    for j in range(1, LIMIT + 1):
        blinded = oprf.blind(b"guess %d" % j)[1]
        value = value.with_(
            attempt=j,
            attempt_hash=hashlib.sha256(blinded).digest(),
            attempt_client_time_ms=j,
        )
        assert _forge(world, 0, key, value)
        request = EvaluateRequest(client.account, client.entry, 2, blinded, j)
        _, evaluate = keeper.handle(Op.EVALUATE, request).apply(value)
        answer = evaluate()
        assert isinstance(answer.response, EvaluateResponse)
        for write in answer.writes:
            world.honest[0].rows[write.key] = write.row
        keeper.durable(answer.writes)
    assert keeper.row(key).count == LIMIT

    late = build()
    assert isinstance(late.response, ErrorResponse)
    assert late.response.code == ErrorCode.STALE_MANIFEST and late.writes == ()
    assert (keeper.row(key).version, keeper.row(key).count) == (2, LIMIT)
    assert _forge(world, 0, key, value.with_(status=EntryStatus.DESTROYED, manifest=b"", acks=b""))
    assert keeper.row(key).share == b""  # version 2's tombstone erases it, on its own count


def _evaluate_on(world: Simulation, key: bytes, value: ThresholdState, blinded: bytes) -> Answer:
    """Node 0 accepts `value` (a counted attempt for `blinded`), then answers it."""
    assert _forge(world, 0, key, value)
    return _answer_on(world, key, value, blinded)


def _answer_on(world: Simulation, key: bytes, value: ThresholdState, blinded: bytes) -> Answer:
    """Node 0 builds its answer to the attempt in `value`, as once the round that carried
    it committed; its rows are persisted, as the shell does before the answer leaves."""
    keeper = world.honest[0].keeper
    assert keeper is not None
    account, entry = EntryId.from_bytes(key).account, EntryId.from_bytes(key).entry
    request = EvaluateRequest(account, entry, value.version, blinded, value.attempt_client_time_ms)
    _, build = keeper.handle(Op.EVALUATE, request).apply(value)
    answer = build()
    for write in answer.writes:
        world.honest[0].rows[write.key] = write.row
    keeper.durable(answer.writes)
    return answer


def _next_attempt(value: ThresholdState, blinded: bytes) -> ThresholdState:
    return value.with_(
        attempt=value.attempt + 1,
        attempt_hash=hashlib.sha256(blinded).digest(),
        attempt_client_time_ms=value.attempt_client_time_ms + 1,
    )


def test_a_replicated_reset_forgives_only_the_b_this_node_evaluated() -> None:
    """Node 0 evaluated the attacker's B at attempt 2 (a round it and the two hostile
    nodes committed), while the owner's success at attempt 2 was with another B. The
    owner's genuine reset for that B reaches node 0 in the value (the acceptor's check
    passes: the owner signed it); node 0 checks it over the B it evaluated itself, so it
    must not forgive the attacker's guess (docs/threshold.md, "Counters and erasure")."""
    world = threshold_world(5, LIMIT, 2, seed=13, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    client.register(b"pw", bytes(32))
    recovered = client.recover(b"pw")
    assert recovered is not None
    key = client.key
    keeper = world.honest[0].keeper
    assert keeper is not None
    live = world.replicated(0, key)
    assert (keeper.row(key).reset_at, keeper.row(key).count) == (live.attempt, 0)

    attackers = oprf.blind(b"attacker's guess")[1]
    guessed = _next_attempt(live, attackers)
    assert isinstance(_evaluate_on(world, key, guessed, attackers).response, EvaluateResponse)
    owners = oprf.blind(b"pw")[1]
    statement = owner.OwnerStatement(
        owner.StatementKind.RESET,
        FLEET_ID,
        client.account,
        client.entry,
        guessed.version,
        guessed.attempt,
        owner.payload_hash(owners),
    )
    reset = guessed.with_(
        reset_attempt=guessed.attempt,
        reset_hash=hashlib.sha256(owners).digest(),
        reset_signature=owner.sign_statement(recovered[0], statement),
    )
    assert _forge(world, 0, key, reset)

    following = oprf.blind(b"attacker's next guess")[1]
    answer = _evaluate_on(world, key, _next_attempt(reset, following), following)
    assert isinstance(answer.response, EvaluateResponse)
    row = keeper.row(key)
    assert (row.reset_at, row.count) == (live.attempt, 2)  # both guesses still count
    assert answer.response.guesses_remaining == LIMIT - 2


def test_a_node_that_took_the_tombstone_before_its_lth_answer_erases_on_the_next_request() -> None:
    """Node 0's round for the L-th attempt committed on the other acceptors' answers, and
    the next attempt's tombstone reached its acceptor before it built its answer: taking
    the tombstone erased nothing (its own count was L - 1). Its copy of the next request
    is then answered from the chosen tombstone without a round of its own (joined), so no
    acceptance of its own comes again: that answer must erase the share, now that its own
    count is at L (docs/threshold.md, "Counters and erasure")."""
    world = threshold_world(5, LIMIT, 2, seed=14, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    client.register(b"pw", bytes(32))
    for _ in range(LIMIT - 1):
        assert client.recover(b"wrong") is None
    key = client.key
    keeper = world.honest[0].keeper
    assert keeper is not None and keeper.row(key).count == LIMIT - 1

    last = oprf.blind(b"the L-th guess")[1]
    lth = _next_attempt(world.replicated(0, key), last)
    assert _forge(world, 0, key, lth)
    tomb = lth.with_(status=EntryStatus.DESTROYED, manifest=b"", acks=b"")
    assert _forge(world, 0, key, tomb)
    assert world.honest[0].rows[key].share  # its count was below L: nothing erased

    assert isinstance(_answer_on(world, key, lth, last).response, EvaluateResponse)
    assert keeper.row(key).count == LIMIT

    after = oprf.blind(b"one more guess")[1]
    request = EvaluateRequest(
        client.account, client.entry, 1, after, lth.attempt_client_time_ms + 1
    )
    new, build = keeper.handle(Op.EVALUATE, request).apply(tomb)
    assert new == tomb  # nothing to write: the chosen tombstone answers it
    destroyed = build()
    assert isinstance(destroyed.response, ErrorResponse)
    assert destroyed.response.code == ErrorCode.DESTROYED
    assert [write.row.share for write in destroyed.writes] == [b""]


def _owner_delete(client: ThresholdClient, export_key: bytes, made: Registration) -> Message:
    statement = owner.OwnerStatement(
        owner.StatementKind.DELETE,
        FLEET_ID,
        client.account,
        client.entry,
        made.manifest.version,
        7,
        owner.payload_hash(made.manifest.to_bytes()),
    )
    signature = owner.sign_statement(export_key, statement)
    return DeleteShareRequest(client.account, client.entry, made.manifest.version, 7, signature)


def _commit_without_own_acceptor(
    world: Simulation, op: Op, request: Message, base: ThresholdState
) -> Answer:
    """What node 0's firmware does when its round for `request` commits on acceptors that
    do not include its own (a hostile leader never sent it the Accept, or a hostile peer's
    Promise made `base` the round's value): the change applied to `base`, then the
    answer, its rows persisted."""
    keeper = world.honest[0].keeper
    assert keeper is not None
    _, build = keeper.handle(op, request).change(base.to_bytes())
    answer = build()
    for write in answer.writes:
        world.honest[0].rows[write.key] = write.row
    keeper.durable(answer.writes)
    return answer


def _registered(client: ThresholdClient, password: bytes, version: int) -> Registration:
    made = clients.deal(client.ctx, password, bytes(32), version)
    assert client._run(clients.deliver(client.ctx, Op.REGISTER_SHARE, made)).acks >= 3
    return made


def _share_delivery(client: ThresholdClient, made: Registration) -> RegisterShareRequest:
    share = made.shares[0].to_bytes()
    return RegisterShareRequest(
        client.account, client.entry, made.manifest.to_bytes(), share, b"", 0
    )


def _version_1_and_its_delete(seed: int) -> tuple[ThresholdClient, ThresholdState, Message]:
    """An entry registered at version 1 and recovered once: its live value, and the
    owner's delete of it (not sent)."""
    world = threshold_world(5, LIMIT, 1, seed=seed, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    made = _registered(client, b"right", 1)
    recovered = client.recover(b"right")
    assert recovered is not None
    return client, world.replicated(0, client.key), _owner_delete(client, recovered[0], made)


def test_a_share_erased_by_the_owners_delete_is_never_taken_back() -> None:
    """Node 0 verifies the owner's delete and erases its share, its round committed on
    other acceptors (its own still holds the live value). A copy of its share delivery
    that the relay held back must not be taken again: it would start a fresh count on a
    key its owner deleted. The erased row used to keep no M, so the check that refuses a
    share erased at L did not see it."""
    world = threshold_world(5, LIMIT, 1, seed=3, leader=False, attacker=lambda *_: None)
    client = ThresholdClient(world)
    made = _registered(client, b"right", 1)
    recovered = client.recover(b"right")
    assert recovered is not None
    for _ in range(3):
        assert client.recover(b"wrong") is None
    key = client.key
    live = world.replicated(0, key)
    delete = _owner_delete(client, recovered[0], made)
    answer = _commit_without_own_acceptor(world, Op.DELETE_SHARE, delete, live)
    assert isinstance(answer.response, ShareAck) and not world.honest[0].rows[key].share

    late = world.request(0, Op.REGISTER_SHARE, _share_delivery(client, made))
    assert isinstance(late, ErrorResponse) and late.code == ErrorCode.DESTROYED
    assert world.honest[0].rows[key].share == b""
    blinded = oprf.blind(b"guess")[1]
    guess = EvaluateRequest(client.account, client.entry, 1, blinded, 10**12)
    assert not isinstance(world.request(0, Op.EVALUATE, guess), EvaluateResponse)
    # The owner's device sending the same delete again gets its ERASED acknowledgement
    # (before, "no key is stored here", so its pending erasure was never cleared).
    again = _commit_without_own_acceptor(world, Op.DELETE_SHARE, delete, live)
    assert isinstance(again.response, ShareAck)


def test_an_old_delete_replayed_after_a_re_registration_erases_nothing_of_the_new_version() -> None:
    """The owner deleted version 1 and registered version 2; node 0 has counted 3 wrong
    guesses on version 2. The relay replays node 0's copy of the old delete, and a hostile
    peer's Promise makes the old live value of version 1 the round's base (laggard honest
    nodes still holding version 1 deleted accept the result). Node 0 used to erase its
    version-2 share and write a row of version 1, after which a late delivery of the
    version-2 share started its count again at 0."""
    client, live_1, old_delete = _version_1_and_its_delete(seed=5)
    world, key = client.world, client.key
    for slot in range(4):
        world.request(slot, Op.DELETE_SHARE, old_delete)
    assert world.replicated(0, key).status == EntryStatus.EMPTY
    made_2 = _registered(client, b"right 2", 2)
    for _ in range(3):
        assert client.recover(b"wrong") is None
    before = world.honest[0].rows[key]
    assert (before.version, before.count) == (2, 3) and before.share

    replayed = _commit_without_own_acceptor(world, Op.DELETE_SHARE, old_delete, live_1)
    assert isinstance(replayed.response, ErrorResponse)
    assert replayed.response.code == ErrorCode.STALE_MANIFEST and replayed.writes == ()
    world.request(0, Op.REGISTER_SHARE, _share_delivery(client, made_2))
    assert world.honest[0].rows[key] == before


def test_a_delete_built_after_the_row_moved_on_erases_nothing() -> None:
    """The delete of version 1 is verified, and its round runs; meanwhile node 0 takes
    version 2's share. When the delete's outcome is built, the row is of version 2: it
    must answer "entry changed" and leave the row, as a reset does."""
    client, live_1, old_delete = _version_1_and_its_delete(seed=7)
    world, key = client.world, client.key
    keeper = world.honest[0].keeper
    assert keeper is not None
    _, build = keeper.handle(Op.DELETE_SHARE, old_delete).change(live_1.to_bytes())
    for slot in range(1, 4):
        world.request(slot, Op.DELETE_SHARE, old_delete)
    _registered(client, b"right 2", 2)
    before = world.honest[0].rows[key]
    assert before.version == 2 and before.share

    late = build()
    assert isinstance(late.response, ErrorResponse)
    assert late.response.code == ErrorCode.STALE_MANIFEST and late.writes == ()
