"""The relay's OpenAPI 3 description, served at GET /openapi.json.

Written by hand so that it says exactly what the relay does; `tests/relay` fuzzes the
running relay from it. A new route adds its entry to `paths` (see `build_openapi`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backupvault.protocol import NAME_PATTERN, OPERATIONS

VERSION = "1.0.0"


def _error(description: str, headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = dict(headers)
    return response


_RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}


def _vault_operation(max_body_bytes: int) -> dict[str, Any]:
    return {
        "operationId": "vaultRequest",
        "summary": "Send every vault node its HPKE-sealed copy of a request",
        "description": (
            "The body's copies are opaque to the relay; copy i is forwarded unchanged to node "
            "i, every node at once, together with the account (the token's `sub`) and the "
            "entry. Every node's answer comes back, labelled with its index."
        ),
        "security": [{"bearerAuth": []}],
        "parameters": [
            {
                "name": "entry",
                "in": "path",
                "required": True,
                "description": "The entry id within the account.",
                "schema": {"type": "string", "pattern": f"^{NAME_PATTERN}$"},
            },
            {
                "name": "op",
                "in": "path",
                "required": True,
                "description": "The vault operation.",
                "schema": {"type": "string", "enum": list(OPERATIONS)},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "minLength": 1,
                        "maxLength": max_body_bytes,
                    },
                }
            },
            "description": f"The request sealed once to each node's own key, 1 to"
            f" {max_body_bytes} bytes: `SealedCopies` (docs/protocol.md), copy i for node i.",
        },
        "responses": {
            "200": {
                "description": "`FanoutAnswers` (docs/relay.md): each node's sealed answer"
                " (opened with its copy's response key), its refusal, or why it gave none.",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            },
            "400": _error(
                "Bad input: an invalid entry id, an empty body, a bad Content-Length, a body"
                " that is not one sealed copy per node (`bad_sealed_copies`)."
            ),
            "401": _error(
                "Missing, malformed, expired or otherwise invalid bearer token.",
                {
                    "WWW-Authenticate": {
                        "description": "Always `Bearer ...`.",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^Bearer"},
                    }
                },
            ),
            "404": _error("No such operation, or no such path."),
            "410": _error(
                "An operation of the deleted single-seed flow (`removed_operation`): update"
                " the client."
            ),
            "413": _error(f"The body is larger than {max_body_bytes} bytes."),
            "415": _error("The body is not application/octet-stream."),
            "429": _error(
                "This account is sending requests too fast, or this address sent too many"
                " tokens that were refused.",
                {"Retry-After": {**_RETRY_AFTER, "required": True}},
            ),
            "502": _error("The relay failed (`relay_error`)."),
            "503": _error(
                "No node answered at all (`fleet_unavailable`), or the relay is busy "
                "(`relay_busy`).",
                {"Retry-After": _RETRY_AFTER},
            ),
        },
    }


def _health_operation() -> dict[str, Any]:
    return {
        "operationId": "health",
        "summary": "The relay is up; which nodes answer",
        "responses": {
            "200": {
                "description": "The relay's state and a probe of each node.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
                },
            }
        },
    }


def _openapi_operation() -> dict[str, Any]:
    return {
        "operationId": "openapi",
        "summary": "This description",
        "responses": {
            "200": {
                "description": "The OpenAPI 3 description of the relay.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    }


_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_DECIMAL = {"type": "string", "pattern": "^[0-9]{1,19}$"}


def _epoch_vault_operation(max_body_bytes: int) -> dict[str, Any]:
    operation = _vault_operation(max_body_bytes)
    operation["operationId"] = "vaultRequestForEpoch"
    operation["summary"] = "Forward an HPKE-sealed request to the nodes of one fleet epoch"
    operation["description"] = (
        "As POST /v1/vault/{entry}/{op}, but to the nodes of the given epoch (the current "
        "one, or an older one the relay still routes so that clients can migrate their "
        "entries; GET /v1/fleet/epochs lists them). 404 `unknown_epoch` otherwise."
    )
    operation["parameters"] = [
        {
            "name": "epoch",
            "in": "path",
            "required": True,
            "description": "The fleet epoch (decimal).",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
        *operation["parameters"],
    ]
    return operation


def _transparency_paths(max_body_bytes: int) -> dict[str, Any]:
    return {
        "/v1/fleet/bundle": {
            "get": {
                "operationId": "fleetBundle",
                "summary": "The fleet's key bundle (docs/transparency.md, FleetBundle)",
                "description": (
                    "The current fleet's deployment record with the operator signature, the "
                    "witness cosignature, the inclusion proof and the witness checkpoint; "
                    "with `epoch`, an older epoch's bundle. Clients verify it themselves."
                ),
                "parameters": [
                    {"name": "epoch", "in": "query", "required": False, "schema": _DECIMAL}
                ],
                "responses": {
                    "200": {"description": "The bundle.", "content": _BINARY},
                    "400": _error("`epoch` is not a decimal number."),
                    "404": _error("No bundle for that epoch."),
                },
            }
        },
        "/v1/fleet/epochs": {
            "get": {
                "operationId": "fleetEpochs",
                "summary": "The current epoch and the older ones still routed",
                "responses": {
                    "200": {
                        "description": "Epochs.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["current", "previous"],
                                    "properties": {
                                        "current": {"type": "integer", "minimum": 0},
                                        "previous": {
                                            "type": "array",
                                            "items": {"type": "integer", "minimum": 0},
                                        },
                                    },
                                }
                            }
                        },
                    }
                },
            }
        },
        "/v1/fleet/consistency": {
            "get": {
                "operationId": "fleetConsistency",
                "summary": "The witness's consistency proof between two tree sizes",
                "description": "Passed on from the witness's GET /v1/consistency.",
                "parameters": [
                    {"name": "old", "in": "query", "required": True, "schema": _DECIMAL},
                    {"name": "new", "in": "query", "required": True, "schema": _DECIMAL},
                ],
                "responses": {
                    "200": {
                        "description": "`{old, new, proof: [base64 hash, ...]}`",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["old", "new", "proof"],
                                    "properties": {
                                        "old": {"type": "integer"},
                                        "new": {"type": "integer"},
                                        "proof": {"type": "array", "items": {"type": "string"}},
                                    },
                                }
                            }
                        },
                    },
                    "400": _error("Bad or out-of-range sizes."),
                    "404": _error("The relay names no witness."),
                    "429": _error(
                        "Too many requests from this address (IPv6: its /64).",
                        {"Retry-After": _RETRY_AFTER},
                    ),
                    "502": _error("The witness answered outside its contract."),
                    "503": _error(
                        "The witness does not answer, asks the relay to wait, or too many"
                        " requests to it are under way.",
                        {"Retry-After": _RETRY_AFTER},
                    ),
                },
            }
        },
        "/v1/epochs/{epoch}/vault/{entry}/{op}": {"post": _epoch_vault_operation(max_body_bytes)},
    }


def build_openapi(
    *,
    max_body_bytes: int,
    extra_paths: Mapping[str, Any] | None = None,
    transparency: bool = False,
) -> dict[str, Any]:
    """The OpenAPI document; `extra_paths` adds the descriptions of added routes;
    `transparency` the fleet bundle routes (when the relay serves a bundle)."""
    paths: dict[str, Any] = {
        "/v1/health": {"get": _health_operation()},
        "/v1/vault/{entry}/{op}": {"post": _vault_operation(max_body_bytes)},
        "/openapi.json": {"get": _openapi_operation()},
    }
    if transparency:
        paths.update(_transparency_paths(max_body_bytes))
    paths.update(extra_paths or {})
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "backupvault relay",
            "version": VERSION,
            "description": (
                "The front door of a backupvault fleet: authenticates accounts, rate-limits "
                "them, and forwards HPKE-sealed requests it cannot read. See docs/relay.md."
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {
                        "error": {"type": "string", "description": "A machine-readable code."},
                        "detail": {"type": "string", "description": "A sentence for a person."},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "nodes", "nodes_up", "nodes_total"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok"]},
                        "nodes": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["url", "up"],
                                "properties": {
                                    "url": {"type": "string"},
                                    "up": {"type": "boolean"},
                                },
                            },
                        },
                        "nodes_up": {"type": "integer", "minimum": 0},
                        "nodes_total": {"type": "integer", "minimum": 1},
                    },
                },
            },
        },
    }
