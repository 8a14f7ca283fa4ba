"""The client's config file (`client.toml`): where the relay is and which fleet to trust.

Pinned fleet keys (the default, `trust = "pinned"`):

    relay_url = "http://127.0.0.1:7100"
    account = "local-user"
    token = "<account JWT for the relay, from the account issuer>"
    fleet_token = "<account JWT for the fleet: only ever sent inside the seal>"
    device_key = "<64 hex: this device's Ed25519 seed; the fleet token is bound to it>"
    fleet_id = "<hex>"
    node_public_keys = ["<hex: kem id || HPKE public key>"]  # pinned, one per node by index
    node_signing_keys = ["<hex: Ed25519 public key>"]         # pinned, one per node by index
    epoch = 0                                                 # the fleet's node-set epoch
    entry = "backup-root-key"                                 # optional
    storage = "file:///backups"                               # optional default --storage
    [[previous_fleets]]            # optional: an epoch this config was pinned to before a
    epoch = 0                      # rotation, whose entry the client moves to the current
    node_public_keys = ["<hex>"]   # one at its next recovery (as an OTA client does);
    node_signing_keys = ["<hex>"]  # `local rotate` writes them

Over-the-air fleet keys (`trust = "ota"`, see client/trust.py and docs/transparency.md):

    trust = "ota"
    relay_url, account, token, fleet_token, device_key, entry, storage  # as above
    operator_public_key = "<64 hex, or a PEM file>"           # signs deployment records
    witness_public_key = "<name+id+base64 note verifier key>" # the witness's vkey
    witness_name = "<the witness's name>"                     # optional with a vkey
    fleet_id = "<hex>"                    # optional: else the first fleet accepted is kept
    witness_url = "https://witness.example"  # where that witness answers (fleet heads)
    max_bundle_age = 86400                # refuse a fleet whose witness heads are older
    state_file = "client-state.json"      # default: <config name>-state.json next to it
    allowed_measurements = ["<hex>"]      # optional: accept only these firmware builds
    [[witnesses]]                         # optional: more witnesses that must agree (last:
    public_key = "<vkey>"                 # TOML puts the lines after it into the table)
    url = "https://witness2.example"

Either mode keeps the deliveries this device still owes the fleet (the shares of a
degraded registration or password change, an erasure not yet confirmed) in
`<config name>-pending.json` next to the config (docs/format.md, "Pending deliveries").

Relative file paths (`state_file`, an `operator_public_key` PEM file) are relative to the
config file's folder; `storage` is taken as `--storage` would be, so a relative folder
there is relative to the current folder (docs/cli.md). A leading `~` is the user's home
folder (in `storage` too).

Every field has its type (a string in quotes, a whole number, a list, a table); a field
of another type, or one the client does not know (a misspelt name, or a field after a
`[[witnesses]]` or `[[previous_fleets]]` table, which TOML puts into that table), is
refused with an error naming the file and the field, not ignored; so is a field of the
other trust mode (pinned node keys in an OTA config, a witness in a pinned one).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.client import DEFAULT_ENTRY
from backupvault.client.pending import PendingStore
from backupvault.client.threshold import FleetKeys, ThresholdVault
from backupvault.client.trust import (
    FleetSession,
    OtaTrust,
    WitnessEndpoint,
    load_operator_key,
    load_witness_verifier,
    ota_session,
)
from backupvault.client.vault import VaultClient
from backupvault.codec import epoch_number
from backupvault.crypto import ksf
from backupvault.crypto.ed25519 import check_public_key
from backupvault.crypto.seal import NodePublicKey
from backupvault.errors import InvalidInput, UsageError
from backupvault.protocol import is_valid_name
from backupvault.tokens import device_key_from_hex
from backupvault.transparency.head import DEFAULT_MAX_AGE
from backupvault.transparency.record import MAX_FLEET_ID, MEASUREMENT_LEN

TRUST_MODES = ("pinned", "ota")

T = TypeVar("T")


class MalformedField(InvalidInput):
    """A field of a client config holds what it cannot: `field` names it (`fleet client-config`
    names the option the field came from)."""

    def __init__(self, path: Path, field: str, what: str, hint: str) -> None:
        super().__init__(f"config file {path}: field {field!r} is malformed: {what}", hint=hint)
        self.field = field


def _field(path: Path, name: str, parse: Callable[[], T]) -> T:
    """Parse one field; a malformed value names the file and the field."""
    try:
        return parse()
    except InvalidInput as err:
        if err.message.startswith(f"config file {path}"):
            raise
        raise MalformedField(
            path,
            name,
            err.message,
            f"copy {name} again from the operator's fleet.toml (or the config they sent)",
        ) from None


#: Every field a client config may hold at its top level (in either trust mode)...
_FIELDS = frozenset(
    {
        "trust", "relay_url", "account", "token", "fleet_token", "device_key", "entry",
        "storage", "fleet_id",
        # pinned
        "node_public_keys", "node_signing_keys", "epoch", "previous_fleets",
        "fleet_public_key",  # an older version's; refused with a message of its own
        # over the air
        "operator_public_key", "witness_public_key", "witness_name", "witness_url",
        "witnesses", "max_bundle_age", "state_file", "allowed_measurements",
    }
)  # fmt: skip
#: Fields of one trust mode only: in a config of the other, each is refused rather than
#: ignored (node keys in an OTA config pinned nothing, yet whoever wrote them thought so).
_PINNED_ONLY = frozenset(
    {"node_public_keys", "node_signing_keys", "epoch", "previous_fleets", "fleet_public_key"}
)
_OTA_ONLY = frozenset(
    {
        "operator_public_key", "witness_public_key", "witness_name", "witness_url",
        "witnesses", "max_bundle_age", "state_file", "allowed_measurements",
    }
)  # fmt: skip
#: ... and in each of its tables.
_TABLE_FIELDS = {
    "previous_fleets": frozenset({"epoch", "node_public_keys", "node_signing_keys"}),
    "witnesses": frozenset({"public_key", "url"}),
}
#: Fields whose value is never repeated in a message: they hold secrets.
_SECRETS = frozenset({"token", "fleet_token", "device_key"})


def _check_fields(path: Path, data: dict[str, Any]) -> None:
    """Refuse a field the client does not read: a misspelt `storge` was ignored, and the
    error that came later told the user to set `storage`, which they had."""
    for name in data:
        if name not in _FIELDS:
            _unknown(path, name, _FIELDS, "")
    for table, known in _TABLE_FIELDS.items():
        entries = data.get(table)
        if not isinstance(entries, list):
            continue  # its own check names the field
        for number, entry in enumerate(entries, 1):
            if not isinstance(entry, dict):
                continue
            for name in entry:
                if name not in known:
                    _unknown(path, name, known, f" in [[{table}]] table {number}", table)


def _check_mode(path: Path, data: dict[str, Any], trust: str) -> None:
    """Refuse a field of the other trust mode: it would be ignored without a word."""
    if trust == "ota":
        for name in sorted(_PINNED_ONLY.intersection(data)):
            raise InvalidInput(
                f"config file {path}: field {name!r} pins the fleet's keys, but this config"
                ' has trust = "ota"',
                hint="an ota client takes the fleet's keys from the witness-logged bundle and"
                f" would ignore pinned ones: remove {name} (and the other pinned fields)"
                f' from {path}, or write trust = "pinned" to talk only to the pinned nodes',
            )
        return
    for name in sorted(_OTA_ONLY.intersection(data)):
        default = "" if "trust" in data else " (the default)"
        raise InvalidInput(
            f"config file {path}: field {name!r} is for over-the-air fleet keys, but this"
            f' config has trust = "pinned"{default}',
            hint=f'add trust = "ota" at the top of {path} to take the fleet\'s keys from'
            f" witness-logged bundles, or remove {name} (and the other over-the-air fields)"
            " to use the pinned keys only",
        )


def _unknown(
    path: Path, name: str, known: frozenset[str], where: str, table: str | None = None
) -> None:
    if table is not None and name in _FIELDS:
        hint = (
            f"TOML puts every line after a [[{table}]] header into that table: move"
            f" {name} above the first [[{table}]] line of {path}"
        )
    elif close := difflib.get_close_matches(name, sorted(known), n=1):
        hint = f"did you mean {close[0]!r}? rename it in {path}"
    else:
        hint = (
            f"remove it from {path}: a client config holds only the fields docs/operations.md"
            " and docs/transparency.md describe"
        )
    raise InvalidInput(f"config file {path}: unknown field {name!r}{where}", hint=hint)


def _kind(value: object) -> str:
    """What TOML calls a value of this type."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, str):
        return "a string"
    return "a date or time"


