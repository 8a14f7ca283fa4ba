"""`fleet deploy --retire-below E`: the record retires the fleet's epochs below E, so no
client asks them for an entry again (docs/transparency.md, "Retiring an epoch"). The
retirement is kept in fleet.toml for every later record, carried across a rotation, and
never lowered; a record cannot retire itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fleet_files import write_fleet_file  # tests/cli/fleet_files.py

from backupvault.cli.main import main
from backupvault.deploy.records import RECORD_FILE
from backupvault.node.config import FleetDescription
from backupvault.tokens import generate_operator_key, save_operator_key
from backupvault.transparency import OperatorSignedRecord


def deploy(
    fleet: Path, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, object]]:
    """`backupvault --json fleet deploy --fleet-file FLEET --operator-key KEY ARGS`: its exit
    code and its JSON (the result, or the error)."""
    key = fleet.parent.parent / "deploy.key"
    with pytest.raises(SystemExit) as done:
        main(["--json", "fleet", "deploy", "--fleet-file", str(fleet), "--operator-key", str(key),
              *args])  # fmt: skip
    out = capsys.readouterr()
    assert isinstance(done.value.code, int)
    return done.value.code, json.loads(out.out if done.value.code == 0 else out.err)


def record_of(fleet: Path) -> tuple[int, int]:
    """(epoch, retired_below) of the record deployment.bin holds."""
    record = OperatorSignedRecord.from_bytes((fleet.parent / RECORD_FILE).read_bytes())
    deployment = record.deployment()
    return deployment.epoch, deployment.retired_below


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """A fleet deployed at epochs 1 and 2 (an upgrade), retiring nothing."""
    save_operator_key(generate_operator_key(), tmp_path / "deploy.key", tmp_path / "deploy.pub")
    path = tmp_path / "epoch1" / "fleet.toml"
    path.parent.mkdir()
    write_fleet_file(path)
    return path


def test_a_retirement_is_recorded_kept_and_never_lowered(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy(fleet, capsys=capsys)[0] == 0
    assert record_of(fleet) == (1, 0)
    code, said = deploy(fleet, "--retire-below", "2", capsys=capsys)
    assert code == 0 and said["retired_below"] == 2
    assert record_of(fleet) == (2, 2)
    assert FleetDescription.load(fleet).retired_below == 2
    # The next upgrade keeps it without being told.
    assert deploy(fleet, capsys=capsys)[0] == 0
    assert record_of(fleet) == (3, 2)
    # Lowered: refused, and nothing written.
    before = fleet.read_bytes(), (fleet.parent / RECORD_FILE).read_bytes()
    code, said = deploy(fleet, "--retire-below", "1", capsys=capsys)
    assert code == 1
    assert "epochs below 2 are retired already" in str(said["error"])
    assert before == (fleet.read_bytes(), (fleet.parent / RECORD_FILE).read_bytes())
    # Retiring the new record itself: refused.
    code, said = deploy(fleet, "--retire-below", "5", capsys=capsys)
    assert code == 1 and "would retire the new record itself (epoch 4)" in str(said["error"])
    assert before == (fleet.read_bytes(), (fleet.parent / RECORD_FILE).read_bytes())
    # Up to the new epoch is allowed: every older one.
    assert deploy(fleet, "--retire-below", "4", capsys=capsys)[0] == 0
    assert record_of(fleet) == (4, 4)


def test_a_rotation_carries_the_retirement_to_the_new_nodes(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The new epoch's fleet.toml is a new file (new nodes, new keys): without carrying
    the retirement over from --previous, its record would retire nothing, and every
    witness would refuse it."""
    assert deploy(fleet, capsys=capsys)[0] == 0
    assert deploy(fleet, "--retire-below", "2", capsys=capsys)[0] == 0
    rotated = fleet.parent.parent / "epoch3" / "fleet.toml"
    rotated.parent.mkdir()
    write_fleet_file(rotated, fleet_id=FleetDescription.load(fleet).fleet_id)
    assert deploy(rotated, "--previous", str(fleet), capsys=capsys)[0] == 0
    assert record_of(rotated) == (3, 2)


def test_resubmit_makes_no_record_to_retire_with(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy(fleet, capsys=capsys)[0] == 0
    code, said = deploy(
        fleet, "--resubmit", "--witness", "http://127.0.0.1:9", "--retire-below", "1",
        capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "leave out --retire-below" in str(said["error"])
