"""Submitting a deployment record to a witness (deploy/records.py `submit`): whatever the
witness (or what answers in its place) says, `fleet deploy` stops with a clear error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.transparency.conftest import FLEET_ID, WITNESS_NAME, make_record

from backupvault.deploy.records import ReceiptInvalid, WitnessRefused, submit
from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.transparency import Signer, Witness, WitnessReceipt, sign_record
from backupvault.transparency.bundle import MAX_BUNDLE_BYTES, cosign
from backupvault.transparency.note import open_checkpoint
from backupvault.transparency.record import raw_public_key
from backupvault.transparency.witness import WitnessPolicy
from backupvault.transparency.witness_store import WitnessStore

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
    "an answer without end": (
        refusing(200, content=b"\x53" * (MAX_BUNDLE_BYTES + 1)),
        WitnessRefused,
        "larger than",
    ),
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


# ---- the receipt, checked with the witness's key (`fleet deploy --witness-key`) ------------


def logging_witness(tmp_path: Path, operator: Ed25519PrivateKey) -> tuple[Witness, Signer]:
    signer = Signer(WITNESS_NAME, Ed25519PrivateKey.generate())
    store = WitnessStore(tmp_path / "w.sqlite", signer.name, raw_public_key(signer.private_key))
    policy = WitnessPolicy(operators={FLEET_ID: raw_public_key(operator)})
    return Witness(signer, store, policy), signer


def altered(receipt: bytes, **changes: Any) -> bytes:
    return replace(WitnessReceipt.from_bytes(receipt), **changes).to_bytes()


def test_a_receipt_that_does_not_check_out_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """The witness (or what answers in its place) hands back a receipt that clients would
    refuse: another key's cosignature, one over another record, a checkpoint by another
    key, a proof that leads elsewhere, or no cosignature at all. With the witness's key
    `submit` refuses it (exit 7); the honest receipt passes."""
    operator = Ed25519PrivateKey.generate()
    witness, signer = logging_witness(tmp_path, operator)
    signed = sign_record(make_record(), operator)
    honest = witness.submit(signed.to_bytes())
    receipt = honest.to_bytes()
    other = Signer(WITNESS_NAME, Ed25519PrivateKey.generate())
    stranger = sign_record(make_record(epoch=9), operator)
    bad = {
        "another key's cosignature": altered(
            receipt, cosignature=cosign(other.private_key, WITNESS_NAME, signed.to_bytes())
        ),
        "a cosignature over another record": altered(
            receipt, cosignature=cosign(signer.private_key, WITNESS_NAME, stranger.to_bytes())
        ),
        "a checkpoint by another key": altered(
            receipt, checkpoint=open_checkpoint(honest.checkpoint, signer.verifier).sign(other)
        ),
        "a proof for another tree": altered(receipt, tree_size=2, proof=b"\x00" * 32),
    }
    for what, answer in bad.items():
        http = httpx.Client(transport=httpx.MockTransport(refusing(200, content=answer)))
        assert submit(WITNESS, signed, http=http).cosignature  # unchecked: taken as it is
        with pytest.raises(ReceiptInvalid, match="does not check out") as caught:
            submit(WITNESS, signed, http=http, witness=signer.verifier)
        assert caught.value.exit_code == 7, what
    missing = receipt[:-64] if receipt.endswith(honest.cosignature) else b""
    http = httpx.Client(transport=httpx.MockTransport(refusing(200, content=missing)))
    with pytest.raises(ReceiptInvalid, match="no valid receipt") as caught:
        submit(WITNESS, signed, http=http, witness=signer.verifier)
    assert caught.value.exit_code == 7
    http = httpx.Client(transport=httpx.MockTransport(refusing(200, content=receipt)))
    assert submit(WITNESS, signed, http=http, witness=signer.verifier).cosignature
    witness.store.close()


def test_a_witness_refusal_with_a_huge_detail_is_cut_short() -> None:
    """The witness's (or a proxy's) JSON `detail` went into the error whole: a refusal
    carrying megabytes of it filled the operator's terminal (its text was cut at 200)."""
    huge = "x" * 1_000_000
    http = httpx.Client(transport=httpx.MockTransport(refusing(409, json={"detail": huge})))
    signed = sign_record(make_record(), Ed25519PrivateKey.generate())
    with pytest.raises(WitnessRefused) as refused:
        submit(WITNESS, signed, http=http)
    assert "(409): xxx" in refused.value.message
    assert len(refused.value.message) < 400
