"""Configuration files of a node and the public description of its fleet (TOML).

    # node.toml                              # fleet.toml (public)
    [node]                                   fleet_id = "<hex>"
    index = 0                                guess_limit = 10
    listen = "127.0.0.1:7101"                hpke_public_key = "<hex>"
    data_dir = "node0"                       opaque_server_public_key = "<hex>"
    fleet_file = "fleet.toml"                [[nodes]]
    [token]                                  index = 0
    module = "/usr/lib/softhsm/..."          url = "http://127.0.0.1:7101"
    label = "backupvault-node-0"             identity_public_key = "<hex>"
    pin_file = "node0/token.pin"   # or pin_env = "BACKUPVAULT_TOKEN_PIN"
    softhsm2_conf = "node0/hsm/softhsm2.conf"   # SoftHSM2 only

Relative paths are relative to the file that names them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from backupvault.errors import InvalidInput
from backupvault.node.token import TokenConfig


def _load(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidInput(f"config file {path} is not valid TOML: {err}") from None


def _hex(value: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise InvalidInput(f"{what} must be hexadecimal") from None


def write_toml(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(tomli_w.dumps(data))
    tmp.replace(path)


@dataclass(frozen=True)
class FleetNode:
    index: int
    url: str
    identity_public_key: bytes


@dataclass(frozen=True)
class FleetDescription:
    fleet_id: bytes
    guess_limit: int
    hpke_public_key: bytes
    opaque_server_public_key: bytes
    nodes: tuple[FleetNode, ...]

    @classmethod
    def load(cls, path: Path) -> FleetDescription:
        data = _load(path)
        try:
            nodes = tuple(
                FleetNode(int(n["index"]), str(n["url"]), _hex(n["identity_public_key"], "key"))
                for n in data["nodes"]
            )
            return cls(
                _hex(data["fleet_id"], "fleet_id"),
                int(data.get("guess_limit", 10)),
                _hex(data["hpke_public_key"], "hpke_public_key"),
                _hex(data["opaque_server_public_key"], "opaque_server_public_key"),
                nodes,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInput(f"fleet file {path} is incomplete: {err}") from None

    def save(self, path: Path) -> None:
        write_toml(
            path,
            {
                "fleet_id": self.fleet_id.hex(),
                "guess_limit": self.guess_limit,
                "hpke_public_key": self.hpke_public_key.hex(),
                "opaque_server_public_key": self.opaque_server_public_key.hex(),
                "nodes": [
                    {
                        "index": n.index,
                        "url": n.url,
                        "identity_public_key": n.identity_public_key.hex(),
                    }
                    for n in self.nodes
                ],
            },
        )


@dataclass(frozen=True)
class NodeConfig:
    index: int
    host: str
    port: int
    data_dir: Path
    fleet_file: Path
    token: TokenConfig

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        data = _load(path)
        base = path.parent
        try:
            node, token = data["node"], data["token"]
            host, _, port = str(node["listen"]).rpartition(":")
            if "pin_file" in token:
                pin = (base / token["pin_file"]).read_text().strip()
            else:
                env = token.get("pin_env", "BACKUPVAULT_TOKEN_PIN")
                pin = os.environ.get(env, "")
                if not pin:
                    raise InvalidInput(f"set the token PIN in ${env} or give pin_file")
            conf = token.get("softhsm2_conf")
            return cls(
                int(node["index"]),
                host or "127.0.0.1",
                int(port),
                base / node["data_dir"],
                base / node.get("fleet_file", "fleet.toml"),
                TokenConfig(
                    Path(token["module"]),
                    str(token["label"]),
                    pin,
                    None if conf is None else base / conf,
                ),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInput(f"node config {path} is incomplete: {err}") from None
