"""Review s49 (hostile relay, client side): a password change's commit passed on, then
every later answer unreadable.

Review s47 (findings 2 and 3, and the review of its change) made `_commit_shares` read
the manifests when the commit's answer fails, and say "may have taken effect" when that
read finds the relay gone (a refused connection: `RelayUnreachable`). Only that one
kind was caught around the read: when the relay, having passed the commit on (it landed
on every node), answers the manifest reads after it with a 503 or with bytes that are
no fan-out answer, the change failed with the read's own error: "the vault fleet is
unavailable ... too few vault nodes answered; try again later" or "the relay's answer is
malformed", never that the change may have landed. The user ran `vault change-password`
again, or went back to the old password: a wrong guess on the new version (the very
outcome the s47 fix names), from a relay alone. Now any
error of that read is told as "may have taken effect".
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from backupvault.client.errors import VaultError
from backupvault.protocol import Op

from .fake_fleet import FAST_KSF, LIMIT, FakeFleet

RK = bytes(range(32))

AFTER_THE_COMMIT: dict[str, Callable[[], httpx.Response]] = {
    "503": lambda: httpx.Response(503, json={"error": "fleet_unavailable", "detail": "slow"}),
    "garbage": lambda: httpx.Response(200, content=b"not a fan-out answer"),
    "502": lambda: httpx.Response(502, json={"error": "relay_error", "detail": "oops"}),
}


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    monkeypatch.setattr("backupvault.client.threshold.MANIFEST_BACKOFF_CAP_SECONDS", 0.001)
    monkeypatch.setattr("backupvault.client.vault.time.sleep", lambda _seconds: None)


@pytest.mark.parametrize("after", sorted(AFTER_THE_COMMIT))
def test_a_commit_passed_on_then_unreadable_answers_say_the_change_may_have_taken_effect(
    after: str,
) -> None:
    fleet = FakeFleet(5)
    vault = fleet.vault()
    vault.register("old", RK, ksf=FAST_KSF)
    recovery = vault.recover("old", ksf_floor=FAST_KSF)
    passed = [False]

    def handle(request: httpx.Request) -> httpx.Response:
        if passed[0]:
            return AFTER_THE_COMMIT[after]()
        if request.url.path.endswith(f"/{Op.COMMIT_SHARES}"):
            fleet.handle(request)  # the change lands on every node
            passed[0] = True
            return AFTER_THE_COMMIT[after]()
        return fleet.handle(request)

    hostile = fleet.vault()
    hostile.vault._http = httpx.Client(transport=httpx.MockTransport(handle))
    with pytest.raises(VaultError) as caught:
        hostile.change_password(recovery, "new", ksf=FAST_KSF)
    assert fleet.vault().recover("new", ksf_floor=FAST_KSF).root_key == RK  # it landed
    told = f"{caught.value.message} {caught.value.hint}"
    assert "may have taken effect" in told or "may still take effect" in told, told
    # What the user is likely to do next, told only "try again later": the old password.
    assert fleet.vault().status().guesses_remaining == LIMIT
