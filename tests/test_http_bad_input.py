"""Every route of every HTTP service (relay, node, witness), walked with malformed
requests: each answer is a 4xx with a reason (or a 2xx where the input is harmless to
that route), never a 5xx or a crash. Routes are read from the apps themselves, so a new
route is walked without a change here."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient
from tests.node.test_node_http import HEADERS as NODE_HEADERS
from tests.node.test_node_http import RELAY_KEY as NODE_RELAY_KEY
from tests.node.test_node_http import _app as node_app
from tests.relay.conftest import AUDIENCE, ISSUER, make_config, unused_url
from tests.relay.test_witness_proxy import _bundle
from tests.transparency.conftest import FLEET_ID, WITNESS_NAME, make_record

from backupvault.hop import sign_headers
from backupvault.protocol import SealedCopies
from backupvault.relay import create_app as relay_app
from backupvault.relay import mint_token
from backupvault.transparency.note import Signer
from backupvault.transparency.record import raw_public_key, sign_record
from backupvault.transparency.witness import Witness, WitnessPolicy
from backupvault.transparency.witness_http import create_app as witness_app
from backupvault.transparency.witness_store import WitnessStore

SEED = 20261205
#: Path parameters filled with a valid value first, then each with bad ones.
GOOD_PARAMS = {"entry": "main", "op": "manifest", "epoch": "1"}
BAD_PARAMS = ["", "%ff%fe", "%00", "a" * 300, "..", "%2e%2e%2f", "\u00e9", "-1", "9" * 40]
EXTRA_METHODS = ["HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "TRACE", "BREW"]
OPERATOR_KEY = Ed25519PrivateKey.generate()


def _bodies(rng: random.Random) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """(what, body, extra headers): malformed bodies of every kind."""
    octets = {"content-type": "application/octet-stream"}
    yield "empty", b"", octets
    yield "one byte", b"\x0f", octets
    yield "wrong tag", bytes([0xEE]) + rng.randbytes(40), octets
    yield "huge u32 length", b"\x0f\xff\xff\xff\xff" + rng.randbytes(8), octets
    yield "huge list count", b"\x0f\x7f\xff\xff\xff\x00\x00\x00\x01x", octets
    yield "u64 max", b"\x0f" + b"\xff" * 8 + b"\x00" * 8, octets
    yield "truncated copies", SealedCopies([b"x" * 40] * 3).to_bytes()[:-7], octets
    yield "random", rng.randbytes(rng.randrange(1, 3000)), octets
    yield "deep json", b"[" * 50_000, {"content-type": "application/json"}
    yield "wrong content type", rng.randbytes(64), {"content-type": "text/plain; charset=x"}
    yield "multipart garbage", b"--x\r\n\r\n", {"content-type": "multipart/form-data"}
    yield "no content type", rng.randbytes(32), {}
    yield "oversized", b"\0" * (2 << 20), octets
    yield "non-utf8 text", b"\xff\xfe\xfd", {"content-type": "text/plain; charset=utf-8"}


def _queries() -> list[str]:
    return [
        "",
        "?epoch=%ff",
        "?old=-1&new=99999999999999999999999",
        "?index=1&index=2&size=%00",
        "?start=%E2%85%A7&end=1",
        "?fleet=" + "ab" * 80,
        "?" + "a=b&" * 2000,
        "?%ff=%fe",
    ]


def _header_sets() -> list[list[tuple[str, str | bytes]]]:
    return [
        [],
        [("authorization", "Bearer " + "a" * 5000)],
        [("authorization", "Basic Zm9vOmJhcg==")],
        [("authorization", "Bearer a.b.c")],
        [("authorization", "Bearer " + "e30." * 3)],
        [("x-backupvault-account", "alice"), ("x-backupvault-account", "bob")],
        [("x-backupvault-entry", "../../etc")],
        [("x-backupvault-node", "0"), ("x-backupvault-time", "9" * 30)],
        [("x-backupvault-nonce", "zz" * 16), ("x-backupvault-signature", "00" * 64)],
        [("content-length", "\u00b2".encode())],
        [("content-type", b"application/octet-stream\xff")],
    ]


async def _unserved(request: Request) -> Response:
    raise AssertionError("a path no app serves")


#: A path no app serves, walked as a route of each.
UNSERVED = Route("/v1/no-such-path/{entry}", _unserved, methods=["GET", "POST"])


def _paths(app: Starlette, rng: random.Random) -> Iterator[tuple[Route, str]]:
    """Each route's path with good parameters, and with bad values in each parameter."""
    for route in [*app.routes, UNSERVED]:
        assert isinstance(route, Route), route
        names = re.findall(r"{(\w+)}", route.path)
        yield route, route.path.format(**{n: GOOD_PARAMS[n] for n in names})
        for name in names:
            for bad in rng.sample(BAD_PARAMS, 3):
                values = {n: GOOD_PARAMS[n] for n in names} | {name: bad}
                yield route, route.path.format(**values)


Credentials = Callable[[str, bytes], list[list[tuple[str, str | bytes]]]]


