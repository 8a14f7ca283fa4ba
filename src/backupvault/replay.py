"""Refusing replays: the one window behind the relay hop's signatures (hop.py) and the
node-to-node channel's sealed messages (fleet/channel.py).

A message carries the time it was made and a nonce; a receiver takes it only if

- its time is within `window` seconds of the highest clock reading the window has seen
  (not of the latest one: a clock stepped back, by NTP or an operator, must not bring a
  message whose nonce was already forgotten back inside; the cost is that after a step
  back of more than the window nothing is taken until the clock has caught up), and no
  more than `window` seconds ahead of the clock;
- its time is not before `not_before`, the receiving process's start: the nonces an
  earlier process saw are gone with it;
- its nonce was not taken before. A nonce is forgotten only once no message of its time
  can pass the check above again, so a replay always meets its nonce. At most
  `capacity` nonces are held: past that the receiver refuses rather than forgets.

The receiver checks first (`staleness`, `seen`, `full`), then authenticates or finishes
its own checks, and only then spends the nonce (`remember`): a message refused for any
reason spends nothing.
"""

from __future__ import annotations

import enum
from collections import deque


class Stale(enum.Enum):
    """Why a message's time puts it outside the window."""

    FUTURE = "made further ahead of this clock than the window"
    OLD = "made longer before the highest clock reading than the window"
    BEFORE_START = "made before this process started"


class ReplayWindow:
    def __init__(self, window: float, capacity: int, not_before: float = 0.0) -> None:
        self.window = window
        self.capacity = capacity
        self.not_before = not_before
        #: The highest clock reading so far: the window's low edge never moves back.
        self.latest = 0.0
        self._seen: set[bytes] = set()
        #: (time after which it may be forgotten, nonce), in the order they were taken.
        self._order: deque[tuple[float, bytes]] = deque()

    def staleness(self, made: float, now: float) -> Stale | None:
        """Why a message made at `made`, read at `now`, is outside the window, or None."""
        self.latest = max(self.latest, now)
        if made - now > self.window:
            return Stale.FUTURE
        if self.latest - made > self.window:
            return Stale.OLD
        if made < self.not_before:
            return Stale.BEFORE_START
        return None

    def clock_went_back(self, now: float) -> float:
        """How far `now` is behind the highest reading (0 if it is not)."""
        return max(0.0, self.latest - now)

    def seen(self, nonce: bytes) -> bool:
        """Whether `nonce` was taken inside the window."""
        self._forget_old()
        return nonce in self._seen

    def full(self) -> bool:
        """Whether another nonce would be one more than the window may hold."""
        self._forget_old()
        return len(self._seen) >= self.capacity

    def remember(self, nonce: bytes, made: float, now: float) -> None:
        """Spend `nonce` (checked with `seen` and `full` first)."""
        self._seen.add(nonce)
        # Until both its time and this reading are out of the window: the check above
        # measures against readings never lower than this one.
        self._order.append((max(made, now), nonce))

    def __len__(self) -> int:
        return len(self._seen)

    def _forget_old(self) -> None:
        oldest = self.latest - self.window
        while self._order and self._order[0][0] < oldest:
            self._seen.discard(self._order.popleft()[1])
