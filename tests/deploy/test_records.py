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
from tests.cli.fleet_files import write_fleet_file
from tests.transparency.conftest import FLEET_ID, WITNESS_NAME, make_record

from backupvault.deploy.records import (
    PENDING_FILE,
    RECORD_FILE,
    ReceiptInvalid,
    WitnessRefused,
    sign_deployment,
    submit,
    write_deployment,
)
from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.transparency import Signer, Witness, WitnessReceipt, sign_record
from backupvault.transparency.bundle import MAX_BUNDLE_BYTES, cosign
from backupvault.transparency.errors import EpochReplayed
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


def test_a_deploy_that_one_witness_failed_can_be_run_again(tmp_path: Path) -> None:
    """`fleet deploy --witness W1 --witness W2` with W2 down: W1 logged the record, W2
    could not, nothing was written. Run again once W2 is up, the deploy signed a new
    record of the same epoch (another time, so other bytes), which W1 refused as a
    replayed epoch ("a new record needs a larger epoch"): the operator had to burn an
    epoch with --epoch, and `local upgrade` (no --epoch) could not finish at all, its
    nodes stopped and refusing the new code. The signed record is kept beside fleet.toml
    until the deploy finishes, and sent again: W1 answers with the receipt it gave."""
    operator = Ed25519PrivateKey.generate()
    fleet_file = tmp_path / "fleet.toml"
    write_fleet_file(fleet_file, fleet_id=FLEET_ID)
    witnesses = []
    for name in ("w1", "w2"):
        (tmp_path / name).mkdir()
        witnesses.append(logging_witness(tmp_path / name, operator)[0])
    first, second = witnesses

    signed, _ = sign_deployment(fleet_file, operator, epoch=1, now=1_000)
    receipt = first.submit(signed.to_bytes())  # W1 logged it; W2 did not answer
    assert not (tmp_path / RECORD_FILE).exists()

    again, deployed = sign_deployment(fleet_file, operator, epoch=1, now=2_000)
    assert first.submit(again.to_bytes()) == receipt  # the receipt it first gave
    assert again == signed
    second.submit(again.to_bytes())
    write_deployment(fleet_file, again, deployed)
    assert not (tmp_path / PENDING_FILE).exists()

    # What is deployed is not sent again: the next deploy is a new record.
    upgrade, _ = sign_deployment(fleet_file, operator, epoch=2, now=3_000)
    assert upgrade.deployment().epoch == 2
    # Nor is a pending record of another key, or of a fleet.toml changed since.
    other, _ = sign_deployment(fleet_file, Ed25519PrivateKey.generate(), epoch=2, now=3_000)
    assert other != upgrade
    write_fleet_file(fleet_file, fleet_id=FLEET_ID)  # other node keys
    changed, _ = sign_deployment(fleet_file, operator, epoch=2, now=4_000)
    assert changed.deployment().time == 4_000
    first.submit(upgrade.to_bytes())
    with pytest.raises(EpochReplayed):  # why a record is sent again rather than made anew
        first.submit(changed.to_bytes())
    for witness in witnesses:
        witness.store.close()
