"""One real local deployment for the integration tests: 5 vault node processes (each with
its own SoftHSM2 token and SQLite store) and the relay process, all on loopback, brought up
once for the whole package in a temporary folder (each module uses its own accounts, and
leaves every process running with the relay's limits as it found them) and always torn
down, even when a test fails."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from backupvault.client.config import ClientConfig
from backupvault.client.threshold import FleetKeys, ThresholdVault
from backupvault.client.vault import VaultClient
from backupvault.crypto import ksf
from backupvault.deploy.local import AUDIENCE, ISSUER, LocalDeployment
from backupvault.node.config import write_toml
from backupvault.tokens import fleet_audience, load_operator_private_key, mint_token

NODES = 5

#: A cheap KSF so that a recovery costs milliseconds; the server's work does not depend on
#: it. The production Argon2id runs only in the CLI round trip.
FAST_KSF = ksf.Argon2idParams(
    memory_kib=256, iterations=1, parallelism=1, salt=ksf.ZERO_SALT, output_len=64
)

#: Per-account relay limits for this deployment. The default (burst 20, 60 per minute)
#: would hold 30 concurrent recoveries of one account for ~20 s; a larger burst with a slow
#: refill keeps every test fast and still lets the rate-limit test reach a 429.
RELAY_BURST = 100
RELAY_RATE_PER_MINUTE = 120


@dataclass(frozen=True)
class Exchange:
    """One HTTP exchange as the client saw it on the wire."""

    path: str
    request: bytes
    status: int
    response: bytes
    seconds: float


class RecordingTransport(httpx.BaseTransport):
    """Passes requests to a real transport and keeps every body that crossed the wire."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self.inner = inner or httpx.HTTPTransport()
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        started = time.perf_counter()
        response = self.inner.handle_request(request)
        content = response.read()
        elapsed = time.perf_counter() - started
        with self._lock:
            self.exchanges.append(
                Exchange(request.url.path, body, response.status_code, content, elapsed)
            )
        return response

    def close(self) -> None:
        self.inner.close()

    def bodies(self, op: str) -> list[bytes]:
        return [e.request for e in self.exchanges if e.path.endswith(f"/{op}")]


@dataclass
class Vault:
    """The running deployment plus what tests need to talk to it."""

    deployment: LocalDeployment
    root: Path
    config: ClientConfig
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def relay_url(self) -> str:
        return self.config.relay_url

    def token(self, account: str) -> str:
        if account not in self._tokens:
            operator = load_operator_private_key(self.root / "operator.key")
            self._tokens[account] = mint_token(
                operator, account, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=3600
            )
        return self._tokens[account]

    def fleet_token(self, account: str) -> str:
        """The account's token for the nodes (inside the seal)."""
        assert self.config.fleet_id is not None
        operator = load_operator_private_key(self.root / "operator.key")
        audience = fleet_audience(self.config.fleet_id)
        assert self.config.device_key is not None
        return mint_token(
            operator,
            account,
            issuer=ISSUER,
            audience=audience,
            ttl_seconds=3600,
            device_key=self.config.device_key.public_key(),
        )

    def client(
        self,
        account: str,
        entry: str,
        *,
        token: str | None = None,
        fleet_token: str | None = None,
        http: httpx.Client | None = None,
        ksf_params: ksf.Argon2idParams = FAST_KSF,
    ) -> VaultClient:
        return VaultClient(
            self.relay_url,
            self.token(account) if token is None else token,
            account,
            self.config.fleet_id,
            self.config.node_public_keys,
            entry=entry,
            ksf_params=ksf_params,
            http=http or httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0)),
            fleet_token=self.fleet_token(account) if fleet_token is None else fleet_token,
            device_key=self.config.device_key,
        )

    def threshold(
        self,
        account: str,
        entry: str,
        *,
        client: VaultClient | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> ThresholdVault:
        """The threshold flows for `account`/`entry`, with the pinned config's node keys."""
        assert self.config.node_signing_keys is not None
        nodes = len(self.config.node_signing_keys)
        keys = FleetKeys(self.config.node_signing_keys, nodes // 2 + 1, self.config.epoch)
        return ThresholdVault(client or self.client(account, entry), keys, notify=notify)

    def client_config(self, path: Path, account: str, entry: str, token: str | None = None) -> Path:
        """A client.toml for `account`/`entry` (the CLI reads its entry from the config)."""
        data: dict[str, Any] = tomllib.loads((self.root / "client.toml").read_text())
        data.update(
            account=account,
            entry=entry,
            token=token or self.token(account),
            fleet_token=self.fleet_token(account),
        )
        write_toml(path, data)
        path.chmod(0o600)  # it holds tokens, as the tool writes it (else: a warning)
        return path

    def ensure_all_running(self) -> None:
        for index in range(NODES):
            self.deployment.start_node(index)
        self.deployment.start_relay()
        self.deployment.wait_ready(60)

    def cli(
        self, *args: str, config: Path | None = None, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        cfg = ["--config", str(config or self.root / "client.toml")]
        return subprocess.run(
            [sys.executable, "-m", "backupvault", *cfg, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def wait_for(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@contextlib.contextmanager
def started_vault(root: Path) -> Iterator[Vault]:
    """A local deployment of NODES nodes in `root`, up until the block ends."""
    deployment = LocalDeployment(root)
    try:
        deployment.provision(NODES)
        relay_toml = root / "relay.toml"
        relay = tomllib.loads(relay_toml.read_text())
        relay["relay"].update(burst=RELAY_BURST, rate_per_minute=RELAY_RATE_PER_MINUTE)
        write_toml(relay_toml, relay)
        deployment.up(NODES, timeout=90)
        yield Vault(deployment, root, ClientConfig.load(root / "client.toml"))
    finally:
        deployment.down()


@pytest.fixture(scope="package")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    with started_vault(tmp_path_factory.mktemp("deployment")) as started:
        yield started
