"""The relay's ASGI app: authenticate, rate-limit, forward sealed bytes, log metadata only.

Routes live in one table (`_routes`) next to their OpenAPI entries (`openapi.py`); a new
route, such as the fleet key bundle, is one `Route` and one `paths` entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backupvault.errors import InvalidInput
from backupvault.fanout import FanoutAnswers
from backupvault.protocol import (
    OPERATIONS,
    REMOVED_OPERATION_DETAIL,
    REMOVED_OPERATIONS,
    SealedCopies,
    is_valid_name,
)
from backupvault.ratelimit import RateLimiter, client_address_key, retry_after_header
from backupvault.relay.config import RelayConfig
from backupvault.relay.fanout import fan_out
from backupvault.relay.forward import Forwarder, node_session, read_capped
from backupvault.relay.limits import Limiter, ProcessLimiter, SharedLimits
from backupvault.relay.openapi import build_openapi
from backupvault.serving import content_length_over, read_body, slow_body_response
from backupvault.tokens import TokenRejected, TokenVerifier

log = logging.getLogger("backupvault.relay")

#: Per-request log fields, filled in by the endpoints, written by `_Guard`.
_INFO = "backupvault.relay.info"
_REALM = 'Bearer realm="backupvault"'
_BUSY_RETRY_AFTER = "2"
#: A reset has its own bucket per account, this many times the size and rate of the
#: bucket every other operation shares: it answers a guess already charged at evaluate
#: (an honest client sends one per recovery, and the SDK sends it at most 3 times), so it
#: must not be refused for the evaluates before it, but junk resets must not reach every
#: node without limit either.
RESET_ALLOWANCE = 4
#: Witness requests (`/v1/fleet/consistency`, open to anyone) in flight at once: part of
#: the pool's 16 connections beyond the fan-outs', so a slow witness and a flood of them
#: cannot take the connections the vault's fan-outs need.
WITNESS_CONCURRENCY = 8
#: Witness requests per client address: a burst, then a steady rate. An honest client or
#: `verify-log` asks once per run (once more per older epoch it migrates from); without a
#: bucket one address could keep the witness slots above full and the witness busy.
WITNESS_BURST = 10
WITNESS_RATE_PER_MINUTE = 30.0
#: Addresses whose bucket is kept; beyond, the oldest is forgotten (memory stays bounded).
WITNESS_ADDRESSES = 50_000
#: The longest wait a witness's 429 passes on to clients (seconds).
WITNESS_RETRY_AFTER_MAX = 60


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """Every error the relay makes: `{"error": code, "detail": sentence}`."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _rate_limited(what: str, wait: float) -> JSONResponse:
    return error_response(
        429,
        "rate_limited",
        f"{what}; wait and try again",
        {"Retry-After": retry_after_header(wait)},
    )


def _unauthorized(code: str, detail: str) -> JSONResponse:
    challenge = _REALM if code == "missing_token" else f'{_REALM}, error="invalid_token"'
    return error_response(401, code, detail, {"WWW-Authenticate": challenge})


