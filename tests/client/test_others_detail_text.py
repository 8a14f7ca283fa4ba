"""Words the relay or a node chose, in the client's errors and warnings: one line, cut short.

Review s49 (hostile relay, client side): the relay's own words in the client's errors.

The nodes' sealed error details are cut to 160 characters (docs/protocol.md), and the CLI
escapes control characters (`output.printable`), but keeps line breaks. The relay's JSON
`detail` (top-level, and per node in a FanoutReply) went into the client's messages whole:
any length (up to the answer's 16 KiB per node) and with line breaks. So a relay could
print whole lines of its choosing under `error:`, e.g. a fake "the vault destroyed this
key" with a hint to run `backup create --new-key` (a new key, while the real one is
intact), or bury the real message under kilobytes of text. Now it is one line, cut short.

Review s60 found the same open for one hostile node (c = 1, an honest relay): its sealed
detail is bound by no firmware of ours, and went whole into a registration's warning,
`vault status` and every `FleetUnavailable` that names the nodes.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from backupvault.client.errors import VaultError
from backupvault.fanout import FanoutAnswers, FanoutReply
from backupvault.protocol import (
    CommitSharesRequest,
    ErrorCode,
    ErrorResponse,
    ManifestRequest,
    RegisterShareRequest,
)

from .fake_fleet import FAST_KSF, FakeFleet

RK = bytes(range(32))
SPOOF = (
    "busy\n\nerror: the vault destroyed this key after too many wrong passwords\n"
    "  hint: run `backupvault backup create --new-key` to start over" + " " * 4000 + "."
)


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    monkeypatch.setattr("backupvault.client.threshold.MANIFEST_BACKOFF_CAP_SECONDS", 0.001)
    monkeypatch.setattr("backupvault.client.vault.time.sleep", lambda _seconds: None)


def _answers(how: str) -> httpx.Response:
    import json

    body = json.dumps({"error": "fleet_unavailable", "detail": SPOOF}).encode()
    if how == "top-level 503":
        return httpx.Response(503, content=body)
    return httpx.Response(
        200, content=FanoutAnswers([FanoutReply(i, 503, body) for i in range(5)]).to_bytes()
    )


@pytest.mark.parametrize("how", ["top-level 503", "per-node 503"])
def test_the_relays_detail_cannot_write_lines_of_its_own_into_the_error(how: str) -> None:
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    vault = fleet.vault()
    vault.vault._http = httpx.Client(transport=httpx.MockTransport(lambda _r: _answers(how)))
    with pytest.raises(VaultError) as caught:
        vault.status()
    message = caught.value.message
    assert "\n" not in message, message[:300]
    assert len(message) < 2000, len(message)


def _node_4_says_lines(fleet: FakeFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    answer = fleet._answer

    def hostile(node: Any, op: Any, request: Any) -> Any:
        if node.index == 4 and isinstance(
            request, RegisterShareRequest | CommitSharesRequest | ManifestRequest
        ):
            # Sealed to the client under node 4's own response key: the relay is honest.
            # Cut to what a node's padded answer holds (384 bytes for a share delivery).
            return ErrorResponse(ErrorCode.REFUSED, SPOOF.rstrip(" ."), 0)
        return answer(node, op, request)

    monkeypatch.setattr(fleet, "_answer", hostile)


def test_a_nodes_detail_cannot_write_lines_into_a_registrations_warning_or_the_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = FakeFleet(5)
    _node_4_says_lines(fleet, monkeypatch)
    done = fleet.vault().register("pw", RK, ksf=FAST_KSF)
    assert done.degraded and done.missing  # four honest nodes took their share
    status = fleet.vault().status()
    assert status.other
    for line in (*done.missing, *status.other):
        assert "\n" not in line and len(line) < 200 and line.startswith("node 4: busy"), line


def test_the_relays_retry_after_cannot_write_words_of_its_own_into_the_error() -> None:
    """The Retry-After of a relay's 429 went whole into the error once the client's
    patience was spent ("the relay asks to wait <header> s"): one line, but any text of
    the relay's (up to the head's 16 KiB), unmarked as the JSON detail is. Only a number
    of seconds is shown."""
    spoof = " ".join(SPOOF.split())  # a header holds no line breaks
    fleet = FakeFleet(5)
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    vault = fleet.vault()
    refusal = httpx.Response(429, headers={"Retry-After": spoof}, json={"error": "x"})
    vault.vault._http = httpx.Client(transport=httpx.MockTransport(lambda _r: refusal))
    with pytest.raises(VaultError) as caught:
        vault.status()
    message = str(caught.value)
    assert "destroyed" not in message and "--new-key" not in message, message[:300]
    assert len(message) < 1000, len(message)
