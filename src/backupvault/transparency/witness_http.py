"""The witness's HTTP face (Starlette): parse, call `Witness`, answer.

    POST /v1/submit                 body: OperatorSignedRecord bytes
                                    200: WitnessReceipt bytes (application/octet-stream)
    GET  /v1/checkpoint             200: the signed checkpoint (text/plain, a C2SP note)
    GET  /v1/consistency?old=M&new=N  200: {"old", "new", "proof": [base64, …]}
    GET  /v1/inclusion?index=I&size=N 200: {"index", "size", "leaf_hash", "proof": [base64]}
    GET  /v1/inclusion?leaf_hash=HEX&size=N  the same for the leaf of that hash; 404
                                    `not_logged` if the tree of size N holds none
    GET  /v1/leaves?start=S&end=E   200: {"start", "end", "leaves": [base64 leaf, …]}
                                    (end exclusive, clamped to the log, 256 leaves and
                                    1 MiB of them: page on from `end`)
    GET  /v1/head?fleet=HEX[&nonce=HEX]
                                    200: the fleet's head, signed now (text/plain, a signed
                                    note; transparency/head.py), answering the client's
                                    16-byte nonce if given; 404 for a fleet never logged
    GET  /v1/witness                200: {"name", "vkey"}

Errors are JSON `{"error": code, "detail": message}`: 400 malformed input, 403 a record the
policy refuses, 408 a body not sent within 10 s, 409 a stale epoch, 413 a body over 1 MiB,
404/405 for unknown routes, 429 `rate_limited` (with Retry-After) for an address past its
bucket.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Collection, Mapping

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from backupvault.errors import InvalidInput
from backupvault.ratelimit import RateLimiter, client_address_key, retry_after_header
from backupvault.serving import (
    ServerLimits,
    content_length_over,
    read_body,
    routing_error,
    run_until_stopped,
    slow_body_response,
)
from backupvault.transparency.errors import (
    EpochReplayed,
    NotLogged,
    TransparencyError,
    UnknownFleet,
)
from backupvault.transparency.witness import Witness, WitnessConfig

log = logging.getLogger("backupvault.witness")

MAX_BODY = 1 << 20
_UINT = re.compile(r"[0-9]{1,19}")
_DIGITS = re.compile(r"[0-9]+")
_FLEET_HEX = re.compile(r"(?:[0-9a-f]{2}){1,64}")
_NONCE_HEX = re.compile(r"[0-9a-f]{32}")  # transparency/head.py, NONCE_LEN
_LEAF_HEX = re.compile(r"[0-9a-f]{64}")
#: Requests per client address (an IPv6 client: its /64), any route: a burst, then a
#: steady rate. An honest client or auditor asks a few times per run (a checkpoint, a
#: proof, a head); without a bucket one address kept the witness signing heads and
#: hashing proofs without bound. Relays named in `unlimited_addresses` are not counted
#: here: they pass on many clients' requests and limit each client themselves.
WITNESS_BURST = 30
WITNESS_RATE_PER_MINUTE = 60.0
#: Addresses whose bucket is kept; beyond, the oldest is forgotten (memory stays bounded).
WITNESS_ADDRESSES = 50_000
#: Open connections from one address (an IPv6 client: its /64); the witness takes 1024.
WITNESS_CONNECTIONS_PER_ADDRESS = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _status(err: InvalidInput | TransparencyError) -> int:
    if isinstance(err, InvalidInput):
        return 400
    if isinstance(err, EpochReplayed):
        return 409
    return 403


def _code(err: InvalidInput | TransparencyError) -> str:
    return err.code if isinstance(err, TransparencyError) else "malformed"


class _BadQuery(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def _uint(params: Mapping[str, str], name: str) -> int:
    value = params.get(name)
    if value is None:
        raise _BadQuery(f"the query parameter '{name}' is required")
    if not _UINT.fullmatch(value):
        raise _BadQuery(f"'{name}' must be a decimal whole number below 10^19")
    return int(value)


def _b64(items: list[bytes]) -> list[str]:
    return [base64.b64encode(item).decode() for item in items]


class _BadLength(Exception):
    pass


async def _body(request: Request) -> bytes | None:
    """The body, None when over MAX_BODY; _BadLength for a Content-Length that is not
    ASCII digits (str.isdigit took '²', and int() a 4301-digit one: both a 500)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not _DIGITS.fullmatch(declared):
            raise _BadLength
        if content_length_over(declared, MAX_BODY):
            return None
    return await read_body(request, MAX_BODY)  # TimeoutError: the caller answers 408


