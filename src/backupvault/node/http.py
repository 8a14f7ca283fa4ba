"""The node's HTTP face for the relay and operators (peers use streams: node/peers.py):
parse, hand to the service, answer. Nothing is logged but the
operation, the account and the outcome; bodies are sealed and never logged."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backupvault.errors import InvalidInput
from backupvault.hop import (
    METRICS_NAME,
    METRICS_OP,
    HopRefused,
    HopVerifier,
    ReplayWindowFull,
    SignedBeforeStart,
)
from backupvault.node.service import NodeService
from backupvault.protocol import REMOVED_OPERATION_DETAIL, REMOVED_OPERATIONS, Op, check_name
from backupvault.serving import (
    content_length_over,
    read_body,
    routing_error,
    slow_body_response,
)

log = logging.getLogger("backupvault.node")

MAX_BODY = 64 * 1024
#: Seconds a relay is asked to wait when the replay window is full (its nonces age out
#: within hop.WINDOW_SECONDS).
BUSY_RETRY_AFTER = "2"


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _busy(err: ReplayWindowFull) -> JSONResponse:
    # Not the relay's fault: 503, which the relay takes as a node not reached (nothing
    # was spent), rather than 401, which it takes for a node outside its contract.
    log.warning("busy: %s", err.message)
    return JSONResponse(
        {"error": "node_busy", "detail": err.message},
        status_code=503,
        headers={"Retry-After": BUSY_RETRY_AFTER},
    )


def create_app(
    service: NodeService, hop: HopVerifier, measurement: Mapping[str, Any] | None = None
) -> Starlette:
    """`hop` checks that a client request comes from a relay the fleet lists;
    `measurement`: what `GET /v1/measurement` answers (the node's own firmware
    measurement, fleet id and epoch; see node.main.check_measurement)."""

    async def client(request: Request) -> Response:
        name = request.path_params["op"]
        if name in REMOVED_OPERATIONS:
            return _error(410, "removed_operation", REMOVED_OPERATION_DETAIL)
        try:
            op = Op(name)
        except ValueError:
            return _error(404, "unknown_operation", "no such vault operation")
        account = request.headers.get("x-backupvault-account", "")
        entry = request.headers.get("x-backupvault-entry", "")
        try:
            check_name("account", account)
            check_name("entry", entry)
        except InvalidInput as err:
            return _error(400, "bad_request", err.message)
        # The signature first, over the digest its header declares: a stranger is refused
        # before a byte of the body is read; only a listed relay's request is read, then
        # held to the digest it signed.
        try:
            signed = hop.check_headers(request.headers, str(op), account, entry)
        except SignedBeforeStart as err:
            return _error(503, "node_not_ready", err.message)
        except HopRefused as err:
            log.warning("client %s refused: %s", op, err.message)
            return _error(401, "relay_signature", err.message)
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and content_length_over(declared, MAX_BODY):
            body = None
        else:
            try:
                body = await read_body(request, MAX_BODY)
            except TimeoutError:
                return slow_body_response()
        if body is None:
            return _error(413, "too_large", f"sealed requests are at most {MAX_BODY} bytes")
        try:
            hop.check_body(signed, body)
        except ReplayWindowFull as err:
            return _busy(err)
        except HopRefused as err:
            log.warning("client %s refused: %s", op, err.message)
            return _error(401, "relay_signature", err.message)
        answer = await service.client_request(op, account, entry, body)
        log.info("client %s account=%s status=%d", op, account, answer.status)
        if answer.status == 200:
            return Response(answer.body, media_type="application/octet-stream")
        return _error(answer.status, answer.error, answer.detail)

    async def health(request: Request) -> Response:
        # Anyone who reaches the port may ask (the relay polls it unsigned): whether the
        # node answers, nothing more. The rest is in the signed metrics.
        return JSONResponse({"ready": service.serving})

    async def own_measurement(request: Request) -> Response:
        if measurement is None:
            return _error(404, "no_measurement", "this node was started without measuring")
        return JSONResponse(dict(measurement))

    async def metrics(request: Request) -> Response:
        # Counters tell a stranger the fleet's traffic and a node's troubles: only for a
        # listed relay key's signature, fresh and for this node (hop.metrics_headers).
        try:
            hop.verify(request.headers, METRICS_OP, METRICS_NAME, METRICS_NAME, b"")
        except ReplayWindowFull as err:
            return _busy(err)
        except HopRefused as err:
            log.warning("metrics refused: %s", err.message)
            return _error(401, "relay_signature", err.message)
        health = {
            "ready": service.serving,
            # Whether nothing was lost (a first start's empty store neither), and which start
            # it was: first, intact, or a rollback (docs/operations.md).
            "intact_start": service.store_start.lost_nothing,
            "store_start": str(service.store_start),
            "stopped": service.stopped_because,
        }
        return JSONResponse({"node": service.node, **service.metrics, "health": health})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=[
            Route("/v1/client/{op}", client, methods=["POST"]),
            Route("/v1/health", health, methods=["GET"]),
            Route("/v1/metrics", metrics, methods=["GET"]),
            Route("/v1/measurement", own_measurement, methods=["GET"]),
        ],
        lifespan=lifespan,
        # An unknown path or method: a JSON reason as every other refusal, not bare text.
        exception_handlers={HTTPException: routing_error},
    )
    # Starlette answers a trailing slash with a redirect to the host the Host header
    # names, before the relay's signature is looked at: a 404 instead.
    app.router.redirect_slashes = False
    return app