def _string(
    path: Path,
    data: dict[str, Any],
    name: str,
    default: str | None = None,
    *,
    label: str | None = None,
) -> str:
    """A string field (KeyError if it is missing and has no default); `label` names it in
    a message, if not `name` (a field of a table)."""
    value = data[name] if default is None else data.get(name, default)
    if isinstance(value, str):
        return value
    shown = "" if name in _SECRETS else f" {value!r}"
    raise MalformedField(
        path,
        label or name,
        f"a string in quotes, not {_kind(value)}{shown}",
        f'write one value in quotes: {name} = "..."',
    )


def _name(path: Path, data: dict[str, Any], name: str, default: str | None = None) -> str:
    """`account` or `entry`: a name the vault takes (docs/protocol.md, "Encoding"). Every
    vault command refused another with "account must be ...", naming neither the file
    nor the field, and `fleet client-config --account alice@example.com` wrote one."""
    value = _string(path, data, name, default)
    if not is_valid_name(value):
        raise MalformedField(
            path,
            name,
            f"1 to 64 characters of letters, digits, '.', '_' or '-', not {value[:80]!r}",
            f"write the {name} name the vault knows you by (the operator's account system"
            " gives it, as the account of your tokens)"
            if name == "account"
            else f'write {name} = "{DEFAULT_ENTRY}" (the default), or another such name',
        )
    return value