def _walk(
    client: TestClient, app: Starlette, credentials: Credentials, seed: int
) -> tuple[list[str], set[str]]:
    """Every malformed request against every route: the answers that were not a 4xx (or
    a 2xx) with a reason, and the error codes met. `credentials(path, body)`: header sets
    a caller who may use the route would send (a token, a relay's signature), tried
    besides the bad ones."""
    rng = random.Random(seed)
    wrong: list[str] = []
    codes: set[str] = set()
    for route, path in _paths(app, rng):
        methods = sorted(route.methods or ()) + EXTRA_METHODS
        for method in methods:
            for what, body, extra in _bodies(rng):
                for headers in [rng.choice(_header_sets()), *credentials(path, body)]:
                    query = rng.choice(_queries())
                    request: list[tuple[str, str | bytes]] = [*extra.items(), *headers]
                    answer = client.request(method, path + query, content=body, headers=request)
                    label = f"{method} {path}{query[:40]} [{what}] {headers[:1]}"
                    if answer.status_code >= 500:
                        wrong.append(f"{label}: {answer.status_code} {answer.text[:200]}")
                    elif answer.status_code >= 400 and method != "HEAD":
                        try:
                            reason = answer.json()
                        except ValueError:
                            reason = None
                        if not (isinstance(reason, dict) and reason.get("detail")):
                            wrong.append(f"{label}: {answer.status_code} without a reason")
                        else:
                            codes.add(str(reason.get("error")))
    return wrong, codes


def _check(walked: tuple[list[str], set[str]], reached: set[str]) -> None:
    """No wrong answer; and the walk got as far as the checks named by their error codes
    in `reached` (so a walk stopped early, at a rate limit say, does not pass unseen)."""
    wrong, codes = walked
    kinds = sorted({re.sub(r"^\S+ \S+ \[[^]]*\] \[.*\]: ", "", w)[:80] for w in wrong})
    assert not wrong, (
        f"{len(wrong)} answers, of these kinds:\n" + "\n".join(kinds) + ("\nfirst: " + wrong[0])
    )
    assert reached <= codes, f"never reached: {sorted(reached - codes)} (met {sorted(codes)})"


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[TestClient, Starlette, str]]:
    config = make_config(
        OPERATOR_KEY,
        [unused_url() for _ in range(3)],
        rate_per_minute=1e9,
        burst=1_000_000,
        refused_tokens_per_minute=1e9,
        refused_tokens_burst=1_000_000,
        bundle_file=_bundle(tmp_path, OPERATOR_KEY),
        witness_url=unused_url(),
        connect_timeout=0.2,
    )
    app = relay_app(config)
    token = mint_token(OPERATOR_KEY, "alice", issuer=ISSUER, audience=AUDIENCE, ttl_seconds=3600)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, app, token


def test_relay_routes_answer_bad_input_with_a_reason(
    relay: tuple[TestClient, Starlette, str],
) -> None:
    client, app, token = relay

    def credentials(path: str, body: bytes) -> list[list[tuple[str, str | bytes]]]:
        bearer = ("authorization", f"Bearer {token}")
        return [[bearer], [bearer, ("authorization", "Bearer x")]]

    _check(
        _walk(client, app, credentials, SEED),
        {"bad_sealed_copies", "unsupported_media_type", "too_large", "bad_entry", "not_found"},
    )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[TestClient, Starlette]]:
    app = node_app(tmp_path)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, app


def test_node_routes_answer_bad_input_with_a_reason(node: tuple[TestClient, Starlette]) -> None:
    """With the relay's signature too: a relay is not trusted with what it forwards."""
    client, app = node

    def credentials(path: str, body: bytes) -> list[list[tuple[str, str | bytes]]]:
        op = path.rsplit("/", 1)[-1]
        if not op.isascii() or not op.isprintable():
            return []
        signed = sign_headers(NODE_RELAY_KEY, 0, op, "alice", "main", body)
        return [[*NODE_HEADERS.items(), *signed.items()]]

    _check(
        _walk(client, app, credentials, SEED),
        {"bad_sealed_request", "relay_signature", "too_large", "method_not_allowed"},
    )


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[tuple[TestClient, Starlette]]:
    witness_key = Ed25519PrivateKey.generate()
    store = WitnessStore(tmp_path / "w.sqlite", WITNESS_NAME, raw_public_key(witness_key))
    policy = WitnessPolicy(operators={FLEET_ID: raw_public_key(OPERATOR_KEY)})
    witness = Witness(Signer(WITNESS_NAME, witness_key), store, policy)
    for epoch in (1, 2):
        witness.submit(sign_record(make_record(epoch=epoch), OPERATOR_KEY).to_bytes())
    # A clock an hour on at each reading: every bucket is full again (the test client's
    # address is no IP address, which `unlimited` could name).
    hours = itertools.count(step=3600.0)
    app = witness_app(witness, clock=lambda: next(hours))
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, app
    finally:
        store.close()


def test_witness_routes_answer_bad_input_with_a_reason(
    witness: tuple[TestClient, Starlette],
) -> None:
    client, app = witness
    _check(
        _walk(client, app, lambda path, body: [], SEED),
        {"malformed", "bad_query", "method_not_allowed", "not_found"},
    )
