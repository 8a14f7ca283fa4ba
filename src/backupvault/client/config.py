"""The client's config file (`client.toml`): where the relay is and which fleet to trust.

relay_url = "http://127.0.0.1:7100"
account = "local-user"
token = "<account JWT from the operator>"
fleet_id = "<hex>"
fleet_public_key = "<hex: kem id || HPKE public key>"     # pinned
opaque_server_public_key = "<hex>"                       # pinned
entry = "backup-root-key"                                 # optional
storage = "file:///backups"                               # optional default --storage
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backupvault.client.vault import DEFAULT_ENTRY, VaultClient
from backupvault.crypto.seal import FleetPublicKey
from backupvault.errors import InvalidInput


@dataclass(frozen=True)
class ClientConfig:
    relay_url: str
    account: str
    token: str
    fleet_id: bytes
    fleet_public_key: FleetPublicKey
    opaque_server_public_key: bytes
    entry: str = DEFAULT_ENTRY
    storage: str | None = None

    @classmethod
    def load(cls, path: Path) -> ClientConfig:
        try:
            data: dict[str, Any] = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise InvalidInput(
                f"config file {path} does not exist",
                hint="`backupvault local up --dir DIR` writes DIR/client.toml",
            ) from None
        except tomllib.TOMLDecodeError as err:
            raise InvalidInput(f"config file {path} is not valid TOML: {err}") from None
        try:
            return cls(
                relay_url=str(data["relay_url"]),
                account=str(data["account"]),
                token=str(data["token"]),
                fleet_id=bytes.fromhex(data["fleet_id"]),
                fleet_public_key=FleetPublicKey.from_bytes(bytes.fromhex(data["fleet_public_key"])),
                opaque_server_public_key=bytes.fromhex(data["opaque_server_public_key"]),
                entry=str(data.get("entry", DEFAULT_ENTRY)),
                storage=data.get("storage"),
            )
        except KeyError as err:
            raise InvalidInput(f"config file {path} lacks {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise InvalidInput(f"config file {path} has a malformed value: {err}") from None

    def vault(self) -> VaultClient:
        return VaultClient(
            self.relay_url,
            self.token,
            self.account,
            self.fleet_id,
            self.fleet_public_key,
            self.opaque_server_public_key,
            entry=self.entry,
        )