@dataclass
class RelayState:
    """What the endpoints share: config, verifier, limiter, the node client."""

    config: RelayConfig
    verifier: TokenVerifier
    limiter: Limiter
    reset_limiter: Limiter
    witness_limiter: Limiter
    refused_limiter: Limiter
    shared_limits: SharedLimits | None = None
    connector: Callable[[], aiohttp.BaseConnector] | None = None
    in_flight: int = 0
    witness_in_flight: int = 0
    _client: aiohttp.ClientSession | None = None
    _forwarder: Forwarder | None = None
    _previous: dict[int, Forwarder] = field(default_factory=dict)
    _health: tuple[float, list[dict[str, Any]]] | None = None
    _health_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def client(self) -> aiohttp.ClientSession:
        """One shared client for every node; made on startup (or on first use), in the
        event loop."""
        if self._client is None:
            # A fan-out holds a connection to each of its fleet's nodes at once.
            fleets = [self.config.node_urls, *(p.node_urls for p in self.config.previous_fleets)]
            self._client = node_session(
                self.config.request_timeout,
                self.config.connect_timeout,
                self.config.max_concurrent_forwards * max(map(len, fleets)) + 16,
                self.connector() if self.connector is not None else None,
            )
        return self._client

    @property
    def forwarder(self) -> Forwarder:
        if self._forwarder is None:
            self._forwarder = Forwarder(
                self.client,
                self.config.node_urls,
                self.config.max_response_bytes,
                self.config.node_signing_key,
            )
        return self._forwarder

    def forwarder_for(self, epoch: int | None) -> Forwarder | None:
        """The forwarder to the current fleet (epoch None or the current one) or to a
        previous epoch's nodes; None for an epoch this relay does not route."""
        if epoch is None or epoch == self.config.epoch:
            return self.forwarder
        if epoch not in self._previous:
            for fleet in self.config.previous_fleets:
                if fleet.epoch == epoch:
                    self._previous[epoch] = Forwarder(
                        self.client,
                        fleet.node_urls,
                        self.config.max_response_bytes,
                        self.config.node_signing_key,
                    )
        return self._previous.get(epoch)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
            self._forwarder = None
            self._previous.clear()
        if self.shared_limits is not None:
            await self.shared_limits.close()

    async def node_health(self) -> list[dict[str, Any]]:
        """Probe every node's /v1/health at once; reuse a fresh result so that a flood of
        health checks does not become a flood of probes."""
        async with self._health_lock:
            now = time.monotonic()
            if (
                self._health is not None
                and now - self._health[0] < self.config.health_cache_seconds
            ):
                return self._health[1]
            ups = await asyncio.gather(*(self._probe(url) for url in self.config.node_urls))
            nodes = [
                {"url": url, "up": up} for url, up in zip(self.config.node_urls, ups, strict=True)
            ]
            self._health = (time.monotonic(), nodes)
            return nodes

    async def _probe(self, url: str) -> bool:
        try:
            async with self.client.get(
                f"{url}/v1/health",
                timeout=aiohttp.ClientTimeout(total=self.config.health_timeout),
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    return False
                raw = await read_capped(response, 64 * 1024)
        except (TimeoutError, aiohttp.ClientError):
            return False
        try:
            body = json.loads(raw or b"")
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            return True
        return not (isinstance(body, dict) and body.get("ready") is False)


def _info(request: Request) -> dict[str, Any]:
    info: dict[str, Any] = request.scope.setdefault(_INFO, {})
    return info


def _routes(state: RelayState, openapi: dict[str, Any]) -> list[BaseRoute]:
    config = state.config

    async def health(request: Request) -> Response:
        nodes = await state.node_health()
        return JSONResponse(
            {
                "status": "ok",
                "nodes": nodes,
                "nodes_up": sum(1 for n in nodes if n["up"]),
                "nodes_total": len(nodes),
            }
        )

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    async def vault(request: Request) -> Response:
        info = _info(request)
        address = client_address_key(request)
        wait = await state.refused_limiter.waiting(address)
        if wait is not None:
            return _rate_limited("too many refused tokens from this address", wait)

        async def refuse(code: str, detail: str) -> Response:
            await state.refused_limiter.acquire(address)
            return _unauthorized(code, detail)

        authorization = request.headers.get("authorization")
        if authorization is None:
            return await refuse("missing_token", "send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return await refuse(
                "invalid_token", "the Authorization header must be 'Bearer <token>'"
            )
        try:
            account = state.verifier.verify(token.strip())
        except TokenRejected as err:
            return await refuse(err.code, err.message)
        info["account"] = account

        epoch: int | None = None
        if "epoch" in request.path_params:
            raw_epoch = request.path_params["epoch"]
            if not (raw_epoch.isascii() and raw_epoch.isdigit() and len(raw_epoch) <= 19):
                return error_response(404, "unknown_epoch", "the epoch is a decimal number")
            epoch = int(raw_epoch)
        forwarder = state.forwarder_for(epoch)
        if forwarder is None:
            return error_response(
                404,
                "unknown_epoch",
                f"this relay routes no fleet of epoch {epoch}; see GET /v1/fleet/epochs",
            )

        op = request.path_params["op"]
        if op in REMOVED_OPERATIONS:
            return error_response(410, "removed_operation", REMOVED_OPERATION_DETAIL)
        if op not in OPERATIONS:
            return error_response(
                404,
                "unknown_operation",
                f"no such vault operation; use one of {', '.join(OPERATIONS)}",
            )
        info["op"] = op
        # A reset follows a guess already charged: the evaluates before it must not use up
        # its bucket (refusing it would leave the count unreset).
        wait = await (state.reset_limiter if op == "reset" else state.limiter).acquire(account)
        if wait is not None:
            return _rate_limited("too many requests for this account", wait)
        entry = request.path_params["entry"]
        if not is_valid_name(entry):
            return error_response(
                400,
                "bad_entry",
                "entry ids are 1-64 characters of letters, digits, '.', '_' or '-'",
            )

        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/octet-stream":
            return error_response(
                415, "unsupported_media_type", "send the sealed request as application/octet-stream"
            )
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit() or not declared.isascii():
                return error_response(400, "bad_request", "Content-Length is not a number")
            if content_length_over(declared, config.max_body_bytes):
                return _too_large(config.max_body_bytes)
        try:
            body = await read_body(request, config.max_body_bytes)
        except TimeoutError:
            return slow_body_response()
        if body is None:
            return _too_large(config.max_body_bytes)
        if not body:
            return error_response(400, "empty_body", "the sealed request is empty")
        try:
            copies = SealedCopies.for_nodes(body, len(forwarder.node_urls)).copies
        except InvalidInput as err:
            return error_response(400, "bad_sealed_copies", err.message)

        if state.in_flight >= config.max_concurrent_forwards:
            return error_response(
                503,
                "relay_busy",
                "the relay is handling too many requests; try again shortly",
                {"Retry-After": _BUSY_RETRY_AFTER},
            )
        return await _fan_out(state, forwarder, op, account, entry, copies, info)

    async def fleet_bundle(request: Request) -> Response:
        raw = request.query_params.get("epoch")
        if raw is None:
            bundle = config.bundle
        else:
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 19):
                return error_response(400, "bad_query", "'epoch' must be a decimal number")
            epoch = int(raw)
            found = [p.bundle for p in config.previous_fleets if p.epoch == epoch]
            bundle = config.bundle if epoch == config.epoch else (found[0] if found else None)
        if bundle is None:
            return error_response(
                404, "no_bundle", "this relay serves no fleet bundle for that epoch"
            )
        return Response(bundle, media_type="application/octet-stream")

    async def fleet_epochs(request: Request) -> Response:
        return JSONResponse(
            {
                "current": config.epoch,
                "previous": sorted((p.epoch for p in config.previous_fleets), reverse=True),
            }
        )

    async def fleet_consistency(request: Request) -> Response:
        params = request.query_params
        old, new = params.get("old", ""), params.get("new", "")
        if not all(v.isascii() and v.isdigit() and len(v) <= 19 for v in (old, new)):
            return error_response(400, "bad_query", "'old' and 'new' are required decimal numbers")
        if config.witness_url is None:
            return error_response(404, "no_witness", "this relay names no witness")
        wait = await state.witness_limiter.acquire(client_address_key(request))
        if wait is not None:
            return _rate_limited("too many log consistency requests from this address", wait)
        if state.witness_in_flight >= WITNESS_CONCURRENCY:
            return error_response(
                503,
                "witness_unavailable",
                "too many witness requests under way; try again shortly",
                {"Retry-After": _BUSY_RETRY_AFTER},
            )
        state.witness_in_flight += 1
        try:
            async with state.client.get(
                f"{config.witness_url}/v1/consistency",
                params={"old": old, "new": new},
                timeout=aiohttp.ClientTimeout(total=config.request_timeout),
                allow_redirects=False,
            ) as answer:
                status = answer.status
                asked_to_wait = answer.headers.get("retry-after", "")
                content = await read_capped(answer, 64 * 1024)
        except (TimeoutError, aiohttp.ClientError):
            return error_response(
                503,
                "witness_unavailable",
                "the witness does not answer; try again later",
                {"Retry-After": _BUSY_RETRY_AFTER},
            )
        finally:
            state.witness_in_flight -= 1
        if status == 429:
            # The witness's bucket per address holds the relay's too, unless it lists the
            # relay: a wait, not a broken witness. Its Retry-After passes as a small number.
            small = asked_to_wait.isascii() and asked_to_wait.isdigit() and len(asked_to_wait) < 3
            wait = int(asked_to_wait) if small else 2  # ascii: '²'.isdigit(), int('²') raises
            return error_response(
                503,
                "witness_unavailable",
                "the witness asks this relay to wait (its limit per address: the witness's"
                " operator lists relays in unlimited_addresses); try again shortly",
                {"Retry-After": retry_after_header(min(wait, WITNESS_RETRY_AFTER_MAX))},
            )
        if status not in (200, 400) or content is None:
            return error_response(502, "bad_witness_answer", "the witness answered oddly")
        return Response(content, status_code=status, media_type="application/json")

    routes: list[BaseRoute] = [
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/vault/{entry}/{op}", vault, methods=["POST"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    if config.bundle is not None:
        routes += [
            Route("/v1/epochs/{epoch}/vault/{entry}/{op}", vault, methods=["POST"]),
            Route("/v1/fleet/bundle", fleet_bundle, methods=["GET"]),
            Route("/v1/fleet/epochs", fleet_epochs, methods=["GET"]),
            Route("/v1/fleet/consistency", fleet_consistency, methods=["GET"]),
        ]
    return routes


async def _fan_out(
    state: RelayState,
    forwarder: Forwarder,
    op: str,
    account: str,
    entry: str,
    copies: Sequence[bytes],
    info: dict[str, Any],
) -> Response:
    """Every node's answer in one `FanoutAnswers` (backupvault.fanout); a 503 only when no
    node answered at all."""
    state.in_flight += 1
    try:
        replies = await fan_out(forwarder, op, account, entry, copies)
    finally:
        state.in_flight -= 1
    answered = [reply.index for reply in replies if reply.answered]
    info["node"] = ",".join(map(str, answered)) or None
    info["skipped"] = len(replies) - len(answered)
    if not answered:
        return error_response(
            503,
            "fleet_unavailable",
            f"none of the {len(replies)} vault nodes could answer; try again later",
            {"Retry-After": _BUSY_RETRY_AFTER},
        )
    return Response(FanoutAnswers(replies).to_bytes(), media_type="application/octet-stream")


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, "too_large", f"sealed requests are at most {limit} bytes")


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "bad_request")
    detail = {
        404: "no such path; see /openapi.json",
        405: "this path does not take that method; see the Allow header",
    }.get(exc.status_code, "the request was refused")
    return error_response(exc.status_code, code, detail, exc.headers)


