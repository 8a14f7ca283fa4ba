"""What the client takes from the nodes' answers when one of them lies or two recoveries
meet. A hostile node that reports another attempt number for a correct recovery (its
partial and proof are valid; the number is not covered by the proof): found by review
(s23), the client signed RESET(version, that number, SHA-256(B)) for that node; the
statement names no node, so the node kept a signature that, once the same B was counted
again at that number after wrong guesses, reset every honest node's count: a new window
of L guesses without the owner. Now the client signs one number, the one t verified
partials agree on, and a node never counts the last reset's B as a new attempt."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from tests.hsm.test_threshold_client_on_real_nodes import KEY, LIMIT, RK, Bridge

from backupvault.client import DEFAULT_ENTRY
from backupvault.client.errors import Destroyed, VaultError, WrongPassword
from backupvault.client.threshold import ThresholdVault
from backupvault.protocol import (
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    ManifestResponse,
    Message,
    Op,
    ResetRequest,
)
from backupvault.sim.clients import SIM_KSF
from backupvault.sim.world import Simulation, threshold_world, wrong_partial

HOSTILE = 0


def _registered(seed: int) -> tuple[Bridge, ThresholdVault]:
    """Five real nodes, and a device that registered the owner's key on them."""
    bridge = Bridge(threshold_world(5, LIMIT, seed=seed))
    vault = bridge.vault()
    vault.register("right", RK, ksf=SIM_KSF)
    return bridge, vault


def _recover_with_lying_nodes(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge, liars: set[int]
) -> tuple[object, dict[int, ResetRequest], EvaluateRequest]:
    """The owner's correct recovery while `liars` add L to the attempt they report;
    returns it, the resets each node was sent, and the owner's evaluate request."""
    sent: dict[int, ResetRequest] = {}
    evaluate: list[EvaluateRequest] = []
    honest = Simulation.request

    def lying(
        world: Simulation, slot: int, op: Op, inner: Message, seconds: float = 10.0
    ) -> Message:
        if isinstance(inner, ResetRequest):
            sent[slot] = inner
        if isinstance(inner, EvaluateRequest):
            evaluate.append(inner)
        answer = honest(world, slot, op, inner, seconds)
        if slot in liars and isinstance(answer, EvaluateResponse):
            return EvaluateResponse(
                answer.attempt + LIMIT,
                answer.index,
                answer.evaluated,
                answer.proof,
                answer.guesses_remaining,
            )
        return answer

    monkeypatch.setattr(Simulation, "request", lying)
    try:
        recovered = bridge.vault().recover("right", ksf_floor=SIM_KSF)
    finally:
        monkeypatch.setattr(Simulation, "request", honest)
    return recovered, sent, evaluate[0]


def test_a_hostile_node_gets_no_reset_for_the_attempt_number_it_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    bridge = Bridge(threshold_world(5, LIMIT, seed=1))
    bridge.vault().register("right", RK, ksf=SIM_KSF)
    recovered, sent, owners = _recover_with_lying_nodes(monkeypatch, bridge, {HOSTILE})
    assert recovered.root_key == RK and recovered.reset_confirmed  # type: ignore[attr-defined]
    # One statement, for the attempt the honest nodes report, to every node.
    assert {r.attempt for r in sent.values()} == {1} and set(sent) == set(range(5))
    stolen = sent[HOSTILE]

    # The attacker (it can spend guesses on the account) tries the old path: wrong
    # guesses up to the number the hostile node named, the owner's B again, the reset.
    attacker = bridge.vault()
    for i in range(LIMIT - 1):
        with pytest.raises(WrongPassword):
            attacker.recover(f"guess-{i}", ksf_floor=SIM_KSF)
    replay = EvaluateRequest(
        "alice", DEFAULT_ENTRY, owners.version, owners.blinded, time.time_ns() // 1_000_000
    )
    for slot in range(5):
        answer = bridge.world.request(slot, Op.EVALUATE, replay)
        # The last reset's B is a replay, not a new attempt: refused, nothing counted.
        assert isinstance(answer, ErrorResponse) and answer.code == ErrorCode.STALE_ATTEMPT
    for slot in range(1, 5):  # the owner's own reset again: answered, but it is spent
        bridge.world.request(slot, Op.RESET, stolen)
    counts = [bridge.world.honest[s].rows[KEY].count for s in range(1, 5)]
    assert counts == [LIMIT - 1] * 4  # the attacker's guesses still count
    with pytest.raises(Destroyed):  # the L-th wrong guess: no window beyond L
        attacker.recover("guess-last", ksf_floor=SIM_KSF)


