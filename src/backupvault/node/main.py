"""Starting a node: make its own keys in the token (`node init`), then serve. Every key
is the node's own; no fleet-wide secret exists. Files in the node's data directory:

    identity.sealed        X25519 identity private key     (sealed by the token)
    hpke.sealed            this node's HPKE private key: clients seal its requests to it
                           (NodePrivateKey.to_bytes(); sealed by the token)
    signing.sealed         this node's Ed25519 signing key (32-byte seed; sealed by the token)
    storage-key.sealed     32-byte storage key: names and digests rows (sealed by the token)
    row-key.sealed         the key rows are encrypted under, sealed by a token key of its
                           own generation, replaced and the old token key destroyed when a
                           share is erased (node/token.py, RowKeyRing)
    store.sqlite           acceptor records and this node's share rows (node/store.py)
    single-seed-checked    the store was checked once for single-seed keys (none found)

A data folder of an earlier version may also hold `fleet-secrets.sealed` or
`fleet-secrets.transfer`: the removed single-seed flow's OPRF seed, OPAQUE server key and
ticket key. A node refuses to start while its store holds a key on that flow
(`SingleSeedEntries`); otherwise it deletes both files at start.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from backupvault.crypto.seal import DEFAULT_KEM, Kem, NodePrivateKey
from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.files import try_lock, write_new_file
from backupvault.fleet.channel import PeerChannel
from backupvault.fleet.messages import AcceptorRecord, payload_of
from backupvault.hop import HopVerifier
from backupvault.hsm.firmware import NodeKey, VaultFirmware
from backupvault.hsm.shares import UNKNOWN_B, FleetShape
from backupvault.hsm.state import (
    DEFAULT_GUESS_LIMIT,
    EntryId,
    NodeShare,
    ThresholdState,
    single_seed_status,
)
from backupvault.node.config import FleetDescription, NodeConfig
from backupvault.node.peers import parse_address
from backupvault.node.service import NodeService, StoreStart
from backupvault.node.store import NodeStore, store_generation
from backupvault.node.token import RowKeyMoved, RowKeyRing, SealedFile, TokenSealer
from backupvault.protocol import EntryStatus
from backupvault.tokens import TokenVerifier, fleet_audience
from backupvault.transparency.measure import (
    check_isolated,
    combine,
    default_package_dir,
    measure_environment,
    measure_package,
)

log = logging.getLogger("backupvault.node")

IDENTITY = "identity.sealed"
HPKE_KEY = "hpke.sealed"
SIGNING_KEY = "signing.sealed"
STORAGE_KEY = "storage-key.sealed"
#: The removed single-seed flow's secrets, as earlier versions kept them.
SINGLE_SEED_SECRETS = ("fleet-secrets.sealed", "fleet-secrets.transfer")
#: Left in the data folder once its store was found to hold no single-seed key.
SINGLE_SEED_CHECKED = "single-seed-checked"
#: Held (flock) by the node serving from the data folder, for as long as it runs.
DATA_LOCK = "node.lock"


class NodeNotProvisioned(BackupVaultError):
    pass


class NodeAlreadyRunning(BackupVaultError):
    """Another process serves from this node's data folder."""


def hold_data_folder(config: NodeConfig) -> int | None:
    """Lock the node's data folder for this process (the descriptor, kept open until it
    exits; None when the folder does not exist yet: loading the keys says what to do).
    A second process on the same folder would unseal the keys and open the store and the
    token of the node that runs (and could undo its row key rotation, destroying the
    token key its store is being re-sealed under) before it failed to listen."""
    if not config.data_dir.is_dir():
        return None
    lock = config.data_dir / DATA_LOCK
    try:
        fd = try_lock(lock)
    except OSError as err:
        raise _data_folder_refused(config, f"cannot open its lock {lock}", err) from None
    if fd is None:
        holder = lock.read_text(errors="replace").strip() or "unknown"
        raise NodeAlreadyRunning(
            f"node {config.index} already runs on {config.data_dir} (pid {holder})",
            hint="stop it first (systemctl stop, or `local down` for a local deployment);"
            " two processes must never serve from one data folder",
        )
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _data_folder_refused(config: NodeConfig, what: str, err: OSError) -> InvalidInput:
    """The node cannot use its data folder (as another user's: `node init` run as root, the
    service as its own user). It was "unexpected PermissionError ...; this is a bug in
    backupvault"."""
    return InvalidInput(
        f"node {config.index} {what}: {err.strerror}",
        hint=f"the data folder {config.data_dir} must be the node's own, writable by the user"
        f" it runs as (uid {os.getuid()}): run `node init` and `node serve` as that user, or"
        " give it the folder (chown -R)",
    )


