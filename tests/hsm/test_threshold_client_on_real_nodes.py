"""The threshold client (client/threshold.py) against the real node side: each request is
sealed by the client, opened with the node's own HPKE key and answered by that node's
`ShareKeeper` on a real replica (sim/world.py), with the relay's fan-out in between.
This checks that the two halves of the flow, built separately, agree byte for byte."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from backupvault.client import DEFAULT_ENTRY
from backupvault.client.errors import (
    EVALUATION_UNANSWERED_HINT,
    Destroyed,
    EntryChanged,
    FleetUnavailable,
    NotRegistered,
    VaultError,
    WrongPassword,
)
from backupvault.client.threshold import FleetKeys, ThresholdVault
from backupvault.client.vault import MAX_RATE_LIMIT_WAIT_SECONDS, VaultClient
from backupvault.crypto.seal import Kem, NodePrivateKey, open_request
from backupvault.fanout import NO_ANSWER, FanoutAnswers, FanoutReply
from backupvault.hsm.state import EntryId
from backupvault.protocol import (
    REQUEST_TYPES,
    AuthorizedRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateResponse,
    Message,
    Op,
    ResetRequest,
    ResetResponse,
    SealedCopies,
    pad_response,
)
from backupvault.sim.clients import SIM_KSF
from backupvault.sim.world import EPOCH, FLEET_ID, Simulation, threshold_world

RK = bytes(range(32))
LIMIT = 4
KEY = EntryId("alice", DEFAULT_ENTRY).to_bytes()


class Bridge:
    """The relay's fan-out in front of the world's nodes."""

    def __init__(self, world: Simulation) -> None:
        self.world = world
        self.hpke = [NodePrivateKey.generate(Kem.X25519) for _ in range(world.nodes)]

    def vault(self) -> ThresholdVault:
        client = VaultClient(
            "http://relay.test",
            "token",
            "alice",
            FLEET_ID,
            [key.public_key() for key in self.hpke],
            ksf_params=SIM_KSF,
            http=httpx.Client(transport=httpx.MockTransport(self.handle)),
            fleet_token="fleet-token",
        )
        signing = tuple(
            self.world.signing[i].public_key().public_bytes_raw() for i in range(self.world.nodes)
        )
        return ThresholdVault(client, FleetKeys(signing, self.world.shape.threshold, EPOCH))

    def handle(self, request: httpx.Request) -> httpx.Response:
        op = Op(request.url.path.rsplit("/", 1)[1])
        copies = SealedCopies.for_nodes(request.read(), self.world.nodes).copies
        replies = []
        for slot, copy in enumerate(copies):
            if slot in self.world.down:
                down = b'{"error":"node_unreachable","detail":"down"}'
                replies.append(FanoutReply(slot, NO_ANSWER, down))
                continue
            body, key = open_request(self.hpke[slot], FLEET_ID, slot, str(op), copy)
            inner = REQUEST_TYPES[op].from_bytes(AuthorizedRequest.from_bytes(body).request)
            answer = self.world.request(slot, op, inner)
            replies.append(FanoutReply(slot, 200, key.seal(pad_response(op, answer.to_bytes()))))
        return httpx.Response(200, content=FanoutAnswers(replies).to_bytes())


@pytest.fixture
def bridge() -> Bridge:
    return Bridge(threshold_world(5, LIMIT, seed=1))


def test_register_recover_wrong_guesses_and_reset(bridge: Bridge) -> None:
    vault = bridge.vault()
    done = vault.register("correct horse", RK, ksf=SIM_KSF)
    assert done.acknowledged == (0, 1, 2, 3, 4) and not done.degraded
    with pytest.raises(WrongPassword) as caught:
        vault.recover("wrong", ksf_floor=SIM_KSF)
    assert caught.value.guesses_remaining == LIMIT - 1
    recovered = vault.recover("correct horse", ksf_floor=SIM_KSF)
    assert recovered.root_key == RK and recovered.wrong_guesses_before == 1
    assert recovered.reset_missing == ()
    # Every node verified the owner's reset itself and forgot its evaluations.
    assert [bridge.world.honest[s].rows[KEY].count for s in range(5)] == [0] * 5
    assert vault.status().guesses_remaining == LIMIT


def test_two_nodes_down_still_recovers(bridge: Bridge) -> None:
    vault = bridge.vault()
    vault.register("pw", RK, ksf=SIM_KSF)
    bridge.world.down.update({1, 3})
    assert vault.recover("pw", ksf_floor=SIM_KSF).root_key == RK


def test_the_limit_destroys_and_the_nodes_erase_their_shares(bridge: Bridge) -> None:
    vault = bridge.vault()
    vault.register("right", RK, ksf=SIM_KSF)
    for _ in range(LIMIT - 1):
        with pytest.raises(WrongPassword):
            vault.recover("wrong", ksf_floor=SIM_KSF)
    # The last guess was used: the client says so at once. The nodes erase their shares
    # when the next request comes (their own count is at L), whatever it carries.
    with pytest.raises(Destroyed):
        vault.recover("wrong", ksf_floor=SIM_KSF)
    assert [bridge.world.honest[s].rows[KEY].count for s in range(5)] == [LIMIT] * 5
    with pytest.raises(Destroyed):
        vault.recover("right", ksf_floor=SIM_KSF)
    assert all(bridge.world.honest[s].rows[KEY].share == b"" for s in range(5))
    assert vault.status().status == EntryStatus.DESTROYED


def test_change_password_and_delete(bridge: Bridge) -> None:
    vault = bridge.vault()
    vault.register("old", RK, ksf=SIM_KSF)
    recovered = vault.recover("old", ksf_floor=SIM_KSF)
    changed = vault.change_password(recovered, "new", ksf=SIM_KSF)
    assert changed.version == 2 and changed.acknowledged == (0, 1, 2, 3, 4)
    with pytest.raises(WrongPassword):
        vault.recover("old", ksf_floor=SIM_KSF)
    again = vault.recover("new", ksf_floor=SIM_KSF)
    deleted, missing = vault.delete(again)
    assert deleted == 2 and missing == ()  # every node acknowledged its erasure
    assert all(bridge.world.honest[s].rows[KEY].share == b"" for s in range(5))


def test_a_password_changed_on_another_device_mid_recovery_is_named_and_costs_no_guess(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device B changes the password between device A's manifest read and its evaluation
    (sim seed 10051237): every node refuses A's attempt for the old version. A is told the
    key changed, not that the fleet is unavailable, and no guess of the new version is
    spent on the password it typed."""
    device_a, device_b = bridge.vault(), bridge.vault()
    device_a.register("old", RK, ksf=SIM_KSF)
    read = device_a._live

    def read_then_changed_elsewhere(*args: Any) -> object:
        live = read(*args)
        device_b.change_password(device_b.recover("old", ksf_floor=SIM_KSF), "new", ksf=SIM_KSF)
        return live

    monkeypatch.setattr(device_a, "_live", read_then_changed_elsewhere)
    with pytest.raises(EntryChanged, match="no longer holds version 1") as raised:
        device_a.recover("old", ksf_floor=SIM_KSF)
    assert raised.value.exit_code == 1
    rows = [bridge.world.honest[s].rows[KEY] for s in range(5)]
    assert all((row.version, row.count) == (2, 0) for row in rows)
    monkeypatch.undo()
    assert device_a.recover("new", ksf_floor=SIM_KSF).root_key == RK