def test_without_t_nodes_agreeing_on_the_number_nothing_is_signed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two liars and one honest node down: the three answers that verify name two
    # numbers, neither from t = 3 nodes. The key still opens; no reset is signed, and
    # the recovery says no node took one (the CLI then warns that guesses still count).
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    bridge = Bridge(threshold_world(5, LIMIT, seed=2))
    bridge.vault().register("right", RK, ksf=SIM_KSF)
    bridge.world.down.add(4)
    recovered, sent, _ = _recover_with_lying_nodes(monkeypatch, bridge, {0, 1})
    assert recovered.root_key == RK  # type: ignore[attr-defined]
    assert sent == {} and not recovered.reset_confirmed  # type: ignore[attr-defined]
    assert all("did not agree" in m for m in recovered.reset_missing)  # type: ignore[attr-defined]


def test_one_node_cannot_set_the_guess_limit_the_client_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The limit was the largest any agreeing node reported: one node's 10^9 made a clean
    # recovery warn of about 10^9 wrong guesses, and `vault status` show that limit.
    _, vault = _registered(seed=3)
    honest = Simulation.request

    def lying(
        world: Simulation, slot: int, op: Op, inner: Message, seconds: float = 10.0
    ) -> Message:
        answer = honest(world, slot, op, inner, seconds)
        if slot == HOSTILE and isinstance(answer, ManifestResponse):
            return replace(answer, guess_limit=10**9)
        return answer

    monkeypatch.setattr(Simulation, "request", lying)
    assert vault.status().guess_limit == LIMIT
    assert vault.recover("right", ksf_floor=SIM_KSF).wrong_guesses_before == 0


def test_two_recoveries_at_once_both_succeed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two cron jobs (or devices) recovering together: the second device's attempt is
    # counted while the first one's request is on its way, so the nodes refuse the first
    # as stale ("a later attempt was already made", nothing counted). It used to end in
    # exit 5 with advice to check the clock; now the attempt is made again.
    bridge = Bridge(threshold_world(5, LIMIT, seed=4))
    recovered = _overtaken_recovery(monkeypatch, bridge, 0, {})
    assert recovered.root_key == RK  # type: ignore[attr-defined]
    assert [bridge.world.honest[s].rows[KEY].count for s in range(5)] == [0] * 5


def _overtaken_recovery(
    monkeypatch: pytest.MonkeyPatch,
    bridge: Bridge,
    overtake_at: int,
    answer_instead: dict[int, Message],
    first_try_instead: dict[int, Message] | None = None,
) -> object:
    """The first device's correct recovery, overtaken by the second device's when its
    evaluate reaches node `overtake_at`: the nodes asked after that refuse the first's
    attempt as stale. `answer_instead` replaces those nodes' evaluate answers (a liar, a
    node that lost its share) on every try; `first_try_instead` on the first evaluate
    each of them is sent (a node that has not answered yet)."""
    first_tries = dict(first_try_instead or {})
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    first, second = bridge.vault(), bridge.vault()
    first.register("right", RK, ksf=SIM_KSF)
    honest = Simulation.request
    overtaken: list[bool] = []

    def racing(
        world: Simulation, slot: int, op: Op, inner: Message, seconds: float = 10.0
    ) -> Message:
        if isinstance(inner, EvaluateRequest) and slot == overtake_at and not overtaken:
            overtaken.append(True)
            time.sleep(0.002)  # a later clock for the other device's attempt
            assert second.recover("right", ksf_floor=SIM_KSF).root_key == RK
            overtaken.append(False)  # the second device's recovery is over
        answer = honest(world, slot, op, inner, seconds)
        first_device = not overtaken or len(overtaken) == 2
        if isinstance(inner, EvaluateRequest) and slot in first_tries and first_device:
            return first_tries.pop(slot)
        if isinstance(inner, EvaluateRequest) and slot in answer_instead:
            return answer_instead[slot]
        return answer

    monkeypatch.setattr(Simulation, "request", racing)
    recovered = first.recover("right", ksf_floor=SIM_KSF)
    assert overtaken
    return recovered


def test_a_recovery_overtaken_while_a_node_lies_is_made_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Sim seeds 10347053, 10347251 (one hostile node of 5): the honest nodes refused the
    # attempt as stale, and the liar's partial made the client stop with "node 0 sent a
    # partial that does not verify" before it looked at why the honest ones gave none.
    bridge = Bridge(threshold_world(5, LIMIT, seed=2))
    liar = {HOSTILE: wrong_partial(random.Random(1), HOSTILE)}
    recovered = _overtaken_recovery(monkeypatch, bridge, HOSTILE, liar)
    assert recovered.root_key == RK  # type: ignore[attr-defined]
    assert [bridge.world.honest[s].rows[KEY].count for s in range(1, 5)] == [0] * 4


