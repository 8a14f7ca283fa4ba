"""Real servers on loopback for the relay tests: stub vault nodes and the relay itself."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from backupvault.protocol import SealedCopies
from backupvault.relay import RelayConfig, create_app, mint_token, private_key_pem, public_key_pem

ISSUER = "https://accounts.test"
AUDIENCE = "backupvault-relay-test"
#: The relay's key for the relay → node hop (stub nodes can check it with HopVerifier).
RELAY_KEY = Ed25519PrivateKey.generate()
#: JSON nested deeper than Python's parser recurses: a hostile node's answer.
DEEP_JSON = b"[" * 50_000
#: How many nodes each relay started by a test forwards to, by its URL.
RELAY_NODES: dict[str, int] = {}


def copies(relay: str, body: bytes) -> bytes:
    """`body` as a client posts it: one sealed copy per node (identical here, so a stub
    node's echo shows which copy it got)."""
    return SealedCopies([body] * RELAY_NODES[relay]).to_bytes()


class LiveServer:
    """An ASGI app served by a real uvicorn on 127.0.0.1 with an ephemeral port."""

    def __init__(self, app: ASGIApp) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
                log_config=None,
                access_log=False,
                lifespan="on",
                loop="asyncio",
                ws="none",
                timeout_graceful_shutdown=1,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.005)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Seen:
    op: str
    headers: dict[str, str]
    body: bytes


async def _trickle() -> AsyncIterator[bytes]:
    """A 200 answer's body a byte every 0.2 s, for 3 s in all."""
    for _ in range(15):
        await asyncio.sleep(0.2)
        yield b"x"


@dataclass
class StubNode:
    """A vault node that records what it was sent and answers as `mode` says."""

    name: str
    mode: str = "echo"
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    #: How long a "slow" answer takes.
    slow_seconds: float = 0.5

    def app(self) -> Starlette:
        async def client(request: Request) -> Response:
            body = await request.body()
            self.seen.append(Seen(request.path_params["op"], dict(request.headers.items()), body))
            if self.mode == "echo":
                return Response(
                    self.name.encode() + b"|" + body, media_type="application/octet-stream"
                )
            if self.mode == "not_ready":
                return JSONResponse(
                    {"error": "node_not_ready", "detail": "catching up"}, status_code=503
                )
            if self.mode == "fleet_unavailable":
                return JSONResponse(
                    {"error": "fleet_unavailable", "detail": "no majority"}, status_code=503
                )
            if self.mode == "refuse":
                return JSONResponse(
                    {"error": "entry_destroyed", "detail": "too many guesses"}, status_code=410
                )
            if self.mode == "slow":
                await asyncio.sleep(self.slow_seconds)
                return Response(
                    self.name.encode() + b"|" + body, media_type="application/octet-stream"
                )
            if self.mode == "hang":
                await asyncio.sleep(5)
                return Response(b"late", media_type="application/octet-stream")
            if self.mode == "trickle":  # each byte well within any per-read timeout
                return StreamingResponse(_trickle(), media_type="application/octet-stream")
            if self.mode == "broken":
                return Response(b"Internal Server Error", status_code=500)
            if self.mode == "deep_json":
                return Response(DEEP_JSON, status_code=400, media_type="application/json")
            if self.mode == "bloated":  # far more than any sealed answer (1 KiB padded)
                return Response(b"x" * (100 * 1024), media_type="application/octet-stream")
            raise AssertionError(f"unknown stub mode {self.mode}")

        async def health(request: Request) -> Response:
            if self.mode == "deep_json":
                return Response(DEEP_JSON, media_type="application/json")
            return JSONResponse({"node": self.name, "ready": self.mode != "not_ready"})

        return Starlette(
            routes=[
                Route("/v1/client/{op}", client, methods=["POST"]),
                Route("/v1/health", health, methods=["GET"]),
            ]
        )


def unused_port() -> int:
    """A loopback port where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unused_url() -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{unused_port()}"


@pytest.fixture(scope="session")
def operator_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def _stub_servers() -> Iterator[list[StubNode]]:
    nodes = [StubNode(f"node{i}") for i in range(3)]
    servers = []
    for node in nodes:
        server = LiveServer(node.app())
        node.url = server.url
        servers.append(server)
    yield nodes
    for server in servers:
        server.stop()


@pytest.fixture
def stubs(_stub_servers: list[StubNode]) -> list[StubNode]:
    """Three running stub nodes, reset to echo with nothing seen."""
    for node in _stub_servers:
        node.mode = "echo"
        node.seen.clear()
    return _stub_servers


@pytest.fixture
def token(operator_key: Ed25519PrivateKey) -> Callable[..., str]:
    def make(account: str = "alice", **kwargs: Any) -> str:
        claims: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "ttl_seconds": 300}
        claims.update(kwargs)
        return mint_token(operator_key, account, **claims)

    return make


def make_config(
    operator_key: Ed25519PrivateKey, node_urls: list[str], **overrides: Any
) -> RelayConfig:
    base = RelayConfig(
        node_urls=tuple(node_urls),
        issuer=ISSUER,
        audience=AUDIENCE,
        operator_public_key=public_key_pem(operator_key),
        signing_key=private_key_pem(RELAY_KEY),
        connect_timeout=1.0,
        request_timeout=2.0,
        health_timeout=0.5,
        health_cache_seconds=0.0,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def start_relay(operator_key: Ed25519PrivateKey) -> Iterator[Callable[..., str]]:
    """Start a relay on loopback in front of the given node URLs; returns its base URL."""
    servers: list[LiveServer] = []

    def start(
        node_urls: list[str], *, clock: Callable[[], float] | None = None, **overrides: Any
    ) -> str:
        config = make_config(operator_key, node_urls, **overrides)
        app = create_app(config) if clock is None else create_app(config, clock=clock)
        server = LiveServer(app)
        servers.append(server)
        RELAY_NODES[server.url] = len(node_urls)
        return server.url

    yield start
    for server in servers:
        server.stop()
