"""A field node.toml does not take is refused, named, with the field it may have meant:
before, it was ignored. docs/pkcs11.md called the token's settings `module_path` and
`token_label`, and a node.toml written from it was refused for lacking `module`; a
misspelt `pin_flie` drew "set the token PIN in $BACKUPVAULT_TOKEN_PIN or give pin_file"
(which the file did, as the operator saw it), and a misspelt `peer_lisen` or
`max_request` was silently not applied: the node bound its peer listener elsewhere, or
took the default limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from backupvault.errors import InvalidInput
from backupvault.node.config import FleetDescription, NodeConfig
from backupvault.protocol import MAX_FLEET_NODES


def _node_toml(root: Path, node: dict[str, Any], token: dict[str, Any], **tables: Any) -> Path:
    config = root / "node.toml"
    (root / "token.pin").write_text("1234")
    (root / "token.pin").chmod(0o600)
    config.write_text(
        tomli_w.dumps(
            {
                "node": {"index": 0, "listen": "127.0.0.1:7101", "data_dir": "data", **node},
                "token": {"label": "backupvault-node-0", "pin_file": "token.pin", **token},
                **tables,
            }
        )
    )
    return config


MODULE = {"module": "/usr/lib/softhsm/libsofthsm2.so"}


@pytest.mark.parametrize(
    ("node", "token", "tables", "named", "meant"),
    [
        ({}, {"module_path": MODULE["module"]}, {}, "module_path", "module"),
        ({}, {**MODULE, "pin_flie": "token.pin"}, {}, "pin_flie", "pin_file"),
        ({"peer_lisen": "127.0.0.1:7201"}, MODULE, {}, "peer_lisen", "peer_listen"),
        ({"max_request": 8}, MODULE, {}, "max_request", "max_requests"),
        ({}, MODULE, {"tokens": {"label": "x"}}, "tokens", "token"),
    ],
    ids=["pkcs11.md's module_path", "pin_flie", "peer_lisen", "max_request", "[tokens]"],
)
def test_a_field_the_node_does_not_take_is_named_with_what_it_may_mean(
    tmp_path: Path,
    node: dict[str, Any],
    token: dict[str, Any],
    tables: dict[str, Any],
    named: str,
    meant: str,
) -> None:
    config = _node_toml(tmp_path, node, token, **tables)
    with pytest.raises(InvalidInput) as refused:
        NodeConfig.load(config)
    assert f"unknown field {named!r}" in refused.value.message
    assert str(config) in refused.value.message
    assert refused.value.hint is not None and repr(meant) in refused.value.hint


def test_every_field_the_guide_writes_is_taken(tmp_path: Path) -> None:
    config = _node_toml(
        tmp_path,
        {"peer_listen": "127.0.0.1:7201", "fleet_file": "fleet.toml", "max_requests": 8},
        {**MODULE, "softhsm2_conf": "hsm/softhsm2.conf"},
    )
    loaded = NodeConfig.load(config)
    assert loaded.peer_listen == "127.0.0.1:7201" and loaded.limits.max_requests == 8
    assert loaded.token.token_label == "backupvault-node-0"


@pytest.mark.parametrize(
    ("old", "new", "named", "meant"),
    [
        ("guess_limit = 10", "guess_limt = 5", "guess_limt", "guess_limit"),
        ('peer = "127.0.0.1:7201"', 'peers = "127.0.0.1:7201"', "peers", "peer"),
    ],
    ids=["guess_limt", "[[nodes]] peers"],
)
def test_a_field_fleet_toml_does_not_take_is_named(
    tmp_path: Path, old: str, new: str, named: str, meant: str
) -> None:
    """A misspelt `guess_limt = 5` was ignored: the fleet was deployed with the default
    of 10 guesses."""
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET_TOML.replace(old, new))
    assert FleetDescription.load(_good(tmp_path)).guess_limit == 10
    with pytest.raises(InvalidInput) as refused:
        FleetDescription.load(fleet)
    assert f"unknown field {named!r}" in refused.value.message
    assert refused.value.hint is not None and repr(meant) in refused.value.hint


def _good(tmp_path: Path) -> Path:
    good = tmp_path / "good.toml"
    good.write_text(FLEET_TOML)
    return good


#: A fleet of one node, as `fleet ceremony` leaves it (the keys need only parse).
FLEET_TOML = f"""
fleet_id = "00112233445566778899aabbccddeeff"
guess_limit = 10
relay_public_keys = ["{"11" * 32}"]
account_issuer = "https://accounts.example"
account_issuer_public_key = "{"22" * 32}"

[[nodes]]
index = 0
url = "http://127.0.0.1:7101"
peer = "127.0.0.1:7201"
identity_public_key = "{"33" * 32}"
hpke_public_key = "0020{"44" * 32}"
signing_public_key = "{"55" * 32}"
"""


@pytest.mark.parametrize("listen", ["127.0.0.1:70000", "127.0.0.1:0", "127.0.0.1:-1"])
def test_a_listen_port_outside_1_to_65535_is_refused_when_the_config_loads(
    tmp_path: Path, listen: str
) -> None:
    """`int()` took any number: with 70000 (a digit too many) the node served on port 4464,
    where the resolver wraps it, while its log said "listening on 127.0.0.1:70000"; with
    0 on a port the kernel chose, which neither the relay nor the log could tell; -1
    failed only at the start's port check ("Servname not supported")."""
    config = _node_toml(tmp_path, {"listen": listen}, MODULE)
    with pytest.raises(InvalidInput) as refused:
        NodeConfig.load(config)
    assert f"listen {listen!r} is not host:port with a port from 1 to 65535" in (
        refused.value.message
    )
    assert str(config) in refused.value.message


def test_an_ipv6_listen_address_may_be_written_in_brackets(tmp_path: Path) -> None:
    """As `peer_listen` takes it: the brackets were kept, and the node could not bind."""
    loaded = NodeConfig.load(_node_toml(tmp_path, {"listen": "[::1]:7101"}, MODULE))
    assert (loaded.host, loaded.port) == ("::1", 7101)


def test_a_listen_address_without_a_host_is_loopback(tmp_path: Path) -> None:
    loaded = NodeConfig.load(_node_toml(tmp_path, {"listen": ":7101"}, MODULE))
    assert (loaded.host, loaded.port) == ("127.0.0.1", 7101)


def test_a_fleet_file_of_more_nodes_than_a_manifest_can_name_is_refused(tmp_path: Path) -> None:
    """From 24 nodes up an entry's manifest no longer fits a node's answer: no entry could
    ever be registered, which nothing said before a client tried (review s61)."""
    head, node = FLEET_TOML.split("[[nodes]]")
    many = MAX_FLEET_NODES + 2
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        head + "".join(f"[[nodes]]{node}".replace("index = 0", f"index = {i}") for i in range(many))
    )
    with pytest.raises(InvalidInput) as refused:
        FleetDescription.load(fleet)
    assert f"{many} [[nodes]]; a fleet has at most {MAX_FLEET_NODES}" in refused.value.message
