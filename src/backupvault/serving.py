"""Running a service (node, relay, witness) under uvicorn until it is told to stop.

A service stops within a bound: SIGTERM or SIGINT lets requests under way finish for
`GRACEFUL_SECONDS`, then cancels them, and a process still alive `STOP_SECONDS` after
the signal prints every thread's stack (what held it) to stderr and exits with status 1.
uvicorn alone waits for open requests and the application's shutdown without limit: a
node once outlived SIGTERM for twelve minutes, which holds up a restart or a deploy."""

from __future__ import annotations

import faulthandler
from types import FrameType
from typing import Any

import uvicorn

#: How long requests under way may take to finish after a stop signal.
GRACEFUL_SECONDS = 5
#: How long after a stop signal the process may take to exit, shutdown included.
STOP_SECONDS = 30.0


class _BoundedServer(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A C thread of its own: it fires even if the event loop or a lock is stuck.
        faulthandler.dump_traceback_later(STOP_SECONDS, exit=True)
        super().handle_exit(sig, frame)


def run_until_stopped(app: Any, **config: Any) -> None:
    """Serve `app` (uvicorn.Config's keyword arguments) until a stop signal."""
    server = _BoundedServer(
        uvicorn.Config(app, timeout_graceful_shutdown=GRACEFUL_SECONDS, **config)
    )
    server.run()


def content_length_over(declared: str, limit: int) -> bool:
    """Whether a Content-Length of ASCII digits says more than `limit` bytes. By its digits
    first: httptools passes on any number of leading zeros, and `int()` refuses a string
    of over 4300 digits (a ValueError, so a 5xx, for a valid header)."""
    digits = declared.lstrip("0")
    return len(digits) > len(str(limit)) or int(digits or "0") > limit
