"""The replay window the relay hop and the peer channel share (replay.py)."""

from __future__ import annotations

from backupvault.replay import ReplayWindow, Stale


def test_a_message_is_taken_only_inside_the_window_and_after_the_start() -> None:
    window = ReplayWindow(60, capacity=10, not_before=1000)
    assert window.staleness(999, now=1010) is Stale.BEFORE_START
    assert window.staleness(1100, now=1100) is None
    assert window.staleness(1161, now=1100) is Stale.FUTURE
    assert window.staleness(1039, now=1100) is Stale.OLD


def test_a_nonce_is_spent_once_and_forgotten_only_when_its_message_cannot_return() -> None:
    window = ReplayWindow(60, capacity=10)
    assert window.staleness(1000, now=1000) is None and not window.seen(b"n")
    window.remember(b"n", made=1000, now=1000)
    assert window.seen(b"n")
    assert window.staleness(1000, now=1060) is None and window.seen(b"n")  # still inside
    assert window.staleness(1000, now=1061) is Stale.OLD
    assert not window.seen(b"n") and len(window) == 0


def test_a_clock_stepped_back_opens_nothing_forgotten() -> None:
    """Attack: wait until the nonce is forgotten, set the receiver's clock back, replay."""
    window = ReplayWindow(60, capacity=10)
    window.staleness(1000, now=1000)
    window.remember(b"n", made=1000, now=1000)
    window.staleness(1070, now=1070)
    assert not window.seen(b"n")  # forgotten
    assert window.staleness(1000, now=1010) is Stale.OLD  # the highest reading still counts
    assert window.clock_went_back(1010) == 60


def test_a_full_window_refuses_rather_than_forgets() -> None:
    window = ReplayWindow(60, capacity=2)
    for nonce in (b"a", b"b"):
        window.staleness(1000, now=1000)
        window.remember(nonce, made=1000, now=1000)
    assert window.full()
    window.staleness(1061, now=1061)
    assert not window.full()  # both left the window