class SingleSeedEntries(BackupVaultError):
    """The store holds keys on the removed single-seed flow: the node does not start."""


class MeasurementMismatch(BackupVaultError):
    """This node's code or configuration is not what the fleet's deployment record names."""


def check_measurement(config: NodeConfig, fleet: FleetDescription) -> dict[str, object]:
    """Measure the code running now (the package, the interpreter, the dependencies and
    .pth files: transparency/measure.py) with the fleet's configuration; refuse to start
    when code no measurement covers could run (UnmeasuredCode), or when the fleet's
    deployment record (its `measurement` in fleet.toml) names another measurement.
    Returns what `GET /v1/measurement` serves."""
    package = measure_package()
    environment = measure_environment()
    own = combine(package, fleet.firmware_config(), environment.digest)
    if fleet.measurement is not None and own != fleet.measurement:
        message = (
            f"node {config.index} refuses to join fleet {fleet.fleet_id.hex()} epoch"
            f" {fleet.epoch}: it measures {own.hex()}, the deployment record names"
            f" {fleet.measurement.hex()}"
        )
        log.error("%s", message)
        raise MeasurementMismatch(
            message,
            hint=f"this node's code ({default_package_dir()}) or fleet.toml differs from the"
            " deployed release; reinstall the release the record was made from (compare with"
            " `backupvault fleet measure`), or deploy a new record for this code",
        )
    if fleet.measurement is None:
        log.warning(
            "fleet.toml names no measurement (never deployed with `backupvault fleet deploy`);"
            " node %d cannot check its code against a deployment record",
            config.index,
        )
    return {
        "node": config.index,
        "fleet_id": fleet.fleet_id.hex(),
        "epoch": fleet.epoch,
        "measurement": own.hex(),
        "package_digest": package.hex(),
        **environment.describe(),
        "expected_measurement": None if fleet.measurement is None else fleet.measurement.hex(),
    }


def _sealed(config: NodeConfig, sealer: TokenSealer, file: str, name: str) -> SealedFile:
    return SealedFile(config.data_dir / file, name, sealer)


@dataclass(frozen=True)
class NodePublicKeys:
    """What `node init` prints and the operator lists for this node in fleet.toml (and so
    in the deployment record)."""

    identity: bytes  # X25519
    hpke: bytes  # NodePublicKey.to_bytes()
    signing: bytes  # Ed25519

    def describe(self) -> dict[str, str]:
        return {
            "identity_public_key": self.identity.hex(),
            "hpke_public_key": self.hpke.hex(),
            "signing_public_key": self.signing.hex(),
        }


def init_node(config: NodeConfig, kem: Kem = DEFAULT_KEM) -> NodePublicKeys:
    """Create the node's own keys (once), each sealed by its token: identity, HPKE,
    signing and storage. Returns their public halves; no secret ever leaves the node.
    `kem` applies only when the HPKE key is made (every node of a fleet must use one).
    Refused while a node serves from the folder: it would make a new row key under it."""
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        what = f"cannot make its data folder {config.data_dir}"
        raise _data_folder_refused(config, what, err) from None
    lock = hold_data_folder(config)
    try:
        return _init_keys(config, kem)
    finally:
        if lock is not None:
            os.close(lock)


