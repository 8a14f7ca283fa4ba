"""One POST whose body stops after its first bytes, run straight through an ASGI app:
what a service answers a client that sends its body too slowly (serving.read_body)."""

from __future__ import annotations

import asyncio
from typing import Any


def post_stalled_body(
    app: Any, path: str, headers: dict[str, str], first: bytes, declared: int
) -> tuple[int, bytes]:
    """(status, body) of `app`'s answer to a POST of `path` that declares `declared`
    bytes of body and sends only `first`."""
    chunks = [{"type": "http.request", "body": first, "more_body": True}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop()
        await asyncio.sleep(3600)  # the rest never comes
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*raw, (b"content-length", str(declared).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8600),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 5))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent)
