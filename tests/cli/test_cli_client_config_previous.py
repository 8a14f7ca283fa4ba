"""`fleet client-config --previous OLD/fleet.toml` after a rotation: the pinned config
names the older epochs' keys too, so that a recovery moves the key from the old epoch,
where it still is. Without them the new config found the vault empty ("the vault holds
no key for account ...") while the key sat on the old epoch; the operator had to write
`[[previous_fleets]]` tables by hand. A file that is not an older epoch of the same
fleet's own nodes is refused, and nothing is written."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fleet_files import client_config, write_fleet_file  # tests/cli/fleet_files.py

from backupvault.client.config import ClientConfig
from backupvault.node.config import FleetDescription


def test_a_pinned_config_after_rotations_names_every_older_epochs_keys(tmp_path: Path) -> None:
    first = write_fleet_file(tmp_path / "e1" / "fleet.toml", epoch=1)
    second = write_fleet_file(tmp_path / "e2" / "fleet.toml", fleet_id=first.fleet_id, epoch=2)
    write_fleet_file(tmp_path / "e3" / "fleet.toml", fleet_id=first.fleet_id, epoch=3)
    code, answer = client_config(
        tmp_path, tmp_path / "e3" / "fleet.toml",
        "--previous", str(tmp_path / "e1" / "fleet.toml"),
        "--previous", str(tmp_path / "e2" / "fleet.toml"),
    )  # fmt: skip
    assert code == 0, answer
    config = ClientConfig.load(tmp_path / "client.toml")
    assert config.epoch == 3
    # newest first, each with its own nodes' keys
    assert [f.epoch for f in config.previous_fleets] == [2, 1]
    for pinned, fleet in zip(config.previous_fleets, (second, first), strict=True):
        assert [k.to_bytes() for k in pinned.node_public_keys] == [
            n.hpke_public_key for n in fleet.nodes
        ]
        assert list(pinned.node_signing_keys) == [n.signing_public_key for n in fleet.nodes]


def _same_nodes_as(fleet: FleetDescription, path: Path, epoch: int) -> None:
    """`fleet` saved at `path` as another epoch: an upgrade (same nodes, same keys)."""
    path.parent.mkdir(parents=True)
    replace(fleet, epoch=epoch).save(path)


@pytest.mark.parametrize(
    "case", ["another fleet", "not older", "an upgrade", "never deployed", "retired"]
)
def test_a_previous_file_that_is_no_older_epoch_of_this_fleet_is_refused(
    tmp_path: Path, case: str
) -> None:
    current = write_fleet_file(tmp_path / "new" / "fleet.toml", epoch=2)
    old = tmp_path / "old" / "fleet.toml"
    if case == "retired":  # the new fleet's record retires epoch 1: a pinned client never asks it
        replace(current, retired_below=2).save(tmp_path / "new" / "fleet.toml")
        write_fleet_file(old, fleet_id=current.fleet_id, epoch=1)
    elif case == "another fleet":
        write_fleet_file(old, epoch=1)
    elif case == "not older":
        write_fleet_file(old, fleet_id=current.fleet_id, epoch=2)
    elif case == "an upgrade":
        _same_nodes_as(current, old, 1)
    else:
        write_fleet_file(old, fleet_id=current.fleet_id)
    code, error = client_config(tmp_path, tmp_path / "new" / "fleet.toml", "--previous", str(old))
    assert code == 2, error
    assert str(old) in error["error"]
    assert error["hint"]
    assert not (tmp_path / "client.toml").exists()
    if case == "retired":
        assert "which this fleet retired" in error["error"]


def test_previous_is_for_pinned_configs_only(tmp_path: Path) -> None:
    write_fleet_file(tmp_path / "old" / "fleet.toml", epoch=1)
    code, error = client_config(
        tmp_path, write_fleet_path(tmp_path), "--previous", str(tmp_path / "old" / "fleet.toml"),
        "--ota", "5866666666666666666666666666666666666666666666666666666666666666",
        "--witness-key", "w+00000000+AQ", "--witness-url", "http://127.0.0.1:9",
    )  # fmt: skip
    assert code == 2, error
    assert "--previous" in error["error"] and "--ota" in error["error"]
    assert not (tmp_path / "client.toml").exists()


def write_fleet_path(tmp_path: Path) -> Path:
    path = tmp_path / "new" / "fleet.toml"
    write_fleet_file(path, epoch=2)
    return path
