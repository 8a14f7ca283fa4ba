"""Who may do what to an entry, attacked through the real SDK, firmware and replicas:
the fleet token inside the seal, deleting with proof, resent and replayed KE1s, and
responses that look the same to the relay whatever they say (issue: trust gaps)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from conftest import InProcessFleet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.client.errors import (
    Destroyed,
    NotRegistered,
    Unauthorized,
    VaultError,
    WrongPassword,
)
from backupvault.errors import AuthenticationFailed
from backupvault.hsm.state import EntryId
from backupvault.protocol import NODE_HEADER, EntryStatus, Op, SealedCopies
from backupvault.tokens import fleet_audience, mint_token

ROOT_KEY = bytes(range(32))
KEY = EntryId("alice", "backup-root-key").to_bytes()


def _flaky(
    fleet: InProcessFleet, op: str, times: int, as_503: bool = False
) -> Callable[[httpx.Request], httpx.Response]:
    """A transport whose first `times` answers to `op` are lost after the fleet acted: a
    timeout, or (`as_503`) the relay's `503 node_timeout`."""
    lost = {"left": times}

    def handle(request: httpx.Request) -> httpx.Response:
        response = fleet.handle(request)
        if request.url.path.endswith("/" + op) and lost["left"] > 0:
            lost["left"] -= 1
            if as_503:
                return httpx.Response(503, json={"error": "node_timeout", "detail": "slow"})
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    return handle


# ---- the fleet token inside the seal -------------------------------------------------------


def test_fleet_token_of_another_account_is_refused(fleet: InProcessFleet) -> None:
    fleet.client().register("pw", ROOT_KEY)
    # The relay asserts alice; the sealed request names alice; the token is mallory's.
    impostor = fleet.client("alice", token_for="mallory")
    with pytest.raises(Unauthorized, match="differ"):
        impostor.recover("guess")
    assert fleet.client().status().guesses_remaining == 10


@pytest.mark.parametrize("problem", ["other issuer key", "other fleet", "expired", "garbage"])
def test_bad_fleet_token_is_refused_before_anything_counts(
    fleet: InProcessFleet, problem: str
) -> None:
    owner = fleet.client()
    owner.register("pw", ROOT_KEY)
    audience = fleet_audience(fleet.secrets.fleet_id)
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
    attacker._fleet_token = "not a token" if problem == "garbage" else token
    for attempt in (attacker.recover, lambda _pw: attacker.delete()):
        with pytest.raises(Unauthorized, match="fleet token refused"):
            attempt("guess")
    assert owner.status().guesses_remaining == 10
    assert all(fleet.state(n, KEY).status == EntryStatus.LIVE for n in fleet.replicas)


# ---- deleting needs proof --------------------------------------------------------------------


