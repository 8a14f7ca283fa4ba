"""The relay → node hop (hop.py) against an attacker who owns the network and can step
the node's clock: a signed request is answered once, whatever the clock does."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.hop import WINDOW_SECONDS, HopRefused, HopVerifier, sign_headers

RELAY_KEY = Ed25519PrivateKey.generate()
START = 1_750_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _signed(at: float, body: bytes = b"sealed") -> dict[str, str]:
    return sign_headers(RELAY_KEY, 0, "manifest", "alice", "main", body, at)


def _verifier(clock: Clock, **options: float) -> HopVerifier:
    return HopVerifier(0, [RELAY_KEY.public_key().public_bytes_raw()], clock=clock, **options)


def test_a_clock_stepped_back_does_not_reopen_the_replay_window() -> None:
    """Attack: capture a request, let the node forget its nonce, step the node's clock
    back so the request is inside the window again, replay it: refused."""
    clock = Clock()
    hop = _verifier(clock)
    captured = _signed(clock.now)
    hop.verify(captured, "manifest", "alice", "main", b"sealed")
    clock.now += WINDOW_SECONDS + 5
    hop.verify(_signed(clock.now), "manifest", "alice", "main", b"sealed")  # prunes
    assert len(hop._window) == 1
    clock.now -= WINDOW_SECONDS - 5  # the captured request is 10 s old by this reading
    with pytest.raises(HopRefused, match="went back"):
        hop.verify(captured, "manifest", "alice", "main", b"sealed")
    # The relay's fresh requests pass again once the clock has caught up.
    clock.now += WINDOW_SECONDS
    hop.verify(_signed(clock.now), "manifest", "alice", "main", b"sealed")


def test_a_request_signed_before_the_node_started_is_refused() -> None:
    """A restarted node has lost the nonces its previous process spent."""
    clock = Clock()
    before = _signed(clock.now)
    clock.now += 1.5
    hop = _verifier(clock, not_before=clock.now)
    with pytest.raises(HopRefused, match="before this node started"):
        hop.verify(before, "manifest", "alice", "main", b"sealed")
    clock.now += 1
    hop.verify(_signed(clock.now), "manifest", "alice", "main", b"sealed")


@pytest.mark.parametrize("offset", [-1.0, -(WINDOW_SECONDS + 5), WINDOW_SECONDS + 5])
def test_a_stranger_learns_nothing_of_the_node_s_clock_or_start(offset: float) -> None:
    """Attack: without a relay key, send requests whose time is before the node's start,
    too old or ahead of its clock: the node's answers (503 `node_not_ready` "signed before
    this node started", "too old", "from the future") told a stranger when the node last
    started and where its clock stands, without any signature checked. Each is now the
    refusal of any unsigned request."""
    clock = Clock()
    clock.now += 30
    hop = _verifier(clock, not_before=clock.now - 0.5)
    forged = _signed(clock.now + offset)
    forged["X-Backupvault-Signature"] = "00" * 64
    with pytest.raises(HopRefused) as refused:
        hop.verify(forged, "manifest", "alice", "main", b"sealed")
    assert refused.type is HopRefused
    assert str(refused.value) == "the request is not signed by a relay this fleet lists"
