"""The node side of the threshold flow (hsm/shares.py) on real replicas: registration
checks, one attempt per client request, the per-node count, owner resets, deletes,
password changes, and the attacks on each rule (docs/threshold.md)."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.crypto import manifest, oprf, owner, threshold
from backupvault.crypto.seal import Kem, NodePrivateKey, seal_request
from backupvault.errors import AuthenticationFailed
from backupvault.hsm.firmware import NodeKey, Reply, VaultFirmware
from backupvault.hsm.shares import (
    ROWS_CACHED,
    FleetShape,
    ShareKeeper,
    ThresholdRead,
    ThresholdUpdate,
)
from backupvault.hsm.state import EntryId, Evaluation, NodeShare, ThresholdState
from backupvault.invariants import BrokenInvariant
from backupvault.protocol import (
    AckKind,
    AuthorizedRequest,
    CommitAck,
    CommitSharesRequest,
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
    ResetResponse,
    ShareAck,
    encode_commit_acks,
    pad_response,
)
from backupvault.sim.clients import SIM_KSF
from backupvault.sim.world import EPOCH, FLEET_ID, Simulation, ThresholdClient, threshold_world
from backupvault.tokens import TokenVerifier, fleet_audience, mint_token, sign_request_proof

RK = bytes(range(32))


def _code(answer: object) -> str:
    assert isinstance(answer, ErrorResponse), answer
    return answer.code


@pytest.fixture
def world() -> Simulation:
    return threshold_world(limit=4)


@pytest.fixture
def client(world: Simulation) -> ThresholdClient:
    client = ThresholdClient(world)
    _, acks = client.register(b"right", RK)
    assert acks == 5
    return client


def _counts(world: Simulation, key: bytes) -> list[int]:
    return [world.honest[i].rows[key].count for i in sorted(world.honest)]


def test_register_recover_and_reset(world: Simulation, client: ThresholdClient) -> None:
    assert client.recover(b"wrong") is None
    assert _counts(world, client.key) == [1] * 5
    recovered = client.recover(b"right")
    assert recovered is not None and recovered[1] == RK
    # The signed reset reached every node: each forgot its evaluations.
    assert _counts(world, client.key) == [0] * 5
    assert all(world.replicated(i, client.key).attempts_used == 0 for i in range(5))


def test_one_client_request_to_five_nodes_is_one_attempt(
    world: Simulation, client: ThresholdClient
) -> None:
    assert client.recover(b"wrong") is None
    for slot in range(5):
        state = world.replicated(slot, client.key)
        assert state.attempt == 1 and state.attempts_used == 1


def test_a_resend_is_answered_again_without_a_second_charge(
    world: Simulation, client: ThresholdClient
) -> None:
    _, blinded = oprf.blind(b"guess")
    request = EvaluateRequest("alice", "chat", 1, blinded, 5_000)
    first = world.request(0, Op.EVALUATE, request)
    again = world.request(0, Op.EVALUATE, request)
    assert isinstance(first, EvaluateResponse) and isinstance(again, EvaluateResponse)
    assert first.attempt == again.attempt == 1
    assert first.evaluated == again.evaluated
    assert world.honest[0].rows[client.key].count == 1


def test_a_replayed_request_with_an_older_clock_costs_nothing(
    world: Simulation, client: ThresholdClient
) -> None:
    _, old = oprf.blind(b"first")
    _, new = oprf.blind(b"second")
    assert isinstance(
        world.request(0, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, old, 5_000)),
        EvaluateResponse,
    )
    assert isinstance(
        world.request(0, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, new, 6_000)),
        EvaluateResponse,
    )
    replay = world.request(0, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, old, 5_000))
    assert _code(replay) == ErrorCode.STALE_ATTEMPT
    # Only a later clock makes a new attempt: another B at the latest attempt's clock
    # (a second device, a forged copy) is stale too.
    _, other = oprf.blind(b"third")
    same = world.request(0, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, other, 6_000))
    assert _code(same) == ErrorCode.STALE_ATTEMPT
    assert world.honest[0].rows[client.key].count == 2
    assert world.replicated(0, client.key).attempt == 2


def test_a_request_for_another_version_is_refused(
    world: Simulation, client: ThresholdClient
) -> None:
    _, blinded = oprf.blind(b"guess")
    answer = world.request(0, Op.EVALUATE, EvaluateRequest("alice", "chat", 2, blinded, 5_000))
    assert _code(answer) == ErrorCode.STALE_MANIFEST
    assert world.honest[0].rows[client.key].count == 0


def test_count_at_limit_then_another_request_destroys_and_erases(
    world: Simulation, client: ThresholdClient
) -> None:
    for _ in range(4):
        assert client.recover(b"wrong") is None
    assert _counts(world, client.key) == [4] * 5
    with pytest.raises(threshold.NotEnoughPartials):
        client.recover(b"right")
    for slot in range(5):
        assert world.replicated(slot, client.key).status == EntryStatus.DESTROYED
        assert world.honest[slot].rows[client.key].share == b""  # erased on its own count


def test_a_share_with_a_wrong_index_or_failing_the_feldman_check_is_refused(
    world: Simulation,
) -> None:
    registration = manifest.register(
        b"pw",
        RK,
        fleet_id=FLEET_ID,
        account="bob",
        entry="e",
        epoch=EPOCH,
        nodes=5,
        threshold_count=3,
        ksf=SIM_KSF,
    )
    other = manifest.register(
        b"pw",
        RK,
        fleet_id=FLEET_ID,
        account="bob",
        entry="e",
        epoch=EPOCH,
        nodes=5,
        threshold_count=3,
        ksf=SIM_KSF,
    )
    encoded = registration.manifest.to_bytes()
    wrong_index = RegisterShareRequest(
        "bob", "e", encoded, registration.shares[1].to_bytes(), b"", 0
    )
    assert (
        "share 2 sent to the node of share 1"
        in world.request(0, Op.REGISTER_SHARE, wrong_index).detail
    )  # type: ignore[attr-defined]
    # Node 0's index, but a share of another polynomial: k_0·G ≠ Σ C_j·1^j.
    substituted = RegisterShareRequest("bob", "e", encoded, other.shares[0].to_bytes(), b"", 0)
    assert _code(world.request(0, Op.REGISTER_SHARE, substituted)) == ErrorCode.BAD_REQUEST
    assert EntryId.of("bob", "e").to_bytes() not in world.honest[0].rows
    assert world.replicated(0, EntryId.of("bob", "e").to_bytes()).status == EntryStatus.EMPTY


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epoch", EPOCH + 1, "epoch"),
        ("fleet_id", b"another fleet", "another fleet"),
        ("account", "mallory", "another entry"),
    ],
)
def test_a_manifest_for_another_epoch_fleet_or_entry_is_refused(
    world: Simulation, field: str, value: object, message: str
) -> None:
    registration = manifest.register(
        b"pw",
        RK,
        fleet_id=FLEET_ID,
        account="bob",
        entry="e",
        epoch=EPOCH,
        nodes=5,
        threshold_count=3,
        ksf=SIM_KSF,
    )
    forged = dataclasses.replace(registration.manifest, **{field: value})
    request = RegisterShareRequest(
        "bob", "e", forged.to_bytes(), registration.shares[0].to_bytes(), b"", 0
    )
    answer = world.request(0, Op.REGISTER_SHARE, request)
    assert isinstance(answer, ErrorResponse) and message in answer.detail


def test_a_second_registration_does_not_replace_a_live_entry(
    world: Simulation, client: ThresholdClient
) -> None:
    before = world.honest[0].rows[client.key]
    intruder = ThresholdClient(world)
    _, acks = intruder.register(b"attacker's password", RK)
    assert acks == 0
    assert world.honest[0].rows[client.key] == before
    assert client.recover(b"right") is not None


def _reset_request(
    client: ThresholdClient,
    export_key: bytes,
    attempt: int,
    blinded: bytes,
    version: int = 1,
    account: str = "alice",
    entry: str = "chat",
) -> ResetRequest:
    statement = owner.OwnerStatement(
        owner.StatementKind.RESET,
        FLEET_ID,
        account,
        entry,
        version,
        attempt,
        owner.payload_hash(blinded),
    )
    return ResetRequest(
        client.account, client.entry, 1, attempt, owner.sign_statement(export_key, statement)
    )


def test_reset_attacks_are_refused(world: Simulation, client: ThresholdClient) -> None:
    recovered = client.recover(b"right")
    assert recovered is not None
    export_key = recovered[0]
    # Three wrong guesses since the success.
    blinded = []
    for i in range(3):
        _, b = oprf.blind(b"guess %d" % i)
        blinded.append(b)
        assert isinstance(
            world.request(0, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, b, 10_000 + i)),
            EvaluateResponse,
        )
    row = world.honest[0].rows[client.key]
    assert row.count == 3 and row.reset_at == 1
    attempts = [e.attempt for e in row.evaluated]
    # A signature for attempt 2's B, sent as a reset of attempt 3: the node rebuilds the
    # statement with attempt 3's B, which it accepted itself.
    wrong_attempt = _reset_request(client, export_key, attempts[2], blinded[0])
    assert _code(world.request(0, Op.RESET, wrong_attempt)) == ErrorCode.REFUSED
    # Signed for another entry, or another version: does not verify here.
    other_entry = _reset_request(client, export_key, attempts[2], blinded[2], entry="other")
    assert _code(world.request(0, Op.RESET, other_entry)) == ErrorCode.REFUSED
    other_version = _reset_request(client, export_key, attempts[2], blinded[2], version=2)
    assert _code(world.request(0, Op.RESET, other_version)) == ErrorCode.REFUSED
    # Signed by someone without the password.
    forged = _reset_request(client, bytes(64), attempts[2], blinded[2])
    assert _code(world.request(0, Op.RESET, forged)) == ErrorCode.REFUSED
    assert world.honest[0].rows[client.key].count == 3
    # The first success's reset, replayed: already used, changes nothing.
    replay = world.request(0, Op.RESET, dataclasses.replace(wrong_attempt, attempt=1))
    assert isinstance(replay, ResetResponse) and replay.attempt == 1
    assert world.honest[0].rows[client.key].count == 3
    # The owner's own reset for attempt 3 works, once.
    genuine = _reset_request(client, export_key, attempts[2], blinded[2])
    done = world.request(0, Op.RESET, genuine)
    assert isinstance(done, ResetResponse) and done.guesses_remaining == 4
    assert world.honest[0].rows[client.key].count == 0


def test_a_resend_answered_after_its_attempt_was_reset_is_stale_and_free(
    world: Simulation, client: ThresholdClient
) -> None:
    """The stale-attempt check (invariants 1 and 3): a resend of attempt a commits on the
    value that counted a, but the owner's reset of a reaches this node first (the two
    rounds' commits arrive out of order). Built after the reset, the resend's answer is
    `stale_attempt`: no partial, nothing counted again, the reset stands."""
    recovered = client.recover(b"right")
    assert recovered is not None
    _, blinded = oprf.blind(b"right again")
    request = EvaluateRequest("alice", "chat", 1, blinded, 50_000)
    first = world.request(0, Op.EVALUATE, request)
    assert isinstance(first, EvaluateResponse)
    keeper = world.honest[0].keeper
    counted = world.replicated(0, client.key)
    assert counted.attempt == first.attempt and counted.attempts_used == 1
    resend = keeper.handle(Op.EVALUATE, request)
    assert isinstance(resend, ThresholdUpdate)
    unchanged, build = resend.apply(counted)  # the resend's round: the same attempt
    assert unchanged == counted
    reset = _reset_request(client, recovered[0], first.attempt, blinded)
    assert isinstance(world.request(0, Op.RESET, reset), ResetResponse)
    row = world.honest[0].rows[client.key]
    assert row.reset_at == first.attempt and row.count == 0
    late = build()
    assert _code(late.response) == ErrorCode.STALE_ATTEMPT and late.writes == ()
    assert keeper.row(client.key) == row


def test_a_reset_whose_two_copies_both_commit_resets_once(
    world: Simulation, client: ThresholdClient
) -> None:
    """Two copies of one reset (a resend) both pass their round before either answer is
    built: the first resets, the second finds the reset done and changes nothing."""
    recovered = client.recover(b"right")
    assert recovered is not None
    _, blinded = oprf.blind(b"right again")
    answer = world.request(0, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, blinded, 50_000))
    assert isinstance(answer, EvaluateResponse)
    keeper = world.honest[0].keeper
    update = keeper.handle(Op.RESET, _reset_request(client, recovered[0], answer.attempt, blinded))
    assert isinstance(update, ThresholdUpdate)
    state = world.replicated(0, client.key)
    _, first = update.apply(state)
    _, second = update.apply(state)
    done = first()
    assert isinstance(done.response, ResetResponse) and len(done.writes) == 1
    row = keeper.row(client.key)
    assert row is not None and row.reset_at == answer.attempt and row.count == 0
    again = second()
    assert isinstance(again.response, ResetResponse) and again.writes == ()
    assert again.response.attempt == answer.attempt
    assert keeper.row(client.key) == row


def test_nodes_that_missed_the_reset_apply_it_from_the_replicated_value(
    world: Simulation, client: ThresholdClient
) -> None:
    recovered = client.recover(b"right")
    assert recovered is not None
    assert client.recover(b"wrong") is None
    assert _counts(world, client.key) == [1] * 5
    # The owner succeeds; its reset reaches only node 0 (the others never get it).
    _, blinded = oprf.blind(b"right-ish")
    answers = {
        s: world.request(s, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, blinded, 50_000))
        for s in range(5)
    }
    attempt = answers[0].attempt  # type: ignore[attr-defined]
    assert _counts(world, client.key) == [2] * 5
    reset = _reset_request(client, recovered[0], attempt, blinded)
    assert isinstance(world.request(0, Op.RESET, reset), ResetResponse)
    # Node 3's next evaluation applies the replicated reset first (verified itself).
    _, fresh = oprf.blind(b"next")
    answer = world.request(3, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, fresh, 60_000))
    assert isinstance(answer, EvaluateResponse) and answer.guesses_remaining == 3
    assert world.honest[3].rows[client.key].reset_at == attempt


def _accepted_state(
    world: Simulation, client: ThresholdClient, blinded: bytes, attempt: int
) -> ThresholdState:
    state = world.replicated(0, client.key)
    return state.with_(attempt=attempt, attempt_hash=owner.payload_hash(blinded))


def test_a_second_b_for_an_answered_attempt_is_refused(
    world: Simulation, client: ThresholdClient
) -> None:
    _, first = oprf.blind(b"first")
    _, second = oprf.blind(b"second")
    answer = world.request(0, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, first, 5_000))
    assert isinstance(answer, EvaluateResponse) and answer.attempt == 1
    keeper = world.honest[0].keeper
    # Paxos made this node accept another value for attempt 1 (a higher ballot), and it
    # was committed: the node still answers no second B for attempt 1.
    other = _accepted_state(world, client, second, 1)
    keeper.on_accept(client.key, other.to_bytes())
    request = EvaluateRequest("alice", "chat", 1, second, 6_000)
    refused = keeper._evaluate_committed(client.key, request, other)
    # Refused as overtaken: the device makes its attempt again under a new number.
    assert _code(refused.response) == ErrorCode.STALE_ATTEMPT and refused.writes == ()
    assert keeper.answered_for_another_b == 1  # the node's metric: a likely sign of attack
    assert world.honest[0].rows[client.key].count == 1


def test_no_partial_for_a_value_this_node_did_not_accept_itself(
    world: Simulation, client: ThresholdClient
) -> None:
    _, blinded = oprf.blind(b"guess")
    keeper = world.honest[0].keeper
    committed_elsewhere = _accepted_state(world, client, blinded, 1)
    answer = keeper._evaluate_committed(
        client.key, EvaluateRequest("alice", "chat", 1, blinded, 5_000), committed_elsewhere
    )
    assert _code(answer.response) == ErrorCode.FLEET_UNAVAILABLE and answer.writes == ()


def test_no_partial_before_commit(world: Simulation, client: ThresholdClient) -> None:
    """Node 0 is cut off from every peer: its own acceptor takes the attempt, no
    majority does, and no partial leaves (nor is anything counted)."""
    world.reachable = {0}
    _, blinded = oprf.blind(b"guess")
    answer = world.request(0, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, blinded, 5_000))
    assert _code(answer) == ErrorCode.FLEET_UNAVAILABLE
    assert world.honest[0].rows[client.key].count == 0
    assert world.honest[0].keeper.accepted_hash(client.key, 1, 1) == owner.payload_hash(blinded)


def test_a_rolled_back_share_row_is_not_trusted_until_the_next_reset(
    world: Simulation, client: ThresholdClient
) -> None:
    world.count_reports = False  # no reports reach node 0 here
    old_disk = world.snapshot(0)
    for _ in range(2):
        assert client.recover(b"wrong") is None
    world.restart_rolled_back(0, old_disk)
    world.settle(30)  # caught up: what follows is refused for its count, not catch-up
    assert world.honest[0].rows[client.key].count == 0  # the rolled-back count
    _, blinded = oprf.blind(b"guess")
    client.clock_ms += 1000
    request = EvaluateRequest("alice", "chat", 1, blinded, client.clock_ms)
    answer = world.request(0, Op.EVALUATE, request)
    assert _code(answer) == ErrorCode.FLEET_UNAVAILABLE  # no partial on a suspect count
    assert isinstance(answer, ErrorResponse) and "restored" in answer.detail
    # It asked its peers for count reports; none is delivered here, so it keeps refusing
    # (tests/hsm/test_count_reports.py delivers them).
    assert [r.entry for r in world.honest[0].keeper.take_report_requests()] == ["chat"]
    # (The attempt number it was asked for is used up all the same: availability, not
    # the bound, pays for the rollback.)
    # The other four still serve; the owner's success resets node 0 as well.
    assert client.recover(b"right") is not None
    assert world.honest[0].rows[client.key].count == 0
    assert client.recover(b"wrong") is None
    assert world.honest[0].rows[client.key].count == 1  # counting again


def test_delete_needs_the_owner_and_erases_every_share(
    world: Simulation, client: ThresholdClient
) -> None:
    recovered = client.recover(b"right")
    assert recovered is not None
    assert client.delete(bytes(64)) == 0  # not the owner
    assert all(world.honest[s].rows[client.key].share for s in range(5))
    assert client.delete(recovered[0]) == 5
    for slot in range(5):
        assert world.honest[slot].rows[client.key].share == b""
        assert world.replicated(slot, client.key).status == EntryStatus.EMPTY
    answer = world.request(0, Op.MANIFEST, ManifestRequest("alice", "chat"))
    assert isinstance(answer, ManifestResponse) and answer.version == 1 and not answer.manifest
    # A new registration takes version 2, so no statement about version 1 applies to it.
    _, acks = ThresholdClient(world).register(b"new", RK, version=2)
    assert acks == 5


def test_manifest_is_read_without_a_round_and_a_stale_minority_is_outvoted(
    world: Simulation, client: ThresholdClient
) -> None:
    """`manifest` answers from the value each node holds (no consensus round). A password
    change commits on nodes 0-2 while 3 and 4 are cut off from their peers: those two
    still answer, with the old manifest, and the t-identical rule outvotes them."""
    recovered = client.recover(b"right")
    assert recovered is not None
    old = client.agreed().to_bytes()
    world.reachable = {0, 1, 2}
    _, acks = client.change_password(recovered[0], b"new password", RK)
    assert acks == 3
    answers: dict[int, bytes] = {}
    for slot in range(5):
        answer = world.request(slot, Op.MANIFEST, ManifestRequest("alice", "chat"))
        assert isinstance(answer, ManifestResponse)  # cut off, and still answered
        answers[slot] = answer.manifest
    assert answers[3] == answers[4] == old  # stale: they never saw the change
    new = answers[0]
    assert new != old and answers[1] == answers[2] == new
    assert manifest.agreed_manifest(answers, 3).version == 2
    # A stale answer alone, or with fewer than t others like it, is never used.
    with pytest.raises(AuthenticationFailed):
        manifest.agreed_manifest({2: new, 3: old, 4: old}, 3)
    with pytest.raises(AuthenticationFailed):
        manifest.agreed_manifest({0: new, 1: new, 3: old, 4: old}, 3)
    # The stale pair plus one node holding the same old value would be t identical; that
    # takes a majority of acceptors holding it, so it is the committed value: healed, the
    # next recovery's rounds carry the new value to 3 and 4, which then answer it too.
    world.reachable = None
    assert client.recover(b"new password") is not None
    for slot in (3, 4):
        answer = world.request(slot, Op.MANIFEST, ManifestRequest("alice", "chat"))
        assert isinstance(answer, ManifestResponse) and answer.manifest == new


def test_change_password_erases_old_shares(world: Simulation, client: ThresholdClient) -> None:
    recovered = client.recover(b"right")
    assert recovered is not None
    old_rows = {s: world.honest[s].rows[client.key] for s in range(5)}
    _, acks = client.change_password(bytes(64), b"new password", RK)
    assert acks == 0  # not signed by the owner: nothing changes
    assert {s: world.honest[s].rows[client.key] for s in range(5)} == old_rows
    _, acks = client.change_password(recovered[0], b"new password", RK)
    assert acks == 5
    for slot in range(5):
        row = world.honest[slot].rows[client.key]
        assert row.version == 2 and row.share != old_rows[slot].share
    assert client.recover(b"right") is None
    assert client.recover(b"new password") is not None


def test_the_core_asserts_its_invariants() -> None:
    """A row with two B for one attempt, or a count above L, never reaches the disk."""
    world = threshold_world(limit=2)
    keeper: ShareKeeper = world.honest[0].keeper
    two = NodeShare(1, b"", b"", [Evaluation(1, bytes(32)), Evaluation(1, b"\x01" * 32)])
    with pytest.raises(BrokenInvariant, match="two B"):
        keeper._write(b"k", two)
    many = NodeShare(1, b"", b"", [Evaluation(a, bytes(32)) for a in (1, 2, 3)])
    with pytest.raises(BrokenInvariant, match="above L"):
        keeper._write(b"k", many)


def test_the_firmware_opens_and_routes_threshold_requests() -> None:
    """The real firmware: a sealed register-share opens only at its node, is routed to
    the node's ShareKeeper, and its answer fits the padded size; a request that does not
    match its operation is refused with a clear message."""
    issuer = Ed25519PrivateKey.generate()
    audience = fleet_audience(FLEET_ID)
    accounts = TokenVerifier(issuer.public_key(), "issuer", audience)
    hpke = NodePrivateKey.generate(Kem.X25519)
    shape = FleetShape(EPOCH, 5, 3, 10)
    firmware = VaultFirmware(
        FLEET_ID, NodeKey(0, hpke, Ed25519PrivateKey.generate()), accounts, shape, lambda key: None
    )
    registration = manifest.register(
        b"pw",
        RK,
        fleet_id=FLEET_ID,
        account="alice",
        entry="chat",
        epoch=EPOCH,
        nodes=5,
        threshold_count=3,
        ksf=SIM_KSF,
    )
    request = RegisterShareRequest(
        "alice", "chat", registration.manifest.to_bytes(), registration.shares[0].to_bytes(), b"", 0
    )
    device = Ed25519PrivateKey.generate()
    token = mint_token(
        issuer,
        "alice",
        issuer="issuer",
        audience=audience,
        ttl_seconds=60,
        now=1000,
        device_key=device.public_key(),
    )
    proof = sign_request_proof(
        device,
        fleet_id=FLEET_ID,
        node_index=0,
        node_key=hpke.public_key().to_bytes(),
        token=token,
        request=request.to_bytes(),
        now=1000,
    )
    body = AuthorizedRequest(token, request.to_bytes(), proof).to_bytes()
    sealed, _ = seal_request(hpke.public_key(), FLEET_ID, 0, str(Op.REGISTER_SHARE), body)
    opened = firmware.open(Op.REGISTER_SHARE, "alice", "chat", sealed, 1000)
    assert not isinstance(opened, ErrorResponse)
    # A share is staged on the node's own word, with no round: a read that writes its row.
    stage = firmware.handle(Op.REGISTER_SHARE, opened[0])
    assert isinstance(stage, ThresholdRead)
    answer = stage.answer(b"")
    assert isinstance(answer.response, ShareAck) and answer.response.kind == AckKind.STAGED
    assert [s.share for s in answer.writes[0].row.staged] == [registration.shares[0].to_bytes()]
    assert not answer.writes[0].row.share  # nothing to evaluate before the commit
    pad_response(Op.REGISTER_SHARE, answer.response.to_bytes())
    # The commit is a round, taken only with t nodes' acknowledgements: one is not enough.
    ack = answer.response
    commit = CommitSharesRequest(
        "alice",
        "chat",
        registration.manifest.to_bytes(),
        b"",
        0,
        encode_commit_acks([CommitAck(ack.index, AckKind.STAGED, ack.signature)]),
    )
    too_few = firmware.handle(Op.COMMIT_SHARES, commit)
    assert isinstance(too_few, Reply) and "acknowledgements" in too_few.response.detail  # type: ignore[attr-defined]
    refused = firmware.handle(Op.EVALUATE, opened[0])
    assert isinstance(refused, Reply) and "does not match" in refused.response.detail  # type: ignore[attr-defined]


def test_a_committed_change_is_still_checked_by_each_node_before_it_erases(
    world: Simulation, client: ThresholdClient
) -> None:
    """Node 0 commits a genuine password change. Node 1, accepting that value, erases its
    old share only because the value carries the owner's CHANGE statement, which it checks
    with the pk_auth of its own old manifest. Sent the same new manifest with a forged
    authorization, it checks that against its own old manifest too and stores nothing;
    the genuine request then gives it the new share."""
    recovered = client.recover(b"right")
    assert recovered is not None
    registration = manifest.register(
        b"new",
        RK,
        fleet_id=FLEET_ID,
        account="alice",
        entry="chat",
        epoch=EPOCH,
        nodes=5,
        threshold_count=3,
        ksf=SIM_KSF,
        version=2,
    )
    encoded = registration.manifest.to_bytes()
    statement = owner.OwnerStatement(
        owner.StatementKind.CHANGE_PASSWORD,
        FLEET_ID,
        "alice",
        "chat",
        1,
        1,
        owner.payload_hash(encoded),
    )
    genuine = owner.sign_statement(recovered[0], statement)
    share = registration.shares

    def change(slot: int, signature: bytes) -> object:
        request = RegisterShareRequest(
            "alice", "chat", encoded, share[slot].to_bytes(), signature, 1
        )
        return world.request(slot, Op.CHANGE_SHARE, request)

    old = world.honest[1].rows[client.key]
    staged = [change(slot, genuine) for slot in (0, 2, 3)]
    acks = [CommitAck(a.index, AckKind(a.kind), a.signature) for a in staged]  # type: ignore[attr-defined]
    commit = CommitSharesRequest("alice", "chat", encoded, genuine, 1, encode_commit_acks(acks))
    assert isinstance(world.request(0, Op.COMMIT_SHARES, commit), ShareAck)
    assert world.replicated(1, client.key).manifest == encoded
    erased = world.honest[1].rows[client.key]
    assert erased == old.with_(share=b"", change_counter=1)  # on the verified statement
    assert _code(change(1, bytes(64))) == ErrorCode.REFUSED
    assert world.honest[1].rows[client.key] == erased
    assert not isinstance(change(1, genuine), ErrorResponse)
    assert world.honest[1].rows[client.key].version == 2


def test_rows_not_yet_durable_are_never_dropped_from_memory() -> None:
    """A row handed out for writing is what the next request reads, however many other
    rows pass through the bounded cache, until the shell reports it durable; then the
    store answers for it."""
    store: dict[bytes, NodeShare] = {}
    world = threshold_world(limit=4)
    keeper = ShareKeeper(FLEET_ID, 0, world.shape, world.signing[0], store.get)
    written = keeper._write(b"first", NodeShare(1, b"", b"", [Evaluation(1, bytes(32))]))
    for i in range(ROWS_CACHED + 10):
        keeper.row(b"other %d" % i)
    assert keeper.row(b"first") == written.row  # not yet durable: kept
    store[b"first"] = written.row
    keeper.durable((written,))
    for i in range(ROWS_CACHED + 10):
        keeper.row(b"more %d" % i)
    store[b"first"] = NodeShare(1, b"", b"", [])  # now only the store answers
    assert keeper.row(b"first") == store[b"first"]


def test_an_owner_reset_from_an_older_epoch_does_not_reset_the_new_epochs_copy() -> None:
    """Owner statements name the fleet, entry, version and attempt, not the node-set epoch.
    A rotation's migration registers the key again on the new epoch behind the same
    password: same fleet, account, entry, version 1, and attempt numbers that start over.
    A hostile old-epoch node holds a reset the owner signed there and the B it was for; it
    has the new epoch's nodes accept that B at the same attempt number and replays the
    reset to reset their counts. It must not verify: the new registration's pk_auth is
    another key (a fresh OPRF key and envelope nonce give a fresh export_key)."""
    old = threshold_world(limit=10)
    old_client = ThresholdClient(old)
    old_client.register(b"right", RK)
    recovered = old_client.recover(b"right")
    assert recovered is not None
    _, owners_b = oprf.blind(b"right")
    answer = old.request(0, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, owners_b, 20_000))
    assert isinstance(answer, EvaluateResponse)
    stolen = _reset_request(old_client, recovered[0], answer.attempt, owners_b)
    # Genuine where it was signed: the old epoch's node takes it.
    assert isinstance(old.request(0, Op.RESET, stolen), ResetResponse)

    new = threshold_world(limit=10, seed=1)
    new_client = ThresholdClient(new)
    new_client.register(b"right", RK)  # the migration: same password, same root key
    clock = 30_000
    while True:  # the attacker's guesses, up to the stolen reset's attempt number
        clock += 1
        wanted = new.honest[0].rows[new_client.key].count + 1 == stolen.attempt
        _, guess = oprf.blind(b"guess %d" % clock)
        blinded = owners_b if wanted else guess
        answer = new.request(0, Op.EVALUATE, EvaluateRequest("alice", "chat", 1, blinded, clock))
        assert isinstance(answer, EvaluateResponse)
        if wanted:
            break
    assert answer.attempt == stolen.attempt
    spent = new.honest[0].rows[new_client.key].count
    assert spent == stolen.attempt
    assert _code(new.request(0, Op.RESET, stolen)) == ErrorCode.REFUSED
    assert new.honest[0].rows[new_client.key].count == spent
