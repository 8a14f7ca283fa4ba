"""Configuration files of a node and the public description of its fleet (TOML).

    # node.toml                              # fleet.toml (public)
    [node]                                   fleet_id = "<hex>"
    index = 0                                guess_limit = 10
    listen = "127.0.0.1:7101"                relay_public_keys = ["<hex>"]  # Ed25519
    data_dir = "node0"                       account_issuer = "<iss of tokens>"
    fleet_file = "fleet.toml"                account_issuer_public_key = "<hex>"
    peer_listen = "0.0.0.0:7201"  # optional
                                             epoch = 1               # `fleet deploy`
                                             measurement = "<hex>"   # `fleet deploy`
                                             [[nodes]]           # `node init` prints these
    [token]                                  index = 0
    module = "/usr/lib/softhsm/..."          url = "http://127.0.0.1:7101"
    label = "backupvault-node-0"             peer = "127.0.0.1:7201"  # peer listener
    pin_file = "node0/token.pin"             identity_public_key = "<hex>"  # X25519
    # or pin_env = "BACKUPVAULT_TOKEN_PIN"   hpke_public_key = "<hex>"      # kem id || key
                                             signing_public_key = "<hex>"   # Ed25519
    softhsm2_conf = "node0/hsm/softhsm2.conf"   # SoftHSM2 only

Relative paths are relative to the file that names them. A node's peer listener (the
streams the other nodes send consensus messages on) binds to `peer_listen`, by default to
its own `peer` address in the fleet file. `[node]` may also bound what the node's HTTP
port takes at once (serving.ServerLimits): `max_requests` under way (default 256; beyond,
503 busy), `max_connections` open (default 1024) and the listen `backlog` (default 128).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from backupvault.config_fields import Fields, check_fields
from backupvault.crypto.seal import NodePublicKey
from backupvault.errors import InvalidInput
from backupvault.files import replace_file
from backupvault.node.token import TokenConfig
from backupvault.protocol import MAX_FLEET_NODES
from backupvault.serving import ServerLimits, split_host_port
from backupvault.transparency.measure import FirmwareConfig, combine, measure_package

#: Where an operator finds what each of its files holds.
_GUIDE = "docs/operations.md shows every field, step by step"


def load_toml(path: Path, kind: str) -> dict[str, Any]:
    """The TOML table of an operator's file (`kind`: "fleet file", "node config", ...). A
    file that is not TOML text (the wrong path, a damaged file) is an error naming it and
    what is wrong, not a traceback."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(
            f"{kind} {path} does not exist", hint=f"check the path; {_GUIDE}"
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(
            f"{kind} {path} is not a TOML file: it is not text (not UTF-8)",
            hint=f"check the path; {_GUIDE}",
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidInput(
            f"{kind} {path} is not valid TOML: {err}",
            hint=f"fix that line of {path} (each setting is one `name = value` line)",
        ) from None


#: What node.toml holds: its tables, and the fields of each.
_NODE_FIELDS: Fields = {
    "node": frozenset(
        {"index", "listen", "peer_listen", "data_dir", "fleet_file"}
        | {"max_requests", "max_connections", "backlog"}
    ),
    "token": frozenset({"module", "label", "pin_file", "pin_env", "softhsm2_conf"}),
}
#: What fleet.toml holds. `hpke_public_key` (one key for the whole fleet) is an older
#: version's, refused with a message of its own; `opaque_server_public_key` is the
#: removed single-seed flow's, which `fleet ceremony` drops.
_FLEET_FIELDS: Fields = {
    **dict.fromkeys(["fleet_id", "epoch", "measurement", "guess_limit", "relay_public_keys"]),
    "retired_below": None,
    **dict.fromkeys(["account_issuer", "account_issuer_public_key"]),
    **dict.fromkeys(["hpke_public_key", "opaque_server_public_key"]),
    "nodes": frozenset(
        {"index", "url", "peer", "identity_public_key", "hpke_public_key", "signing_public_key"}
    ),
}


def _incomplete(kind: str, path: Path, err: Exception) -> InvalidInput:
    """A field missing (KeyError) or malformed (TypeError, ValueError) in an operator's file."""
    if isinstance(err, KeyError):
        return InvalidInput(f"{kind} {path} lacks {err.args[0]!r}", hint=_GUIDE)
    return InvalidInput(f"{kind} {path} has a malformed value: {err}", hint=_GUIDE)


def _hex(value: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise InvalidInput(f"{what} must be hexadecimal") from None


def _key(value: Any, what: str) -> bytes:
    key = _hex(value, what)
    if len(key) != 32:
        raise InvalidInput(f"{what}: an Ed25519 public key is 64 hex digits")
    return key


def write_toml(path: Path, data: dict[str, Any]) -> None:
    """Write a config that holds no secret (mode 0644) with `replace_file`: its temporary
    file has a random name and is never opened through a symbolic link. The fixed
    `<name>.tmp` it had let whoever could write to the folder plant a link there, and the
    next write (`fleet ceremony`, `witness add-fleet`) overwrote the file it pointed at."""
    replace_file(path, tomli_w.dumps(data).encode(), mode=0o644)


@dataclass(frozen=True)
class FleetNode:
    """One node's public keys, all made by the node itself (`backupvault node init`)."""

    index: int
    url: str
    identity_public_key: bytes
    #: NodePublicKey.to_bytes(): clients seal this node's requests to it.
    hpke_public_key: bytes
    #: Ed25519: the node's own signatures.
    signing_public_key: bytes
    #: host:port of the node's peer listener, where the other nodes open their streams.
    peer: str = ""


@dataclass(frozen=True)
class FleetDescription:
    fleet_id: bytes
    guess_limit: int
    nodes: tuple[FleetNode, ...]
    #: Ed25519 keys of the relays whose signed requests the nodes answer (docs/relay.md).
    relay_public_keys: tuple[bytes, ...]
    #: Who issues account tokens, and its Ed25519 key: the firmware checks the fleet token
    #: inside every sealed request against it.
    account_issuer: str
    account_issuer_public_key: bytes
    #: Set by `backupvault fleet deploy`: the deployment record's epoch and firmware
    #: measurement, which every node checks against its own at start.
    epoch: int | None = None
    measurement: bytes | None = None
    #: Set by `fleet deploy --retire-below`: this fleet's epochs below it are retired (the
    #: record says so, and clients never ask them); kept for every later deployment.
    retired_below: int = 0

    @property
    def quorum(self) -> int:
        return len(self.nodes) // 2 + 1

    def firmware_config(self) -> FirmwareConfig:
        """The security-relevant configuration that the firmware measurement covers."""
        kems = {NodePublicKey.from_bytes(n.hpke_public_key).kem for n in self.nodes}
        if len(kems) != 1:
            raise InvalidInput("every node's HPKE key must use the same KEM")
        kem = kems.pop()
        return FirmwareConfig(
            self.guess_limit,
            self.quorum,
            len(self.nodes),
            kem,
            self.relay_public_keys,
            self.account_issuer,
            self.account_issuer_public_key,
        )

    def measure(self, package_dir: Path | None = None) -> bytes:
        """The firmware measurement of the package at `package_dir` (default: the code
        running now) with this fleet's configuration (docs/transparency.md)."""
        return combine(measure_package(package_dir), self.firmware_config())

    @classmethod
    def load(cls, path: Path) -> FleetDescription:
        data = load_toml(path, "fleet file")
        check_fields(path, "fleet file", data, _FLEET_FIELDS, _GUIDE)
        try:
            if "hpke_public_key" in data:
                raise InvalidInput(
                    f"fleet file {path} names one HPKE key for the whole fleet: it was made by"
                    " an older version; every node now has its own keys (run `backupvault node"
                    " init` on each node and list the keys it prints under [[nodes]])"
                )
            nodes = tuple(
                FleetNode(
                    int(n["index"]),
                    str(n["url"]),
                    _hex(n["identity_public_key"], "identity_public_key"),
                    _hex(n["hpke_public_key"], "hpke_public_key"),
                    _key(n["signing_public_key"], "signing_public_key"),
                    str(n.get("peer", "")),
                )
                for n in data["nodes"]
            )
            nodes = _by_index(nodes, path)
            return cls(
                _hex(data["fleet_id"], "fleet_id"),
                int(data.get("guess_limit", 10)),
                nodes,
                tuple(_key(k, "relay_public_keys") for k in data["relay_public_keys"]),
                str(data["account_issuer"]),
                _key(data["account_issuer_public_key"], "account_issuer_public_key"),
                None if "epoch" not in data else int(data["epoch"]),
                None if "measurement" not in data else _hex(data["measurement"], "measurement"),
                int(data.get("retired_below", 0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise _incomplete("fleet file", path, err) from None

    def save(self, path: Path) -> None:
        deployed: dict[str, Any] = {}
        if self.epoch is not None:
            deployed["epoch"] = self.epoch
        if self.measurement is not None:
            deployed["measurement"] = self.measurement.hex()
        if self.retired_below:
            deployed["retired_below"] = self.retired_below
        write_toml(
            path,
            {
                "fleet_id": self.fleet_id.hex(),
                **deployed,
                "guess_limit": self.guess_limit,
                "relay_public_keys": [k.hex() for k in self.relay_public_keys],
                "account_issuer": self.account_issuer,
                "account_issuer_public_key": self.account_issuer_public_key.hex(),
                "nodes": [
                    {
                        "index": n.index,
                        "url": n.url,
                        "identity_public_key": n.identity_public_key.hex(),
                        "hpke_public_key": n.hpke_public_key.hex(),
                        "signing_public_key": n.signing_public_key.hex(),
                        **({"peer": n.peer} if n.peer else {}),
                    }
                    for n in self.nodes
                ],
            },
        )


def _by_index(nodes: tuple[FleetNode, ...], path: Path) -> tuple[FleetNode, ...]:
    """The fleet file's [[nodes]] in index order, as the deployment record lists them: a
    pinned client config (`fleet client-config`) takes node i's keys from place i. Written
    in another order (node 1's table first), the record was right and every pinned client
    sealed node 0's requests to node 1's key. Indexes other than 0 .. N-1, each once, are
    refused here, as the record refuses them."""
    if len(nodes) > MAX_FLEET_NODES:
        raise InvalidInput(
            f"fleet file {path}: {len(nodes)} [[nodes]]; a fleet has at most"
            f" {MAX_FLEET_NODES} (an entry's manifest names a commitment for each share a"
            " recovery needs, and must fit a node's answer)",
            hint="make the fleet of fewer nodes (an odd number: 5, 7, 9, ...)",
        )
    ordered = tuple(sorted(nodes, key=lambda n: n.index))
    if [n.index for n in ordered] != list(range(len(ordered))):
        raise InvalidInput(
            f"fleet file {path}: its [[nodes]] have the indexes"
            f" {', '.join(str(n.index) for n in nodes)}; a fleet of {len(nodes)} nodes has"
            f" each of 0 .. {len(nodes) - 1} once",
            hint="give each node's [[nodes]] table the `index` of its node.toml",
        )
    return ordered


@dataclass(frozen=True)
class NodeConfig:
    index: int
    host: str
    port: int
    data_dir: Path
    fleet_file: Path
    token: TokenConfig
    #: host:port the peer listener binds to; None: the node's `peer` in the fleet file.
    peer_listen: str | None = None
    #: What the node's HTTP port takes at once (serving.ServerLimits; docs/operations.md).
    limits: ServerLimits = field(default_factory=ServerLimits)

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        data = load_toml(path, "node config")
        check_fields(path, "node config", data, _NODE_FIELDS, _GUIDE)
        # Absolute, so paths made from it work wherever they are used (a store is opened
        # by file URI, which a relative path cannot be).
        base = path.parent.resolve()
        try:
            node, token = data["node"], data["token"]
            host, port = _listen(node["listen"], path)
            data_dir = base / node["data_dir"]
            if "pin_file" in token:
                pin = read_pin_file(base / token["pin_file"], data_dir)
            else:
                env = token.get("pin_env", "BACKUPVAULT_TOKEN_PIN")
                pin = os.environ.get(env, "")
                if not pin:
                    raise InvalidInput(f"set the token PIN in ${env} or give pin_file")
            conf = token.get("softhsm2_conf")
            return cls(
                int(node["index"]),
                host,
                port,
                data_dir,
                base / node.get("fleet_file", "fleet.toml"),
                TokenConfig(
                    Path(token["module"]),
                    str(token["label"]),
                    pin,
                    None if conf is None else base / conf,
                ),
                None if "peer_listen" not in node else str(node["peer_listen"]),
                _limits(node, path),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise _incomplete("node config", path, err) from None


def _listen(value: Any, path: Path) -> tuple[str, int]:
    """[node] listen as (host, port): a port from 1 to 65535. `int()` alone took any
    number, and the resolver wraps a port past 65535: `127.0.0.1:70000` (a digit too
    many) had the node serve on port 4464 while its log said "listening on
    127.0.0.1:70000"; port 0 had it serve on a port the kernel chose, which nothing told
    the relay or the operator (the log named port 0)."""
    host, port = split_host_port(str(value))
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise InvalidInput(
            f"node config {path}: listen {str(value)[:80]!r} is not host:port with a port"
            " from 1 to 65535",
            hint='give the address the relay reaches this node at, such as "127.0.0.1:7101"',
        )
    return host or "127.0.0.1", int(port)


def _limits(node: dict[str, Any], path: Path) -> ServerLimits:
    """[node] max_requests, max_connections and backlog; each optional."""
    defaults = ServerLimits()
    try:
        return ServerLimits(
            node.get("max_requests", defaults.max_requests),
            node.get("max_connections", defaults.max_connections),
            node.get("backlog", defaults.backlog),
        )
    except ValueError as err:
        raise InvalidInput(f"node config {path}: {err}") from None


def read_pin_file(pin_file: Path, data_dir: Path) -> str:
    """The token PIN from `pin_file`, refused when it sits where it would leak: inside the
    node's data folder (whoever copies or backs up that folder, which holds the token store
    under SoftHSM2, would get the PIN with it), or in a file another host user can read or
    replace (group or other permission bits, or owned by another user). docs/operations.md,
    "The token PIN"."""
    try:
        resolved = pin_file.resolve(strict=True)
        info = resolved.stat()
    except OSError as err:
        raise InvalidInput(f"cannot read the token PIN file {pin_file}: {err.strerror}") from None
    if resolved.is_relative_to(data_dir.resolve()):
        raise InvalidInput(
            f"the token PIN file {pin_file} is inside the node's data folder {data_dir}:"
            " a copy or backup of that folder would hold the PIN with the data it protects",
            hint="move it outside data_dir (for example next to node.toml, mode 0600) and"
            " point pin_file at it, or give the PIN in $BACKUPVAULT_TOKEN_PIN (pin_env)",
        )
    if info.st_mode & 0o077 or info.st_uid != os.getuid():
        raise InvalidInput(
            f"the token PIN file {pin_file} can be read or changed by other host users"
            f" (mode {info.st_mode & 0o777:04o}, owner uid {info.st_uid})",
            hint=f"make it the node user's own, readable by it alone: chmod 600 {pin_file}",
        )
    try:
        pin = resolved.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"cannot read the token PIN file {pin_file}: {err}") from None
    return pin
