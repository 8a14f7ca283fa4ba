"""Fleet rotation with over-the-air keys on a real local deployment: an OTA client that
registered and backed up on epoch 1 recovers after `local rotate` with the same config (no
client update): it accepts epoch 2, finds its entry empty there, recovers on epoch 1
through the relay's /v1/epochs/1/... route, registers the same root key on epoch 2,
deletes the old entry, and restores its backup. Then an epoch-1 bundle is a replay."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from backupvault.backup import restore_backup
from backupvault.client.config import ClientConfig
from backupvault.client.errors import FleetNotTrusted, NotRegistered
from backupvault.crypto import recovery
from backupvault.deploy.local import LocalDeployment
from backupvault.node.config import write_toml
from backupvault.protocol import EntryStatus
from backupvault.transparency.errors import EpochReplayed, EpochRetired

from .conftest import FAST_KSF

NODES = 3
PASSWORD = "rotate me gently"


class Recorder(httpx.BaseTransport):
    def __init__(self, replace_bundle: bytes | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.paths: list[str] = []
        self.replace_bundle = replace_bundle

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.url.path == "/v1/fleet/bundle" and self.replace_bundle is not None:
            return httpx.Response(200, content=self.replace_bundle)
        return self.inner.handle_request(request)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    deployment = LocalDeployment(tmp_path_factory.mktemp("rotation"))
    try:
        deployment.up(NODES, timeout=90)
        yield deployment
    finally:
        deployment.down()


def _rotate(root: Path) -> subprocess.CompletedProcess[str]:
    """`backupvault --json local rotate --dir ROOT`, which must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "backupvault", "--json", "local", "rotate", "--dir", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def _vault_status(config: Path) -> subprocess.CompletedProcess[str]:
    """`backupvault --config CONFIG vault status`, as it ended."""
    return subprocess.run(
        [sys.executable, "-m", "backupvault", "--config", str(config), "vault", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ota_client_migrates_its_entry_across_a_rotation(
    local: LocalDeployment, tmp_path: Path, single_blob: ModuleType
) -> None:
    config_path = tmp_path / "client-ota.toml"
    data = tomllib.loads((local.root / "client-ota.toml").read_text())
    data.update(state_file="state.json", entry="rotating")
    write_toml(config_path, data)
    config = ClientConfig.load(config_path)

    # Epoch 1: register and back up.
    first = config.session(ksf_params=FAST_KSF)
    assert first.epoch == 1
    root_key = recovery.new_root_key()
    first.register(PASSWORD, root_key)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chat.txt").write_text("before the rotation\n")
    storage = str(tmp_path / "cloud")
    info = single_blob.create_backup(tmp_path / "data", storage, root_key)
    old_bundle = (local.root / "bundle.bin").read_bytes()

    # The operator rotates: new nodes, new keys, epoch 2, logged by the witness.
    done = _rotate(local.root)
    assert json.loads(done.stdout)["epoch"] == 2
    relay = local.relay_url()
    assert httpx.get(f"{relay}/v1/fleet/epochs").json() == {"current": 2, "previous": [1]}

    # Same config, no update: the client accepts epoch 2 and migrates.
    transport = Recorder()
    second = config.session(ksf_params=FAST_KSF, http=httpx.Client(transport=transport))
    assert second.epoch == 2
    assert second.status().status == EntryStatus.EMPTY
    recovered = second.recover_or_migrate(PASSWORD)
    assert recovered.root_key == root_key and recovered.migrated_from == 1
    vault_paths = [p for p in transport.paths if "/vault/" in p]
    # Recovered on epoch 1, registered on epoch 2, deleted on epoch 1, then recovered on
    # epoch 2.
    assert any(p.startswith("/v1/epochs/1/vault/rotating/evaluate") for p in vault_paths)
    assert any(p.startswith("/v1/epochs/2/vault/rotating/register-share") for p in vault_paths)
    assert any(p == "/v1/epochs/1/vault/rotating/delete-share" for p in vault_paths)
    assert vault_paths[-1].startswith("/v1/epochs/2/vault/rotating/reset")

    # Now it lives on epoch 2 (and the old entry is gone), and the backup restores.
    third = config.session(ksf_params=FAST_KSF)
    assert third.status().status == EntryStatus.LIVE
    again = third.recover_or_migrate(PASSWORD)
    assert again.root_key == root_key and again.migrated_from is None
    old = next(third.older())[1]
    assert old.epoch == 1 and old.status().status == EntryStatus.EMPTY
    restore_backup(storage, again.root_key, tmp_path / "restored", info.backup_id)
    assert (tmp_path / "restored" / "chat.txt").read_text() == "before the rotation\n"
    state = json.loads((tmp_path / "state.json").read_text())
    fleet = state["fleets"][data["fleet_id"]]
    assert fleet["epoch"] == 2 and set(fleet["records"]) == {"1", "2"}

    # The epoch-1 bundle, served as the current one, is a replay for this client; the
    # rotation left it as it was (a witness gives one receipt per record).
    assert (local.root / "bundle.bin").read_bytes() == old_bundle
    with pytest.raises(FleetNotTrusted) as refused:
        config.session(http=httpx.Client(transport=Recorder(replace_bundle=old_bundle)))
    assert isinstance(refused.value.reason, EpochReplayed)
    # A client with no state (a new device) refuses it too: both witnesses' heads name
    # epoch 2, so epoch 1 is retired.
    data.update(state_file="new-device-state.json")
    write_toml(tmp_path / "new-device.toml", data)
    new_device = ClientConfig.load(tmp_path / "new-device.toml")
    with pytest.raises(FleetNotTrusted) as retired:
        new_device.session(http=httpx.Client(transport=Recorder(replace_bundle=old_bundle)))
    assert isinstance(retired.value.reason, EpochRetired)
    assert not (tmp_path / "new-device-state.json").exists()

    # verify-deployment checks both epochs and every node of each.
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "backupvault",
            "--json",
            "--config",
            str(config_path),
            "verify-deployment",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert [f["epoch"] for f in report["fleets"]] == [2, 1]
    assert all(f["ok"] for f in report["fleets"])


def test_pinned_client_moves_its_entry_across_a_rotation(
    local: LocalDeployment, tmp_path: Path
) -> None:
    """`local rotate` rewrote DIR/client.toml with the new epoch's keys alone: the pinned
    client then found the vault empty (its hint: "make a backup, which registers one"),
    the key it registered out of its reach on the old epoch. The config now also pins the
    older epochs, and a recovery moves the entry as an OTA client's does."""
    config_path = tmp_path / "client.toml"

    def pinned() -> ClientConfig:
        data = tomllib.loads((local.root / "client.toml").read_text())
        data.update(entry="pinned-rotating")
        write_toml(config_path, data)
        return ClientConfig.load(config_path)

    old_epoch = pinned().epoch
    root_key = recovery.new_root_key()
    pinned().session(ksf_params=FAST_KSF).register(PASSWORD, root_key)
    stale = tmp_path / "stale.toml"  # a copy made before the rotation (another device's)
    stale.write_bytes(config_path.read_bytes())

    _rotate(local.root)
    config = pinned()
    assert config.epoch == old_epoch + 1
    after = config.session(ksf_params=FAST_KSF)
    assert after.status().status == EntryStatus.EMPTY
    # `vault status` said "key: empty" here, of a key that is on the older epoch.
    status = _vault_status(config_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(
        f"key: empty on fleet epoch {old_epoch + 1}; your key is still on epoch {old_epoch}"
        " (a rotation's older fleet: live, 10 of 10 guesses left): your next recovery"
    ), status.stdout
    # The copy still pins the old epoch's keys, which the current nodes do not hold: it
    # said "too few vault nodes answered; try again later".
    stale_status = _vault_status(stale)
    assert stale_status.returncode == 5, stale_status.stderr
    assert "could not open the requests sealed to the keys in your client config" in (
        stale_status.stderr
    )
    assert "after a fleet rotation a pinned config needs the new epoch's keys" in (
        stale_status.stderr
    )
    assert "try again later" not in stale_status.stderr
    recovered = after.recover_or_migrate(PASSWORD)
    assert recovered.root_key == root_key and recovered.migrated_from == old_epoch
    assert pinned().session(ksf_params=FAST_KSF).status().status == EntryStatus.LIVE
    old = dict(pinned().session(ksf_params=FAST_KSF).older())[old_epoch]
    assert old.status().status == EntryStatus.EMPTY  # deleted there once moved


class ListsRetired(Recorder):
    """A relay that lists the retired epochs again and serves their (logged) bundles."""

    def __init__(self, retired: dict[int, bytes], current: int) -> None:
        super().__init__()
        self.retired = retired
        self.current = current

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path, query = request.url.path, request.url.params
        if path == "/v1/fleet/epochs":
            self.paths.append(path)
            return httpx.Response(
                200, json={"current": self.current, "previous": sorted(self.retired, reverse=True)}
            )
        if path == "/v1/fleet/bundle" and "epoch" in query:
            self.paths.append(f"{path}?epoch={query['epoch']}")
            return httpx.Response(200, content=self.retired[int(query["epoch"])])
        return super().handle_request(request)


def test_local_retire_retires_the_older_epochs_for_every_client(
    local: LocalDeployment, tmp_path: Path
) -> None:
    """`local retire` after a rotation: the new record retires the older epochs, their
    nodes stop, the relay no longer lists them. A device that used them, and finds no
    key, is told why and asks them nothing, even through a relay that lists them again
    with their genuine bundles (docs/transparency.md, "Retiring an epoch"); a key on the
    current nodes is recovered as before. A key left on an older set makes `local retire`
    refuse, changing nothing, until `--force` (review s40-R2: it deleted such a key)."""
    data = tomllib.loads((local.root / "client-ota.toml").read_text())
    data.update(state_file="left-state.json", entry="left")
    write_toml(tmp_path / "left.toml", data)
    left = ClientConfig.load(tmp_path / "left.toml").session(ksf_params=FAST_KSF)
    left.register(PASSWORD, recovery.new_root_key())
    _rotate(local.root)
    data.update(state_file="state.json", entry="kept")
    write_toml(tmp_path / "kept.toml", data)
    kept = ClientConfig.load(tmp_path / "kept.toml")
    session = kept.session(ksf_params=FAST_KSF)
    root_key = recovery.new_root_key()
    session.register(PASSWORD, root_key)
    old_epochs = [epoch for epoch, _ in session.older()]  # the state now holds them all
    assert old_epochs
    bundles = {
        local.fleet(d).epoch or 0: (local.fleet_dir(d) / "bundle.bin").read_bytes()
        for d in local.epochs()[:-1]
    }
    old_nodes = [local.node_name(i, d) for d in local.epochs()[:-1] for i in range(NODES)]
    old_dirs = [local.fleet_dir(d) for d in local.epochs()[:-1]]
    current_dir = local.fleet_dir()
    made = [f"node{i}{part}" for i in range(NODES) for part in ("-token", "", ".pin", ".toml")]
    assert all((d / name).exists() for d in [*old_dirs, current_dir] for name in made)

    def retire(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "backupvault", "--json", "local", "retire", "--dir",
             str(local.root), *extra],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip

    account = data["account"]
    assert f"{account}/left" in local.keys_held(local.epochs()[:-1])
    running = set(local.running())
    refused = retire()
    assert refused.returncode == 1, refused.stderr
    assert "not retired" in refused.stderr and f"{account}/left" in refused.stderr
    assert "--force" in refused.stderr
    assert set(local.running()) == running and len(local.epochs()) > 1
    assert all((d / name).exists() for d in old_dirs for name in made)
    done = retire("--force")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    current = local.fleet()
    assert answer["epoch"] == current.epoch and answer["retired_below"] == current.retired_below
    assert all(e < current.retired_below for e in old_epochs)
    assert len(local.epochs()) == 1
    assert not set(old_nodes) & set(local.running())
    # The retired nodes' tokens, PINs, stores and configs are gone (operations.md, step 3):
    # their shares would still evaluate for an entry left there. The current set's stay.
    assert not [d / name for d in old_dirs for name in made if (d / name).exists()]
    assert all((current_dir / name).exists() for name in made)
    relay = local.relay_url()
    assert httpx.get(f"{relay}/v1/fleet/epochs").json() == {
        "current": current.epoch,
        "previous": [],
    }

    # The key on the current nodes: recovered as before.
    assert kept.session(ksf_params=FAST_KSF).recover_or_migrate(PASSWORD).root_key == root_key
    # An entry with no key anywhere, on the device that used the retired epochs, through a
    # relay that lists them again: nothing is asked of them, and the device says why.
    data.update(entry="nowhere")
    write_toml(tmp_path / "nowhere.toml", data)
    notes: list[str] = []
    transport = ListsRetired(bundles, current.epoch or 0)
    nowhere = ClientConfig.load(tmp_path / "nowhere.toml").session(
        ksf_params=FAST_KSF, http=httpx.Client(transport=transport), notify=notes.append
    )
    with pytest.raises(NotRegistered):
        nowhere.recover_or_migrate(PASSWORD)
    assert "/v1/fleet/epochs" in transport.paths  # the relay was asked, and lied
    here = f"/v1/epochs/{current.epoch}/"
    elsewhere = [
        p
        for p in transport.paths
        if "epoch=" in p or (p.startswith("/v1/epochs/") and not p.startswith(here))
    ]
    assert elsewhere == []
    assert any("which the operator has retired" in note for note in notes), notes
    # One node set again: `local upgrade`, refused while older sets ran, works, and the key
    # stays where it is. With nothing new installed it does nothing; with the record
    # naming other code (as after installing a new version) it makes the next epoch.
    assert local.upgrade() == (current.epoch or 0, False)
    fleet_file = current_dir / "fleet.toml"
    deployed = fleet_file.read_text()
    measurement = tomllib.loads(deployed)["measurement"]
    fleet_file.write_text(deployed.replace(measurement, "ab" * 32))
    assert local.upgrade() == ((current.epoch or 0) + 1, True)
    assert kept.session(ksf_params=FAST_KSF).recover_or_migrate(PASSWORD).root_key == root_key
