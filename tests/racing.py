"""A relay hook for the flow tests: something happens just before the first request of
one kind reaches the fleet (another device's change lands, nodes take a delete), and,
if asked, before every request after it. For any test fleet with a `handle` method
(tests/client/fake_fleet.py, tests/hsm/inprocess_fleet.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import httpx

from backupvault.protocol import Op


class Relayed(Protocol):
    def handle(self, request: httpx.Request) -> httpx.Response: ...


def before_first(
    fleet: Relayed,
    op: Op,
    act: Callable[[], object],
    then: Callable[[httpx.Request], None] | None = None,
) -> list[bool]:
    """Wrap `fleet.handle`: `act` runs once, just before the first `op` request is
    handled; `then` sees every later request first (it may change the fleet, or raise as
    a relay that is gone). The list returned holds True once `act` has run."""
    handle = fleet.handle
    raced: list[bool] = []

    def racing(request: httpx.Request) -> httpx.Response:
        if raced and then is not None:
            then(request)
        elif request.url.path.endswith(str(op)) and not raced:
            raced.append(True)
            act()
        return handle(request)

    fleet.handle = racing  # type: ignore[method-assign]
    return raced
