"""What a node's HTTP port takes at once comes from node.toml (serving.ServerLimits),
with bounded defaults when it says nothing, and a clear refusal of a limit that is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from backupvault.errors import InvalidInput
from backupvault.node.config import NodeConfig
from backupvault.serving import ServerLimits


def _node_toml(root: Path, **limits: Any) -> Path:
    token = {"module": "/usr/lib/softhsm/libsofthsm2.so", "label": "n0", "pin_env": "PIN"}
    node = {"index": 0, "listen": "127.0.0.1:7101", "data_dir": "node0", **limits}
    config = root / "node0.toml"
    config.write_text(tomli_w.dumps({"node": node, "token": token}))
    return config


def test_a_node_without_limits_in_its_config_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIN", "1234")
    assert NodeConfig.load(_node_toml(tmp_path)).limits == ServerLimits()
    limits = NodeConfig.load(
        _node_toml(tmp_path, max_requests=8, max_connections=64, backlog=16)
    ).limits
    assert limits == ServerLimits(max_requests=8, max_connections=64, backlog=16)


@pytest.mark.parametrize(
    "limits", [{"max_requests": 0}, {"backlog": "lots"}, {"max_connections": 10}]
)
def test_a_limit_that_does_not_bound_is_refused_with_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: dict[str, Any]
) -> None:
    monkeypatch.setenv("PIN", "1234")
    with pytest.raises(InvalidInput, match=r"max_requests|backlog"):
        NodeConfig.load(_node_toml(tmp_path, **limits))
