"""Who may do what to an entry, attacked through the real SDK, firmware and replicas: the
fleet token inside the seal, per-node seals, a relay that mislabels answers, and answers
that look the same to the relay whatever they say (issue: trust gaps)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from inprocess_fleet import FAST_KSF, FLEET_ID, InProcessFleet

from backupvault.client.errors import FleetUnavailable, NotRegistered, Unauthorized, WrongPassword
from backupvault.errors import AuthenticationFailed
from backupvault.fanout import FanoutAnswers, FanoutReply
from backupvault.hsm.state import EntryId
from backupvault.protocol import EntryStatus, Op, SealedCopies
from backupvault.tokens import fleet_audience, mint_token

ROOT_KEY = bytes(range(32))
KEY = EntryId("alice", "backup-root-key").to_bytes()


def _untouched(fleet: InProcessFleet) -> None:
    """Nothing counted: every node holds the live entry with no attempt."""
    assert all(fleet.state(n, KEY).status == EntryStatus.LIVE for n in fleet.replicas)
    assert all(fleet.state(n, KEY).attempt == 0 for n in fleet.replicas)
    assert fleet.client().status().guesses_remaining == 10


# ---- the fleet token inside the seal -------------------------------------------------------


def test_fleet_token_of_another_account_is_refused(fleet: InProcessFleet) -> None:
    fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    # The relay asserts alice; the sealed request names alice; the token is mallory's.
    impostor = fleet.client(token_for="mallory")
    with pytest.raises(Unauthorized, match="differ"):
        impostor.recover("guess", ksf_floor=FAST_KSF)
    _untouched(fleet)


def test_a_request_sealed_for_another_entry_than_the_relay_names_is_refused(
    fleet: InProcessFleet,
) -> None:
    """The relay routes, limits and logs by the entry it names; the node acts on the
    sealed one. A request whose two names differ (a client dodging one entry's rate limit
    under another name, or a relay pointing a request elsewhere) is refused before
    anything counts: the node acts only when both say the same."""
    fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)

    def elsewhere(request: httpx.Request) -> httpx.Response:
        path = request.url.path.replace("/backup-root-key/", "/decoy/")
        moved = httpx.Request(
            request.method, request.url.copy_with(path=path), content=request.read()
        )
        return fleet.handle(moved)

    guesser = fleet.client()
    guesser.vault._http = httpx.Client(transport=httpx.MockTransport(elsewhere))
    with pytest.raises(Unauthorized, match="differ"):
        guesser.recover("guess", ksf_floor=FAST_KSF)
    _untouched(fleet)


@pytest.mark.parametrize("problem", ["other issuer key", "other fleet", "expired", "garbage"])
def test_bad_fleet_token_is_refused_before_anything_counts(
    fleet: InProcessFleet, problem: str
) -> None:
    fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    audience = fleet_audience(FLEET_ID)
    key, now = fleet.issuer, fleet.now
    if problem == "other issuer key":
        key = Ed25519PrivateKey.generate()
    if problem == "other fleet":
        audience = fleet_audience(b"another fleet")
    if problem == "expired":
        now -= 7200
    token = mint_token(
        key, "alice", issuer="test-issuer", audience=audience, ttl_seconds=3600, now=now
    )
    attacker = fleet.client()
    attacker.vault._fleet_token = "not a token" if problem == "garbage" else token
    with pytest.raises(Unauthorized, match="refused this account's fleet token") as refused:
        attacker.recover("guess", ksf_floor=FAST_KSF)
    assert refused.value.exit_code == 6
    # A refusal is final: the delivery is not sent again for the client's patience.
    started = time.monotonic()
    with pytest.raises(Unauthorized, match="refused this account's fleet token"):
        attacker.register("pw2", ROOT_KEY, ksf=FAST_KSF, version=2)
    assert time.monotonic() - started < attacker.delivery_patience / 2
    _untouched(fleet)


# ---- answers the relay cannot tell apart ---------------------------------------------------


def test_answers_have_one_size_per_operation(fleet: InProcessFleet) -> None:
    """Every node's sealed answer to one operation has the same size, so the relay cannot
    tell an unknown entry from a live one, or a wrong password from the right one."""
    sizes: dict[str, set[int]] = {}

    def measure(request: httpx.Request) -> httpx.Response:
        answer = fleet.handle(request)
        op = request.url.path.rsplit("/", 1)[1]
        for reply in FanoutAnswers.from_bytes(answer.content).replies:
            assert reply.status == 200
            sizes.setdefault(op, set()).add(len(reply.body))
        return answer

    client = fleet.client()
    client.vault._http = httpx.Client(transport=httpx.MockTransport(measure))
    with pytest.raises(NotRegistered):
        client.recover("pw", ksf_floor=FAST_KSF)
    client.register("pw", ROOT_KEY, ksf=FAST_KSF)
    with pytest.raises(WrongPassword):
        client.recover("wrong", ksf_floor=FAST_KSF)
    client.recover("pw", ksf_floor=FAST_KSF)
    assert {str(Op.MANIFEST), str(Op.EVALUATE), str(Op.RESET)} <= set(sizes)
    assert all(len(each) == 1 for each in sizes.values()), sizes


# ---- per-node keys -------------------------------------------------------------------------


def test_each_node_opens_only_its_own_copy(fleet: InProcessFleet) -> None:
    """The client seals every request once per node, each to that node's own key with its
    own response key: a node handed another node's copy (a hostile relay, or a node
    forwarding traffic) cannot open it, whatever index it claims."""
    fleet.client().register("pw", ROOT_KEY, ksf=FAST_KSF)
    sealed = [body for op, body in fleet.requests if op == Op.REGISTER_SHARE][-1]
    copies = SealedCopies.for_nodes(sealed, 5).copies
    assert len(set(copies)) == 5
    for reader in range(5):
        for owner in range(5):
            if reader == owner:
                continue
            with pytest.raises(AuthenticationFailed):
                fleet.firmware[reader].open(
                    Op.REGISTER_SHARE, "alice", "backup-root-key", copies[owner], fleet.now
                )


def _relabelled(fleet: InProcessFleet) -> Callable[[httpx.Request], httpx.Response]:
    """A relay that hands each node's answer to the client as the next node's."""

    def handle(request: httpx.Request) -> httpx.Response:
        replies = FanoutAnswers.from_bytes(fleet.handle(request).content).replies
        moved = [
            FanoutReply(r.index, r.status, replies[(r.index + 1) % len(replies)].body)
            for r in replies
        ]
        return httpx.Response(200, content=FanoutAnswers(moved).to_bytes())

    return handle


def test_an_answer_labelled_as_another_node_does_not_open(fleet: InProcessFleet) -> None:
    """Each node's answer opens only with its own copy's response key: answers moved to
    another node's place are refused (and named), never misread."""
    client = fleet.client()
    client.register("pw", ROOT_KEY, ksf=FAST_KSF)
    client.vault._http = httpx.Client(transport=httpx.MockTransport(_relabelled(fleet)))
    with pytest.raises(FleetUnavailable, match="did not verify"):
        client.status()
    client.vault._http = httpx.Client(transport=httpx.MockTransport(fleet.handle))
    assert client.status().guesses_remaining == 10
