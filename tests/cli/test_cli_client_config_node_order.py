"""A fleet.toml whose [[nodes]] tables are not in index order (node 1's first: written by
hand, or as the machines came up). The deployment record lists its nodes by index
whatever the file's order, so `fleet deploy` and over-the-air clients were right; but a
pinned config (`fleet client-config`) took its keys in the file's order, and a pinned
client then sealed node 0's requests to node 1's key and checked node 0's answers
with node 1's signing key: nothing it sent could be opened by the node it went to."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from fleet_files import client_config, write_fleet_file  # tests/cli/fleet_files.py

from backupvault.errors import InvalidInput
from backupvault.node.config import FleetDescription


def test_a_pinned_config_lists_each_node_s_keys_at_its_index(tmp_path: Path) -> None:
    fleet_file = tmp_path / "fleet.toml"
    fleet = write_fleet_file(fleet_file, nodes=3)
    shuffled = (fleet.nodes[1], fleet.nodes[2], fleet.nodes[0])
    replace(fleet, nodes=shuffled).save(fleet_file)  # saved in the order given
    code, result = client_config(tmp_path, fleet_file)
    assert code == 0, result
    written = tomllib.loads((tmp_path / "client.toml").read_text())
    assert written["node_public_keys"] == [n.hpke_public_key.hex() for n in fleet.nodes]
    assert written["node_signing_keys"] == [n.signing_public_key.hex() for n in fleet.nodes]


@pytest.mark.parametrize("indexes", [(0, 0, 2), (0, 1, 3), (1, 2, 3)])
def test_node_indexes_other_than_0_to_n_minus_1_are_named(
    tmp_path: Path, indexes: tuple[int, int, int]
) -> None:
    fleet_file = tmp_path / "fleet.toml"
    fleet = write_fleet_file(fleet_file, nodes=3)
    nodes = tuple(replace(n, index=i) for n, i in zip(fleet.nodes, indexes, strict=True))
    replace(fleet, nodes=nodes).save(fleet_file)
    with pytest.raises(InvalidInput) as refused:
        FleetDescription.load(fleet_file)
    assert f"have the indexes {', '.join(map(str, indexes))}" in refused.value.message
    assert "each of 0 .. 2 once" in refused.value.message
