"""`local retire` cut short after its record was logged (a crash, Ctrl-C, a deletion that
failed): the retired nodes' tokens, PINs and stores stayed on disk, and a second `local
retire` said "nothing to retire" (review s39-E). It now finishes the deletion; with
nothing left, it still says there is nothing to retire."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tests.cli.fleet_files import write_fleet_file

from backupvault.deploy.local import DeploymentError, LocalDeployment

NODES = 3


def _node_files(folder: Path) -> list[Path]:
    made = []
    for i in range(NODES):
        for name in (f"node{i}-token", f"node{i}"):
            (folder / name).mkdir(parents=True)
            (folder / name / "secret").write_bytes(b"k")
            made.append(folder / name)
        for name in (f"node{i}.pin", f"node{i}.toml"):
            (folder / name).write_text("x")
            made.append(folder / name)
    return made


def test_a_retirement_cut_short_is_finished_by_the_next_local_retire(tmp_path: Path) -> None:
    root = tmp_path / "bv"
    old = write_fleet_file(root / "fleet.toml", epoch=1, nodes=NODES)
    retired = _node_files(root)
    current = write_fleet_file(root / "epoch2" / "fleet.toml", fleet_id=old.fleet_id, epoch=3)
    replace(current, retired_below=2).save(root / "epoch2" / "fleet.toml")
    kept = _node_files(root / "epoch2")
    deployment = LocalDeployment(root)
    assert deployment.epochs() == [2]
    assert deployment.retire() == (3, 2)
    assert [p for p in retired if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert (root / "fleet.toml").exists()  # the record of what was retired stays
    with pytest.raises(DeploymentError, match="nothing to retire"):
        deployment.retire()


def test_a_folder_epoch_with_a_non_ascii_digit_is_no_node_set(
    tmp_path: Path,
) -> None:
    """'²' is a digit to str.isdigit but not to int(): a folder `epoch²` holding a
    fleet.toml made every `local` command raise ValueError (review s60)."""
    root = tmp_path / "bv"
    write_fleet_file(root / "fleet.toml", epoch=1, nodes=NODES)
    write_fleet_file(root / "epoch²" / "fleet.toml", epoch=2, nodes=NODES)
    assert LocalDeployment(root).epochs() == [1]