def _init_keys(config: NodeConfig, kem: Kem) -> NodePublicKeys:
    with TokenSealer(config.token) as sealer:
        sealer.ensure_sealing_key()
        identity = _sealed(config, sealer, IDENTITY, "identity")
        if not identity.exists():
            identity.write(X25519PrivateKey.generate().private_bytes_raw())
        hpke = _sealed(config, sealer, HPKE_KEY, "hpke")
        if not hpke.exists():
            hpke.write(NodePrivateKey.generate(kem).to_bytes())
        signing = _sealed(config, sealer, SIGNING_KEY, "signing")
        if not signing.exists():
            signing.write(Ed25519PrivateKey.generate().private_bytes_raw())
        storage = _sealed(config, sealer, STORAGE_KEY, "storage-key")
        if not storage.exists():
            storage.write(os.urandom(32))
        rows = RowKeyRing(sealer, config.data_dir)
        if not rows.exists():
            rows.create()
        return NodePublicKeys(
            X25519PrivateKey.from_private_bytes(identity.read()).public_key().public_bytes_raw(),
            NodePrivateKey.from_bytes(hpke.read()).public_key().to_bytes(),
            Ed25519PrivateKey.from_private_bytes(signing.read()).public_key().public_bytes_raw(),
        )


@dataclass(frozen=True)
class NodeKeys:
    """The node's own keys, unsealed: none of them shows in a repr (invariant 6: outside
    node memory they exist only sealed by the token)."""

    identity: bytes = field(repr=False)
    hpke: NodePrivateKey = field(repr=False)
    signing: bytes = field(repr=False)
    storage: bytes = field(repr=False)
    #: The store's row key and its generation (node/token.py, RowKeyRing).
    row_key: bytes = field(repr=False)
    generation: int


def load_keys(config: NodeConfig, fleet: FleetDescription, copy: Path | None = None) -> NodeKeys:
    """Unseal the node's own keys. The node itself (no `copy`) also finishes or undoes a
    row key rotation a crash interrupted. A reader beside the running node (`node
    inspect`) passes `copy`: the store is copied there, and the row key is the one that
    copy is sealed under, read without changing a file (the node may be rotating)."""
    with TokenSealer(config.token) as sealer:
        identity_file = _sealed(config, sealer, IDENTITY, "identity")
        if not identity_file.exists():
            raise NodeNotProvisioned(
                f"node {config.index} has no identity key", hint="run `backupvault node init`"
            )
        identity = identity_file.read()
        hpke_file = _sealed(config, sealer, HPKE_KEY, "hpke")
        if not hpke_file.exists():
            raise NodeNotProvisioned(
                f"node {config.index} has no HPKE key of its own (made by an older version)",
                hint="run `backupvault node init` again (it keeps the existing keys) and put"
                " the public keys it prints into fleet.toml, then redeploy",
            )
        hpke = NodePrivateKey.from_bytes(hpke_file.read())
        signing = _sealed(config, sealer, SIGNING_KEY, "signing").read()
        storage = _sealed(config, sealer, STORAGE_KEY, "storage-key").read()
        ring = RowKeyRing(sealer, config.data_dir)
        if not ring.exists():
            raise NodeNotProvisioned(
                f"node {config.index} has no row key (made by an older version)",
                hint="run `backupvault node init` again (it keeps the existing keys)",
            )
        if copy is None:
            row_key = ring.load(store_generation(config.data_dir / "store.sqlite"))
            generation = ring.generation()
        else:
            generation, row_key = _copy_store(config.data_dir / "store.sqlite", copy, ring)

    own = next((n for n in fleet.nodes if n.index == config.index), None)
    if own is None or own.hpke_public_key != hpke.public_key().to_bytes():
        raise NodeNotProvisioned(
            f"fleet.toml does not list node {config.index}'s own HPKE key",
            hint="copy the keys `backupvault node init` prints into this node's [[nodes]] entry",
        )
    return NodeKeys(identity, hpke, signing, storage, row_key, generation)