def test_a_recovery_overtaken_after_some_partials_is_made_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Sim seed 10347203: two nodes gave partials, two refused the attempt as stale, one
    # had lost its share. Fewer than t were stale, so "more than N - t stale" did not
    # fire, though the stale ones were all that kept t partials from coming.
    bridge = Bridge(threshold_world(5, LIMIT, seed=3))
    lost = ErrorResponse(ErrorCode.NOT_REGISTERED, "no share", 0)
    recovered = _overtaken_recovery(monkeypatch, bridge, 2, {4: lost})
    assert recovered.root_key == RK  # type: ignore[attr-defined]
    assert [bridge.world.honest[s].rows[KEY].count for s in range(4)] == [0] * 4


def test_a_recovery_overtaken_is_made_again_once_a_slow_node_says_so_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Sim seed 10432010 (two hostile nodes of 5): one partial, two that do not verify, one
    # node refusing the attempt as stale and one not answering yet. The partials could no
    # longer reach t, so the client stopped asking and failed ("unavailable (1 partials)"),
    # though the silent node, asked again, says stale too: the attempt was overtaken, and
    # made again it opens the key.
    bridge = Bridge(threshold_world(5, LIMIT, seed=4))
    liars = {s: wrong_partial(random.Random(s), s) for s in (3, 4)}
    silent = {2: ErrorResponse(ErrorCode.FLEET_UNAVAILABLE, "no answer yet", 0)}
    recovered = _overtaken_recovery(monkeypatch, bridge, 1, liars, silent)
    assert recovered.root_key == RK  # type: ignore[attr-defined]


def _evaluates_answered(
    monkeypatch: pytest.MonkeyPatch,
    instead: Callable[[Simulation, int, EvaluateRequest], Message | None],
) -> None:
    """Each node's answer to an evaluate is `instead`'s where it gives one (None: the
    node's own); the client's retries pause 1 ms."""
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    honest = Simulation.request

    def answering(
        world: Simulation, slot: int, op: Op, inner: Message, seconds: float = 10.0
    ) -> Message:
        if isinstance(inner, EvaluateRequest):
            answer = instead(world, slot, inner)
            if answer is not None:
                return answer
        return honest(world, slot, op, inner, seconds)

    monkeypatch.setattr(Simulation, "request", answering)


def test_a_retry_that_fails_after_a_counted_attempt_says_it_may_have_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Review s41-C: an attempt made again after it was overtaken failed at its manifest
    # read (the relay now dropping the honest nodes), and the user read "try again later"
    # with no word that the first try's evaluation, already counted by nodes 0 and 1, may
    # have used a guess.
    bridge, vault = _registered(seed=4)

    def hostile(world: Simulation, slot: int, inner: EvaluateRequest) -> Message | None:
        if slot == 4:
            world.down = {0, 1, 2}  # from here the relay drops the honest nodes
        if slot in (3, 4):
            return ErrorResponse(ErrorCode.STALE_ATTEMPT, "older than the latest", 0)
        if slot == 2:
            return ErrorResponse(ErrorCode.FLEET_UNAVAILABLE, "no answer yet", 0)
        return None

    _evaluates_answered(monkeypatch, hostile)
    with pytest.raises(VaultError) as caught:
        vault.recover("wrong", ksf_floor=SIM_KSF)
    assert [bridge.world.honest[s].rows[KEY].count for s in range(2)] == [1, 1]
    assert caught.value.hint is not None
    assert "which they may have counted as a guess" in caught.value.hint


def test_attempts_answered_for_another_b_are_made_again_then_told_with_the_nodes_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Review s55b: a node that answered the attempt's number for another B (the fleet
    # numbered it twice beside hostile nodes) answers `stale_attempt` since session 55; the
    # client makes the attempt again, and once its tries are spent it said only "refused as
    # older" with advice about clocks. Here nodes 0-2 answer so on every try.
    _, vault = _registered(seed=4)
    tries: list[int] = []
    another_b = ErrorResponse(
        ErrorCode.STALE_ATTEMPT, "this attempt was answered for another B; start again", 0
    )

    def numbered_apart(world: Simulation, slot: int, inner: EvaluateRequest) -> Message | None:
        if slot in (0, 1, 2):
            tries.append(inner.client_time_ms)
            return another_b
        return None

    _evaluates_answered(monkeypatch, numbered_apart)
    with pytest.raises(VaultError) as refused:
        vault.recover("right", ksf_floor=SIM_KSF)
    assert len(set(tries)) == 3  # the first try and its two retries, each a new attempt
    assert "answered for another B" in refused.value.message
    assert refused.value.hint is not None and "report it to the operator" in refused.value.hint