def test_deleting_a_live_key_needs_a_recent_recovery(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("pw", ROOT_KEY)
    with pytest.raises(VaultError, match="needs a recent successful recovery"):
        client.delete()
    grant = client.recover("pw").grant
    with pytest.raises(WrongPassword):
        client.recover("wrong")  # an attempt after the grant makes it stale
    with pytest.raises(VaultError, match="recover, then retry"):
        client.delete(grant)
    assert client.recover("pw").root_key == ROOT_KEY
    client.delete(client.recover("pw").grant)
    with pytest.raises(NotRegistered):
        client.recover("pw")


def test_a_grant_for_another_entry_deletes_nothing(fleet: InProcessFleet) -> None:
    mine = fleet.client()
    mine.register("pw", ROOT_KEY)
    grant = mine.recover("pw").grant
    other = fleet.client()
    other.entry = "other-entry"
    other.register("pw2", ROOT_KEY)
    with pytest.raises(VaultError, match="grant is for another entry"):
        other.delete(grant)
    assert other.recover("pw2").root_key == ROOT_KEY


def test_a_destroyed_entry_is_cleared_without_a_password_then_registers_anew(
    fleet: InProcessFleet,
) -> None:
    client = fleet.client()
    client.register("right", ROOT_KEY, guess_limit=2)
    for _ in range(2):
        with pytest.raises((WrongPassword, Destroyed)):
            client.recover("wrong")
    status = client.status()
    assert status.status == EntryStatus.DESTROYED
    client.delete()  # nothing left to protect: the fleet token alone clears it
    assert client.status().status == EntryStatus.EMPTY
    client.register("new", bytes(32))
    assert client.recover("new").root_key == bytes(32)


# ---- a guess is paid once, and only by the owner ------------------------------------------


@pytest.mark.parametrize("as_503", [False, True], ids=["timeout", "503"])
def test_a_recover_start_whose_answer_was_lost_is_resent_and_charged_once(
    fleet: InProcessFleet, as_503: bool
) -> None:
    fleet.client().register("pw", ROOT_KEY)
    client = fleet.client()
    flaky = _flaky(fleet, "recover-start", 3, as_503)
    client._http = httpx.Client(transport=httpx.MockTransport(flaky))
    with pytest.raises(WrongPassword) as caught:
        client.recover("wrong")
    # Four copies of the same KE1 reached the fleet; one guess was charged.
    assert caught.value.guesses_remaining == 9
    assert fleet.client().status().guesses_remaining == 9


def test_replayed_recover_starts_cost_no_guess(fleet: InProcessFleet) -> None:
    owner = fleet.client()
    owner.register("pw", ROOT_KEY)
    with pytest.raises(WrongPassword):
        owner.recover("wrong")
    assert owner.recover("pw").root_key == ROOT_KEY
    remaining = owner.status().guesses_remaining
    # The relay replays every sealed recover-start it saw, old ones and the latest.
    starts = [body for op, body in fleet.requests if op == "recover-start"]
    assert len(starts) == 2
    for sealed in starts:
        request = httpx.Request(
            "POST", "http://relay.test/v1/vault/backup-root-key/recover-start", content=sealed
        )
        fleet.handle(request)
    assert owner.status().guesses_remaining == remaining == 10
    assert owner.recover("pw").wrong_guesses_before == 0


def test_wrong_guesses_since_the_last_success_are_reported(fleet: InProcessFleet) -> None:
    client = fleet.client()
    client.register("pw", ROOT_KEY)
    for _ in range(3):
        with pytest.raises(WrongPassword):
            client.recover("wrong")
    assert client.recover("pw").wrong_guesses_before == 3
    assert client.recover("pw").wrong_guesses_before == 0


# ---- what the relay sees -----------------------------------------------------------------------


def test_unknown_entry_answers_like_a_registered_one(fleet: InProcessFleet) -> None:
    """Recover-start on an entry that does not exist gets a fake-record KE2 (RFC 9807
    §10.9): same status, same size as a real one; only the client learns, at
    recover-finish, that nothing is stored."""
    sizes: dict[str, list[int]] = {}

    def answers(label: str, run: Callable[[], object]) -> None:
        start = len(fleet.sent)
        with pytest.raises((NotRegistered, WrongPassword)) if label != "right" else _nothing():
            run()
        sizes[label] = [len(b) for b in fleet.sent[start:]]

    unknown = fleet.client()
    unknown.entry = "never-registered"
    answers("unknown", lambda: unknown.recover("pw"))
    client = fleet.client()
    client.register("pw", ROOT_KEY)
    answers("wrong", lambda: client.recover("wrong"))
    answers("right", lambda: client.recover("pw"))
    # request, answer (recover-start), request, answer (recover-finish)
    assert sizes["unknown"][1] == sizes["wrong"][1] == sizes["right"][1]
    assert sizes["unknown"][3] == sizes["wrong"][3] == sizes["right"][3]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


# ---- per-node keys -------------------------------------------------------------------------


def test_each_node_opens_only_its_own_copy(fleet: InProcessFleet) -> None:
    """The client seals every request once per node, each to that node's own key with its
    own response key: a node handed another node's copy (a hostile relay, or a node
    forwarding traffic) cannot open it, whatever index it claims."""
    client = fleet.client()
    client.register("pw", ROOT_KEY)
    sealed = [body for op, body in fleet.requests if op == "register-finish"][-1]
    copies = SealedCopies.for_nodes(sealed, 5).copies
    assert len(set(copies)) == 5
    for reader in range(5):
        for owner in range(5):
            if reader == owner:
                continue
            with pytest.raises(AuthenticationFailed):
                fleet.firmware[reader].open(
                    Op.REGISTER_FINISH, "alice", "backup-root-key", copies[owner], fleet.now
                )


def test_an_answer_labelled_as_another_node_does_not_open(fleet: InProcessFleet) -> None:
    """The relay names the node that answered; naming another one makes the client use
    the wrong response key, and the answer is refused instead of misread."""
    client = fleet.client()
    client.register("pw", ROOT_KEY)

    def relabel(request: httpx.Request) -> httpx.Response:
        answer = fleet.handle(request)
        if answer.status_code != 200:
            return answer
        other = (int(answer.headers[NODE_HEADER]) + 1) % 5
        return httpx.Response(200, content=answer.content, headers={NODE_HEADER: str(other)})

    client._http = httpx.Client(transport=httpx.MockTransport(relabel))
    with pytest.raises(VaultError, match="did not verify"):
        client.status()
    client._http = httpx.Client(transport=httpx.MockTransport(fleet.handle))
    assert client.status().guesses_remaining == 10