class _Guard:
    """Outermost layer: one metadata-only log line per request, and no exception ever
    reaches the server (it becomes a 502 whose log line names only the exception type)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info: dict[str, Any] = {}
        scope[_INFO] = info
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        failure: str | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            failure = type(exc).__name__
            if status == 0:
                status = 502
                response = error_response(
                    502, "relay_error", "the relay failed to handle this request; try again"
                )
                with contextlib.suppress(Exception):
                    await response(scope, receive, send)
        route = scope.get("route")
        fields = {
            "method": scope.get("method", "-"),
            "route": getattr(route, "path", "-"),
            "op": info.get("op", "-"),
            "account": info.get("account", "-"),
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            "node": info.get("node") or "-",
            "skipped": info.get("skipped", 0),
        }
        line = " ".join(f"{k}={v}" for k, v in fields.items())
        if failure is not None:
            log.error("relay request %s exception=%s", line, failure, extra={"relay": fields})
        else:
            log.info("relay request %s", line, extra={"relay": fields})


def create_app(
    config: RelayConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    token_clock: Callable[[], float] = time.time,
    connector: Callable[[], aiohttp.BaseConnector] | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    extra_openapi_paths: Mapping[str, Any] | None = None,
) -> Starlette:
    """The relay app. `clock` drives the rate limiter, `token_clock` the token expiry
    checks; `connector` makes what replaces the network to the nodes (tests). `extra_routes`
    and `extra_openapi_paths` add routes and describe them."""
    shared = None if config.shared_limits_url is None else SharedLimits(config.shared_limits_url)

    def limit(name: str, buckets: RateLimiter) -> Limiter:
        return ProcessLimiter(buckets) if shared is None else shared.limiter(name, buckets)

    state = RelayState(
        config=config,
        verifier=TokenVerifier(
            config.public_key,
            issuer=config.issuer,
            audience=config.audience,
            leeway_seconds=config.token_leeway_seconds,
            clock=token_clock,
            revoked_before=dict(config.revoked_before),
        ),
        limiter=limit("account", RateLimiter(config.rate_per_second, config.burst, clock=clock)),
        reset_limiter=limit(
            "reset",
            RateLimiter(
                config.rate_per_second * RESET_ALLOWANCE,
                config.burst * RESET_ALLOWANCE,
                clock=clock,
            ),
        ),
        witness_limiter=limit(
            "witness",
            RateLimiter(
                WITNESS_RATE_PER_MINUTE / 60,
                WITNESS_BURST,
                clock=clock,
                max_accounts=WITNESS_ADDRESSES,
            ),
        ),
        # Refused tokens (every 401 of the vault route) per client address. Each cost a
        # signature check on the event loop, and before the account is known no account's
        # bucket applies: one address sending forged tokens without pause kept the loop
        # busy for every client. An honest client gets a 401 when its token has expired.
        refused_limiter=limit(
            "refused",
            RateLimiter(
                config.refused_tokens_per_minute / 60,
                config.refused_tokens_burst,
                clock=clock,
                max_accounts=WITNESS_ADDRESSES,
            ),
        ),
        shared_limits=shared,
        connector=connector,
    )
    openapi = build_openapi(
        max_body_bytes=config.max_body_bytes,
        extra_paths=extra_openapi_paths,
        transparency=config.bundle is not None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _ = state.client
        try:
            yield
        finally:
            await state.close()

    app = Starlette(
        routes=[*_routes(state, openapi), *extra_routes],
        middleware=[Middleware(_Guard)],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    # Starlette answers a path with a trailing slash by a redirect to the host the
    # client's Host header names, before any route (and any token check) runs: a 404
    # with a reason instead, like every other path the relay does not serve.
    app.router.redirect_slashes = False
    app.state.relay = state
    return app


def serve(config: RelayConfig, host: str = "127.0.0.1", port: int = 8600) -> None:
    """Run the relay until stopped (SIGTERM or SIGINT). The server's own access log is
    off: the relay writes its own metadata-only line per request."""
    from backupvault.serving import ServerLimits, run_until_stopped

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
    run_until_stopped(
        create_app(config),
        # The front door for every client: more than a node takes, still bounded.
        # Forwards have their own cap (max_concurrent_forwards: 503 relay_busy).
        ServerLimits(
            max_requests=max(2048, 2 * config.max_concurrent_forwards),
            max_connections=max(8192, 8 * config.max_concurrent_forwards),
            backlog=2048,
            max_connections_per_address=config.max_connections_per_address,
        ),
        host=host,
        port=port,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
        ssl_keyfile=str(config.tls_key) if config.tls_key else None,
        log_config=None,
    )
