"""`fleet deploy --resubmit` (adding a witness to a running fleet, docs/operations.md
step 5) with a deployment.bin that is not the record fleet.toml was last deployed with:
refused before any witness is asked, naming both, and no bundle.bin written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fleet_files import write_fleet_file  # tests/cli/fleet_files.py

from backupvault.cli.main import main
from backupvault.deploy.records import BUNDLE_FILE, RECORD_FILE, deploy
from backupvault.tokens import generate_operator_key, save_operator_key

#: Nothing listens there: a resubmit refused as it should be never gets this far.
NOWHERE = "http://127.0.0.1:9"


def resubmit(fleet: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(["--json", "fleet", "deploy", "--fleet-file", str(fleet), "--operator-key",
              str(key), "--resubmit", "--witness", NOWHERE])  # fmt: skip
    error = json.loads(capsys.readouterr().err)
    assert isinstance(done.value.code, int)
    return done.value.code, f"{error['error']} / {error.get('hint')}"


@pytest.fixture
def deployed(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A fleet deployed at epochs 1 and 2: fleet.toml, the key, and epoch 1's record."""
    fleet = tmp_path / "fleet.toml"
    write_fleet_file(fleet)
    key = generate_operator_key()
    save_operator_key(key, tmp_path / "deploy.key", tmp_path / "deploy.pub")
    older = deploy(fleet, key, epoch=1).to_bytes()
    deploy(fleet, key, epoch=2)
    return fleet, tmp_path / "deploy.key", older


def test_an_older_epoch_s_record_is_not_resubmitted(
    deployed: tuple[Path, Path, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: epoch 1's record (a deployment.bin copied from an older folder, or restored
    from a backup) went to the new witness, which logged it, and bundle.bin was rewritten
    with that retired epoch ("fresh receipt", exit 0): a relay serving it has every client
    refuse the fleet."""
    fleet, key, older = deployed
    (fleet.parent / RECORD_FILE).write_bytes(older)
    code, said = resubmit(fleet, key, capsys)
    assert code == 1
    assert str(fleet.parent / RECORD_FILE) in said and "epoch 1" in said and "epoch 2" in said
    assert "cannot reach the witness" not in said
    assert not (fleet.parent / BUNDLE_FILE).exists()


def test_a_damaged_record_is_named(
    deployed: tuple[Path, Path, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: "malformed OperatorSignedRecord: expected a OperatorSignedRecord message
    (tag 82), got tag 133", naming no file."""
    fleet, key, _ = deployed
    (fleet.parent / RECORD_FILE).write_bytes(b"\x85 damaged")
    code, said = resubmit(fleet, key, capsys)
    assert code == 1
    assert f"{fleet.parent / RECORD_FILE} is not a deployment record" in said
    assert not (fleet.parent / BUNDLE_FILE).exists()


def test_a_fleet_file_never_deployed_has_no_record_to_resubmit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = tmp_path / "fleet.toml"
    write_fleet_file(fleet)
    save_operator_key(generate_operator_key(), tmp_path / "deploy.key", tmp_path / "deploy.pub")
    code, said = resubmit(fleet, tmp_path / "deploy.key", capsys)
    assert code == 1
    assert "fleet deploy" in said and "Traceback" not in said