def refuse_single_seed_entries(store: NodeStore, node: int, data_dir: Path) -> None:
    """Refuse to start while the store holds a key on the removed single-seed flow (it
    could only be recovered with the single seed, which whoever holds one node host could
    use to test its password offline); with none, delete the single seed's files.

    The check reads every row once (and so checks every bucket, which the node would do in
    the background anyway): about 150 µs a row on the 2-core development machine. It runs
    once per data folder: a clean result leaves `SINGLE_SEED_CHECKED` there, since this
    version never stores a single-seed value (its acceptor refuses them)."""
    checked = data_dir / SINGLE_SEED_CHECKED
    if not checked.exists():
        keys = sum(
            single_seed_status(payload_of(record.value)) == EntryStatus.LIVE
            for record in store.records()  # one row at a time: flat memory at millions
        )
        if keys:
            raise SingleSeedEntries(
                f"node {node} holds {keys} key(s) on the single-seed flow, which this"
                " version removed (docs/threshold.md): it does not start",
                hint="run the previous version until each of these keys was recovered once"
                " (a recovery there moves the key to the threshold vault) or deleted, or have"
                " their owners register them again; the node store is left as it is",
            )
        write_new_file(checked, b"no key on the single-seed flow\n")
    for name in SINGLE_SEED_SECRETS:
        path = data_dir / name
        if path.exists():
            path.unlink()
            log.info("node %d deleted %s (the removed single-seed flow's secrets)", node, name)


def inspect_store(config: NodeConfig, only: EntryId | None = None) -> list[dict[str, object]]:
    """What this node's disk holds: counters and flags per entry, never a secret. With
    `only`, just that entry (shown as empty if the disk has nothing for it)."""
    fleet = FleetDescription.load(config.fleet_file)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "store.sqlite"
        keys = load_keys(config, fleet, copy)
        store = NodeStore(copy, config.index, keys.storage, keys.row_key, keys.generation)
        try:
            records = store.load()
            if only is not None:
                wanted = only.to_bytes()
                records = [r for r in records if r.key == wanted] or [AcceptorRecord(wanted)]
            return [
                _describe(config.index, record, store.get_share(record.key)) for record in records
            ]
        finally:
            store.close()


#: Copies of the store `node inspect` takes before giving up on a node that rotates its row
#: key between each copy and the read of its key (each rotation takes milliseconds).
COPY_ATTEMPTS = 5


def _copy_store(source: Path, copy: Path, ring: RowKeyRing) -> tuple[int, bytes]:
    """Copy a running node's store and read the row key the copy is sealed under:
    (generation, key). The copy comes first, so its generation is the one to read; a
    rotation that moves on before the key is read makes another copy."""
    attempts = COPY_ATTEMPTS
    while True:
        _snapshot(source, copy)
        try:
            return ring.read(store_generation(copy))
        except RowKeyMoved:
            attempts -= 1
            if not attempts:
                raise


def _snapshot(source: Path, copy: Path) -> None:
    """A consistent copy of a store a running node may commit to while it is read
    (SQLite's backup runs in one read transaction), never the live file row by row."""
    if not source.exists():
        return  # an empty store, as NodeStore would make
    os.close(os.open(copy, os.O_RDWR | os.O_CREAT, 0o600))
    live = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    target = sqlite3.connect(copy)
    try:
        live.backup(target)
    finally:
        target.close()
        live.close()


def _describe(node: int, record: AcceptorRecord, share: NodeShare | None) -> dict[str, object]:
    entry_id = EntryId.from_bytes(record.key)
    payload = payload_of(record.value)
    if payload[:1] == bytes([ThresholdState.TAG]):
        threshold_state = ThresholdState.from_bytes(payload)
        return {
            "node": node,
            "account": entry_id.account,
            "entry": entry_id.entry,
            "flow": "threshold",
            "status": EntryStatus(threshold_state.status).name.lower(),
            "attempts_used": threshold_state.attempts_used,
            "attempt": threshold_state.attempt,
            "version": threshold_state.version,
            # Whether this node can evaluate the live version (a flag, never the share).
            "holds_share": bool(
                threshold_state.status == EntryStatus.LIVE
                and share is not None
                and share.share
                and share.manifest == threshold_state.manifest
            ),
            "accepted_round": record.accepted_round,
            "own": _own_row(share),
        }
    single_seed = single_seed_status(payload)
    status = EntryStatus.EMPTY if single_seed is None else single_seed
    return {
        "node": node,
        "account": entry_id.account,
        "entry": entry_id.entry,
        "flow": "none" if single_seed is None else "single-seed (removed)",
        "status": status.name.lower(),
        "accepted_round": record.accepted_round,
    }


