"""Fleet transparency on a real local deployment (3 node processes, the witness process and
the relay process): OTA clients refuse every kind of bad bundle before sending anything
derived from a password, a node with modified code is refused by its fleet record and by
`verify-deployment`, and `witness verify-log` refuses a forked or rolled-back log."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import backupvault
from backupvault.client.config import ClientConfig
from backupvault.client.errors import FleetNotTrusted
from backupvault.crypto import recovery
from backupvault.crypto.seal import NodePrivateKey
from backupvault.deploy.local import WITNESS_NAME, WITNESSES, LocalDeployment
from backupvault.deploy.verify import FleetReport, TrustInputs, verify_deployment
from backupvault.node.config import FleetDescription, write_toml
from backupvault.tokens import load_operator_private_key
from backupvault.transparency import (
    FleetBundle,
    OperatorSignedRecord,
    Signer,
    Verifier,
    Witness,
    WitnessPolicy,
    merkle,
    open_checkpoint,
    sign_record,
)
from backupvault.transparency.bundle import cosign
from backupvault.transparency.errors import (
    EpochReplayed,
    EpochRetired,
    HeadMismatch,
    LogForked,
    LogRolledBack,
    MeasurementNotAllowed,
    OperatorSignatureInvalid,
    StaleHead,
    TransparencyError,
    WitnessSignatureInvalid,
    WitnessSignatureMissing,
)
from backupvault.transparency.record import DeploymentRecord
from backupvault.transparency.witness_store import WitnessStore

from .conftest import FAST_KSF, wait_for

NODES = 3
PASSWORD = "correct horse battery staple"


@dataclass
class Deployment:
    local: LocalDeployment
    root: Path
    operator: Ed25519PrivateKey
    witness_keys: dict[str, Ed25519PrivateKey]
    bundle: bytes

    @property
    def witness_key(self) -> Ed25519PrivateKey:
        return self.witness_keys["witness"]

    @property
    def signed(self) -> OperatorSignedRecord:
        return FleetBundle.from_bytes(self.bundle).operator_signed

    @property
    def record(self) -> DeploymentRecord:
        return self.signed.deployment()

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "backupvault", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("transparency")
    local = LocalDeployment(root)
    try:
        local.up(NODES, timeout=90)
        keys = {}
        for which in WITNESSES:
            key = serialization.load_pem_private_key(
                (root / which / "witness.key").read_bytes(), password=None
            )
            assert isinstance(key, Ed25519PrivateKey)
            keys[which] = key
        yield Deployment(
            local,
            root,
            load_operator_private_key(root / "operator.key"),
            keys,
            (root / "bundle.bin").read_bytes(),
        )
    finally:
        local.down()


class Intercept(httpx.BaseTransport):
    """The real relay and witnesses, except that the fleet bundle, and the heads and
    consistency proofs of the witnesses in `witnesses` (by host:port), come from the test:
    what a relay, a lying witness or a network attacker could serve. `head_time` dates the
    heads served. Every request path is recorded."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.bundle: bytes | None = None
        self.witnesses: dict[str, Witness] = {}
        self.relay_log: Witness | None = None
        self.head_time: int | None = None
        self.paths: list[str] = []

    def _witness_answer(self, witness: Witness, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if request.url.path == "/v1/head":
            now = int(time.time()) if self.head_time is None else self.head_time
            return httpx.Response(200, text=witness.head(bytes.fromhex(params["fleet"]), now))
        try:
            proof = witness.consistency(int(params["old"]), int(params["new"]))
        except TransparencyError:
            return httpx.Response(400, json={"error": "bad_range"})
        return httpx.Response(200, json={"proof": [base64.b64encode(h).decode() for h in proof]})

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.paths.append(path)
        if path == "/v1/fleet/bundle" and self.bundle is not None:
            return httpx.Response(200, content=self.bundle)
        if path == "/v1/fleet/consistency" and self.relay_log is not None:
            return self._witness_answer(self.relay_log, request)
        witness = self.witnesses.get(f"{request.url.host}:{request.url.port}")
        if witness is not None and path in ("/v1/head", "/v1/consistency"):
            return self._witness_answer(witness, request)
        return self.inner.handle_request(request)

    def vault_requests(self) -> list[str]:
        return [p for p in self.paths if "/vault/" in p]


def ota_config(dep: Deployment, tmp_path: Path, **extra: Any) -> Path:
    data = tomllib.loads((dep.root / "client-ota.toml").read_text())
    data.update(state_file=str(tmp_path / "state.json"), entry=f"e{os.urandom(4).hex()}", **extra)
    path = tmp_path / "client-ota.toml"
    write_toml(path, data)
    return path


def session_with(config: Path, transport: Intercept) -> Any:
    return ClientConfig.load(config).session(
        ksf_params=FAST_KSF, http=httpx.Client(transport=transport, timeout=30)
    )


def rogue_witness(dep: Deployment, tmp_path: Path, key: Ed25519PrivateKey, name: str) -> Witness:
    """A witness with `key` (the real witness's key: a witness showing a second history)
    and its own log; it vouches for this fleet's operator key (and logs any other fleet)."""
    raw = key.public_key().public_bytes_raw()
    store = WitnessStore(tmp_path / f"rogue-{os.urandom(4).hex()}.sqlite", name, raw)
    operator = dep.operator.public_key().public_bytes_raw()
    policy = WitnessPolicy({dep.record.fleet_id: operator}, pin_first_seen=True)
    return Witness(Signer(name, key), store, policy)


def bundle_at(witness: Witness, signed: OperatorSignedRecord) -> bytes:
    """A bundle for a record already in `witness`'s log, proven in its current tree."""
    index = witness.store.index_of(merkle.leaf_hash(signed.to_bytes()))
    assert index is not None
    note = witness.checkpoint()
    size = witness.store.size
    return FleetBundle(
        signed.to_bytes(),
        cosign(witness.signer.private_key, witness.name, signed.to_bytes()),
        index,
        size,
        b"".join(witness.inclusion(index, size)[1]),
        note,
    ).to_bytes()


def logged(witness: Witness, signed: OperatorSignedRecord) -> bytes:
    return FleetBundle.from_receipt(signed, witness.submit(signed.to_bytes())).to_bytes()


def resigned(dep: Deployment, **changes: Any) -> OperatorSignedRecord:
    return sign_record(replace(dep.record, **changes), dep.operator)


# ---- the honest path ---------------------------------------------------------------------------


def test_ota_client_accepts_the_relays_bundle_and_uses_the_fleet(
    deployment: Deployment, tmp_path: Path
) -> None:
    transport = Intercept()
    session = session_with(ota_config(deployment, tmp_path), transport)
    # verified before anything else: the bundle, then each witness's head for the fleet
    assert transport.paths == ["/v1/fleet/bundle", "/v1/head", "/v1/head"]
    root_key = recovery.new_root_key()
    session.register(PASSWORD, root_key)
    assert session.recover_or_migrate(PASSWORD).root_key == root_key
    assert all(p.startswith("/v1/epochs/1/vault/") for p in transport.vault_requests())
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["fleets"][deployment.record.fleet_id.hex()]["epoch"] == 1
    bundle = FleetBundle.from_bytes(deployment.bundle)
    witness = Verifier.from_vkey(deployment.local.witness_vkey())
    seen = open_checkpoint(state["checkpoint"], witness)  # the newest: the witness's head
    assert seen == open_checkpoint(bundle.checkpoint, witness)
    assert set(state["heads"]) == set(WITNESSES.values())


# ---- refusals: nothing is sent to the fleet ----------------------------------------------------


@dataclass
class Scenario:
    """What a client accepted before (`before`, with heads and proofs from
    `before_witnesses` and `before_log`), then the bad bundle and who answers for it."""

    bad: bytes
    extra: dict[str, Any] = field(default_factory=dict)
    before: list[bytes] = field(default_factory=list)
    before_witnesses: dict[str, Witness] = field(default_factory=dict)
    before_log: Witness | None = None
    witnesses: dict[str, Witness] = field(default_factory=dict)
    log: Witness | None = None
    head_time: int | None = None


Attack = Callable[[Deployment, Path], Scenario]


def at(dep: Deployment, which: str) -> str:
    """host:port of a local witness (how Intercept names it)."""
    return dep.local.witness_url(which).removeprefix("http://")


def liar(dep: Deployment, tmp: Path, which: str = "witness") -> Witness:
    """A second log under the real key of witness `which`."""
    return rogue_witness(dep, tmp, dep.witness_keys[which], WITNESSES[which])


def only_operator(dep: Deployment, tmp: Path) -> Scenario:
    bundle = replace(FleetBundle.from_bytes(dep.bundle), cosignature=b"")
    return Scenario(bundle.to_bytes())


def wrong_witness(dep: Deployment, tmp: Path) -> Scenario:
    other = rogue_witness(dep, tmp, Ed25519PrivateKey.generate(), WITNESS_NAME)
    return Scenario(logged(other, dep.signed))


def other_measurement(dep: Deployment, tmp: Path) -> Scenario:
    # Signed by the operator and logged by the witness: only the client's allow-list of
    # firmware builds stops it.
    signed = resigned(dep, measurement=bytes(32))
    allowed = {"allowed_measurements": [dep.record.measurement.hex()]}
    return Scenario(logged(liar(dep, tmp), signed), allowed)


def replayed_epoch(dep: Deployment, tmp: Path) -> Scenario:
    # Both witnesses logged epoch 2; the client saw it; an epoch-1 bundle is then replayed.
    first, second = liar(dep, tmp), liar(dep, tmp, "witness2")
    older = logged(first, dep.signed)  # the first receipt: what a resubmission returns
    logged(second, dep.signed)
    newer = logged(first, resigned(dep, epoch=2))
    logged(second, resigned(dep, epoch=2))
    both = {at(dep, "witness"): first, at(dep, "witness2"): second}
    return Scenario(older, before=[newer], before_witnesses=both, before_log=first, log=first)


def retired_epoch(dep: Deployment, tmp: Path) -> Scenario:
    # A client with no state (a new device) is offered epoch 1 after epoch 2 was logged.
    first, second = liar(dep, tmp), liar(dep, tmp, "witness2")
    older = logged(first, dep.signed)
    logged(second, dep.signed)
    logged(first, resigned(dep, epoch=2))
    logged(second, resigned(dep, epoch=2))
    both = {at(dep, "witness"): first, at(dep, "witness2"): second}
    return Scenario(older, witnesses=both, log=first)


def stale_head(dep: Deployment, tmp: Path) -> Scenario:
    # The witness's head is replayed from two days ago (a relay freezing its clients).
    witness = liar(dep, tmp)
    logged(witness, dep.signed)
    return Scenario(
        dep.bundle, witnesses={at(dep, "witness"): witness}, head_time=int(time.time()) - 172_800
    )


def second_witness_disagrees(dep: Deployment, tmp: Path) -> Scenario:
    # The operator showed the second witness another epoch-1 record (a split view).
    second = liar(dep, tmp, "witness2")
    logged(second, resigned(dep, time=dep.record.time + 7))
    return Scenario(dep.bundle, witnesses={at(dep, "witness2"): second})


def forked_log(dep: Deployment, tmp: Path) -> Scenario:
    # The same witness key shows a second history of the same size.
    other = logged(liar(dep, tmp), resigned(dep, time=dep.record.time + 1))
    return Scenario(other, before=[dep.bundle])


def rolled_back_log(dep: Deployment, tmp: Path) -> Scenario:
    # The client saw the witness's log at 2 leaves; the witness then answers from 1.
    grown, rolled = liar(dep, tmp), liar(dep, tmp)
    logged(grown, dep.signed)
    logged(grown, resigned(dep, fleet_id=b"another fleet id"))
    logged(rolled, dep.signed)
    bundle = bundle_at(grown, dep.signed)
    return Scenario(
        bundle,
        before=[bundle],
        before_witnesses={at(dep, "witness"): grown},
        witnesses={at(dep, "witness"): rolled},
    )


def swapped_hpke_key(dep: Deployment, tmp: Path) -> Scenario:
    kem = dep.record.kem
    forged = replace(
        dep.record.nodes[0], hpke_public_key=NodePrivateKey.generate(kem).public_key().to_bytes()
    )
    record = replace(dep.record, nodes=[forged, *dep.record.nodes[1:]])
    signed = replace(dep.signed, record=record.to_bytes())
    bundle = replace(FleetBundle.from_bytes(dep.bundle), signed_record=signed.to_bytes())
    return Scenario(bundle.to_bytes())


@pytest.mark.parametrize(
    ("attack", "error", "words"),
    [
        (only_operator, WitnessSignatureMissing, "no witness cosignature"),
        (wrong_witness, WitnessSignatureInvalid, "cosignature does not verify"),
        (other_measurement, MeasurementNotAllowed, "not an allowed one"),
        (replayed_epoch, EpochReplayed, "older than the epoch 2 already accepted"),
        (retired_epoch, EpochRetired, "epoch 1 of fleet"),
        (stale_head, StaleHead, "more than the 86400 s this client accepts"),
        (second_witness_disagrees, HeadMismatch, "witness2.local/backupvault names another"),
        (forked_log, LogForked, "two checkpoints of size 1 with different roots"),
        (rolled_back_log, LogRolledBack, "the log shrank from 2 to 1"),
        (swapped_hpke_key, OperatorSignatureInvalid, "does not verify"),
    ],
)
def test_client_refuses_bad_bundles_before_sending_anything(
    deployment: Deployment,
    tmp_path: Path,
    attack: Attack,
    error: type[TransparencyError],
    words: str,
) -> None:
    scenario = attack(deployment, tmp_path)
    config = ota_config(deployment, tmp_path, **scenario.extra)
    transport = Intercept()
    transport.witnesses, transport.relay_log = scenario.before_witnesses, scenario.before_log
    for bundle in scenario.before:  # what the client saw (and accepted) before
        transport.bundle = bundle
        session_with(config, transport)
    state = tmp_path / "state.json"
    before = state.read_bytes() if state.exists() else None

    transport.bundle = scenario.bad
    transport.witnesses, transport.relay_log = scenario.witnesses, scenario.log
    transport.head_time = scenario.head_time
    transport.paths.clear()
    with pytest.raises(FleetNotTrusted) as refused:
        session_with(config, transport)
    assert isinstance(refused.value.reason, error)
    assert words in str(refused.value)
    assert "refused the relay's fleet bundle" in str(refused.value)
    assert transport.vault_requests() == []
    assert (state.read_bytes() if state.exists() else None) == before  # nothing remembered


def test_cli_in_ota_mode_exits_7_on_a_bad_bundle(deployment: Deployment, tmp_path: Path) -> None:
    config = ota_config(deployment, tmp_path, allowed_measurements=["00" * 32])
    done = deployment.cli("--config", str(config), "vault", "status")
    assert done.returncode == 7, done.stderr
    assert "not an allowed one" in done.stderr and "hint" in done.stderr
    ok = deployment.cli("--config", str(ota_config(deployment, tmp_path)), "vault", "status")
    assert ok.returncode == 0 and "key: empty" in ok.stdout, ok.stderr


# ---- relay routes --------------------------------------------------------------------------------


def test_relay_serves_bundle_epochs_and_consistency(deployment: Deployment) -> None:
    relay = deployment.local.relay_url()
    bundle = httpx.get(f"{relay}/v1/fleet/bundle")
    assert bundle.status_code == 200
    assert bundle.headers["content-type"] == "application/octet-stream"
    assert bundle.content == deployment.bundle
    assert httpx.get(f"{relay}/v1/fleet/epochs").json() == {"current": 1, "previous": []}
    assert httpx.get(f"{relay}/v1/fleet/bundle?epoch=7").status_code == 404
    proof = httpx.get(f"{relay}/v1/fleet/consistency?old=0&new=1")
    assert proof.status_code == 200 and proof.json()["proof"] == []
    assert httpx.get(f"{relay}/v1/fleet/consistency?old=1&new=9").status_code == 400
    assert httpx.get(f"{relay}/v1/fleet/consistency?old=x&new=1").status_code == 400
    unknown = httpx.post(f"{relay}/v1/epochs/9/vault/e/status", content=b"x")
    assert unknown.status_code == 401  # authentication comes first
    paths = httpx.get(f"{relay}/openapi.json").json()["paths"]
    for path in ("/v1/fleet/bundle", "/v1/fleet/epochs", "/v1/fleet/consistency"):
        assert path in paths
    assert "/v1/epochs/{epoch}/vault/{entry}/{op}" in paths


# ---- verify-deployment and a modified node -------------------------------------------------------


def _modified_package(tmp_path: Path) -> Path:
    """A copy of the installed package with one byte changed in one .py file."""
    source = Path(backupvault.__file__).resolve().parent
    target = tmp_path / "modified" / "backupvault"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    errors = target / "errors.py"
    data = bytearray(errors.read_bytes())
    first = data.index(b'"""') + 3
    data[first] ^= 0x20  # "The" -> "the"
    errors.write_bytes(bytes(data))
    return target


def test_verify_deployment_passes_on_the_real_fleet(deployment: Deployment, tmp_path: Path) -> None:
    config = ota_config(deployment, tmp_path)
    done = deployment.cli(
        "--config", str(config), "verify-deployment", "--state", str(tmp_path / "a")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for check in ("operator signature", "witness cosignature", "inclusion proof", "epoch 1"):
        assert check in done.stdout
    assert done.stdout.count("measurement (http") == NODES
    assert "every check passed" in done.stdout
    again = deployment.cli(
        "--json", "--config", str(config), "verify-deployment", "--state", str(tmp_path / "a")
    )
    report = json.loads(again.stdout)
    assert report["ok"] and report["fleets"][0]["epoch"] == 1
    consistency = [c for c in report["fleets"][0]["checks"] if c["check"].startswith("log")]
    assert "extends the one of size 1" in consistency[0]["detail"]
    # Without --state, the OTA client's own state file (the config's state_file): a run
    # goes on from what that client saw, and keeps what passed there (review s40-R2).
    client_state = tmp_path / "state.json"
    assert not client_state.exists()
    details = []
    for _ in range(2):
        own = deployment.cli("--json", "--config", str(config), "verify-deployment")
        assert own.returncode == 0, own.stdout + own.stderr
        checks = json.loads(own.stdout)["fleets"][0]["checks"]
        details += [c["detail"] for c in checks if c["check"].startswith("log")]
    assert "first use" in details[0] and "extends the one of size 1" in details[1]
    assert json.loads(client_state.read_text())["checkpoint"]
    operator_pub = deployment.operator.public_key().public_bytes_raw().hex()
    flags = [
        "verify-deployment",
        "--bundle",
        str(deployment.root / "bundle.bin"),
        "--operator-key",
        operator_pub,
        "--witness-key",
        deployment.local.witness_vkey(),
        "--skip-nodes",
    ]
    # Without a witness to ask for the fleet's head, a retired epoch would pass: refused.
    no_witness = deployment.cli(*flags)
    assert no_witness.returncode == 2 and "give --witness-url" in no_witness.stderr
    with_witness = deployment.cli(*flags, "--witness-url", deployment.local.witness_url())
    assert with_witness.returncode == 0, with_witness.stdout + with_witness.stderr
    assert f"ok   witness {WITNESS_NAME} head" in with_witness.stdout
    wrong = deployment.cli(
        "verify-deployment",
        "--bundle",
        str(deployment.root / "bundle.bin"),
        "--operator-key",
        Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex(),
        "--witness-key",
        deployment.local.witness_vkey(),
        "--witness-url",
        deployment.local.witness_url(),
    )
    assert wrong.returncode == 7
    assert "FAIL operator signature" in wrong.stdout and "REFUSED" in wrong.stdout


def test_modified_node_is_refused_by_its_record_and_by_verify_deployment(
    deployment: Deployment, tmp_path: Path
) -> None:
    local, root = deployment.local, deployment.root
    package = _modified_package(tmp_path)
    fleet = FleetDescription.load(root / "fleet.toml")
    modified = fleet.measure(package)
    assert modified != fleet.measurement
    env = local._node_env(0)
    # Isolated mode ignores PYTHONPATH, so the modified copy is put first on the path by
    # hand; the node measures the package it actually imported.
    run_modified = (
        f"import sys; sys.path.insert(0, {str(package.parent)!r}); sys.argv[0] = 'backupvault';"
        " from backupvault.cli.main import main; main()"
    )
    command = [sys.executable, "-I", "-c", run_modified, "node", "serve"]
    local.stop_process("node0")
    try:
        node0 = root / "node0.toml"
        # 0. Not in isolated mode (PYTHONPATH, user site and the current folder would count),
        # a node refuses to start at all.
        loose = subprocess.run(
            [sys.executable, "-m", "backupvault", "node", "serve", "--config", str(node0)],
            env={**env, "PYTHONPATH": str(package.parent)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert loose.returncode != 0 and "python -I" in loose.stderr, loose.stderr
        # 1. Against the fleet's record it refuses to start.
        refused = subprocess.run(
            [*command, "--config", str(root / "node0.toml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0
        output = refused.stdout + refused.stderr
        assert "refuses to join fleet" in output and modified.hex() in output
        assert str(package) in output  # it ran the modified copy

        # 2. An operator who also edits that node's fleet file gets it running, but the
        # node reports what it runs, and verify-deployment compares with the public record.
        replace(fleet, measurement=modified).save(root / "fleet-modified.toml")
        config = tomllib.loads((root / "node0.toml").read_text())
        config["node"]["fleet_file"] = "fleet-modified.toml"
        write_toml(root / "node0-modified.toml", config)
        log = (tmp_path / "modified-node.log").open("wb")
        process = subprocess.Popen(
            [*command, "--config", str(root / "node0-modified.toml")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"{fleet.nodes[0].url}/v1/measurement"

            def reports_modified() -> bool:
                try:
                    return bool(httpx.get(url, timeout=1).json()["measurement"] == modified.hex())
                except (httpx.HTTPError, ValueError, KeyError):
                    return False

            wait_for(reports_modified, 60, "the modified node to serve its measurement")
            check = deployment.cli(
                "--config", str(ota_config(deployment, tmp_path)), "verify-deployment"
            )
            assert check.returncode == 7, check.stdout + check.stderr
            assert f"FAIL node 0 measurement ({fleet.nodes[0].url})" in check.stdout
            assert f"runs {modified.hex()}, the record names" in check.stdout
            assert "ok   node 1 measurement" in check.stdout
            assert "node 0 measurement" in check.stderr  # the error names what failed
        finally:
            process.terminate()
            process.wait(timeout=10)
            log.close()
    finally:
        local.start_node(0)
        local.wait_ready(60)


def test_verify_deployment_tells_a_node_that_is_down_from_a_mismatch(
    deployment: Deployment, tmp_path: Path
) -> None:
    local = deployment.local
    url = deployment.record.nodes[NODES - 1].url
    local.stop_process(f"node{NODES - 1}")
    try:
        check = deployment.cli(
            "--json", "--config", str(ota_config(deployment, tmp_path)), "verify-deployment"
        )
    finally:
        local.start_node(NODES - 1)
        local.wait_ready(60)
    assert check.returncode == 5, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["verdict"] == "incomplete" and not report["ok"]
    [down] = [c for c in report["fleets"][0]["checks"] if not c["ok"]]
    assert down["check"] == f"node {NODES - 1} measurement ({url})"
    assert down["status"] == "unreachable"
    assert down["detail"].startswith("unreachable: not verified")
    error = json.loads(check.stderr)
    assert error["exit_code"] == 5 and "does not match" not in error["error"]


# ---- witness verify-log ------------------------------------------------------------------------


def test_witness_verify_log_remembers_and_refuses_fork_and_rollback(
    deployment: Deployment, tmp_path: Path
) -> None:
    url, vkey = deployment.local.witness_url(), deployment.local.witness_vkey()
    state = tmp_path / "log.json"
    args = ["witness", "verify-log", "--url", url, "--state", str(state), "--vkey", vkey]
    first = deployment.cli(*args)
    assert first.returncode == 0, first.stderr
    assert "no earlier checkpoint" in first.stdout
    second = deployment.cli(*args)
    assert second.returncode == 0 and "consistent with the one of size 1" in second.stdout

    fork = rogue_witness(deployment, tmp_path, deployment.witness_key, WITNESS_NAME)
    logged(fork, resigned(deployment, time=deployment.record.time + 5))
    state.write_text(json.dumps({"checkpoint": fork.checkpoint()}))
    forked = deployment.cli(*args)
    assert forked.returncode == 7
    assert "not consistent with what we saw before" in forked.stderr
    assert "different roots" in forked.stderr
    assert json.loads(state.read_text())["checkpoint"] == fork.checkpoint()  # evidence kept

    logged(fork, resigned(deployment, epoch=2))
    logged(fork, resigned(deployment, epoch=3))
    state.write_text(json.dumps({"checkpoint": fork.checkpoint()}))
    rolled = deployment.cli(*args)
    assert rolled.returncode == 7 and "shrank from 3 to 1" in rolled.stderr

    no_key = deployment.cli("witness", "verify-log", "--url", url)
    assert no_key.returncode == 2 and "--vkey" in no_key.stderr


def test_fleet_measure_prints_what_went_in(deployment: Deployment) -> None:
    done = deployment.cli(
        "--json", "fleet", "measure", "--fleet-file", str(deployment.root / "fleet.toml")
    )
    data = json.loads(done.stdout)
    assert data["measurement"] == deployment.record.measurement.hex()
    assert data["node_count"] == NODES and data["quorum"] == 2 and data["guess_limit"] == 10


def test_fleet_deploy_cli_signs_and_the_witness_refuses_a_stale_epoch(
    deployment: Deployment, tmp_path: Path
) -> None:
    fleet_file = tmp_path / "fleet.toml"
    shutil.copy(deployment.root / "fleet.toml", fleet_file)
    key = str(deployment.root / "operator.key")
    witness = deployment.local.witness_url()
    # fleet.toml says epoch 1, so an upgrade re-deploy is epoch 2 (signed, not submitted).
    done = deployment.cli(
        "--json", "fleet", "deploy", "--fleet-file", str(fleet_file), "--operator-key", key
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["epoch"] == 2
    signed = OperatorSignedRecord.from_bytes((tmp_path / "deployment.bin").read_bytes())
    assert signed.verify(deployment.operator.public_key()).epoch == 2
    assert FleetDescription.load(fleet_file).epoch == 2
    # Epoch 1 again, as a different record: the witness refuses it, the CLI says why.
    stale = deployment.cli(
        "fleet",
        "deploy",
        "--fleet-file",
        str(fleet_file),
        "--operator-key",
        key,
        "--epoch",
        "1",
        "--witness",
        witness,
    )
    assert stale.returncode == 1
    assert "the witness refused the deployment record (409)" in stale.stderr
    assert not (tmp_path / "bundle.bin").exists()
    # The logged record resubmitted: the receipt first given, byte for byte.
    fresh = deployment.cli(
        "--json",
        "fleet",
        "deploy",
        "--fleet-file",
        str(deployment.root / "fleet.toml"),
        "--operator-key",
        key,
        "--witness",
        witness,
        "--resubmit",
    )
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["leaf_index"] == 0
    assert (deployment.root / "bundle.bin").read_bytes() == deployment.bundle


def test_verify_deployment_compares_the_two_witnesses(
    deployment: Deployment, tmp_path: Path
) -> None:
    local = deployment.local
    witnesses = tuple(
        (Verifier.from_vkey(local.witness_vkey(w)), local.witness_url(w)) for w in WITNESSES
    )
    trust = TrustInputs(
        deployment.operator.public_key().public_bytes_raw(),
        witnesses[0][0],
        witnesses=witnesses,
    )

    def run(transport: Intercept) -> list[FleetReport]:
        with httpx.Client(transport=transport, timeout=30) as http:
            return verify_deployment(
                trust, relay_url=local.relay_url(), check_node_measurements=False, http=http
            )

    honest = run(Intercept())
    assert [r.ok for r in honest] == [True]
    details = {c.name: c.detail for c in honest[0].checks}
    for name in WITNESSES.values():
        assert details[f"witness {name} head"].startswith("names this record (epoch 1, leaf 0)")

    # The operator showed the second witness another epoch-1 record: the two logs disagree.
    split = Intercept()
    second = liar(deployment, tmp_path, "witness2")
    logged(second, resigned(deployment, time=deployment.record.time + 9))
    split.witnesses = {at(deployment, "witness2"): second}
    [report] = run(split)
    assert not report.ok
    failed = [c for c in report.checks if not c.ok]
    assert [c.name for c in failed] == ["witness witness2.local/backupvault head"]
    assert "names another record" in failed[0].detail
