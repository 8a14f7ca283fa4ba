"""Submitting a deployment record to a witness (deploy/records.py `submit`): whatever the
witness (or what answers in its place) says, `fleet deploy` stops with a clear error."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.transparency.conftest import make_record

from backupvault.deploy.records import WitnessRefused, submit
from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.transparency import sign_record

WITNESS = "https://witness.test"

Answer = Callable[[httpx.Request], httpx.Response]


def refusing(status: int, **kw: object) -> Answer:
    return lambda request: httpx.Response(status, **kw)  # type: ignore[arg-type]


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


#: What may come back from a witness's POST /v1/submit, and the error `fleet deploy` gives.
ANSWERS: dict[str, tuple[Answer, type[BackupVaultError], str]] = {
    "a refusal": (
        refusing(409, json={"error": "stale_epoch", "detail": "epoch 3 is not newer"}),
        WitnessRefused,
        r"\(409\): epoch 3 is not newer",
    ),
    "a JSON list": (refusing(502, json=[1, 2]), WitnessRefused, r"\(502\)"),
    "JSON nested too deeply": (
        refusing(400, text="[" * 100_000 + "]" * 100_000),
        WitnessRefused,
        r"\(400\)",
    ),
    "an HTML error page": (
        refusing(503, text="<html>down</html>"),
        WitnessRefused,
        r"\(503\): <html>down",
    ),
    "no answer": (unreachable, WitnessRefused, "cannot reach the witness"),
    "a receipt that is not one": (
        refusing(200, content=b"\x53garbage"),
        InvalidInput,
        "malformed WitnessReceipt",
    ),
}


@pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
def test_a_witness_answer_that_is_not_a_receipt_is_a_clear_error(
    answer: tuple[Answer, type[BackupVaultError], str],
) -> None:
    handler, error, match = answer
    http = httpx.Client(transport=httpx.MockTransport(handler))
    signed = sign_record(make_record(), Ed25519PrivateKey.generate())
    with pytest.raises(error, match=match):
        submit(WITNESS, signed, http=http)
