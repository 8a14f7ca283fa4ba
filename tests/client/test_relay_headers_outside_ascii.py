"""Review s49 (hostile relay, client side): a header byte outside ASCII.

`http_answers.read_answer` rebuilt the answer as `httpx.Response(status, headers=kept,
...)` from `answer.headers.multi_items()`: the values came back decoded (ASCII, else
UTF-8, else Latin-1) and httpx encodes a str header value as ASCII when it builds a
Response, so any header value with a byte >= 0x80 (legal obs-text for HTTP/1.1, and h11
takes it) raised UnicodeEncodeError out of every client request through the relay:
not a VaultError, so a traceback from the SDK ("unexpected UnicodeEncodeError ... a bug"
from the CLI), and, on the reset after a right password, past `_reset`'s `except
VaultError`, so the recovery failed after its attempt was counted and each retry of the
right password burnt another guess (the review s25 failure, back through another door).

These tests run a real loopback HTTP "relay" (tests/http_stub.py) in front of the fake
fleet, and the client on its ordinary transport (`untrusted_client`).
"""

from __future__ import annotations

from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
from tests.http_stub import serving

from backupvault.client.errors import Destroyed
from backupvault.client.threshold import ThresholdVault
from backupvault.http_answers import untrusted_client
from backupvault.protocol import EntryStatus, Op

from .fake_fleet import FAST_KSF, LIMIT, FakeFleet

RK = bytes(range(32))


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    monkeypatch.setattr("backupvault.client.threshold.MANIFEST_BACKOFF_CAP_SECONDS", 0.001)


def _relay(
    fleet: FakeFleet, extra_header: Callable[[Op], str | None], drop: Op | None = None
) -> type[BaseHTTPRequestHandler]:
    """A relay that passes every request to the fleet and its answer back, adding the
    header `extra_header(op)` (a latin-1 string; None: none) to it. Requests of `drop` it
    keeps from the nodes and answers itself with a 503, as a relay may."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = httpx.Request("POST", f"http://relay.test{self.path}", content=body)
            op = Op(self.path.rsplit("/", 1)[1])
            answer = (
                httpx.Response(503, json={"error": "fleet_unavailable", "detail": "busy"})
                if op is drop
                else fleet.handle(request)
            )
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(answer.content)))
            header = extra_header(op)
            if header is not None:
                self.send_header("X-Relay-Note", header)  # sent as latin-1 bytes
            self.end_headers()
            self.wfile.write(answer.content)

    return Handler


def _client(fleet: FakeFleet, url: str) -> ThresholdVault:
    vault = fleet.vault()
    vault.vault.relay_url = url
    vault.vault._vault_url = f"{url}/v1/vault"
    vault.vault._http = untrusted_client(httpx.Timeout(10.0, connect=5.0))
    return vault


def test_a_relay_header_outside_ascii_does_not_keep_the_answer_from_being_read() -> None:
    """`vault status` through a relay that adds `X-Relay-Note: café` (the byte 0xe9):
    the answer itself is fine, and the client reads it (the review asked at least for a
    VaultError; the header's raw bytes are kept, so the answer is read). Before:
    UnicodeEncodeError out of read_answer."""
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    with serving(_relay(fleet, lambda _op: "caf\u00e9")) as url:
        assert _client(fleet, url).status().status == EntryStatus.LIVE


def test_a_relay_header_outside_ascii_on_the_reset_cannot_burn_the_right_passwords_guesses() -> (
    None
):
    """The relay keeps the owner's reset from the nodes (which it may: the test named
    below does it with a 503) and adds the header to its own answer to it. The right
    password is typed L times (a user, or a cron job, retrying what failed). Each try's
    attempt is counted and the reset never applied; that much a relay dropping resets can
    always do, and the design answers it by returning the key with `reset_confirmed`
    false (the CLI warns): test_a_relay_failing_every_reset_cannot_make_the_right_password_
    burn_guesses. Here instead every try fails with UnicodeEncodeError, the key already
    computed is thrown away, nothing says a guess was counted, and the L-th try leaves the
    key destroyed without one wrong password ever typed."""
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    outcomes: list[str] = []
    with serving(
        _relay(fleet, lambda op: "\u00ff" if op is Op.RESET else None, drop=Op.RESET)
    ) as url:
        vault = _client(fleet, url)
        for _ in range(LIMIT + 1):
            try:
                recovered = vault.recover("pw", ksf_floor=FAST_KSF)
                assert recovered.root_key == RK
                outcomes.append("key" if not recovered.reset_confirmed else "key, reset")
            except Destroyed:
                outcomes.append("destroyed")
            except Exception as err:  # what the user sees instead of the key
                outcomes.append(type(err).__name__)
    # L tries each return the key, told as not reset; only then (a relay dropping every
    # reset, as documented) is the key at its end.
    assert outcomes[:LIMIT] == ["key"] * LIMIT, " ".join(outcomes)


def test_read_answer_takes_a_header_outside_ascii() -> None:
    """The root cause, for every caller of read_answer (vault ops, fleet bundle, epochs,
    consistency proofs, witness heads, verify-deployment, metrics): an answer whose only
    oddity is a header byte >= 0x80 must be read (or refused as an AnswerRefused/httpx
    error), never raise UnicodeEncodeError."""
    from backupvault.http_answers import read_answer

    http = httpx.Client(
        transport=httpx.MockTransport(
            lambda _request: httpx.Response(
                200, headers=[(b"server", b"relay caf\xe9")], content=b"ok"
            )
        )
    )
    answer = read_answer(http, "GET", "http://relay.test/v1/fleet/bundle", limit=16, what="x")
    assert answer.content == b"ok"


def test_an_ota_client_takes_an_honest_bundle_served_with_a_header_outside_ascii(
    tmp_path: Path,
) -> None:
    """The OTA path: the relay serves the fleet bundle with `Server: café`. The bundle is
    otherwise honest, and the client takes it (the review asked at least for a
    BackupVaultError). Before: UnicodeEncodeError out of `OtaTrust._get`, which catches
    only httpx errors."""
    from tests.client.test_trust import RELAY, Net

    net = Net(tmp_path / "world")
    try:
        net.deploy(1)

        def bundle(request: httpx.Request) -> httpx.Response:
            honest = net.honest(request)
            return httpx.Response(
                honest.status_code,
                headers=[(b"server", b"relay caf\xe9")],
                content=honest.content,
            )

        net.hostile[("relay.test", "/v1/fleet/bundle")] = bundle
        trust = net.trust(tmp_path / "client" / "state.json")
        assert trust.current(net.http(), RELAY).record.epoch == 1
    finally:
        net.close()
