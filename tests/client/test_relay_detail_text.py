"""Review s49 (hostile relay, client side): the relay's own words in the client's errors.

The nodes' sealed error details are cut to 160 characters (docs/protocol.md), and the CLI
escapes control characters (`output.printable`), but keeps line breaks. The relay's JSON
`detail` (top-level, and per node in a FanoutReply) went into the client's messages whole:
any length (up to the answer's 16 KiB per node) and with line breaks. So a relay could
print whole lines of its choosing under `error:`, e.g. a fake "the vault destroyed this
key" with a hint to run `backup create --new-key` (a new key, while the real one is
intact), or bury the real message under kilobytes of text. Now it is one line, cut short.
"""

from __future__ import annotations

import httpx
import pytest

from backupvault.client.errors import VaultError
from backupvault.fanout import FanoutAnswers, FanoutReply

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