def _url(
    path: Path, data: dict[str, Any], name: str, what: str, *, label: str | None = None
) -> str:
    """An http:// or https:// URL with a host: `relay_url = 42`, or "htp://...", was taken
    as given and failed as a relay that "did not answer (UnsupportedProtocol)", exit 5."""
    url = _string(path, data, name, label=label)
    try:
        parts = urlsplit(url)
        good = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a malformed port or IPv6 address
        good = False
    if not good:
        raise MalformedField(
            path,
            label or name,
            f"an http:// or https:// URL with a host, not {url!r}",
            f'write {what}, such as {name} = "https://host.example:8600"',
        )
    return url


def _strings(path: Path, data: dict[str, Any], name: str) -> list[str]:
    """A list of strings (KeyError if it is missing)."""
    value = data[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedField(
            path,
            name,
            f"a list of strings in quotes, not {_kind(value)} {value!r}",
            f'write it as {name} = ["...", "..."]',
        )
    return value


def _hex_field(path: Path, data: dict[str, Any], name: str) -> bytes:
    def parse() -> bytes:
        try:
            return bytes.fromhex(_string(path, data, name))
        except ValueError:
            raise InvalidInput("not hexadecimal") from None

    return _field(path, name, parse)


def _fleet_id(path: Path, data: dict[str, Any]) -> bytes:
    """`fleet_id`: hex of 1 to 64 bytes, as a deployment record holds it."""
    fleet_id = _hex_field(path, data, "fleet_id")

    def parse() -> bytes:
        if not 1 <= len(fleet_id) <= MAX_FLEET_ID:
            raise InvalidInput(
                f"1 to {MAX_FLEET_ID} bytes ({2 * MAX_FLEET_ID} hex digits at most), not"
                f" {len(fleet_id)}"
            )
        return fleet_id

    return _field(path, "fleet_id", parse)


@dataclass(frozen=True)
class PinnedFleet:
    """An epoch a pinned config was pinned to before a rotation, which the relay still
    routes: a recovery that finds the entry empty on the current epoch moves it from here
    (docs/transparency.md, "Rotation and migration")."""

    epoch: int
    node_public_keys: tuple[NodePublicKey, ...]
    node_signing_keys: tuple[bytes, ...]


@dataclass(frozen=True)
class ClientConfig:
    relay_url: str
    account: str
    #: Secrets (the tokens and the device key) are left out of the config's repr, so a
    #: config in a log line or a traceback's locals shows none of them.
    token: str = field(repr=False)
    #: The account's token for the vault nodes (audience: the fleet), sealed with every
    #: request so that the relay never sees it.
    fleet_token: str = field(repr=False)
    #: Pinned mode: the fleet's keys. OTA mode: `fleet_id` optionally names the expected
    #: fleet; the keys come from the verified bundle.
    fleet_id: bytes | None
    #: Pinned mode: each node's HPKE key, by node index (a request for node i is sealed
    #: to the i-th).
    node_public_keys: tuple[NodePublicKey, ...] | None
    #: Pinned mode: each node's Ed25519 signing key, by node index (share
    #: acknowledgements), and the node-set epoch; t is N//2+1.
    node_signing_keys: tuple[bytes, ...] | None = None
    epoch: int = 0
    entry: str = DEFAULT_ENTRY
    storage: str | None = None
    trust: str = "pinned"
    ota: OtaTrust | None = None
    #: The device key the fleet token is bound to (its `cnf` claim): it signs a proof per
    #: sealed copy, so a node cannot replay the token to another (docs/relay.md).
    device_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    #: Where this device keeps the deliveries it still owes the fleet; None: in memory.
    pending_file: Path | None = None
    #: Pinned mode: the epochs pinned before a rotation, newest first.
    previous_fleets: tuple[PinnedFleet, ...] = ()

    @classmethod
    def load(cls, path: Path) -> ClientConfig:
        return cls.parse(path, read_client_toml(path))

    @classmethod
    def parse(cls, path: Path, data: dict[str, Any]) -> ClientConfig:
        """The config `data` would be as the file `path` (which need not exist yet: paths
        in it are relative to its folder)."""
        _check_fields(path, data)
        trust = _string(path, data, "trust", "pinned")
        if trust not in TRUST_MODES:
            raise InvalidInput(
                f"config file {path}: trust is 'pinned' or 'ota', not {trust!r}",
                hint='write trust = "pinned" (the fleet\'s keys in the config) or trust = "ota"',
            )
        _check_mode(path, data, trust)
        try:
            common: dict[str, Any] = {
                "relay_url": _url(path, data, "relay_url", "the relay's URL"),
                "account": _name(path, data, "account"),
                "token": _string(path, data, "token"),
                "fleet_token": _string(path, data, "fleet_token"),
                "device_key": _device_key(path, data),
                "entry": _name(path, data, "entry", DEFAULT_ENTRY),
                "storage": None if "storage" not in data else _home(_string(path, data, "storage")),
                "trust": trust,
                "pending_file": path.parent / f"{path.stem}-pending.json",
            }
            if trust == "pinned":
                return cls(
                    fleet_id=_fleet_id(path, data),
                    node_public_keys=_field(
                        path, "node_public_keys", lambda: _node_keys(path, data)
                    ),
                    node_signing_keys=_field(
                        path, "node_signing_keys", lambda: _signing_keys(path, data)
                    ),
                    epoch=_field(
                        path, "epoch", lambda: epoch_number(data.get("epoch", 0), "the epoch")
                    ),
                    previous_fleets=_field(
                        path, "previous_fleets", lambda: _previous_fleets(path, data)
                    ),
                    **common,
                )
            base = path.parent
            fleet_id = _fleet_id(path, data) if "fleet_id" in data else None
            allowed = (
                None
                if "allowed_measurements" not in data
                else _strings(path, data, "allowed_measurements")
            )
            ota = OtaTrust(
                operator_key=_field(
                    path,
                    "operator_public_key",
                    # No record carries a small-order key: say so here, not as a refusal of
                    # every bundle the relay serves.
                    lambda: check_public_key(
                        load_operator_key(_home(_string(path, data, "operator_public_key")), base),
                        "the operator key",
                    ),
                ),
                witness=_field(
                    path,
                    "witness_public_key",
                    lambda: load_witness_verifier(
                        _string(path, data, "witness_public_key"),
                        None if "witness_name" not in data else _string(path, data, "witness_name"),
                    ),
                ),
                state_file=base
                / _home(_string(path, data, "state_file", f"{path.stem}-state.json")),
                witness_url=_url(path, data, "witness_url", "the witness's URL"),
                others=tuple(_witness(path, i, w) for i, w in enumerate(_witnesses(path, data))),
                max_age=_field(path, "max_bundle_age", lambda: _max_age(data)),
                fleet_id=fleet_id,
                allowed_measurements=(
                    None
                    if allowed is None
                    else _field(
                        path,
                        "allowed_measurements",
                        lambda: frozenset(_measurement(m) for m in allowed),
                    )
                ),
            )
            return cls(
                fleet_id=fleet_id,
                node_public_keys=None,
                ota=ota,
                **common,
            )
        except KeyError as err:
            raise InvalidInput(
                f"config file {path} lacks {err.args[0]!r}",
                hint=f"a {trust} client config needs it (see docs/transparency.md)",
            ) from None
        except (TypeError, ValueError) as err:
            raise InvalidInput(
                f"config file {path} has a malformed value: {err}",
                hint=f"write {path} again: {_WRITES_ONE}",
            ) from None

    def session(
        self,
        *,
        ksf_params: ksf.Argon2idParams = ksf.DEFAULT_ARGON2ID,
        http: httpx.Client | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> FleetSession:
        """The vault: the pinned fleet, or (OTA) the fleet of the relay's bundle once it is
        verified; the verification happens here, before anything else is sent."""
        if self.ota is not None:
            return ota_session(
                self.ota,
                self.relay_url,
                self.token,
                self.account,
                entry=self.entry,
                ksf_params=ksf_params,
                http=http,
                fleet_token=self.fleet_token,
                device_key=self.device_key,
                notify=notify,
                pending=PendingStore(self.pending_file),
            )
        assert self.fleet_id is not None and self.node_public_keys is not None
        assert self.node_signing_keys is not None
        pending = PendingStore(self.pending_file)

        def pinned(
            epoch: int,
            node_public_keys: tuple[NodePublicKey, ...],
            node_signing_keys: tuple[bytes, ...],
            route: int | None,
        ) -> FleetSession:
            assert self.fleet_id is not None
            vault = VaultClient(
                self.relay_url,
                self.token,
                self.account,
                self.fleet_id,
                node_public_keys,
                entry=self.entry,
                ksf_params=ksf_params,
                http=http,
                epoch=route,
                fleet_token=self.fleet_token,
                device_key=self.device_key,
                notify=notify,
            )
            keys = FleetKeys(node_signing_keys, len(node_signing_keys) // 2 + 1, epoch)
            return FleetSession(ThresholdVault(vault, keys, notify=notify, pending=pending), epoch)

        def older() -> Iterator[tuple[int, FleetSession]]:
            # Reached at the relay's /v1/epochs/<E>/... route, as OTA clients reach theirs.
            for fleet in self.previous_fleets:
                yield (
                    fleet.epoch,
                    pinned(
                        fleet.epoch, fleet.node_public_keys, fleet.node_signing_keys, fleet.epoch
                    ),
                )

        current = pinned(self.epoch, self.node_public_keys, self.node_signing_keys, None)
        return FleetSession(current.threshold, self.epoch, older())


#: Where a client config comes from, for the hint of a file that is not one.
_WRITES_ONE = (
    "`backupvault local up --dir DIR` writes DIR/client.toml, and `backupvault fleet"
    " client-config` one from the operator's fleet.toml"
)


#: Client config fields that the operator's files next to it have too: fleet.toml's
#: `fleet_id` and `epoch`, node.toml's `[token]` table (a client's token is a string).
_SHARED_FIELDS = frozenset({"fleet_id", "epoch"})


def _a_client_field(name: str, value: object) -> bool:
    if name == "token":
        return isinstance(value, str)
    return name in _FIELDS and name not in _SHARED_FIELDS


def read_client_toml(path: Path) -> dict[str, Any]:
    """The config's TOML table, if the file is a client config's: TOML text holding at
    least one field only a client config has (whose fields `ClientConfig.parse` then
    checks). Any other file is a usage error (exit 2): the wrong file was given, such as
    the fleet.toml beside client.toml, which was told to rename its `measurement`."""
    data = _read_toml(path)
    if data and not any(_a_client_field(name, value) for name, value in data.items()):
        if "node" in data or isinstance(data.get("token"), dict):
            what = "it looks like a node's node.toml ([node], and [token] as a table)"
        elif "fleet_id" in data and "nodes" in data:
            what = "it looks like the operator's fleet.toml (fleet_id and [[nodes]])"
        else:
            what = f"it holds {', '.join(sorted(data)[:3])}{', ...' if len(data) > 3 else ''}"
        raise UsageError(
            f"config file {path} is not a client config: {what}, and none of a client"
            " config's own fields (relay_url, account, a token string, ...)",
            hint=f"check the path; {_WRITES_ONE}",
        )
    return data


def _read_toml(path: Path) -> dict[str, Any]:
    """The config's TOML table. A file that cannot be read as TOML text (missing, a
    folder, binary, malformed) is a usage error (exit 2), as a missing config is: the
    wrong file was given."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist", hint=_WRITES_ONE) from None
    except IsADirectoryError:
        raise UsageError(
            f"config file {path} is a folder, not a file",
            hint=f"give the client.toml file itself; {_WRITES_ONE}",
        ) from None
    except UnicodeDecodeError:
        raise UsageError(
            f"config file {path} is not a client config: it is not text (not UTF-8)",
            hint=f"check the path: a client config is a small TOML text file; {_WRITES_ONE}",
        ) from None
    except OSError as err:
        raise UsageError(
            f"cannot read config file {path}: {err.strerror}",
            hint="check the path and that this user may read the file",
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        at = re.search(r"at line (\d+)", str(err))
        where = f"line {at.group(1)} of {path}" if at else str(path)
        raise UsageError(
            f"config file {path} is not valid TOML: {err}",
            hint=f'fix {where} (each setting is one `name = "value"` line), or write the'
            f" file again: {_WRITES_ONE}",
        ) from None


def _hex(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise InvalidInput(f"{value!r} is not hexadecimal") from None


def _measurement(value: str) -> bytes:
    """A firmware measurement: 32 bytes in hex (one cut short matched no fleet)."""
    measurement = _hex(value)
    if len(measurement) != MEASUREMENT_LEN:
        raise InvalidInput(
            f"{value!r} is not a measurement: each is {MEASUREMENT_LEN} bytes"
            f" ({2 * MEASUREMENT_LEN} hex digits), as `backupvault fleet measure` prints it"
        )
    return measurement


def _witnesses(path: Path, data: dict[str, Any]) -> list[dict[str, Any]]:
    tables = data.get("witnesses", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise MalformedField(
            path,
            "witnesses",
            f"[[witnesses]] tables, each with public_key and url, not {_kind(tables)}",
            'write each as a [[witnesses]] line, then public_key = "..." and url = "..."',
        )
    return tables


def _witness(path: Path, index: int, table: dict[str, Any]) -> WitnessEndpoint:
    url = _url(path, table, "url", "this witness's URL", label=f"witnesses[{index}].url")
    key = _string(path, table, "public_key", label=f"witnesses[{index}].public_key")
    verifier = _field(
        path, f"witnesses[{index}].public_key", lambda: load_witness_verifier(key, None)
    )
    return WitnessEndpoint(verifier, url)


def _device_key(path: Path, data: dict[str, Any]) -> Ed25519PrivateKey:
    if "device_key" not in data:
        raise InvalidInput(
            f"config file {path} has no device_key: fleet tokens are now bound to a device key",
            hint="`backupvault local up` writes a new client.toml; otherwise make a key"
            " (`backupvault relay device-key`) and ask the operator for a fleet token"
            " minted for its public half (`backupvault relay mint-token --device-key`)",
        )
    key = _string(path, data, "device_key")
    return _field(path, "device_key", lambda: device_key_from_hex(key))


def _node_keys(path: Path, data: dict[str, Any]) -> tuple[NodePublicKey, ...]:
    if "fleet_public_key" in data and "node_public_keys" not in data:
        raise InvalidInput(
            "this config pins one key for the whole fleet (an older version); the fleet now"
            " has one key per node: write a new config (`backupvault fleet client-config`)"
        )
    keys = data["node_public_keys"]
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise InvalidInput("a list of hex keys in quotes, one per node")
    try:
        return tuple(NodePublicKey.from_bytes(bytes.fromhex(key)) for key in keys)
    except ValueError:
        raise InvalidInput("not hexadecimal") from None


def _previous_fleets(path: Path, data: dict[str, Any]) -> tuple[PinnedFleet, ...]:
    """`[[previous_fleets]]`, newest first: each an older epoch (below `epoch`) with its
    nodes' keys, as the current epoch's are given."""
    tables = data.get("previous_fleets", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise InvalidInput("a list of tables, each with epoch, node_public_keys, node_signing_keys")
    current = epoch_number(data.get("epoch", 0), "the epoch")
    fleets = []
    for table in tables:
        if "epoch" not in table:
            raise InvalidInput("each table needs its epoch")
        epoch = epoch_number(table["epoch"], "an earlier epoch")
        if epoch >= current:
            raise InvalidInput(f"epoch {epoch} is not older than the config's epoch {current}")
        fleets.append(PinnedFleet(epoch, _node_keys(path, table), _signing_keys(path, table)))
    if len({f.epoch for f in fleets}) != len(fleets):
        raise InvalidInput("an epoch is listed twice")
    return tuple(sorted(fleets, key=lambda f: f.epoch, reverse=True))


def _signing_keys(path: Path, data: dict[str, Any]) -> tuple[bytes, ...]:
    if "node_signing_keys" not in data:
        raise InvalidInput(
            "this config lists no node signing keys (it comes from an older version): write"
            " a new config (`backupvault fleet client-config`)"
        )
    keys = data["node_signing_keys"]
    if not isinstance(keys, list) or len(keys) != len(data.get("node_public_keys", [])):
        raise InvalidInput("a list of hex keys, one per node, as many as node_public_keys")
    if not all(isinstance(key, str) for key in keys):
        raise InvalidInput("a list of hex keys in quotes")
    try:
        decoded = tuple(bytes.fromhex(key) for key in keys)
    except ValueError:
        raise InvalidInput("not hexadecimal") from None
    if any(len(key) != 32 for key in decoded):
        raise InvalidInput("each is 32 bytes (64 hex digits)")
    # They verify the nodes' share acknowledgements: under a small-order key anyone's
    # forged signature verifies, as for the deployment record's keys.
    return tuple(check_public_key(key, f"node {i}'s signing key") for i, key in enumerate(decoded))


def _max_age(data: dict[str, Any]) -> int:
    """`max_bundle_age`: whole seconds, at least 1. A float was cut to an int (0.5: no
    head was ever fresh enough) and infinity was an OverflowError; 0 or less refused every
    bundle with a stale-head error that blamed the witness, not this field."""
    value = data.get("max_bundle_age", DEFAULT_MAX_AGE)
    if type(value) is not int or value < 1:
        raise InvalidInput(f"a whole number of seconds, at least 1, not {value!r}")
    return value


def others_can_read(path: Path) -> str | None:
    """Why a client config other host users can read or change is a risk, or None: asked
    once the file was read as a client config (`read_client_toml`), so that a wrong file
    (`--config /usr/bin/python3`) draws no advice to chmod it. It holds
    the account's tokens and the device key the fleet token is bound to: with them, anyone
    can act for the account (spend its password guesses, for one, until the key is gone).
    The tool writes it 0600; one written by hand or copied may not be. A warning, not a
    refusal: it may be on a file system without Unix permissions."""
    try:
        info = path.stat()
    except OSError:
        return None
    if not info.st_mode & 0o077 and info.st_uid == os.getuid():
        return None
    return (
        f"the client config {path} can be read or changed by other host users (mode"
        f" {info.st_mode & 0o777:04o}, owner uid {info.st_uid}): with its tokens and device"
        f" key they can act for this account (spend its password guesses); chmod 600 {path}"
    )


def _home(value: str) -> str:
    """`~` or `~/...` at the start of a path is the user's home folder."""
    return os.path.expanduser(value) if value.startswith("~") else value
