"""The relay's configuration: a dataclass, loadable from the `[relay]` table of a TOML file."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from backupvault.errors import InvalidInput
from backupvault.relay.auth import load_operator_public_key


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
    #: Per-account token bucket: sustained rate and burst size.
    rate_per_minute: float = 60.0
    burst: int = 20
    #: Sealed request bodies larger than this are refused with 413.
    max_body_bytes: int = 64 * 1024
    #: Node answers larger than this are treated as a bad node answer (502).
    max_response_bytes: int = 1024 * 1024
    #: Timeouts when talking to a node: connecting, and the whole exchange.
    connect_timeout: float = 2.0
    request_timeout: float = 10.0
    #: How long /v1/health waits for each node, and how long a probe result is reused.
    health_timeout: float = 1.0
    health_cache_seconds: float = 2.0
    #: Forwards in flight at once across all accounts; beyond it, 503 relay_busy.
    max_concurrent_forwards: int = 256
    #: Clock skew tolerated on token exp/nbf/iat.
    token_leeway_seconds: float = 30.0
    #: Optional TLS for `serve` (PEM certificate chain and key).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    _public_key: Ed25519PublicKey | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        urls = tuple(self.node_urls)
        object.__setattr__(self, "node_urls", tuple(u.rstrip("/") for u in urls))
        if not urls:
            raise InvalidInput("the relay needs at least one node URL")
        for url in self.node_urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise InvalidInput(f"node URL {url!r} must be http:// or https:// with a host")
            if parts.query or parts.fragment:
                raise InvalidInput(f"node URL {url!r} must not have a query or fragment")
        if len(set(self.node_urls)) != len(self.node_urls):
            raise InvalidInput("node URLs must be distinct")
        if not self.issuer or not self.audience:
            raise InvalidInput("issuer and audience must not be empty")
        positive = {
            "rate_per_minute": self.rate_per_minute,
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
        for name, count in {
            "burst": self.burst,
            "max_body_bytes": self.max_body_bytes,
            "max_response_bytes": self.max_response_bytes,
            "max_concurrent_forwards": self.max_concurrent_forwards,
        }.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise InvalidInput(f"{name} must be a whole number >= 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("tls_cert and tls_key go together: give both or neither")
        object.__setattr__(self, "_public_key", load_operator_public_key(self.operator_public_key))

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The operator's verification key, parsed (and checked) when the config was made."""
        assert self._public_key is not None
        return self._public_key

    @property
    def rate_per_second(self) -> float:
        return self.rate_per_minute / 60.0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_PATH_KEYS = {"operator_public_key", "tls_cert", "tls_key"}


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
        k for k in ("node_urls", "issuer", "audience", "operator_public_key") if k not in values
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
    for key in _PATH_KEYS & set(values):
        raw = values[key]
        if not isinstance(raw, str):
            raise InvalidInput(f"{key} must be a string")
        if key == "operator_public_key" and raw.lstrip().startswith("-----BEGIN"):
            values[key] = raw.encode()
            continue
        path = Path(raw).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        values[key] = path
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
    return config_from_mapping(table, base_dir=path.parent)
