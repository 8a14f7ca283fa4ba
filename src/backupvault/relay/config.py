"""The relay's configuration: a dataclass, loadable from the `[relay]` table of a TOML file."""

from __future__ import annotations

import dataclasses
import datetime
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.config_fields import Fields, check_fields
from backupvault.errors import InvalidInput
from backupvault.protocol import COPY_BUDGET, is_valid_name
from backupvault.relay.limits import shown_url
from backupvault.tokens import load_operator_private_key, load_operator_public_key
from backupvault.transparency.bundle import FleetBundle
from backupvault.transparency.errors import TransparencyError


def load_relay_signing_key(source: bytes | Path) -> Ed25519PrivateKey:
    """The relay's hop key from PEM bytes or a PEM file (an Ed25519 private key)."""
    try:
        return load_operator_private_key(source)
    except InvalidInput as err:
        raise InvalidInput(f"signing_key: {err.message}") from None


def _check_node_urls(urls: tuple[str, ...], what: str) -> None:
    if not urls:
        raise InvalidInput(f"{what} needs at least one node URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidInput(f"node URL {url!r} must be http:// or https:// with a host")
        if parts.query or parts.fragment:
            raise InvalidInput(f"node URL {url!r} must not have a query or fragment")
    if len(set(urls)) != len(urls):
        raise InvalidInput(f"the node URLs of {what} must be distinct")


def _load_bundle(path: Path) -> tuple[bytes, FleetBundle]:
    """The bundle file's bytes and its parsed form (the relay checks only that it parses:
    clients verify it)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InvalidInput(
            f"cannot read the fleet bundle {path}: {err.strerror}",
            hint="`backupvault fleet deploy --witness URL` writes bundle.bin next to fleet.toml",
        ) from None
    try:
        return data, FleetBundle.from_bytes(data)
    except (TransparencyError, InvalidInput) as err:
        raise InvalidInput(f"{path} is not a fleet bundle: {err.message}") from None


_DEFAULT_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class PreviousFleet:
    """An older epoch of the fleet, still routed so that clients can migrate their entries
    from it: its nodes and its bundle (the epoch is the bundle record's)."""

    node_urls: tuple[str, ...]
    bundle_file: Path
    bundle: bytes = field(default=b"", init=False, repr=False, compare=False)
    epoch: int = field(default=0, init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_urls", tuple(u.rstrip("/") for u in self.node_urls))
        _check_node_urls(self.node_urls, f"the previous fleet of {self.bundle_file}")
        data, parsed = _load_bundle(self.bundle_file)
        object.__setattr__(self, "bundle", data)
        object.__setattr__(self, "epoch", parsed.operator_signed.deployment().epoch)


@dataclass(frozen=True)
class RelayConfig:
    """Everything the relay needs. Times are in seconds, sizes in bytes."""

    #: Base URLs of the fleet's nodes, e.g. "http://10.0.0.5:8700" (no trailing path).
    node_urls: tuple[str, ...]
    #: Expected `iss` and `aud` of account tokens.
    issuer: str
    audience: str
    #: The operator's Ed25519 public key: PEM bytes, or the path of a PEM file.
    operator_public_key: bytes | Path
    #: The relay's own Ed25519 key (PEM bytes, or the path of a PEM file): it signs every
    #: request it forwards; the nodes answer only relays whose public key fleet.toml lists.
    signing_key: bytes | Path = field(repr=False)  # PEM bytes hold the private key
    #: Per-account token bucket: sustained rate and burst size.
    rate_per_minute: float = 60.0
    burst: int = 20
    #: Per client address: refused tokens (401s) at once, and refilled per minute; past
    #: them the address gets 429 before its token is checked. Raise both behind a proxy of
    #: your own, whose address every client then shares.
    refused_tokens_burst: int = 20
    refused_tokens_per_minute: float = 20.0
    #: Sealed request bodies larger than this are refused with 413. 0, the default: 64 KiB,
    #: or 8 KiB a node (protocol.COPY_BUDGET) for a fleet of more than 8. Less than that is
    #: refused: with long fleet tokens, registrations would never fit.
    max_body_bytes: int = 0
    #: Node answers larger than this are that node's bad answer. Sealed answers are padded
    #: to at most 1 KiB (protocol.RESPONSE_PADDED_SIZE): a larger cap only lets a hostile
    #: node make the relay hold and pass on more per request.
    max_response_bytes: int = 64 * 1024
    #: Timeouts when talking to a node: connecting, and the whole exchange.
    connect_timeout: float = 2.0
    request_timeout: float = 10.0
    #: How long /v1/health waits for each node, and how long a probe result is reused.
    health_timeout: float = 1.0
    health_cache_seconds: float = 2.0
    #: Forwards in flight at once across all accounts; beyond it, 503 relay_busy.
    max_concurrent_forwards: int = 256
    #: Open connections from one client address (an IPv6 client: its /64); beyond it a
    #: new one gets 503 too_many_connections. Raise it behind a proxy of your own (or a
    #: NAT many clients share), whose address every client then has.
    max_connections_per_address: int = 128
    #: Clock skew tolerated on token exp/nbf/iat.
    token_leeway_seconds: float = 30.0
    #: (account, Unix seconds) pairs: the account's tokens issued before that time are
    #: refused (`[relay.revoked_before]` in relay.toml: a leaked token is revoked by
    #: naming its account and a time after its issue, then minting the account a new one).
    revoked_before: tuple[tuple[str, float], ...] = ()
    #: Optional TLS for `serve` (PEM certificate chain and key).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Fleet transparency (docs/transparency.md): the current fleet's bundle, served at
    #: GET /v1/fleet/bundle; the witness whose consistency proofs /v1/fleet/consistency
    #: passes on; older epochs still routed at /v1/epochs/{epoch}/vault/{entry}/{op}.
    bundle_file: Path | None = None
    witness_url: str | None = None
    previous_fleets: tuple[PreviousFleet, ...] = ()
    #: Redis holding the rate limits' buckets for every relay in front of the fleet
    #: (redis://, rediss:// or unix://); none: each relay process keeps its own.
    shared_limits_url: str | None = field(default=None, repr=False)  # may hold a password
    _bundle: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _epoch: int | None = field(default=None, init=False, repr=False, compare=False)
    _public_key: Ed25519PublicKey | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _signing_key: Ed25519PrivateKey | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        urls = tuple(self.node_urls)
        object.__setattr__(self, "node_urls", tuple(u.rstrip("/") for u in urls))
        _check_node_urls(self.node_urls, "the relay")
        self._check_transparency()
        if not self.issuer or not self.audience:
            raise InvalidInput("issuer and audience must not be empty")
        positive = {
            "rate_per_minute": self.rate_per_minute,
            "refused_tokens_per_minute": self.refused_tokens_per_minute,
            "connect_timeout": self.connect_timeout,
            "request_timeout": self.request_timeout,
            "health_timeout": self.health_timeout,
        }
        for name, value in positive.items():
            if not _is_number(value) or not value > 0 or not math.isfinite(value):
                raise InvalidInput(f"{name} must be a positive number")
        for name, value in {
            "health_cache_seconds": self.health_cache_seconds,
            "token_leeway_seconds": self.token_leeway_seconds,
        }.items():
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                raise InvalidInput(f"{name} must be a number >= 0")
        self._set_body_limit()
        for name, count in {
            "burst": self.burst,
            "refused_tokens_burst": self.refused_tokens_burst,
            "max_body_bytes": self.max_body_bytes,
            "max_response_bytes": self.max_response_bytes,
            "max_concurrent_forwards": self.max_concurrent_forwards,
            "max_connections_per_address": self.max_connections_per_address,
        }.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise InvalidInput(f"{name} must be a whole number >= 1")
        if self.shared_limits_url is not None:
            scheme = urlsplit(self.shared_limits_url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                raise InvalidInput(
                    f"shared_limits_url {shown_url(self.shared_limits_url)!r} must be a"
                    " redis://, rediss:// or unix:// URL (of the Redis every relay shares)"
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("tls_cert and tls_key go together: give both or neither")
        object.__setattr__(self, "_public_key", load_operator_public_key(self.operator_public_key))
        object.__setattr__(self, "_signing_key", load_relay_signing_key(self.signing_key))

    def _set_body_limit(self) -> None:
        """max_body_bytes as given, or its default; a limit some honest request of the
        largest fleet routed could exceed is refused (review s61: a fleet of 11 nodes whose
        tokens were 4 KiB could never register through the 64 KiB a body was at most)."""
        nodes = max(len(urls) for urls in self._fleets_routed())
        least = nodes * COPY_BUDGET
        if self.max_body_bytes == 0:
            object.__setattr__(self, "max_body_bytes", max(_DEFAULT_MAX_BODY, least))
        elif _is_number(self.max_body_bytes) and self.max_body_bytes < least:
            raise InvalidInput(
                f"max_body_bytes {self.max_body_bytes} is less than a fleet of {nodes} nodes"
                f" may send in one request ({nodes} × {COPY_BUDGET} = {least}): registrations"
                " and password changes would be refused",
                hint=f"give at least {least}, or leave max_body_bytes out for the default",
            )

    def _fleets_routed(self) -> list[tuple[str, ...]]:
        return [self.node_urls, *(fleet.node_urls for fleet in self.previous_fleets)]

    def _check_transparency(self) -> None:
        if self.witness_url is not None:
            parts = urlsplit(self.witness_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
                raise InvalidInput(
                    f"witness_url {self.witness_url!r} must be http(s)://host[:port]"
                )
            object.__setattr__(self, "witness_url", self.witness_url.rstrip("/"))
        if self.bundle_file is None:
            if self.previous_fleets:
                raise InvalidInput("previous_fleets need the current fleet's bundle_file too")
            return
        data, bundle = _load_bundle(self.bundle_file)
        record = bundle.operator_signed.deployment()
        object.__setattr__(self, "_bundle", data)
        object.__setattr__(self, "_epoch", record.epoch)
        object.__setattr__(self, "previous_fleets", tuple(self.previous_fleets))
        epochs = [p.epoch for p in self.previous_fleets]
        if len(set(epochs)) != len(epochs) or any(e >= record.epoch for e in epochs):
            raise InvalidInput(
                f"previous fleets must have distinct epochs older than the current {record.epoch}"
                f" (their bundles say {sorted(epochs)})"
            )
        retired = sorted(e for e in epochs if e < record.retired_below)
        if retired:
            # Clients would never ask them (the record retires them): routing them only
            # keeps nodes on the network that may be anyone's by now.
            raise InvalidInput(
                f"the current record (epoch {record.epoch}) retires epochs below"
                f" {record.retired_below}, and previous_fleets still lists {retired}: remove"
                " them from [[relay.previous_fleets]] and stop their nodes"
            )
        for previous in self.previous_fleets:
            fleet_id = FleetBundle.from_bytes(previous.bundle).operator_signed.deployment()
            if fleet_id.fleet_id != record.fleet_id:
                raise InvalidInput(f"{previous.bundle_file} is for another fleet id")

    @property
    def bundle(self) -> bytes | None:
        """The current fleet's bundle (bytes, as clients receive them), if configured."""
        return self._bundle

    @property
    def epoch(self) -> int | None:
        """The current fleet's epoch, from its bundle."""
        return self._epoch

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The operator's verification key, parsed (and checked) when the config was made."""
        assert self._public_key is not None
        return self._public_key

    @property
    def node_signing_key(self) -> Ed25519PrivateKey:
        """The relay's key for the relay → node hop, parsed when the config was made."""
        assert self._signing_key is not None
        return self._signing_key

    @property
    def rate_per_second(self) -> float:
        return self.rate_per_minute / 60.0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_PATH_KEYS = {"operator_public_key", "signing_key", "tls_cert", "tls_key", "bundle_file"}


def _path(raw: object, key: str, base_dir: Path | None) -> Path:
    if not isinstance(raw, str):
        raise InvalidInput(f"{key} must be a string")
    path = Path(raw).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return path


def _previous_fleets(raw: object, base_dir: Path | None) -> tuple[PreviousFleet, ...]:
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise InvalidInput("previous_fleets is a list of tables ([[relay.previous_fleets]])")
    fleets = []
    for table in raw:
        unknown = sorted(set(table) - {"nodes", "bundle_file"})
        if unknown or "nodes" not in table or "bundle_file" not in table:
            raise InvalidInput(
                "each [[relay.previous_fleets]] has exactly 'nodes' and 'bundle_file'"
            )
        nodes = table["nodes"]
        if not isinstance(nodes, list) or not all(isinstance(u, str) for u in nodes):
            raise InvalidInput("previous_fleets nodes must be a list of URL strings")
        fleets.append(
            PreviousFleet(tuple(nodes), _path(table["bundle_file"], "bundle_file", base_dir))
        )
    return tuple(fleets)


def _revoked_before(table: object) -> tuple[tuple[str, float], ...]:
    """`[relay.revoked_before]`: account = a date and time with its offset."""
    if not isinstance(table, dict):
        raise InvalidInput(
            "revoked_before must be a table of account = time, e.g. alice = 2026-12-04T17:00:00Z"
        )
    revoked = []
    for account, when in table.items():
        if not is_valid_name(account):
            raise InvalidInput(
                f"revoked_before: {account!r} is not an account name (1-64 of [A-Za-z0-9._-])"
            )
        if not isinstance(when, datetime.datetime) or when.utcoffset() is None:
            raise InvalidInput(
                f"revoked_before.{account} must be a date and time with its offset,"
                " e.g. 2026-12-04T17:00:00Z"
            )
        revoked.append((account, when.timestamp()))
    return tuple(revoked)


def config_from_mapping(table: dict[str, Any], *, base_dir: Path | None = None) -> RelayConfig:
    """A RelayConfig from the keys of a `[relay]` table; relative paths are taken from
    `base_dir` (the config file's folder)."""
    known = {f.name for f in dataclasses.fields(RelayConfig) if f.init}
    known.add("nodes")
    unknown = sorted(set(table) - known)
    if unknown:
        raise InvalidInput(f"unknown relay setting(s): {', '.join(unknown)}")
    values = dict(table)
    if "nodes" in values:
        if "node_urls" in values:
            raise InvalidInput("give 'nodes' or 'node_urls', not both")
        values["node_urls"] = values.pop("nodes")
    missing = [
        k
        for k in ("node_urls", "issuer", "audience", "operator_public_key", "signing_key")
        if k not in values
    ]
    if missing:
        raise InvalidInput(f"missing relay setting(s): {', '.join(missing)}")
    nodes = values["node_urls"]
    if not isinstance(nodes, list) or not all(isinstance(u, str) for u in nodes):
        raise InvalidInput("nodes must be a list of URL strings")
    values["node_urls"] = tuple(nodes)
    for key in ("issuer", "audience"):
        if not isinstance(values[key], str):
            raise InvalidInput(f"{key} must be a string")
    for key in ("witness_url", "shared_limits_url"):
        if key in values and not isinstance(values[key], str):
            raise InvalidInput(f"{key} must be a string")
    if "previous_fleets" in values:
        values["previous_fleets"] = _previous_fleets(values["previous_fleets"], base_dir)
    if "revoked_before" in values:
        values["revoked_before"] = _revoked_before(values["revoked_before"])
    for key in _PATH_KEYS & set(values):
        raw = values[key]
        pem = isinstance(raw, str) and raw.lstrip().startswith("-----BEGIN")
        if key in ("operator_public_key", "signing_key") and pem:
            values[key] = raw.encode()
            continue
        values[key] = _path(raw, key, base_dir)
    return RelayConfig(**values)


def load_config(path: str | Path) -> RelayConfig:
    """Read the `[relay]` table of a TOML file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as err:
        raise InvalidInput(f"cannot read the relay config {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidInput(f"{path} is not valid TOML: {err}") from None
    table = document.get("relay")
    if not isinstance(table, dict):
        raise InvalidInput(f"{path} has no [relay] table")
    # Beside [relay] (whose settings config_from_mapping checks), only `listen`, which
    # `relay serve` reads: a misspelt one left the relay on the default port.
    check_fields(path, "relay config", document, _FILE_FIELDS, "docs/relay.md lists every setting")
    return config_from_mapping(table, base_dir=path.parent)


#: What relay.toml holds outside [relay].
_FILE_FIELDS: Fields = {"relay": None, "listen": None}