def _own_row(share: NodeShare | None) -> dict[str, object] | None:
    """This node's own row for the entry (never replicated): its count since the owner's
    last reset, as attempt numbers, and whether it still keeps a share of any M, whatever
    the replicated status says. Attempt numbers only, never a B or the share."""
    if share is None:
        return None
    return {
        "version": share.version,
        "keeps_share": bool(share.share),
        "reset_at": share.reset_at,
        "evaluated": sorted(e.attempt for e in share.evaluated),
        # Counted on its peers' reports after a rollback: such a row never erases on it.
        "on_reports": any(e.blinded_hash == UNKNOWN_B for e in share.evaluated),
    }


def build_service(config: NodeConfig, started: float | None = None) -> NodeService:
    """The node's service; `started`: when this process started (peer messages sent
    before it are dropped: their nonces only the previous process knew)."""
    fleet = FleetDescription.load(config.fleet_file)
    keys = load_keys(config, fleet)
    channel = PeerChannel(
        config.index,
        keys.identity,
        {n.index: n.identity_public_key for n in fleet.nodes},
        fleet.fleet_id,
        os.urandom,
        epoch=fleet.epoch or 0,
        # What peers sent to an earlier process of this node may have opened there: its
        # nonces are not remembered here, so such a message is dropped as a replay could be.
        not_before=time.time() if started is None else started,
    )
    store = NodeStore(
        config.data_dir / "store.sqlite", config.index, keys.storage, keys.row_key, keys.generation
    )
    try:
        refuse_single_seed_entries(store, config.index, config.data_dir)
    except SingleSeedEntries:
        store.close()
        raise
    # Kept open for the node's life: the store counter is advanced after every write.
    sealer = TokenSealer(config.token)
    # An erased share re-seals the store under a new row key, the old one destroyed.
    store.key_rotation = RowKeyRing(sealer, config.data_dir)
    store.finish_owed_rotation()  # an erasure whose rotation did not get done: before serving
    start = store_start(store, sealer)
    accounts = TokenVerifier(
        Ed25519PublicKey.from_public_bytes(fleet.account_issuer_public_key),
        issuer=fleet.account_issuer,
        audience=fleet_audience(fleet.fleet_id),
    )
    nodes = len(fleet.nodes)
    # The threshold flow's per-node limit L: the fleet's, at most the default 10.
    shape = FleetShape(
        fleet.epoch or 0, nodes, nodes // 2 + 1, min(fleet.guess_limit, DEFAULT_GUESS_LIMIT)
    )
    return NodeService(
        config.index,
        peer_addresses(fleet),
        VaultFirmware(
            fleet.fleet_id,
            NodeKey(config.index, keys.hpke, Ed25519PrivateKey.from_private_bytes(keys.signing)),
            accounts,
            shape,
            store.get_share,
            {
                n.index + 1: Ed25519PublicKey.from_public_bytes(n.signing_public_key)
                for n in fleet.nodes
            },
        ),
        channel,
        store,
        record_counter=sealer.advance_store_counter,
        intact=start is StoreStart.INTACT,
        store_start=start,
        peer_listen=None
        if config.peer_listen is None
        else parse_address(config.peer_listen, "[node] peer_listen"),
    )


def peer_addresses(fleet: FleetDescription) -> dict[int, tuple[str, int]]:
    """Every node's peer listener, from the fleet file."""
    addresses = {}
    for node in fleet.nodes:
        if not node.peer:
            raise InvalidInput(
                f"the fleet file gives node {node.index} no `peer` address",
                hint='add peer = "host:port" (where its peer listener is reached) to each'
                " [[nodes]] entry of fleet.toml",
            )
        addresses[node.index] = parse_address(node.peer, f"node {node.index}'s peer address")
    return addresses


