"""Fuzz the running relay from its own /openapi.json: every answer must match the
description, and no 5xx but the documented 503 may appear."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from .conftest import StubNode, copies

ALLOWED_5XX = {503}
# The default list of statuses that reject bad data lacks 413, the right answer to a body
# over the documented maxLength. The body is one sealed copy per node (a codec list that
# OpenAPI's binary string cannot describe), so random "valid" bytes may get the documented
# 400 `bad_sealed_copies`; tests/relay/test_forwarding.py checks that answer exactly.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 413, 415, 429]},
            "positive_data_acceptance": {
                "expected-statuses": ["2XX", "3XX", 400, 401, 403, 404, 409, 429, "5XX"]
            },
        }
    }
)


def _negates_auth(case: Any) -> bool:
    """Whether this negative case is about the Authorization header (then it is sent as
    generated, without our valid token)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return False
    data = meta.phase.data
    names = {getattr(data, "parameter", None)}
    names.update(getattr(m, "parameter", None) for m in getattr(data, "mutations", ()))
    return any(isinstance(n, str) and n.lower() == "authorization" for n in names)


def _fuzz(operation: Any, mode: GenerationMode, base_url: str, token: str) -> int:
    calls = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(case: Any) -> None:
        nonlocal calls
        calls += 1
        auth = {} if _negates_auth(case) else {"Authorization": f"Bearer {token}"}
        response = case.call(base_url=base_url, headers=auth, timeout=10)
        assert response.status_code < 500 or response.status_code in ALLOWED_5XX, (
            case.method,
            case.formatted_path,
            response.status_code,
            response.text,
        )
        # Schema conformance of status, content type, headers and body; the 5xx rule is above.
        case.validate_response(response, excluded_checks=[not_a_server_error])

    run()
    return calls


def test_relay_conforms_to_its_openapi(
    stubs: list[StubNode], start_relay: Callable[..., str], token: Callable[..., str]
) -> None:
    relay = start_relay(
        [n.url for n in stubs],
        rate_per_minute=1e6,
        burst=100_000,
        refused_tokens_per_minute=1e6,
        refused_tokens_burst=100_000,
    )
    schema = schemathesis.openapi.from_url(f"{relay}/openapi.json", config=CONFIG)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    # (Schemathesis leaves out the path it loaded the description from.)
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("GET", "/v1/health"),
        ("POST", "/v1/vault/{entry}/{op}"),
    }
    for operation in operations:
        modes = [GenerationMode.POSITIVE]
        if operation.path.startswith("/v1/vault/"):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            assert _fuzz(operation, mode, relay, token("fuzzer")) > 0
    # Random bytes are (all but never) one sealed copy per node, so the fuzzer's bodies stop
    # at the relay (400); a well-formed body, checked against the same schema, reaches a node.
    [vault] = [op for op in operations if op.path.startswith("/v1/vault/")]
    response = httpx.post(
        f"{relay}/v1/vault/laptop/manifest",
        content=copies(relay, b"sealed"),
        headers={"Content-Type": "application/octet-stream", "Authorization": f"Bearer {token()}"},
    )
    assert response.status_code == 200
    vault.validate_response(response)
    assert any(node.seen for node in stubs)


def test_openapi_lists_the_documented_statuses(
    stubs: list[StubNode], start_relay: Callable[..., str]
) -> None:
    relay = start_relay([stubs[0].url])
    document = httpx.get(f"{relay}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    vault = document["paths"]["/v1/vault/{entry}/{op}"]["post"]
    assert {"200", "400", "401", "404", "413", "415", "429", "503"} <= set(vault["responses"])
    assert vault["security"] == [{"bearerAuth": []}]
