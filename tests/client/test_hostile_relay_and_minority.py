"""The client against a hostile relay and a minority (c < t) of hostile nodes (review s25):
what it believes, what it tells the user, and what it spends. Each test failed on the
client before its fix (docs/threshold.md, "Attack review of the client")."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from backupvault.cli.main import _warn_wrong_guesses
from backupvault.client.errors import (
    EVALUATION_UNANSWERED_HINT,
    AlreadyRegistered,
    FleetUnavailable,
    NotRegistered,
    VaultError,
    WrongPassword,
)
from backupvault.client.threshold import ThresholdVault
from backupvault.client.vault import Recovery
from backupvault.crypto.seal import open_request
from backupvault.fanout import NO_ANSWER, FanoutAnswers, FanoutReply
from backupvault.protocol import (
    AckKind,
    AuthorizedRequest,
    CommitSharesRequest,
    EntryStatus,
    Op,
    SealedCopies,
    pad_response,
)

from .fake_fleet import FAST_KSF, FLEET_ID, LIMIT, FakeFleet

RK = bytes(range(32))
HOSTILE = 4  # node 4 of 5 is the attacker's (c = 1 < t = 3)


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    monkeypatch.setattr("backupvault.client.threshold.MANIFEST_BACKOFF_CAP_SECONDS", 0.001)


Relay = Callable[[httpx.Request, Callable[[httpx.Request], httpx.Response]], httpx.Response]


def _behind(fleet: FakeFleet, vault: ThresholdVault, relay: Relay) -> ThresholdVault:
    """`vault` with a hostile relay in front of the fleet: `relay(request, forward)`."""

    def handle(request: httpx.Request) -> httpx.Response:
        return relay(request, fleet.handle)

    vault.vault._http = httpx.Client(transport=httpx.MockTransport(handle))
    return vault


def _op(request: httpx.Request) -> Op:
    return Op(request.url.path.rsplit("/", 1)[1])


def _commit_to_the_hostile_node_only(fleet: FakeFleet) -> Relay:
    """The relay passes commit-shares to nobody; the hostile node, which got its copy, signs
    a HELD acknowledgement of M all the same (it has its own signing key, and K_i is
    public), and the relay says the honest nodes did not answer."""

    def relay(
        request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        if _op(request) is not Op.COMMIT_SHARES:
            return forward(request)
        copies = SealedCopies.for_nodes(request.read(), len(fleet.nodes)).copies
        node = fleet.nodes[HOSTILE]
        body, key = open_request(node.hpke, FLEET_ID, node.index, "commit-shares", copies[HOSTILE])
        commit = CommitSharesRequest.from_bytes(AuthorizedRequest.from_bytes(body).request)
        forged = node.ack(AckKind.HELD, commit.manifest)
        replies = [
            FanoutReply(i, NO_ANSWER, b'{"error":"node_slow","detail":"no answer"}')
            for i in range(len(fleet.nodes))
        ]
        replies[HOSTILE] = FanoutReply(
            HOSTILE, 200, key.seal(pad_response(Op.COMMIT_SHARES, forged.to_bytes()))
        )
        return httpx.Response(200, content=FanoutAnswers(replies).to_bytes())

    return relay


def test_one_forged_held_acknowledgement_does_not_make_a_registration_look_done() -> None:
    """Before: one HELD acknowledgement was taken as proof that M was committed, so the
    client stopped sending the commit and reported the key registered (degraded). Nothing
    was committed: the next status found no entry and dropped the owed shares, and a
    backup made with that root key had no vault entry behind it."""
    fleet = FakeFleet(5)
    vault = _behind(fleet, fleet.vault(), _commit_to_the_hostile_node_only(fleet))
    with pytest.raises(VaultError) as caught:
        vault.register("pw", RK, ksf=FAST_KSF)
    assert "not registered yet" in caught.value.message
    assert fleet.replicated == b""  # indeed nothing was committed
    with pytest.raises(NotRegistered):
        fleet.vault().recover("pw", ksf_floor=FAST_KSF)


def test_one_forged_held_acknowledgement_does_not_make_a_password_change_look_done() -> None:
    """The same against a password change: the user was told the new password is in
    effect while only the old one opens the key."""
    fleet = FakeFleet(5)
    vault = fleet.vault()
    vault.register("old", RK, ksf=FAST_KSF)
    recovery = vault.recover("old", ksf_floor=FAST_KSF)
    hostile = _behind(fleet, fleet.vault(), _commit_to_the_hostile_node_only(fleet))
    with pytest.raises(FleetUnavailable) as caught:
        hostile.change_password(recovery, "new", ksf=FAST_KSF)
    assert "the old password still opens the key" in caught.value.message
    assert fleet.vault().recover("old", ksf_floor=FAST_KSF).root_key == RK


def test_held_acknowledgements_from_t_nodes_still_finish_at_once() -> None:
    """The honest degraded case is unchanged: two nodes down, three HELD, done (degraded)."""
    fleet = FakeFleet(5)
    fleet.nodes[3].mode = fleet.nodes[4].mode = "down"
    done = fleet.vault().register("pw", RK, ksf=FAST_KSF)
    assert (done.acknowledged, done.degraded) == ((0, 1, 2), True)


def _evaluate_then(fail: Callable[[int], httpx.Response | None]) -> Relay:
    """The relay passes every evaluate fan-out on (the nodes count the attempt), throws the
    answers away, and answers `fail(n)` for the n-th evaluate fan-out it saw (None: the
    nodes' answers, dropped, as 'no answer')."""
    seen = [0]

    def relay(
        request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        if _op(request) is not Op.EVALUATE:
            return forward(request)
        seen[0] += 1
        made = fail(seen[0])
        if made is not None:
            return made
        forward(request)
        return httpx.Response(
            200,
            content=FanoutAnswers(
                [
                    FanoutReply(i, NO_ANSWER, b'{"error":"node_slow","detail":"lost"}')
                    for i in range(5)
                ]
            ).to_bytes(),
        )

    return relay


def _refuse_connection(n: int) -> httpx.Response | None:
    if n == 1:
        return None
    raise httpx.ConnectError("connection refused")


def _forward_then_429(n: int) -> httpx.Response | None:
    return None if n == 1 else httpx.Response(429, headers={"retry-after": "3600"})


@pytest.mark.parametrize("how", ["connection refused on the resend", "429 on the resend"])
def test_a_relay_error_after_the_evaluation_went_out_says_a_guess_may_be_used(how: str) -> None:
    """Invariant 10. Before: the first evaluate fan-out reached the nodes (counted), and the
    relay refused the resend's connection: the client said 'no guess was used'; or it
    answered 429 and the client said only 'retry later'."""
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    fail = _refuse_connection if how.startswith("connection") else _forward_then_429
    vault = _behind(fleet, fleet.vault(), _evaluate_then(fail))
    with pytest.raises(VaultError) as caught:
        vault.recover("pw", ksf_floor=FAST_KSF)
    assert fleet.vault().status().guesses_remaining == LIMIT - 1  # it was counted
    assert "no guess was used" not in str(caught.value)
    assert (caught.value.hint or "").startswith(EVALUATION_UNANSWERED_HINT)


def test_a_relay_refusing_the_first_connection_uses_no_guess() -> None:
    """The control: a connection refused before anything was sent is still 'no guess'."""
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)

    def refuse(_n: int) -> httpx.Response | None:
        raise httpx.ConnectError("connection refused")

    vault = _behind(fleet, fleet.vault(), _evaluate_then(refuse))
    with pytest.raises(FleetUnavailable) as caught:
        vault.recover("pw", ksf_floor=FAST_KSF)
    assert "no guess was used" in str(caught.value)
    assert fleet.vault().status().status == EntryStatus.LIVE
    assert fleet.vault().status().guesses_remaining == LIMIT


def _resets(answer: Callable[[], httpx.Response]) -> Relay:
    """The relay passes everything but the owner's reset, which it answers itself."""

    def relay(
        request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        return answer() if _op(request) is Op.RESET else forward(request)

    return relay


def _refused() -> httpx.Response:
    raise httpx.ConnectError("connection refused")


def _unreadable() -> httpx.Response:
    """What httpx raised, before review s49, for an answer with a header byte >= 0x80."""
    raise UnicodeEncodeError("ascii", "\xff", 0, 1, "ordinal not in range(128)")


RESET_FAILURES: dict[str, Callable[[], httpx.Response]] = {
    "503": lambda: httpx.Response(503, json={"error": "fleet_unavailable", "detail": "busy"}),
    "429": lambda: httpx.Response(429, headers={"retry-after": "3600"}),
    "403": lambda: httpx.Response(403, json={"error": "forbidden", "detail": "no"}),
    "connection refused": _refused,
    "garbage": lambda: httpx.Response(200, content=b"not a fan-out answer"),
    "not an httpx error": _unreadable,
}


@pytest.mark.parametrize("how", sorted(RESET_FAILURES))
def test_a_relay_failing_every_reset_cannot_make_the_right_password_burn_guesses(
    how: str,
) -> None:
    """Before: the relay answering the reset fan-out itself (503, 429, 403, a refused
    connection, garbage; review s49: anything httpx raises that is no httpx error) made a
    recovery with the right password fail with 'unavailable' or 'retry later' ('no guess
    was used', even), or crash, though its attempt was counted; each
    retry counted another, and the L-th destroyed the key of a user who typed the right
    password every time. Now the recovery returns the key and says the reset is not
    confirmed (as when every node's answer to it is lost)."""
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    vault = _behind(fleet, fleet.vault(), _resets(RESET_FAILURES[how]))
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK
    assert not recovered.reset_confirmed
    assert len(recovered.reset_missing) == len(fleet.nodes)


@pytest.mark.parametrize("op", ["manifest", "evaluate"])
def test_a_relay_answer_without_end_is_not_read_into_memory(op: str) -> None:
    """Before: the client read the relay's whole answer into memory, so a relay sending
    one without end (here 64 MiB, in 64 KiB chunks) took the device's memory. Now it
    stops past a bound of a few KB per node and says so."""
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    sent = [0]

    def endless() -> Iterator[bytes]:
        for _ in range(1024):
            sent[0] += 1
            yield bytes(64 * 1024)

    def relay(
        request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        if _op(request) is not Op(op):
            return forward(request)
        if Op(op) is Op.EVALUATE:
            forward(request)
        return httpx.Response(200, content=endless())

    vault = _behind(fleet, fleet.vault(), relay)
    with pytest.raises(VaultError) as caught:
        vault.recover("pw", ksf_floor=FAST_KSF)
    assert "larger than" in caught.value.message
    assert sent[0] <= 4  # chunks read before the client stopped


def test_lying_attempt_numbers_and_a_slow_node_do_not_leave_the_right_password_counted() -> None:
    """Two hostile nodes send partials that verify, each with an attempt number of its
    own, while an honest node misses the first fan-out: t partials verified but only two
    agreed, so no reset was signed and the right password's attempt stayed counted on
    every honest node (L such recoveries destroy the key). The evaluation is resent
    (the same B costs no second guess) until t verified partials agree."""
    fleet = FakeFleet(5)
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[0].mode = fleet.nodes[1].mode = "wrong_attempt"
    fleet.nodes[2].unavailable_for = 1  # its first evaluate answer: not ready yet
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.reset_confirmed and recovered.reset_missing == ()
    assert [node.count for node in fleet.nodes[2:]] == [0, 0, 0]  # honest counts reset
    assert fleet.nodes[2].resets == 1


def _hiding(hidden: set[int], ops: set[Op]) -> Relay:
    """The relay passes every request on (the nodes act on it, and count), then says the
    `hidden` nodes gave no answer to `ops`."""

    def relay(
        request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        answer = forward(request)
        if _op(request) not in ops:
            return answer
        replies = [
            FanoutReply(r.index, NO_ANSWER, b'{"error":"node_slow","detail":"no answer"}')
            if r.index in hidden
            else r
            for r in FanoutAnswers.from_bytes(answer.content).replies
        ]
        return httpx.Response(200, content=FanoutAnswers(replies).to_bytes())

    return relay


def test_a_hostile_node_claiming_no_guesses_left_cannot_make_a_live_key_look_destroyed() -> None:
    """The hostile node sends a partial that verifies with "0 guesses left", and the relay
    hides two honest nodes' answers: of the t verified partials the t-th largest figure is
    the hostile 0, and a wrong password was told as a destroyed key (backups lost, start
    over) while every honest node had 9 guesses left. "Destroyed" needs t nodes saying so,
    and the figure told spans what the nodes that answered report."""
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[HOSTILE].claims_left = 0
    vault = _behind(fleet, fleet.vault(), _hiding({0, 1}, {Op.EVALUATE, Op.MANIFEST}))
    with pytest.raises(WrongPassword) as wrong:
        vault.recover("not the password", ksf_floor=FAST_KSF)
    assert wrong.value.guesses_remaining_up_to == LIMIT - 1
    assert f"0 to {LIMIT - 1} guesses left" in wrong.value.message
    status = vault.status()
    assert status.status == EntryStatus.LIVE
    assert status.guesses_remaining_up_to == LIMIT - 1
    # The key was alive all along: the right password opens it.
    assert fleet.vault().recover("pw", ksf_floor=FAST_KSF).root_key == RK


def test_a_hostile_node_claiming_more_guesses_left_is_not_believed() -> None:
    """The converse: the hostile node's figure above the honest ones' is never the one told
    as what is left, even with only t nodes answering."""
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[HOSTILE].claims_left = LIMIT
    vault = _behind(fleet, fleet.vault(), _hiding({0, 1}, {Op.EVALUATE, Op.MANIFEST}))
    with pytest.raises(WrongPassword) as wrong:
        vault.recover("not the password", ksf_floor=FAST_KSF)
    assert wrong.value.guesses_remaining == LIMIT - 1


def test_a_hostile_node_claiming_no_guesses_left_cannot_make_a_success_warn_of_guessing() -> None:
    """Review s62: the success path's sibling of the test above. With two honest nodes down
    (no relay needed), the hostile node's verifying partial says "0 left": the t-th largest
    of the three figures was its 0, and the right password's recovery told the user that
    L − 1 other attempts were counted since the last success and someone may be guessing,
    when nobody had tried a password. Too few answered to outvote it, so what is told spans
    what the nodes report, as a wrong password's guesses left do."""
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[HOSTILE].claims_left = 0
    fleet.nodes[0].mode = fleet.nodes[1].mode = "down"
    recovered = fleet.vault().recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK
    assert (recovered.wrong_guesses_at_least, recovered.wrong_guesses_before) == (0, LIMIT - 1)
    warnings: list[str] = []
    ctx = cast(Any, SimpleNamespace(output=SimpleNamespace(warn=warnings.append)))
    _warn_wrong_guesses(ctx, Recovery(RK, recovered.wrong_guesses_before, recovered))
    assert warnings[0].startswith(f"0 to {LIMIT - 1} other attempts were (the vault nodes")
    # Every node up: the hostile figure is outvoted, and nothing is said as a range.
    for node in fleet.nodes[:2]:
        node.mode = "ok"
    again = fleet.vault().recover("pw", ksf_floor=FAST_KSF)
    assert (again.wrong_guesses_at_least, again.wrong_guesses_before) == (None, 0)


def test_one_node_saying_already_registered_does_not_make_an_empty_entry_look_registered() -> None:
    """The hostile node answers every share delivery `already_registered` and the relay
    hides two honest nodes' acknowledgements: fewer than t staged, and one node's word made
    the client say the vault already holds a key (the CLI then tried to recover it, and
    said there was none). It takes more than N − t nodes saying so, as for `stale_manifest`."""
    fleet = FakeFleet(5)
    fleet.nodes[HOSTILE].mode = "claims_registered"
    hidden = _hiding({0, 1}, {Op.REGISTER_SHARE})
    vault = _behind(fleet, fleet.vault(), hidden)
    with pytest.raises(FleetUnavailable, match="only 2 of 5 vault nodes took their share"):
        vault.register("pw", RK, ksf=FAST_KSF)
    assert fleet.vault().status().status == EntryStatus.EMPTY
    # Another device's key in effect is still told as such: every honest node says so.
    fleet.nodes[HOSTILE].mode = "ok"
    fleet.vault().register("theirs", RK, ksf=FAST_KSF)
    with pytest.raises(AlreadyRegistered):
        fleet.vault().register("mine", RK, ksf=FAST_KSF)


class _Asked(Exception):
    pass


def _refuse_last_guess(_after_a_try: bool) -> None:
    raise _Asked


def _only_three_counting(fleet: FakeFleet) -> tuple[ThresholdVault, set[int]]:
    """A script's L - 1 wrong passwords with the relay dropping every evaluate copy for
    nodes 3 and 4, so only nodes 0-2 counted them (each has one guess left, nodes 3-4 all
    L): the vault behind that relay, and the nodes whose manifest answers it hides from
    now on (empty: the caller fills it)."""
    fleet.vault().register("right", RK, ksf=FAST_KSF)
    dropped = {3, 4}
    hidden: set[int] = set()
    hide_manifests = _hiding(hidden, {Op.MANIFEST})

    def relay(
        request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        if _op(request) is Op.EVALUATE:
            for index in dropped:  # these nodes never get their copy
                fleet.nodes[index].down_for = 1
        return hide_manifests(request, forward)

    vault = _behind(fleet, fleet.vault(), relay)
    for _ in range(LIMIT - 1):
        with pytest.raises(WrongPassword):
            vault.recover("wrong", ksf_floor=FAST_KSF, before_last_guess=_refuse_last_guess)
    assert [node.count for node in fleet.nodes] == [LIMIT - 1] * 3 + [0, 0]
    dropped.clear()
    return vault, hidden


def test_a_relay_alone_cannot_have_the_last_guess_sent_without_asking() -> None:
    """Review s47, finding 1 (every node honest; only the relay attacks, by dropping). Once
    only nodes 0-2 counted a script's wrong guesses, the relay hides nodes 1 and 2's
    manifest answers: the client reads (1, L, L). The L-th wrong guess would make nodes
    0-2 erase their shares (the key gone), so the client must ask first, though the
    highest count it read says L."""
    fleet = FakeFleet(5)
    vault, hidden = _only_three_counting(fleet)
    hidden |= {1, 2}
    with pytest.raises(_Asked):
        vault.recover("wrong", ksf_floor=FAST_KSF, before_last_guess=_refuse_last_guess)
    assert [node.count for node in fleet.nodes] == [LIMIT - 1] * 3 + [0, 0]  # nothing sent


def _passes_first_then_refuses(op: Op, first: httpx.Response) -> Relay:
    """The relay passes the first `op` fan-out on (the nodes act on it), answers it with
    `first`, and refuses the connection of every later `op` post."""
    seen = [0]

    def relay(
        request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        if _op(request) is not op:
            return forward(request)
        seen[0] += 1
        if seen[0] > 1:
            raise httpx.ConnectError("connection refused")
        forward(request)
        return first

    return relay


def test_a_connection_refused_after_the_relay_took_the_evaluation_says_it_may_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review s47, finding 2 (invariant 10). The relay passes the first evaluate fan-out on
    (every node counts the attempt), answers 429, and refuses the connection of the post
    made after the wait: the user must not hear "no guess was used"."""
    monkeypatch.setattr("backupvault.client.vault.time.sleep", lambda _seconds: None)
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    too_many = httpx.Response(429, headers={"retry-after": "1"})
    vault = _behind(fleet, fleet.vault(), _passes_first_then_refuses(Op.EVALUATE, too_many))
    with pytest.raises(FleetUnavailable) as caught:
        vault.recover("pw", ksf_floor=FAST_KSF)
    assert fleet.vault().status().guesses_remaining == LIMIT - 1  # it was counted
    told = f"{caught.value} {caught.value.hint}"
    assert re.search("may have (been )?counted", told) and "no guess was used" not in told


def test_a_commit_passed_on_then_the_connection_refused_is_not_told_as_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review s47, finding 3. The relay passes the first commit-shares fan-out on (the
    password change lands on every node), answers 503, and refuses the resend's
    connection: the change must be read from the manifests, not told as "cannot reach
    the relay" (the user would then type the old password: a wrong guess)."""
    monkeypatch.setattr("backupvault.client.vault.time.sleep", lambda _seconds: None)
    fleet = FakeFleet(5)
    vault = fleet.vault()
    vault.register("old", RK, ksf=FAST_KSF)
    recovery = vault.recover("old", ksf_floor=FAST_KSF)
    slow = httpx.Response(503, json={"error": "fleet_unavailable", "detail": "slow"})
    relay = _passes_first_then_refuses(Op.COMMIT_SHARES, slow)
    _behind(fleet, fleet.vault(), relay).change_password(recovery, "new", ksf=FAST_KSF)
    assert fleet.vault().recover("new", ksf_floor=FAST_KSF).root_key == RK


def test_a_hostile_zero_cannot_keep_the_last_guess_question_from_being_asked() -> None:
    """Review of session 47's own change: with the question asked only when the t-th
    largest count read was exactly 1, the relay hid two of the three counting nodes'
    answers and the hostile node 4 reported "0 left": the client read (1, 1, 0), the t-th
    largest 0, and the key's last guess went out unasked."""
    fleet = FakeFleet(5)
    vault, hidden = _only_three_counting(fleet)
    hidden |= {2, 3}
    fleet.nodes[HOSTILE].claims_left = 0
    with pytest.raises(_Asked):
        vault.recover("wrong", ksf_floor=FAST_KSF, before_last_guess=_refuse_last_guess)
    assert [node.count for node in fleet.nodes] == [LIMIT - 1] * 3 + [0, 0]  # nothing sent


def test_a_commit_passed_on_then_the_relay_gone_says_the_change_may_have_taken_effect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review of session 47's change: the relay passes a password change's commit on (it
    lands on every node), answers 503, then refuses every connection, the manifest read
    after the commit too: the user heard "cannot reach the relay ... no guess was used",
    and then typed the old password (a wrong guess)."""
    monkeypatch.setattr("backupvault.client.vault.time.sleep", lambda _seconds: None)
    fleet = FakeFleet(5)
    vault = fleet.vault()
    vault.register("old", RK, ksf=FAST_KSF)
    recovery = vault.recover("old", ksf_floor=FAST_KSF)
    gone = [False]

    def relay(
        request: httpx.Request, forward: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        if gone[0]:
            raise httpx.ConnectError("connection refused")
        if _op(request) is Op.COMMIT_SHARES:
            forward(request)
            gone[0] = True
            return httpx.Response(503, json={"error": "fleet_unavailable", "detail": "slow"})
        return forward(request)

    with pytest.raises(FleetUnavailable) as caught:
        _behind(fleet, fleet.vault(), relay).change_password(recovery, "new", ksf=FAST_KSF)
    assert fleet.vault().recover("new", ksf_floor=FAST_KSF).root_key == RK  # it landed
    told = f"{caught.value} {caught.value.hint}"
    assert "may have taken effect" in told and "no guess was used" not in told