def store_start(store: NodeStore, sealer: TokenSealer) -> StoreStart:
    """What this start finds: whether the store holds everything this node ever
    persisted (INTACT; FIRST_START for a new node's empty store), judged by the token's
    counter, which counts every write alongside it, both done before anything depending
    on the write leaves. Equal: intact. The store one ahead (its write landed, the
    token's not): intact too, nothing depending on that write left. Behind the token
    (rolled back, wiped, or a crash between the two writes: indistinguishable from a
    rollback by one write) or no counter recorded yet: not intact, the node catches up;
    the store's counter is first raised two past the token's (`NodeStore.raise_counter`:
    past any copy a lost history left), then the token follows it.
    The store records that a catch-up began, until a write made once it has caught up:
    a node stopped before that catches up again, whatever the counters say."""
    recorded = sealer.store_counter()
    if recorded is None:
        log.info("node store counter recorded in the token for the first time; catching up")
        if store.counter:
            # A store with a history the token never counted (an upgrade, a new token):
            # judged as after a rollback. The store first: a crash then still catches up.
            store.raise_counter(store.counter)
            start = StoreStart.UNCOUNTED_HISTORY
        else:
            store.mark_catching_up()  # a new node: nothing it wrote can be lost
            start = StoreStart.FIRST_START
        sealer.advance_store_counter(store.counter)
    elif recorded <= store.counter <= recorded + 1:
        sealer.advance_store_counter(store.counter)
        if not store.catching_up:
            return StoreStart.INTACT
        # Its counter was raised to the token's when the catch-up began: equal, but the
        # records it had not fetched yet are still missing (sim seeds 9100627, 9100640).
        log.warning("node stopped before its last catch-up finished; catching up again")
        start = StoreStart.CATCH_UP_UNFINISHED
    else:
        log.warning(
            "node store counter %d does not match the token's %d (rolled back or wiped); "
            "catching up from the fleet",
            store.counter,
            recorded,
        )
        store.raise_counter(recorded)
        sealer.advance_store_counter(store.counter)
        start = StoreStart.ROLLBACK_DETECTED
    store.mark_catching_up()
    return start


def store_is_intact(store: NodeStore, sealer: TokenSealer) -> bool:
    """Whether the replica may take part at once (`store_start` found the store INTACT)."""
    return store_start(store, sealer) is StoreStart.INTACT


def serve(config_path: Path) -> None:
    from backupvault.node.http import create_app
    from backupvault.serving import check_can_listen, run_until_stopped

    # Requests and peer messages signed before this moment may have been taken by the
    # previous process, whose nonces are gone: they are refused (hop) or dropped (peers).
    started = time.time()
    config = NodeConfig.load(config_path)
    hold_data_folder(config)  # before anything in the folder or the token is read
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Before any secret is unsealed: a node with other code does not join the fleet.
    check_isolated()
    fleet = FleetDescription.load(config.fleet_file)
    measurement = check_measurement(config, fleet)
    # Both ports before the store or the token is opened: the peer listener binds only in
    # the start-up, where a port another program held was a traceback ("Application
    # startup failed") and a process that hung instead of exiting.
    check_can_listen(config.host, config.port)
    if config.peer_listen is not None:
        peer_host, peer_port = parse_address(config.peer_listen, "[node] peer_listen")
        where = "`peer_listen` in the node's config, and its `peer` in fleet.toml"
    else:
        peer_host, peer_port = peer_addresses(fleet)[config.index]
        where = "this node's `peer` in fleet.toml"
    check_can_listen(peer_host, peer_port, f"{where}, for its peer listener")
    hop = HopVerifier(config.index, fleet.relay_public_keys, not_before=started)
    app = create_app(build_service(config, started), hop, measurement=measurement)
    # The relay signs whole seconds: a request it signs in the second this process started
    # would be refused as signed before it. Listening only from the next second on (the
    # start's own work usually takes that long already), every request that reaches this
    # process is signed after its start.
    time.sleep(max(0.0, math.floor(started) + 1 - time.time()))
    log.info(
        "node %d listening on %s:%d, peers on %s (fleet %s, epoch %s); catching up before"
        " it answers",
        config.index,
        config.host,
        config.port,
        config.peer_listen or {n.index: n.peer for n in fleet.nodes}.get(config.index),
        measurement["fleet_id"],
        measurement["epoch"],
    )
    run_until_stopped(
        app,
        config.limits,
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
    )