def test_a_key_deleted_on_another_device_mid_recovery_is_named(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device B deletes the key between device A's manifest read and its evaluation (sim
    seed 10289583): every node answered A's attempt `not_registered`, which A took for an
    unavailable fleet. The nodes now answer `stale_manifest` for a version deleted since
    it was read, and A is told the key changed."""
    device_a, device_b = bridge.vault(), bridge.vault()
    device_a.register("old", RK, ksf=SIM_KSF)
    read = device_a._live

    def read_then_deleted_elsewhere(*args: Any) -> object:
        live = read(*args)
        device_b.delete(device_b.recover("old", ksf_floor=SIM_KSF))
        return live

    monkeypatch.setattr(device_a, "_live", read_then_deleted_elsewhere)
    with pytest.raises(EntryChanged, match="no longer holds version 1") as raised:
        device_a.recover("old", ksf_floor=SIM_KSF)
    assert raised.value.exit_code == 1
    assert all(bridge.world.honest[s].rows[KEY].share == b"" for s in range(5))
    monkeypatch.undo()
    with pytest.raises(NotRegistered):  # read again: there is no key
        device_a.recover("old", ksf_floor=SIM_KSF)


def test_a_key_deleted_on_another_device_mid_password_change_is_named(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device B deletes the key after device A recovered it for a password change and
    before A's new shares are staged (sim seed 10196044): every node refuses A's shares of
    the next version. A is told the key changed, not that the fleet is unavailable."""
    device_a, device_b = bridge.vault(), bridge.vault()
    device_a.register("old", RK, ksf=SIM_KSF)
    recovered = device_a.recover("old", ksf_floor=SIM_KSF)
    deliver = device_a._deliver

    def deleted_elsewhere_first(*args: object, **kwargs: object) -> object:
        device_b.delete(device_b.recover("old", ksf_floor=SIM_KSF))
        return deliver(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(device_a, "_deliver", deleted_elsewhere_first)
    with pytest.raises(EntryChanged, match="no longer holds version 1"):
        device_a.change_password(recovered, "new", ksf=SIM_KSF)
    assert all(bridge.world.honest[s].rows[KEY].share == b"" for s in range(5))


def test_a_delete_after_a_password_change_on_another_device_is_named(bridge: Bridge) -> None:
    """Device A recovered the key to delete it; device B changed the password first (sim
    seed 10241660): every node refuses A's statement for the old version. A is told the
    key changed, not that the fleet is unavailable, and nothing is erased."""
    device_a, device_b = bridge.vault(), bridge.vault()
    device_a.register("old", RK, ksf=SIM_KSF)
    recovered = device_a.recover("old", ksf_floor=SIM_KSF)
    device_b.change_password(device_b.recover("old", ksf_floor=SIM_KSF), "new", ksf=SIM_KSF)
    with pytest.raises(EntryChanged, match="no longer holds version 1"):
        device_a.delete(recovered)
    assert device_b.recover("new", ksf_floor=SIM_KSF).root_key == RK


# ---- a hostile relay, and one hostile node, against the SDK ----------------------------


def _dropping(bridge: Bridge, ops: set[Op]) -> httpx.Client:
    """The relay forwards everything but `ops`, which it answers as if every node were
    slow (it cannot read them, but it can tell them apart by their path)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if Op(request.url.path.rsplit("/", 1)[1]) not in ops:
            return bridge.handle(request)
        slow = b'{"error":"node_slow","detail":"timeout"}'
        replies = [FanoutReply(i, NO_ANSWER, slow) for i in range(bridge.world.nodes)]
        return httpx.Response(200, content=FanoutAnswers(replies).to_bytes())

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_a_reset_no_node_took_is_reported_as_not_done(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay that drops every reset: each correct recovery's guess stays counted, until
    a correct password finds the key destroyed. The SDK used to report success with no
    sign of it (and the CLI said "the count is now reset")."""
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    vault = bridge.vault()
    vault.register("right", RK, ksf=SIM_KSF)
    vault.vault._http = _dropping(bridge, {Op.RESET})
    recovered = vault.recover("right", ksf_floor=SIM_KSF)
    assert recovered.root_key == RK and not recovered.reset_confirmed
    assert len(recovered.reset_missing) == 5
    vault.vault._http = httpx.Client(transport=httpx.MockTransport(bridge.handle))
    again = vault.recover("right", ksf_floor=SIM_KSF)
    assert again.reset_confirmed and again.wrong_guesses_before == 1
    assert vault.status().guesses_remaining == LIMIT


def test_one_node_claiming_no_guesses_left_does_not_make_a_key_look_destroyed(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = bridge.vault()
    vault.register("right", RK, ksf=SIM_KSF)
    honest = Simulation.request

    def lying(world: Simulation, slot: int, op: Op, inner: Message) -> Message:
        answer = honest(world, slot, op, inner)
        if slot == 0 and isinstance(answer, EvaluateResponse):  # a valid partial, a false count
            return EvaluateResponse(answer.attempt, answer.index, answer.evaluated, answer.proof, 0)
        return answer

    monkeypatch.setattr(Simulation, "request", lying)
    with pytest.raises(WrongPassword) as wrong:
        vault.recover("wrong", ksf_floor=SIM_KSF)
    assert wrong.value.guesses_remaining == LIMIT - 1
    assert vault.recover("right", ksf_floor=SIM_KSF).wrong_guesses_before == 1


def _node_0_alone(bridge: Bridge, op: Op, answer: Callable[[Message], Message]) -> httpx.Client:
    """A relay that passes `op` to no node but the hostile node 0, which answers
    `answer(its request)`; every other node is said to be slow. Other operations pass."""

    def handle(request: httpx.Request) -> httpx.Response:
        if Op(request.url.path.rsplit("/", 1)[1]) is not op:
            return bridge.handle(request)
        copies = SealedCopies.for_nodes(request.read(), 5).copies
        body, key = open_request(bridge.hpke[0], FLEET_ID, 0, str(op), copies[0])
        inner = REQUEST_TYPES[op].from_bytes(AuthorizedRequest.from_bytes(body).request)
        slow = b'{"error":"node_slow","detail":"timeout"}'
        replies = [FanoutReply(0, 200, key.seal(pad_response(op, answer(inner).to_bytes())))]
        replies += [FanoutReply(i, NO_ANSWER, slow) for i in range(1, 5)]
        return httpx.Response(200, content=FanoutAnswers(replies).to_bytes())

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_one_node_saying_destroyed_does_not_make_a_key_look_destroyed(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 0 answers "destroyed" and the relay hides every other node: that is a fleet out
    of reach, not a destroyed key (t nodes must say so)."""
    monkeypatch.setattr("backupvault.client.threshold.EVALUATE_PATIENCE_SECONDS", 0.0)
    vault = bridge.vault()
    vault.register("right", RK, ksf=SIM_KSF)

    destroyed = ErrorResponse(ErrorCode.DESTROYED, "destroyed", 0)
    vault.vault._http = _node_0_alone(bridge, Op.EVALUATE, lambda _: destroyed)
    with pytest.raises(FleetUnavailable):
        vault.recover("right", ksf_floor=SIM_KSF)


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"1", b"[" * 100_000 + b"]" * 100_000], ids=str)
def test_a_relay_s_odd_error_bodies_are_errors_the_sdk_names(bridge: Bridge, body: bytes) -> None:
    """JSON that is no object, or nested past the parser's depth: AttributeError and
    RecursionError used to escape the SDK."""
    vault = bridge.vault()
    vault.vault._http = httpx.Client(
        transport=httpx.MockTransport(lambda _: httpx.Response(500, content=body))
    )
    with pytest.raises(VaultError):
        vault.status()
    replies = [FanoutReply(i, 503, body) for i in range(5)]
    answers = FanoutAnswers(replies).to_bytes()
    vault.vault._http = httpx.Client(
        transport=httpx.MockTransport(lambda _: httpx.Response(200, content=answers))
    )
    with pytest.raises(VaultError):
        vault.status()


def test_a_retry_after_of_zero_is_waited_out_within_the_limit(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Retry-After: 0" never added to the time waited: the client posted without end."""
    slept: list[float] = []
    monkeypatch.setattr("backupvault.client.vault.time.sleep", slept.append)
    vault = bridge.vault()
    posts = []

    def handle(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return httpx.Response(429, headers={"retry-after": "0"})

    vault.vault._http = httpx.Client(transport=httpx.MockTransport(handle))
    with pytest.raises(VaultError):
        vault.status()
    assert len(posts) <= MAX_RATE_LIMIT_WAIT_SECONDS + 1 and sum(slept) >= len(posts) - 1


def test_a_device_whose_clock_is_ahead_is_named_as_the_likely_cause_not_an_outage(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nodes order attempts by the client's clock: after a recovery from a device a day
    ahead, every other device's attempt is refused as stale (at no charge) for that day.
    The client said "fleet unavailable: too few nodes answered, which may have counted a
    guess; try again later", naming neither the refusal nor the clock."""
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    ahead = bridge.vault()
    ahead._clock_ms = lambda: time.time_ns() // 1_000_000 + 86_400_000
    ahead.register("right", RK, ksf=SIM_KSF)
    ahead.recover("right", ksf_floor=SIM_KSF)
    with pytest.raises(FleetUnavailable) as refused:
        bridge.vault().recover("right", ksf_floor=SIM_KSF)
    assert "refused this attempt as older than the latest" in refused.value.message
    assert "a later attempt was already made" in refused.value.message  # each node's words
    assert refused.value.hint is not None and "clock" in refused.value.hint
    assert refused.value.hint != EVALUATION_UNANSWERED_HINT
    assert bridge.vault().status().guesses_remaining == LIMIT  # none of it was charged


def test_one_node_claiming_the_reset_does_not_make_it_confirmed(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay drops the reset to every honest node and the hostile node 0 answers that
    it took it (a ResetResponse is not signed), without proposing anything: nothing was
    committed, the right password's attempt stays counted on every honest node, and the
    client said the count was reset, which is what `reset_confirmed` exists to catch (a
    relay dropping resets, review s25). It takes more than N − t nodes saying so."""
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    vault = bridge.vault()
    vault.register("right", RK, ksf=SIM_KSF)

    def claimed(reset: Message) -> Message:
        assert isinstance(reset, ResetRequest)
        return ResetResponse(reset.version, reset.attempt, LIMIT)

    vault.vault._http = _node_0_alone(bridge, Op.RESET, claimed)
    recovered = vault.recover("right", ksf_floor=SIM_KSF)
    assert [bridge.world.honest[s].rows[KEY].count for s in range(1, 5)] == [1] * 4
    assert recovered.root_key == RK and not recovered.reset_confirmed
    assert [m.split(":")[0] for m in recovered.reset_missing] == [f"node {i}" for i in range(1, 5)]