class _PerAddressLimit:
    """Outermost layer: an address past its bucket is answered 429 before any route runs
    (a request to an unknown path costs the bucket too)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, unlimited: Collection[Network]) -> None:
        self.app = app
        self.limiter = limiter
        self.unlimited = tuple(unlimited)

    def _exempt(self, scope: Scope) -> bool:
        client = scope.get("client")
        try:
            address = ipaddress.ip_address(client[0] if client else "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.unlimited)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._exempt(scope):
            wait = self.limiter.acquire(client_address_key(Request(scope)))
            if wait is not None:
                refused = JSONResponse(
                    {
                        "error": "rate_limited",
                        "detail": "too many requests from this address; wait and try again",
                    },
                    status_code=429,
                    headers={"Retry-After": retry_after_header(wait)},
                )
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    witness: Witness,
    *,
    clock: Callable[[], float] = time.monotonic,
    unlimited: Collection[Network] = (),
) -> Starlette:
    """The witness app. `clock` drives the per-address buckets; `unlimited`: networks
    (the relays') whose requests are not limited per address."""

    async def submit(request: Request) -> Response:
        try:
            body = await _body(request)
        except _BadLength:
            return _error(400, "bad_request", "Content-Length is a decimal number of bytes")
        except TimeoutError:
            return slow_body_response()
        if body is None:
            return _error(413, "too_large", f"a submission is at most {MAX_BODY} bytes")
        try:
            receipt = await run_in_threadpool(witness.submit, body)
        except (InvalidInput, TransparencyError) as err:
            log.info("refused submission: %s", err.message)
            return _error(_status(err), _code(err), err.message)
        log.info("logged record at index %d (tree size %d)", receipt.leaf_index, receipt.tree_size)
        return Response(receipt.to_bytes(), media_type="application/octet-stream")

    async def checkpoint(request: Request) -> Response:
        note = await run_in_threadpool(witness.checkpoint)
        return PlainTextResponse(note)

    async def consistency(request: Request) -> Response:
        try:
            old, new = _uint(request.query_params, "old"), _uint(request.query_params, "new")
            proof = await run_in_threadpool(witness.consistency, old, new)
        except _BadQuery as err:
            return _error(400, "bad_query", err.detail)
        except (InvalidInput, TransparencyError) as err:
            return _error(400, "bad_range", err.message)
        return JSONResponse({"old": old, "new": new, "proof": _b64(proof)})

    async def inclusion(request: Request) -> Response:
        try:
            size = _uint(request.query_params, "size")
            wanted = request.query_params.get("leaf_hash")
            if wanted is None:
                index = _uint(request.query_params, "index")
                leaf, proof = await run_in_threadpool(witness.inclusion, index, size)
            elif not _LEAF_HEX.fullmatch(wanted):
                raise _BadQuery("'leaf_hash' is a 32-byte leaf hash in lowercase hex")
            else:
                leaf = bytes.fromhex(wanted)
                index, proof = await run_in_threadpool(witness.inclusion_of, leaf, size)
        except _BadQuery as err:
            return _error(400, "bad_query", err.detail)
        except NotLogged as err:
            return _error(404, err.code, err.message)
        except (InvalidInput, TransparencyError) as err:
            return _error(400, "bad_range", err.message)
        return JSONResponse(
            {"index": index, "size": size, "leaf_hash": _b64([leaf])[0], "proof": _b64(proof)}
        )

    async def leaves(request: Request) -> Response:
        try:
            start, end = _uint(request.query_params, "start"), _uint(request.query_params, "end")
            end, found = await run_in_threadpool(witness.leaves, start, end)
        except _BadQuery as err:
            return _error(400, "bad_query", err.detail)
        except (InvalidInput, TransparencyError) as err:
            return _error(400, "bad_range", err.message)
        return JSONResponse({"start": start, "end": end, "leaves": _b64(found)})

    async def head(request: Request) -> Response:
        fleet = request.query_params.get("fleet", "")
        nonce = request.query_params.get("nonce", "")
        if not _FLEET_HEX.fullmatch(fleet):
            return _error(400, "bad_query", "'fleet' is the fleet id in lowercase hex")
        if nonce and not _NONCE_HEX.fullmatch(nonce):
            return _error(400, "bad_query", "'nonce' is 16 bytes in lowercase hex")
        now = int(time.time())
        try:
            note = await run_in_threadpool(
                witness.head, bytes.fromhex(fleet), now, bytes.fromhex(nonce)
            )
        except UnknownFleet as err:
            return _error(404, err.code, err.message)
        return PlainTextResponse(note)

    async def about(request: Request) -> Response:
        return JSONResponse({"name": witness.name, "vkey": witness.verifier.vkey()})

    limiter = RateLimiter(
        WITNESS_RATE_PER_MINUTE / 60, WITNESS_BURST, clock=clock, max_accounts=WITNESS_ADDRESSES
    )
    return Starlette(
        routes=[
            Route("/v1/submit", submit, methods=["POST"]),
            Route("/v1/checkpoint", checkpoint, methods=["GET"]),
            Route("/v1/consistency", consistency, methods=["GET"]),
            Route("/v1/inclusion", inclusion, methods=["GET"]),
            Route("/v1/leaves", leaves, methods=["GET"]),
            Route("/v1/head", head, methods=["GET"]),
            Route("/v1/witness", about, methods=["GET"]),
        ],
        middleware=[Middleware(_PerAddressLimit, limiter=limiter, unlimited=unlimited)],
        exception_handlers={HTTPException: routing_error},
    )


def serve(config: WitnessConfig, host: str = "127.0.0.1", port: int = 8700) -> None:
    """Run the witness until stopped (SIGTERM or SIGINT)."""
    witness = config.open()
    try:
        run_until_stopped(
            create_app(witness, unlimited=config.unlimited_addresses),
            # A relay passes clients' requests on over a few connections (its witness
            # requests in flight are bounded: relay.app.WITNESS_CONCURRENCY).
            ServerLimits(max_connections_per_address=WITNESS_CONNECTIONS_PER_ADDRESS),
            host=host,
            port=port,
            log_config=None,
            # The bucket per address is the connection's, or the one X-Forwarded-For names
            # when a proxy listed in trusted_proxies sent it. uvicorn alone believes the
            # header from 127.0.0.1: through a TLS proxy that passed a client's header on,
            # each request named a bucket of its own, or a relay's exempt address.
            proxy_headers=bool(config.trusted_proxies),
            forwarded_allow_ips=[str(n) for n in config.trusted_proxies],
        )
    finally:
        witness.store.close()
