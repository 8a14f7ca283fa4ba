"""The relay's forwarding path sets nothing up per request: requests to a node, one after
another or many at once, reuse the relay's open connections to it."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .conftest import LiveServer, copies


def test_forwarded_requests_reuse_the_relays_connections_to_a_node(
    start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    sources: list[tuple[str, int]] = []  # the relay's end of each request's connection

    async def client(request: Request) -> Response:
        assert request.client is not None
        sources.append((request.client.host, request.client.port))
        return Response(b"ok", media_type="application/octet-stream")

    node = LiveServer(Starlette(routes=[Route("/v1/client/{op}", client, methods=["POST"])]))
    try:
        relay = start_relay(
            [node.url], burst=1000, rate_per_minute=1e6, request_timeout=30.0, connect_timeout=10.0
        )
        headers = {"Content-Type": "application/octet-stream"}

        def forward(_: int) -> int:
            with httpx.Client(timeout=10) as http:  # a new client connection every time
                answer = http.post(
                    f"{relay}/v1/vault/laptop/manifest",
                    content=copies(relay, b"sealed"),
                    headers={**headers, "Authorization": f"Bearer {token('alice')}"},
                )
            return answer.status_code

        assert [forward(i) for i in range(10)] == [200] * 10
        assert len(set(sources)) == 1  # one after another: one connection
        with ThreadPoolExecutor(8) as pool:  # 5 each: 40 connections if none were reused
            assert list(pool.map(forward, range(40))) == [200] * 40
        assert len(sources) == 50
        assert len(set(sources)) <= 9  # at most one per request in flight at once
    finally:
        node.stop()
