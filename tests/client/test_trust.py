"""The OTA client's fleet-key trust (client/trust.py; docs/transparency.md, "Clients:
pinned and over the air") in one process: the relay and the network are an
httpx.MockTransport that an attacker may rewrite, the witnesses are real logs (`Witness`
on SQLite in tmp_path). Nobody here has the operator's or a witness's private key except
where a test plays that party misbehaving (an operator showing witnesses different
records, a witness signing two histories).

Every refusal must be a clear `BackupVaultError` and must leave the state file (and its
folder) exactly as it was; what is accepted is saved only after every check passed."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.transparency.conftest import (
    FLEET_ID,
    WITNESS_NAME,
    hpke_key,
    make_record,
    node,
    signing_key,
)

from backupvault.client.errors import FleetNotTrusted, FleetUnavailable, RelayUnreachable
from backupvault.client.threshold import ThresholdVault
from backupvault.client.trust import (
    FleetSession,
    OtaTrust,
    StateMoved,
    TrustState,
    WitnessEndpoint,
)
from backupvault.deploy.verify import verify_log
from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.files import MAX_STATE_BYTES, LockTimeout, locked
from backupvault.transparency import (
    FleetBundle,
    OperatorSignedRecord,
    Witness,
    sign_record,
    verify_bundle,
)
from backupvault.transparency.bundle import cosign
from backupvault.transparency.errors import (
    BadNoteSignature,
    EpochReplayed,
    EpochRetired,
    FleetMismatch,
    HeadMismatch,
    InclusionProofInvalid,
    LogForked,
    LogRolledBack,
    Malformed,
    MalformedNote,
    MeasurementNotAllowed,
    NotLogged,
    OperatorSignatureInvalid,
    StaleHead,
    TransparencyError,
    UnknownFleet,
    UnknownNoteKey,
    UnknownOperatorKey,
    WitnessSignatureInvalid,
    WitnessSignatureMissing,
)
from backupvault.transparency.head import DEFAULT_MAX_AGE, MAX_CLOCK_SKEW
from backupvault.transparency.note import Checkpoint, Signer, open_checkpoint
from backupvault.transparency.record import DeploymentRecord, raw_public_key
from backupvault.transparency.witness import WitnessPolicy
from backupvault.transparency.witness_store import WitnessStore

RELAY = "https://relay.test"
WITNESS_A = "https://witness-a.test"
WITNESS_B = "https://witness-b.test"
B_NAME = "witness-b.test/backupvault"
OTHER_FLEET = bytes.fromhex("feedfacefeedface")
NOW = 1_800_000_000
DEEP = "[" * 100_000 + "]" * 100_000

#: A hostile answer in place of the honest one for one (host, path).
Answer = Callable[[httpx.Request], httpx.Response]


def reply(status: int = 200, **kw: Any) -> Answer:
    return lambda request: httpx.Response(status, **kw)


class Net:
    """The operator, witness A (whose cosignature and log the bundles carry) and witness B
    (which logs the same records), the relay, and the network in between."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.operator = Ed25519PrivateKey.generate()
        self.a_signer = Signer(WITNESS_NAME, Ed25519PrivateKey.generate())
        self.b_signer = Signer(B_NAME, Ed25519PrivateKey.generate())
        self.stores: list[WitnessStore] = []
        self.a = self.witness(self.a_signer, "a.sqlite")
        self.b = self.witness(self.b_signer, "b.sqlite")
        self.now = NOW
        self.current = b""
        self.previous: dict[int, bytes] = {}
        self.hostile: dict[tuple[str, str], Answer] = {}
        self.asked: list[str] = []  # "host path" of each request, in order

    def witness(self, signer: Signer, db: str) -> Witness:
        operator = raw_public_key(self.operator)
        store = WitnessStore(self.folder / db, signer.name, raw_public_key(signer.private_key))
        self.stores.append(store)
        policy = WitnessPolicy(operators={FLEET_ID: operator, OTHER_FLEET: operator})
        return Witness(signer, store, policy)

    def close(self) -> None:
        for store in self.stores:
            store.close()

    # --- the operator ----------------------------------------------------------------------

    def sign(self, epoch: int, **changes: Any) -> OperatorSignedRecord:
        return sign_record(make_record(epoch=epoch, **changes), self.operator)

    def log(self, signed: OperatorSignedRecord, *others: Witness) -> bytes:
        """`signed` logged by witness A (and `others`): its bundle, from A's receipt."""
        for witness in others:
            witness.submit(signed.to_bytes())
        return FleetBundle.from_receipt(signed, self.a.submit(signed.to_bytes())).to_bytes()

    def deploy(self, epoch: int, **changes: Any) -> bytes:
        """A new epoch logged by both witnesses; the relay serves it as the current one.
        Each epoch is a rotation, on nodes of its own, unless `nodes` says otherwise."""
        changes.setdefault("nodes", rotated_nodes(epoch))
        if self.current:
            self.previous[
                FleetBundle.from_bytes(self.current).operator_signed.deployment().epoch
            ] = self.current
        self.current = self.log(self.sign(epoch, **changes), self.b)
        return self.current

    # --- the network -----------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        self.asked.append(f"{host} {path}")
        hostile = self.hostile.get((host, path))
        return hostile(request) if hostile is not None else self.honest(request)

    def honest(self, request: httpx.Request) -> httpx.Response:
        host, path, query = request.url.host, request.url.path, request.url.params
        witness = {"witness-a.test": self.a, "witness-b.test": self.b}.get(host)
        if witness is not None and path == "/v1/head":
            try:
                fleet, nonce = bytes.fromhex(query["fleet"]), bytes.fromhex(query.get("nonce", ""))
                return httpx.Response(200, text=witness.head(fleet, self.now, nonce))
            except UnknownFleet:
                return httpx.Response(404)
        if witness is not None and path == "/v1/consistency":
            return proof_answer(witness, int(query["old"]), int(query["new"]))
        if witness is not None and path == "/v1/inclusion":
            try:
                index, proof = witness.inclusion_of(
                    bytes.fromhex(query["leaf_hash"]), int(query["size"])
                )
            except NotLogged:
                return httpx.Response(404)
            hashes = [base64.b64encode(h).decode() for h in proof]
            return httpx.Response(200, json={"index": index, "proof": hashes})
        if host != "relay.test":
            return httpx.Response(404)
        if path == "/v1/fleet/consistency":  # the relay passes on witness A's proof
            return proof_answer(self.a, int(query["old"]), int(query["new"]))
        if path == "/v1/fleet/epochs":
            return httpx.Response(200, json={"previous": sorted(self.previous, reverse=True)})
        if path == "/v1/fleet/bundle" and "epoch" in query:
            old = self.previous.get(int(query["epoch"]))
            return httpx.Response(404) if old is None else httpx.Response(200, content=old)
        if path == "/v1/fleet/bundle":
            return httpx.Response(200, content=self.current)
        return httpx.Response(404)

    def http(self, **kw: Any) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle), **kw)

    def trust(self, state_file: Path, **changes: Any) -> OtaTrust:
        fields: dict[str, Any] = {
            "operator_key": raw_public_key(self.operator),
            "witness": self.a_signer.verifier,
            "state_file": state_file,
            "witness_url": WITNESS_A,
            "others": (WitnessEndpoint(self.b_signer.verifier, WITNESS_B),),
            "clock": lambda: self.now,
        }
        fields.update(changes)
        return OtaTrust(**fields)


def rotated_nodes(epoch: int) -> list[tuple[int, bytes, bytes, bytes, str]]:
    """Epoch `epoch`'s nodes, each with keys of that epoch (epoch 1's: `node(i)`'s)."""
    shift = 10 * (epoch - 1)
    return [
        node(i, identity=bytes([i + 1 + shift]) * 32, hpke=hpke_key(i + shift),
             signing=signing_key(i + shift))
        for i in range(5)
    ]  # fmt: skip


def proof_answer(witness: Witness, old: int, new: int) -> httpx.Response:
    proof = witness.consistency(old, new)
    return httpx.Response(200, json={"proof": [base64.b64encode(h).decode() for h in proof]})


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    world = Net(tmp_path / "world")
    yield world
    world.close()


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "client" / "state.json"


def snapshot(state_file: Path) -> dict[str, bytes]:
    """Every file in the state file's folder, with its bytes (a leftover temporary file
    counts as a change too)."""
    folder = state_file.parent
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def refused(
    net: Net,
    trust: OtaTrust,
    reason: type[BackupVaultError] | None = None,
    *,
    error: type[BackupVaultError] = FleetNotTrusted,
    match: str | None = None,
    http: httpx.Client | None = None,
) -> BackupVaultError:
    """`trust.current` refuses with `error` (carrying `reason`), changing no file."""
    before = snapshot(trust.state_file)
    with pytest.raises(error, match=match) as caught:
        trust.current(http or net.http(), RELAY)
    assert snapshot(trust.state_file) == before
    assert caught.value.message  # said for a person
    if reason is not None:
        assert isinstance(caught.value, FleetNotTrusted)
        assert isinstance(caught.value.reason, reason), caught.value.reason
    return caught.value


def saved(state_file: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(state_file.read_text())
    return data


def saved_size(net: Net, state_file: Path) -> int:
    return open_checkpoint(saved(state_file)["checkpoint"], net.a_signer.verifier).size


def saved_epoch(state_file: Path, fleet_id: bytes = FLEET_ID) -> int:
    epoch: int = saved(state_file)["fleets"][fleet_id.hex()]["epoch"]
    return epoch


def grow_log(net: Net, count: int = 1) -> None:
    """Other fleets' records make both logs grow (the fleet's own latest stays the same)."""
    for _ in range(count):
        signed = net.sign(len(net.a.store.hashes()) + 100, fleet_id=OTHER_FLEET)
        net.log(signed, net.b)


def accepted(net: Net, state_file: Path) -> OtaTrust:
    """A client that accepted the fleet's first epoch (logged by both witnesses)."""
    net.deploy(1)
    trust = net.trust(state_file)
    trust.current(net.http(), RELAY)
    return trust


# ---- the state file --------------------------------------------------------------------------


def test_a_missing_state_file_is_an_empty_state_and_loading_writes_nothing(
    state_file: Path,
) -> None:
    state = TrustState.load(state_file)
    assert (state.checkpoint, state.fleets, state.heads) == (None, {}, {})
    assert not state_file.parent.exists()


def test_what_is_accepted_is_saved_and_loads_back(net: Net, state_file: Path) -> None:
    net.deploy(1)
    verified = net.trust(state_file).current(net.http(), RELAY)
    assert (verified.record.fleet_id, verified.record.epoch) == (FLEET_ID, 1)
    data = saved(state_file)
    assert data["version"] == 1 and set(data["heads"]) == {WITNESS_NAME, B_NAME}
    assert data["fleets"] == {
        FLEET_ID.hex(): {"epoch": 1, "records": {"1": verified.signed_record.to_bytes().hex()}}
    }
    loaded = TrustState.load(state_file)
    assert loaded.accepted_epochs() == {FLEET_ID: 1}
    assert loaded.records(FLEET_ID) == {1: verified.signed_record.to_bytes()}
    # The witness's newest tree (its head's and the bundle's, both of 1 leaf).
    assert open_checkpoint(loaded.checkpoint or "", net.a_signer.verifier).size == 1
    # No temporary file left behind; the lock file stays (removing it would let two
    # processes lock two different files).
    assert snapshot(state_file).keys() == {"state.json", ".state.json.lock"}


#: State files a crash, a bad disk or a hostile hand could leave, by what is wrong.
HOSTILE_STATES: dict[str, str | bytes] = {
    "empty": "",
    "truncated": '{"version": 1, "fleets": {"0123": {"epo',
    "not UTF-8": b'{"version": 1, "checkpoint": "\xff\xfe"}',
    "NUL bytes": b"\x00" * 64,
    "a list": "[]",
    "another version": '{"version": 2}',
    "no version": '{"fleets": {}}',
    "a checkpoint that is a number": '{"version": 1, "checkpoint": 5}',
    "fleets as a list": '{"version": 1, "fleets": []}',
    "a head that is a number": '{"version": 1, "heads": {"w": 1}}',
    "nested too deeply": '{"version": 1, "fleets": ' + DEEP + "}",
    "a fleet id that is not hex": '{"version": 1, "fleets": {"zz": {"epoch": 1}}}',
    "an empty fleet id": '{"version": 1, "fleets": {"": {"epoch": 1}}}',
    "a fleet that is a number": '{"version": 1, "fleets": {"0123": 7}}',
    "a fleet without an epoch": '{"version": 1, "fleets": {"0123": {}}}',
    "an epoch that is a string": '{"version": 1, "fleets": {"0123": {"epoch": "2"}}}',
    "a negative epoch": '{"version": 1, "fleets": {"0123": {"epoch": -1}}}',
    "an epoch past 2^64": '{"version": 1, "fleets": {"0123": {"epoch": 18446744073709551616}}}',
    "an infinite epoch": '{"version": 1, "fleets": {"0123": {"epoch": 1e400}}}',
    "a fractional epoch": '{"version": 1, "fleets": {"0123": {"epoch": 1.5}}}',
    "a boolean epoch": '{"version": 1, "fleets": {"0123": {"epoch": true}}}',
    "records as a list": '{"version": 1, "fleets": {"0123": {"epoch": 1, "records": []}}}',
    "a record epoch that is not a number": (
        '{"version": 1, "fleets": {"0123": {"epoch": 1, "records": {"x": "00"}}}}'
    ),
    "a record that is not hex": (
        '{"version": 1, "fleets": {"0123": {"epoch": 1, "records": {"1": "zz"}}}}'
    ),
    "a record that is a number": (
        '{"version": 1, "fleets": {"0123": {"epoch": 1, "records": {"1": 5}}}}'
    ),
    "a trusted time that is a string": '{"version": 1, "time": "1800000000"}',
    "prefixes as a list": '{"version": 1, "prefixes": []}',
    "a prefix size that is not a number": '{"version": 1, "prefixes": {"x": "AA=="}}',
    "a prefix root that is a number": '{"version": 1, "prefixes": {"1": 5}}',
    "a negative trusted time": '{"version": 1, "time": -1}',
}


def test_a_valid_fleet_entry_loads(state_file: Path) -> None:
    """The baseline the hostile states below are changed from."""
    state_file.parent.mkdir()
    state_file.write_text('{"version": 1, "fleets": {"0123": {"epoch": 1, "records": {}}}}')
    state = TrustState.load(state_file)
    assert state.accepted_epochs() == {bytes.fromhex("0123"): 1}
    assert state.records(bytes.fromhex("0123")) == {}


@pytest.mark.parametrize("content", HOSTILE_STATES.values(), ids=HOSTILE_STATES.keys())
def test_a_damaged_or_hostile_state_file_is_a_clear_error(
    state_file: Path, content: str | bytes
) -> None:
    state_file.parent.mkdir()
    if isinstance(content, bytes):
        state_file.write_bytes(content)
    else:
        state_file.write_text(content)
    with pytest.raises(InvalidInput) as caught:
        TrustState.load(state_file)
    assert str(state_file) in caught.value.message


def test_a_state_file_larger_than_any_is_refused_unread(state_file: Path) -> None:
    """A state file past any a client writes (a damaged disk, a path swapped for a huge
    file) was read whole into memory before any check; now no further than the largest."""
    state_file.parent.mkdir()
    with state_file.open("wb") as file:
        file.truncate(MAX_STATE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(InvalidInput, match="larger than any trust state file") as caught:
        TrustState.load(state_file)
    assert caught.value.hint is not None and "state_file" in caught.value.hint


@pytest.mark.parametrize("content", HOSTILE_STATES.values(), ids=HOSTILE_STATES.keys())
def test_a_client_with_a_hostile_state_file_stops_with_a_clear_error_and_keeps_it(
    net: Net, state_file: Path, content: str | bytes
) -> None:
    net.deploy(1)
    state_file.parent.mkdir()
    if isinstance(content, str):  # the fleet the relay serves, so only the damage counts
        content = content.replace('"0123"', f'"{FLEET_ID.hex()}"').encode()
    state_file.write_bytes(content)
    refused(net, net.trust(state_file), error=InvalidInput)


def test_a_state_checkpoint_the_witness_did_not_sign_is_a_clear_error(
    net: Net, state_file: Path
) -> None:
    trust = accepted(net, state_file)
    data = saved(state_file)
    forged = Signer(WITNESS_NAME, Ed25519PrivateKey.generate())
    data["checkpoint"] = open_checkpoint(data["checkpoint"], net.a_signer.verifier).sign(forged)
    state_file.write_text(json.dumps(data))
    refused(net, trust, error=InvalidInput, match="does not verify with the witness key")


@pytest.mark.parametrize("host", ["witness-a.test", "witness-b.test"])
def test_a_state_head_that_does_not_verify_is_blamed_on_the_state_file(
    net: Net, state_file: Path, host: str
) -> None:
    """A witness's key changed in the config (or the file was edited): its head kept in
    the state no longer verifies. That is the state file's problem, said as such (as for
    the checkpoint), not "refused the relay's fleet bundle"."""
    trust = accepted(net, state_file)
    data = saved(state_file)
    name = {"witness-a.test": WITNESS_NAME, "witness-b.test": B_NAME}[host]
    data["heads"][name] = altered_root(data["heads"][name])
    state_file.write_text(json.dumps(data))
    net.hostile[(host, "/v1/head")] = reply(503)  # the kept head stands in
    refused(net, trust, error=InvalidInput, match=f"the head of {name} in .*state.json")
    if host == "witness-b.test":  # and it is what B's new head must extend
        del net.hostile[(host, "/v1/head")]
        refused(net, trust, error=InvalidInput, match=f"the head of {name} in .*state.json")


def test_save_replaces_the_file_whole_and_a_failed_save_keeps_the_old_one(
    net: Net, state_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust = accepted(net, state_file)
    before = snapshot(state_file)
    net.deploy(2)

    rename = os.replace

    def full_disk(source: str | Path, target: str | Path) -> None:
        if Path(target) == state_file:
            raise OSError(28, "No space left on device")
        rename(source, target)  # the witnesses' own files

    # The new state never lands half-written: the rename is what publishes it, and a
    # failure before it leaves the old file (and no temporary one) behind.
    monkeypatch.setattr(os, "replace", full_disk)
    refused(net, trust, error=InvalidInput, match="No space left on device")
    assert snapshot(state_file) == before
    monkeypatch.undo()
    assert trust.current(net.http(), RELAY).record.epoch == 2
    assert saved_epoch(state_file) == 2


def test_a_state_folder_that_cannot_be_made_is_a_clear_error(
    net: Net, state_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net.deploy(1)
    make_folder = Path.mkdir

    def read_only(folder: Path, *args: Any, **kw: Any) -> None:
        if folder == state_file.parent:
            raise PermissionError(13, "Permission denied")
        make_folder(folder, *args, **kw)

    monkeypatch.setattr(Path, "mkdir", read_only)
    refused(net, net.trust(state_file), error=InvalidInput, match="cannot write .*Permission")


# ---- nothing goes backwards ------------------------------------------------------------------


def test_the_checkpoint_kept_never_shrinks(net: Net, state_file: Path) -> None:
    trust = accepted(net, state_file)
    grow_log(net, 3)
    trust.current(net.http(), RELAY)
    assert saved_size(net, state_file) == 4  # the head's tree, larger than the bundle's (1)
    state = TrustState.load(state_file)
    small = FleetBundle.from_bytes(net.current).checkpoint
    state.remember_checkpoint(small)
    assert open_checkpoint(state.checkpoint or "", net.a_signer.verifier).size == 4
    # An older epoch's bundle, accepted for a migration by a client that never saw it,
    # carries an older checkpoint (of 1): the state keeps the larger one.
    net.deploy(2)
    fresh = net.trust(state_file.with_name("fresh.json"))
    current = fresh.current(net.http(), RELAY)
    assert saved_size(net, fresh.state_file) == 5
    assert [r.epoch for r in fresh.older(net.http(), RELAY, current.record)] == [1]
    assert saved_size(net, fresh.state_file) == 5


def test_the_accepted_epoch_never_goes_back(net: Net, state_file: Path) -> None:
    first = net.deploy(1)
    trust = net.trust(state_file)
    net.deploy(2)
    net.previous = {}
    # The client first sees epoch 2 (a new device, say), then is offered epoch 1 for a
    # migration: epoch 1's record is kept, the accepted epoch stays 2.
    current = trust.current(net.http(), RELAY)
    net.previous = {1: first}
    assert [r.epoch for r in trust.older(net.http(), RELAY, current.record)] == [1]
    assert saved_epoch(state_file) == 2
    assert set(saved(state_file)["fleets"][FLEET_ID.hex()]["records"]) == {"1", "2"}
    # Accepting epoch 1 as current again (it cannot pass verify_bundle, but the state's
    # own rule is max) changes nothing.
    state = TrustState.load(state_file)
    old = verify_bundle(
        first, raw_public_key(net.operator), net.a_signer.verifier.public_key, WITNESS_NAME, None
    )
    state.accept(old, (FleetBundle.from_bytes(first).checkpoint,), current=True)
    assert saved_epoch(state_file) == 2


def test_a_state_saved_meanwhile_is_never_overwritten_by_a_staler_one(
    net: Net, state_file: Path
) -> None:
    """`older()` loads the state when it starts and saves it after each older epoch it
    verifies; between two (a migration's status call to an old fleet), another process of
    the same client accepts a newer epoch. Saving must keep what that process accepted:
    otherwise the accepted epoch, the checkpoint and the heads go back, and a retired
    epoch passes again while the witnesses are out of reach."""
    net.deploy(1)
    net.deploy(2)
    net.deploy(3)
    trust = net.trust(state_file)  # a device that never saw epochs 1 and 2
    listing = trust.older(net.http(), RELAY, trust.current(net.http(), RELAY).record)
    assert next(listing).epoch == 2
    net.deploy(4)
    assert net.trust(state_file).current(net.http(), RELAY).record.epoch == 4
    grown = saved_size(net, state_file)
    assert next(listing).epoch == 1
    assert saved_epoch(state_file) == 4 and saved_size(net, state_file) == grown
    assert set(saved(state_file)["fleets"][FLEET_ID.hex()]["records"]) == {"1", "2", "3", "4"}
    net.current = net.previous[3]
    net.hostile[("witness-a.test", "/v1/head")] = reply(503)
    net.hostile[("witness-b.test", "/v1/head")] = reply(503)
    refused(net, trust, EpochReplayed)


def _accept_slowly(
    state_file: str, bundle: bytes, operator: bytes, witness: bytes, go: Any
) -> None:
    """In a process of its own: accept `bundle` into `state_file`, taking 0.3 s to save
    (the other processes load the file meanwhile, unless the lock keeps them out)."""
    verified = verify_bundle(bundle, operator, witness, WITNESS_NAME, None)
    save = TrustState.save

    def slow_save(state: TrustState) -> None:
        time.sleep(0.3)
        save(state)

    TrustState.save = slow_save  # type: ignore[method-assign]
    state = TrustState.load(Path(state_file))
    go.wait()
    checkpoint = FleetBundle.from_bytes(bundle).checkpoint
    state.accept(verified, (checkpoint,), current=True)


def test_processes_accepting_at_once_lose_no_epoch(net: Net, state_file: Path) -> None:
    """Two processes of one device (two CLI commands) accept epochs 1 and 2 at the same
    moment. Each reads, applies and saves under the state file's lock, so the file ends
    with epoch 2 and both records; without the lock the last save wins and takes the
    epoch (or a record) back."""
    bundles = [net.deploy(epoch) for epoch in (1, 2)]
    # Each bundle's checkpoint is a prefix of the tree of 2 both processes loaded (else
    # the one saving second verifies again: test_a_fork_shown_to_one_command_...).
    TrustState(state_file, checkpoint=net.a.checkpoint()).save()
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    operator, witness = raw_public_key(net.operator), raw_public_key(net.a_signer.private_key)
    workers = [
        context.Process(
            target=_accept_slowly, args=(str(state_file), bundle, operator, witness, go)
        )
        for bundle in reversed(bundles)  # the newest epoch starts first
    ]
    for worker in workers:
        worker.start()
    go.set()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert saved_epoch(state_file) == 2
    assert set(saved(state_file)["fleets"][FLEET_ID.hex()]["records"]) == {"1", "2"}


def test_a_state_file_locked_too_long_is_a_clear_error(
    net: Net, state_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust = accepted(net, state_file)
    net.deploy(2)
    monkeypatch.setattr(TrustState, "LOCK_TIMEOUT", 0.2)
    with locked(state_file, timeout=1):  # another process of this device holds it
        refused(net, trust, error=LockTimeout, match="is locked by another process")
    assert saved_epoch(state_file) == 1
    assert trust.current(net.http(), RELAY).record.epoch == 2  # once it is released


def test_an_older_head_checked_meanwhile_never_replaces_a_newer_one(
    net: Net, state_file: Path
) -> None:
    """A process checked the heads of trees of 1; another process of the device accepted
    heads of trees of 3 meanwhile. The first one's save keeps the newer heads: otherwise
    the state goes back to older heads, and one of those, replayed, would pass again."""
    trust = accepted(net, state_file)
    early = TrustState.load(state_file)
    old_heads = list(early.heads.items())
    verified = verify_bundle(
        net.current, raw_public_key(net.operator), net.a_signer.verifier.public_key,
        WITNESS_NAME, None,
    )  # fmt: skip
    grow_log(net, 2)
    trust.current(net.http(), RELAY)
    newer = saved(state_file)["heads"]
    early.accept(verified, (), current=True, heads=old_heads)
    assert saved(state_file)["heads"] == newer


def test_a_clock_set_back_does_not_make_an_old_head_fresh(net: Net, state_file: Path) -> None:
    """The device accepted epoch 1 two days after it was deployed (fresh heads, still
    naming epoch 1). Epoch 2 is deployed (epoch 1 retired, say after a compromise). The
    attacker sets the device's clock back to the day epoch 1 was deployed and replays that
    day's heads (the same tree the device saw) with epoch 1's bundle: with the clock alone
    they look a minute old. The device knows that two days have passed: stale."""
    old = net.deploy(1)
    old_heads = honest_heads(net)
    trust = net.trust(state_file)
    trust.current(net.http(), RELAY)
    net.now += 2 * DEFAULT_MAX_AGE
    trust.current(net.http(), RELAY)
    assert saved(state_file)["time"] == net.now
    net.deploy(2)
    net.current = old
    for host, head in old_heads.items():
        net.hostile[(host, "/v1/head")] = reply(200, text=head)
    net.now = NOW + 60
    refused(net, trust, StaleHead, match="s old, more than")
    # With its last heads standing in (the witnesses out of reach), the same.
    net.hostile = {(h, "/v1/head"): reply(503) for h in ("witness-a.test", "witness-b.test")}
    net.now = NOW + 2 * DEFAULT_MAX_AGE + DEFAULT_MAX_AGE + 60
    refused(net, trust, StaleHead)
    # A device that never knew a later time is fooled for max_age, the documented bound.
    net.hostile = {(h, "/v1/head"): reply(200, text=t) for h, t in old_heads.items()}
    net.now = NOW + 60
    assert net.trust(state_file.with_name("new.json")).current(net.http(), RELAY)


def test_a_clock_set_forward_is_not_kept(net: Net, state_file: Path) -> None:
    """A clock set forward past max_age finds every head stale, so it accepts nothing and
    the trusted time stays: the device works again once its clock is right."""
    trust = accepted(net, state_file)
    net.now += DEFAULT_MAX_AGE + 10
    clock = NOW + 10 * DEFAULT_MAX_AGE
    refused(net, net.trust(state_file, clock=lambda: clock), StaleHead)
    assert saved(state_file)["time"] == NOW
    assert trust.current(net.http(), RELAY).record.epoch == 1


def test_a_bundle_from_one_history_and_a_head_from_another(net: Net, state_file: Path) -> None:
    """Witness A's key signs two histories of 2 leaves: the relay serves the fleet's
    record with a receipt from one, A's head comes from the other. A new device has no
    checkpoint to compare either with; the head must still extend the bundle's tree."""
    first = net.sign(1)
    net.deploy(1)
    grow_log(net)  # A's public log: [epoch 1, another fleet's record]
    fork = ForkedWitness(net, net.sign(7, fleet_id=OTHER_FLEET))
    net.current = FleetBundle.from_receipt(first, fork.log.submit(first.to_bytes())).to_bytes()
    refused(net, net.trust(state_file), LogForked, match="two checkpoints of size 2")
    assert not state_file.parent.exists()


# ---- the happy paths --------------------------------------------------------------------------


def test_a_rotation_is_accepted_and_the_older_epoch_listed(net: Net, state_file: Path) -> None:
    trust = accepted(net, state_file)
    net.deploy(2)
    current = trust.current(net.http(), RELAY)
    assert current.record.epoch == 2 and saved_epoch(state_file) == 2
    net.asked.clear()
    older = list(trust.older(net.http(), RELAY, current.record))
    assert [r.epoch for r in older] == [1]
    # Epoch 1 came from the state (accepted before): its bundle was not fetched again.
    assert "relay.test /v1/fleet/bundle" not in net.asked


def test_a_retired_epoch_is_never_asked_even_when_the_relay_lists_it(
    net: Net, state_file: Path, tmp_path: Path
) -> None:
    """The attack this closes (docs/transparency.md, "Retiring an epoch"): epochs 1 and 2
    were retired, say after their nodes were sold or compromised, and the attacker holds
    them and runs the relay, which lists them again and serves their (genuine, logged)
    bundles. A device whose entry is empty here would recover against them with the real
    password: an online guess the fleet never counts, and on a right one the attacker's
    key registered here. The current record retires them, so neither a device that used
    them (its state holds their records) nor a new one asks them, or fetches their
    bundles."""
    trust = accepted(net, state_file)
    net.deploy(2)
    assert [
        r.epoch for r in trust.older(net.http(), RELAY, trust.current(net.http(), RELAY).record)
    ] == [1]
    # The operator retires both: epoch 3 runs on epoch 2's nodes and retires those below 3.
    net.deploy(3, nodes=rotated_nodes(2), retired_below=3)
    assert sorted(net.previous) == [1, 2]  # the relay still lists and serves them
    for device in (trust, net.trust(tmp_path / "new device" / "state.json")):
        current = device.current(net.http(), RELAY).record
        assert current.epoch == 3 and current.retired_below == 3
        net.asked.clear()
        assert list(device.older(net.http(), RELAY, current)) == []
        assert net.asked == ["relay.test /v1/fleet/epochs"]  # no older bundle fetched
    assert trust.retired_seen(current) == (1, 2)
    assert net.trust(tmp_path / "new device" / "state.json").retired_seen(current) == ()


def test_a_device_whose_key_may_be_on_a_retired_epoch_is_told_so() -> None:
    """A device that used a retired epoch finds nothing to move: it is told why, and what
    to do, rather than only that the vault holds no key. A device that never used one is
    told nothing (a new account's first backup)."""
    notes: list[str] = []

    class Threshold:
        def notify(self, message: str) -> None:
            notes.append(message)

    threshold = cast(ThresholdVault, Threshold())
    assert FleetSession(threshold, 3, iter([]), lambda: (1, 2)).migrate("password") is None
    assert len(notes) == 1
    assert "epoch 1, 2 of this fleet, which the operator has retired" in notes[0]
    assert "recovery code" in notes[0]
    assert FleetSession(threshold, 3, iter([]), lambda: ()).migrate("password") is None
    assert len(notes) == 1


def test_heads_recorded_before_a_retirement_cannot_send_a_device_to_the_retired_epoch(
    net: Net, state_file: Path, tmp_path: Path
) -> None:
    """Review s39-B. Heads are public and good for max_age (a day): recorded just before
    the operator logged a record retiring a compromised epoch, and replayed with the record
    they named (which retired nothing), they made every device that had not yet seen the
    retirement ask the retired nodes, the attack retirement is there to stop. Before an
    older epoch is asked, each witness must answer a nonce drawn just then."""
    net.deploy(1)
    before = net.deploy(2)  # a rotation; epoch 1 still routed for migrations
    device = net.trust(state_file)
    assert device.current(net.http(), RELAY).record.epoch == 2
    heads = honest_heads(net)
    net.now += 3600
    net.deploy(3, nodes=rotated_nodes(2), retired_below=3)  # epoch 1's nodes compromised
    net.current = before  # the relay serves the record from before, the network the heads
    for host, head in heads.items():
        net.hostile[(host, "/v1/head")] = reply(200, text=head)
    net.now += DEFAULT_MAX_AGE - 3600 - 60
    for who in (device, net.trust(tmp_path / "new device" / "state.json")):
        current = who.current(net.http(), RELAY).record  # fooled: good for a day
        assert current.epoch == 2 and current.retired_below == 0
        net.asked.clear()
        with pytest.raises(FleetNotTrusted, match="challenge"):
            list(who.older(net.http(), RELAY, current))
        assert net.asked == ["relay.test /v1/fleet/epochs", "witness-a.test /v1/head"]
    # Witnesses blocked instead: no kept head stands in for a live answer.
    for host in ("witness-a.test", "witness-b.test"):
        net.hostile[(host, "/v1/head")] = reply(503)
    net.asked.clear()
    with pytest.raises(FleetUnavailable, match="cannot be reached to confirm that epoch 2"):
        list(device.older(net.http(), RELAY, current))
    assert net.asked == ["relay.test /v1/fleet/epochs", "witness-a.test /v1/head"]
    # The witnesses answering live: the record from before is refused as retired.
    net.hostile.clear()
    with pytest.raises(FleetNotTrusted, match=r"epoch 2 of fleet .* is retired"):
        list(device.older(net.http(), RELAY, current))


def test_retiring_the_epochs_below_2_leaves_epoch_2_asked(net: Net, state_file: Path) -> None:
    """Retiring the epochs below 2 leaves epoch 2 (other nodes than the current ones)
    asked as before."""
    trust = accepted(net, state_file)
    net.deploy(2)
    net.deploy(3, retired_below=2)
    current = trust.current(net.http(), RELAY).record
    assert [r.epoch for r in trust.older(net.http(), RELAY, current)] == [2]


def test_a_witness_that_cannot_be_reached_is_stood_in_for_by_its_last_head(
    net: Net, state_file: Path
) -> None:
    trust = accepted(net, state_file)
    heads = saved(state_file)["heads"]
    net.hostile[("witness-b.test", "/v1/head")] = reply(503)
    net.now += DEFAULT_MAX_AGE - 10
    assert trust.current(net.http(), RELAY).record.epoch == 1
    assert saved(state_file)["heads"][B_NAME] == heads[B_NAME]
    net.now += 20  # B's last word is now too old
    refused(net, trust, StaleHead)


def test_a_kept_head_stands_in_after_an_audit_of_this_state_saw_a_larger_tree(
    net: Net, state_file: Path
) -> None:
    """Review s60: `witness verify-log --state` on the client's own state file (which
    docs/transparency.md offers) moved its checkpoint past the bundle witness's kept head;
    that witness then out of reach, its kept head was checked against the larger tree and
    the outage reported as a log that shrank (exit 7). A kept head's growth was checked
    when it was kept, and every checkpoint since extends it."""
    trust = accepted(net, state_file)  # A's head of a tree of 1 kept
    grow_log(net, 2)
    net.hostile[("witness-a.test", "/v1/checkpoint")] = lambda r: httpx.Response(
        200, text=net.a.checkpoint()
    )
    verify_log(WITNESS_A, net.a_signer.verifier, state_file, http=net.http())  # a tree of 3
    net.hostile[("witness-a.test", "/v1/head")] = reply(503)  # A out of reach
    net.now += 60
    assert trust.current(net.http(), RELAY).record.epoch == 1  # A's kept head stands in
    # A head answered live must still extend what this device saw.
    old_head = saved(state_file)["heads"][WITNESS_NAME]
    net.hostile[("witness-a.test", "/v1/head")] = reply(200, text=old_head)
    refused(net, trust, LogRolledBack)


def test_the_bundle_witness_out_of_reach_once_the_log_grew_is_stood_in_for(
    net: Net, state_file: Path
) -> None:
    """Review s61: a bundle keeps the checkpoint of when its record was logged, and once
    the witness logged anything else (another fleet's record) the device's kept tree was
    larger, so every run asked that witness, through the relay, for a consistency proof
    between the two. With the bundle's witness out of reach, its head and the proofs the
    relay passes on from it, the client stopped at once (exit 5), its kept head standing
    in for nothing. A bundle checkpoint the client proved a prefix of its tree before
    needs no proof again; any other still does."""
    trust = accepted(net, state_file)
    grow_log(net, 2)  # other fleets' records, at both witnesses
    net.now += 60
    trust.current(net.http(), RELAY)  # the device's tree: 3
    assert saved_size(net, state_file) == 3
    net.hostile[("witness-a.test", "/v1/head")] = reply(503)
    net.hostile[("relay.test", "/v1/fleet/consistency")] = reply(
        503, json={"error": "witness_unavailable", "detail": "the witness does not answer"}
    )
    net.now += 60
    net.asked.clear()
    assert trust.current(net.http(), RELAY).record.epoch == 1  # A's kept head stands in
    assert "relay.test /v1/fleet/consistency" not in net.asked
    # A bundle with another checkpoint of A's (of 2 leaves), never proven a prefix here,
    # still needs the proof, which A out of reach cannot give.
    signed = OperatorSignedRecord.from_bytes(FleetBundle.from_bytes(net.current).signed_record)
    tree = Checkpoint(WITNESS_NAME, 2, net.a.store.root(2))
    net.current = FleetBundle(
        signed_record=signed.to_bytes(),
        cosignature=FleetBundle.from_bytes(net.current).cosignature,
        leaf_index=0,
        tree_size=2,
        proof=b"".join(net.a.store.inclusion_proof(0, 2)),
        checkpoint=tree.sign(net.a_signer),
    ).to_bytes()
    with pytest.raises(FleetUnavailable, match="consistency proof between log sizes 2 and 3"):
        trust.current(net.http(), RELAY)
    del net.hostile[("relay.test", "/v1/fleet/consistency")]
    assert trust.current(net.http(), RELAY).record.epoch == 1


def test_a_witness_url_with_a_trailing_slash(net: Net, state_file: Path) -> None:
    """As written in a config: "https://witness2.example/". The client asked for
    "//v1/head", which the witness answers with 404, and refused the fleet as one that
    witness "has logged no record of"."""
    net.deploy(1)
    others = (WitnessEndpoint(net.b_signer.verifier, WITNESS_B + "/"),)
    trust = net.trust(state_file, witness_url=WITNESS_A + "/", others=others)
    assert trust.current(net.http(), RELAY).record.epoch == 1
    assert "witness-b.test /v1/head" in net.asked


def test_a_configured_allow_list_refuses_other_firmware(net: Net, state_file: Path) -> None:
    net.deploy(1)
    refused(
        net,
        net.trust(state_file, allowed_measurements=frozenset({b"\x07" * 32})),
        MeasurementNotAllowed,
    )
    assert net.trust(state_file).current(net.http(), RELAY)


# ---- attacks by the relay and the network -------------------------------------------------------


def test_rollback_to_an_older_epoch_with_state(net: Net, state_file: Path) -> None:
    old = net.deploy(1)
    trust = net.trust(state_file)
    trust.current(net.http(), RELAY)
    net.deploy(2)
    trust.current(net.http(), RELAY)
    net.current = old
    refused(net, trust, EpochReplayed, match="older than the epoch 2 already accepted")
    # Even with every witness out of reach (their last heads name epoch 2).
    net.hostile[("witness-a.test", "/v1/head")] = reply(503)
    net.hostile[("witness-b.test", "/v1/head")] = reply(503)
    refused(net, trust, EpochReplayed)


def test_rollback_to_a_retired_epoch_without_state(net: Net, state_file: Path) -> None:
    old = net.deploy(1)
    net.deploy(2)
    net.current = old
    refused(net, net.trust(state_file), EpochRetired, match="epoch 1 of fleet .* is retired")
    assert not state_file.parent.exists()


def honest_heads(net: Net) -> dict[str, str]:
    """Each witness's head for the fleet as it would answer now, by host."""
    return {
        host: net.honest(httpx.Request("GET", f"{url}/v1/head?fleet={FLEET_ID.hex()}")).text
        for host, url in (("witness-a.test", WITNESS_A), ("witness-b.test", WITNESS_B))
    }


def test_replayed_heads_of_a_retired_epoch(net: Net, state_file: Path) -> None:
    """The network replays both witnesses' heads from before epoch 2 was logged, with
    epoch 1's bundle. A client that saw epoch 2 refuses. A new device is fooled only while
    the replayed heads are younger than max_age (the documented bound)."""
    old = net.deploy(1)
    old_heads = honest_heads(net)
    net.deploy(2)
    trust = net.trust(state_file)
    trust.current(net.http(), RELAY)
    net.current = old
    for host, head in old_heads.items():
        net.hostile[(host, "/v1/head")] = reply(200, text=head)
    refused(net, trust, EpochReplayed)
    new_device = net.trust(state_file.with_name("new-device.json"))
    assert new_device.current(net.http(), RELAY).record.epoch == 1
    net.now += DEFAULT_MAX_AGE + 1
    refused(net, net.trust(state_file.with_name("newer-device.json")), StaleHead)


def test_a_record_signed_by_the_operator_but_never_logged(net: Net, state_file: Path) -> None:
    trust = accepted(net, state_file)
    logged = FleetBundle.from_bytes(net.current)
    unlogged = net.sign(2, nodes=[node(i, hpke=hpke_key(i + 9)) for i in range(5)])

    # No cosignature at all.
    bare = FleetBundle(unlogged.to_bytes(), b"", 0, 1, b"", logged.checkpoint)
    net.current = bare.to_bytes()
    refused(net, trust, WitnessSignatureMissing)
    # The logged record's cosignature, proof and checkpoint around the unlogged record.
    net.current = replace(logged, signed_record=unlogged.to_bytes()).to_bytes()
    refused(net, trust, WitnessSignatureInvalid)
    # A cosignature made with a key that is not the witness's.
    forged = cosign(Ed25519PrivateKey.generate(), WITNESS_NAME, unlogged.to_bytes())
    net.current = replace(bare, cosignature=forged).to_bytes()
    refused(net, trust, WitnessSignatureInvalid)
    assert saved_epoch(state_file) == 1


def test_a_record_logged_but_not_in_the_checkpoint_it_comes_with(
    net: Net, state_file: Path
) -> None:
    net.deploy(1)
    grow_log(net)
    logged = FleetBundle.from_bytes(net.current)
    bogus_proof = replace(
        logged, leaf_index=1, tree_size=2, proof=b"\x00" * 32, checkpoint=net.a.checkpoint()
    )
    net.current = bogus_proof.to_bytes()
    refused(net, net.trust(state_file), InclusionProofInvalid)


def test_a_record_swapped_after_signing(net: Net, state_file: Path) -> None:
    net.deploy(1)
    bundle = FleetBundle.from_bytes(net.current)
    signed = bundle.operator_signed
    changed = make_record(nodes=[node(0, hpke=hpke_key(7)), *[node(i) for i in range(1, 5)]])
    swapped = replace(signed, record=changed.to_bytes())  # the operator's signature kept
    net.current = replace(bundle, signed_record=swapped.to_bytes()).to_bytes()
    refused(net, net.trust(state_file), OperatorSignatureInvalid)


def test_a_record_by_another_operator(net: Net, state_file: Path) -> None:
    net.deploy(1)
    refused(
        net,
        net.trust(state_file, operator_key=raw_public_key(Ed25519PrivateKey.generate())),
        UnknownOperatorKey,
    )


def test_a_record_for_another_fleet(net: Net, state_file: Path) -> None:
    other = net.log(net.sign(1, fleet_id=OTHER_FLEET), net.b)
    net.deploy(1)
    # Configured with the fleet id.
    net.current, mine = other, net.current
    refused(net, net.trust(state_file, fleet_id=FLEET_ID), FleetMismatch)
    # Pinned on first use: the first fleet accepted is the only one from then on.
    net.current = mine
    trust = net.trust(state_file)
    trust.current(net.http(), RELAY)
    net.current = other
    refused(net, trust, FleetMismatch)
    # The relay lists the other fleet's bundle as an older epoch.
    net.current, net.previous = mine, {0: other}
    current = trust.current(net.http(), RELAY).record
    before = snapshot(state_file)
    with pytest.raises(FleetNotTrusted) as caught:
        list(trust.older(net.http(), RELAY, current))
    assert isinstance(caught.value.reason, FleetMismatch)
    assert snapshot(state_file) == before


def test_the_first_fleet_accepted_is_pinned_in_the_state(net: Net, state_file: Path) -> None:
    """The pin is kept as "fleet_id", not read from how many fleets the file holds: before,
    any second fleet written into the file (`verify-deployment --state` did) unpinned it."""
    trust = accepted(net, state_file)
    assert saved(state_file)["fleet_id"] == FLEET_ID.hex()
    data = saved(state_file)
    data["fleets"][OTHER_FLEET.hex()] = {"epoch": 1}  # as verify-deployment added it
    state_file.write_text(json.dumps(data))
    net.current = net.log(net.sign(1, fleet_id=OTHER_FLEET), net.b)
    refused(net, trust, FleetMismatch, match=f"expected {FLEET_ID.hex()}")


def test_a_state_file_of_the_older_version_keeps_its_pin(net: Net, state_file: Path) -> None:
    """A file without "fleet_id" pins the one fleet a client accepted there (the one with
    records; another that `verify-deployment` added, with an epoch only, does not count),
    and gets "fleet_id" at its next save."""
    trust = accepted(net, state_file)
    data = saved(state_file)
    del data["fleet_id"]
    data["fleets"][OTHER_FLEET.hex()] = {"epoch": 1}
    state_file.write_text(json.dumps(data))
    other = net.log(net.sign(1, fleet_id=OTHER_FLEET), net.b)
    mine, net.current = net.current, other
    refused(net, trust, FleetMismatch)
    net.current = mine
    trust.current(net.http(), RELAY)
    assert saved(state_file)["fleet_id"] == FLEET_ID.hex()


def test_a_config_naming_another_fleet_than_the_state_pins_is_refused(
    net: Net, state_file: Path
) -> None:
    """A state file keeps one fleet: a config naming another one is not added to it."""
    accepted(net, state_file)
    net.current = net.log(net.sign(1, fleet_id=OTHER_FLEET), net.b)
    error = refused(net, net.trust(state_file, fleet_id=OTHER_FLEET), error=InvalidInput)
    assert FLEET_ID.hex() in error.message and OTHER_FLEET.hex() in error.message
    assert error.hint is not None and "state file of its own" in error.hint
    # With a state file of its own it is accepted, and pinned there.
    fresh = state_file.with_name("other.json")
    net.trust(fresh, fleet_id=OTHER_FLEET).current(net.http(), RELAY)
    assert saved(fresh)["fleet_id"] == OTHER_FLEET.hex()


@pytest.mark.parametrize("pin", [7, "xyz", ""])
def test_a_pinned_fleet_id_that_is_not_hex_is_a_clear_error(
    net: Net, state_file: Path, pin: object
) -> None:
    accepted(net, state_file)
    data = saved(state_file)
    data["fleet_id"] = pin
    state_file.write_text(json.dumps(data))
    with pytest.raises(InvalidInput, match=r"is malformed: the pinned fleet id .* is not hex"):
        TrustState.load(state_file)


def test_the_head_of_another_fleet_is_refused(net: Net, state_file: Path) -> None:
    net.log(net.sign(1, fleet_id=OTHER_FLEET), net.b)
    net.deploy(1)

    def other_fleets_head(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=net.b.head(OTHER_FLEET, net.now))

    net.hostile[("witness-b.test", "/v1/head")] = other_fleets_head
    refused(net, net.trust(state_file), HeadMismatch, match="head of fleet feedfacefeedface")


def test_an_older_epoch_bundle_that_is_another_epoch(net: Net, state_file: Path) -> None:
    first = net.deploy(1)
    net.deploy(2)
    net.deploy(3)
    trust = net.trust(state_file)
    current = trust.current(net.http(), RELAY)
    net.previous = {2: first, 1: first}  # asked for epoch 2, the relay serves epoch 1
    before = snapshot(state_file)
    with pytest.raises(FleetNotTrusted, match="bundle for epoch 2 is for epoch 1"):
        list(trust.older(net.http(), RELAY, current.record))
    assert snapshot(state_file) == before


def test_an_older_epoch_that_was_never_logged(net: Net, state_file: Path) -> None:
    net.deploy(2)
    trust = net.trust(state_file)
    current = trust.current(net.http(), RELAY)
    checkpoint = FleetBundle.from_bytes(net.current).checkpoint
    net.previous = {1: FleetBundle(net.sign(1).to_bytes(), b"", 0, 1, b"", checkpoint).to_bytes()}
    before = snapshot(state_file)
    with pytest.raises(FleetNotTrusted) as caught:
        list(trust.older(net.http(), RELAY, current.record))
    assert isinstance(caught.value.reason, WitnessSignatureMissing)
    assert snapshot(state_file) == before


def test_an_older_epoch_only_the_bundles_witness_logged_is_refused(
    net: Net, tmp_path: Path
) -> None:
    """Review s60: an older epoch was vouched for by the bundle's witness alone, so the
    operator with that witness showed a client an older record that witness B never
    logged (nodes of their choosing), and a device whose entry was not on the current
    fleet asked those nodes for it with the real password. Every witness now proves its
    log holds the record, in the tree of the head it just signed for this client."""
    net.deploy(1)
    evil_nodes = rotated_nodes(9)
    evil = net.log(net.sign(2, nodes=evil_nodes))  # logged at A only
    net.previous[1] = net.current
    net.previous[2] = evil
    net.current = net.log(net.sign(3, nodes=rotated_nodes(3)), net.b)
    device = net.trust(tmp_path / "device" / "state.json")
    current = device.current(net.http(), RELAY).record
    assert current.epoch == 3
    before = snapshot(device.state_file)
    with pytest.raises(FleetNotTrusted, match=r"witness-b\.test/backupvault has not logged"):
        list(device.older(net.http(), RELAY, current))
    assert snapshot(device.state_file) == before  # epoch 2's record is not kept
    # A record already kept (before this check existed) is asked about the same way.
    state = TrustState.load(device.state_file)
    verified = verify_bundle(
        evil, raw_public_key(net.operator), net.a_signer.verifier.public_key, WITNESS_NAME, None
    )
    state.accept(verified, (FleetBundle.from_bytes(evil).checkpoint,), current=False)
    del net.previous[2]
    with pytest.raises(FleetNotTrusted, match="has not logged the record of epoch 2"):
        list(device.older(net.http(), RELAY, current))


def test_a_witness_added_after_a_rotation_must_be_given_the_older_epochs_first(
    net: Net, tmp_path: Path
) -> None:
    """Review s61: a witness added to a running fleet and given only the current record
    (as operations.md said) can never log an older epoch (epochs only grow), so every
    device whose entry is still on one is refused its migration, as if the operator had
    shown it an epoch that witness never logged. Given the older records first, oldest
    first, as operations.md now says, it vouches for them."""
    first, second = net.sign(1), net.sign(2, nodes=rotated_nodes(2))
    net.current = net.log(first)  # witness B does not exist yet
    device = net.trust(tmp_path / "device" / "state.json", others=())
    device.current(net.http(), RELAY)  # the device used epoch 1
    net.previous[1], net.current = net.current, net.log(second)
    net.b.submit(second.to_bytes())  # B added: the current record only
    with pytest.raises(EpochReplayed):
        net.b.submit(first.to_bytes())
    device = net.trust(device.state_file)  # its config now lists B
    current = device.current(net.http(), RELAY).record
    with pytest.raises(FleetNotTrusted, match="has not logged the record of epoch 1"):
        list(device.older(net.http(), RELAY, current))
    # The same with a witness C given epoch 1, then epoch 2.
    c_signer = Signer("witness-c.test/backupvault", Ed25519PrivateKey.generate())
    net.b = net.witness(c_signer, "c.sqlite")  # answers at witness B's address
    net.b.submit(first.to_bytes())
    net.b.submit(second.to_bytes())
    c_endpoint = WitnessEndpoint(c_signer.verifier, WITNESS_B)
    device = net.trust(tmp_path / "other" / "state.json", others=(c_endpoint,))
    device.state_file.parent.mkdir()
    shutil.copy(tmp_path / "device" / "state.json", device.state_file)
    current = device.current(net.http(), RELAY).record
    assert [r.epoch for r in device.older(net.http(), RELAY, current)] == [1]


def test_a_witness_proof_of_an_older_record_that_does_not_verify_is_refused(
    net: Net, state_file: Path
) -> None:
    trust = accepted(net, state_file)
    net.deploy(2)
    current = trust.current(net.http(), RELAY).record

    def wrong_index(request: httpx.Request) -> httpx.Response:
        answer = net.honest(request)
        body = json.loads(answer.content)
        return httpx.Response(200, json={**body, "index": body["index"] + 1})

    net.hostile[("witness-b.test", "/v1/inclusion")] = wrong_index
    with pytest.raises(FleetNotTrusted) as caught:
        list(trust.older(net.http(), RELAY, current))
    assert isinstance(caught.value.reason, InclusionProofInvalid)
    net.hostile[("witness-b.test", "/v1/inclusion")] = reply(503)
    with pytest.raises(FleetUnavailable, match="no proof that the witness"):
        list(trust.older(net.http(), RELAY, current))
    # A witness of an earlier version answers no inclusion by leaf hash: no proof, no use.
    bad_query = {"error": "bad_query", "detail": "the query parameter 'index' is required"}
    net.hostile[("witness-b.test", "/v1/inclusion")] = reply(400, json=bad_query)
    with pytest.raises(FleetNotTrusted, match=r"gave no proof .* \(400: .*'index' is required"):
        list(trust.older(net.http(), RELAY, current))
    net.hostile.clear()
    assert [r.epoch for r in trust.older(net.http(), RELAY, current)] == [1]


def test_a_head_rolled_back_to_a_smaller_tree(net: Net, state_file: Path) -> None:
    """Each witness's head must extend the last tree seen from it: a replayed older head
    (same record, still young) is refused, for the bundle's witness and for the other."""
    net.deploy(1)
    replays = honest_heads(net)
    trust = net.trust(state_file)
    grow_log(net, 2)
    trust.current(net.http(), RELAY)
    for host, old_head in replays.items():
        net.hostile = {(host, "/v1/head"): reply(200, text=old_head)}
        refused(net, trust, LogRolledBack, match="shrank from 3 to 1")


class ForkedWitness:
    """Witness A's key signing a second history (its own database): what a compromised or
    restored witness might show one client."""

    def __init__(self, net: Net, *records: OperatorSignedRecord) -> None:
        self.log = net.witness(net.a_signer, "a-fork.sqlite")
        for signed in records:
            self.log.submit(signed.to_bytes())

    def serve(self, net: Net) -> None:
        """To this client, the witness (not the relay) shows the forked history."""

        def head(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, text=self.log.head(FLEET_ID, net.now))

        def consistency(request: httpx.Request) -> httpx.Response:
            query = request.url.params
            return proof_answer(self.log, int(query["old"]), int(query["new"]))

        net.hostile[("witness-a.test", "/v1/head")] = head
        net.hostile[("witness-a.test", "/v1/consistency")] = consistency


def test_a_witness_showing_a_fork_of_the_same_size(net: Net, state_file: Path) -> None:
    first = net.sign(1)
    net.deploy(1)
    grow_log(net)
    trust = net.trust(state_file)
    trust.current(net.http(), RELAY)  # saw A's tree of 2: [epoch 1, other fleet]
    fork = ForkedWitness(net, first, net.sign(7, fleet_id=OTHER_FLEET))
    fork.serve(net)
    refused(net, trust, LogForked, match="two checkpoints of size 2 with different roots")


def test_a_witness_showing_a_larger_fork(net: Net, state_file: Path) -> None:
    first = net.sign(1)
    net.deploy(1)
    grow_log(net)
    trust = net.trust(state_file)
    trust.current(net.http(), RELAY)
    fork = ForkedWitness(net, first, net.sign(7, fleet_id=OTHER_FLEET))
    for epoch in (8, 9):
        fork.log.submit(net.sign(epoch, fleet_id=OTHER_FLEET).to_bytes())
    fork.serve(net)
    refused(net, trust, LogForked, match="does not extend the one of size 2")


def test_a_fork_shown_to_one_command_while_another_saves_the_log_is_seen(
    net: Net, state_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two commands of one device verify at once from the same kept tree of 1. Witness A's
    key shows one the log grown to 2, the other a fork grown to 3: each extends the tree
    of 1, neither the other. The first saves. The second must not keep its fork over that
    on size alone (neither tree proven to hold the other, the fork unseen from then on):
    it verifies again from the tree saved, and the fork shows (review s61, split view)."""
    first = net.sign(1)
    trust = accepted(net, state_file)
    grow_log(net)
    fork = ForkedWitness(net, first, *(net.sign(e, fleet_id=OTHER_FLEET) for e in (7, 8)))
    fork.serve(net)
    honest = httpx.Client(transport=httpx.MockTransport(net.honest))
    accept, others = TrustState.accept, list[TrustState]()

    def another_command_first(state: TrustState, *args: Any, **kw: Any) -> None:
        if not others:  # the other command saves while this one was verifying
            others.append(state)
            net.trust(state_file).current(honest, RELAY)
        accept(state, *args, **kw)

    monkeypatch.setattr(TrustState, "accept", another_command_first)
    with pytest.raises(FleetNotTrusted) as caught:
        trust.current(net.http(), RELAY)
    assert isinstance(caught.value.reason, LogForked), caught.value.reason
    kept = open_checkpoint(saved(state_file)["checkpoint"], net.a_signer.verifier)
    honest_tree = open_checkpoint(net.a.checkpoint(), net.a_signer.verifier)
    assert (kept.size, kept.root_hash) == (2, honest_tree.root_hash)


def test_a_head_from_another_history_saved_meanwhile_sends_the_command_back(
    net: Net, state_file: Path
) -> None:
    """The same for witness B's head: this command checked a head of B's forked tree of 2
    against the tree of 1 it loaded; another command saved B's own tree of 2 meanwhile.
    The save refuses (StateMoved: verify again) and the file keeps B's own head."""
    first = net.sign(1)
    accepted(net, state_file)
    early, also_early = TrustState.load(state_file), TrustState.load(state_file)
    verified = verify_bundle(
        net.current, raw_public_key(net.operator), net.a_signer.verifier.public_key,
        WITNESS_NAME, None,
    )  # fmt: skip
    fork = net.witness(net.b_signer, "b-fork.sqlite")
    for signed in (first, net.sign(7, fleet_id=OTHER_FLEET)):
        fork.submit(signed.to_bytes())
    grow_log(net)
    net.trust(state_file).current(net.http(), RELAY)
    kept = saved(state_file)
    with pytest.raises(StateMoved):
        early.accept(verified, (), current=True, heads=[(B_NAME, fork.head(FLEET_ID, net.now))])
    assert saved(state_file) == kept
    # A head of B's own tree of 2, checked against the tree of 1, is no conflict.
    also_early.accept(verified, (), current=True, heads=[(B_NAME, net.b.head(FLEET_ID, net.now))])


def test_a_state_file_that_keeps_moving_is_said_and_an_older_epoch_verified_again(
    net: Net, state_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each save finding the file moved sends the command back to verify; one that never
    settles ends as an outage (exit 5) that says so, having sent nothing. An older epoch
    whose save found the file moved once is verified again, and kept."""
    trust = accepted(net, state_file)
    net.deploy(2)
    accept, moved = TrustState.accept, list[bool]()

    def moving(state: TrustState, *args: Any, **kw: Any) -> None:
        if len(moved) < limit:
            moved.append(kw["current"])
            raise StateMoved
        accept(state, *args, **kw)

    limit = 10
    monkeypatch.setattr(TrustState, "accept", moving)
    with pytest.raises(FleetUnavailable, match="kept changing") as caught:
        trust.current(net.http(), RELAY)
    assert caught.value.hint and "nothing was sent" in caught.value.hint
    assert moved == [True] * 3 and saved_epoch(state_file) == 1
    limit = 0
    current = trust.current(net.http(), RELAY)
    data = saved(state_file)
    del data["fleets"][FLEET_ID.hex()]["records"]["1"]  # a device that never saw epoch 1
    state_file.write_text(json.dumps(data))
    moved.clear()
    limit = 1
    assert [r.epoch for r in trust.older(net.http(), RELAY, current.record)] == [1]
    assert moved == [False] and "1" in saved(state_file)["fleets"][FLEET_ID.hex()]["records"]


@pytest.mark.parametrize(
    ("before", "match"),
    [((7,), "does not extend the one of size 2"), ((7, 8), "two checkpoints of size 3")],
    ids=["smaller", "as large"],
)
def test_a_bundle_whose_receipt_is_from_another_history(
    net: Net, state_file: Path, before: tuple[int, ...], match: str
) -> None:
    """The relay serves the fleet's own record with a receipt witness A gave in a forked
    history (other leaves before it), its checkpoint smaller than or as large as the tree
    of 3 the client saw: that checkpoint is no prefix of it, whatever proof the relay
    passes on."""
    first = net.sign(1)
    trust = accepted(net, state_file)
    grow_log(net, 2)
    trust.current(net.http(), RELAY)
    others = [net.sign(epoch, fleet_id=OTHER_FLEET) for epoch in before]
    fork = ForkedWitness(net, *others, first)
    net.current = FleetBundle.from_receipt(first, fork.log.submit(first.to_bytes())).to_bytes()
    refused(net, trust, LogForked, match=match)


def test_two_witnesses_shown_different_records_split_view(net: Net, state_file: Path) -> None:
    """The operator logs one record of epoch 1 at A and another at B: B's head names
    another record than the bundle's."""
    net.current = net.log(net.sign(1))
    net.b.submit(net.sign(1, nodes=[node(i, hpke=hpke_key(i + 9)) for i in range(5)]).to_bytes())
    refused(net, net.trust(state_file), HeadMismatch, match="names another record")
    # B logged a later epoch than the one A's bundle carries: retired, says B.
    net.b.submit(net.sign(2).to_bytes())
    refused(net, net.trust(state_file), EpochRetired)


def test_a_witness_that_never_logged_the_fleet(net: Net, state_file: Path) -> None:
    net.current = net.log(net.sign(1))  # A only
    refused(net, net.trust(state_file), match="witness-b.test/backupvault has logged no record")


def proof_of(proof: object) -> Answer:
    """A consistency proof answer holding `proof` (of any shape) as its hashes."""
    return reply(200, json={"proof": proof})


#: Consistency proofs that do not verify, or are not proofs, by what is wrong.
BAD_PROOFS: dict[str, Answer] = {
    "a wrong hash": proof_of([base64.b64encode(b"\x00" * 32).decode()]),
    "no hash": proof_of([]),
    "too many hashes": proof_of([base64.b64encode(b"\x00" * 32).decode()] * 129),
    "a short hash": proof_of([base64.b64encode(b"\x00" * 31).decode()]),
    "not base64": proof_of(["!!!!"]),
    "numbers": proof_of([1, 2]),
    "a string": proof_of("AAAA"),
    "no proof": reply(200, json={"old": 1}),
    "a list": reply(200, json=[]),
    "infinity": reply(200, text='{"proof": 1e400}'),
    "nested too deeply": reply(200, text=DEEP),
    "garbage": reply(200, content=b"\xff\x00garbage"),
    "over a MiB": reply(200, text='{"proof": ["' + "A" * (1 << 20) + '"]}'),
    "an error": reply(500, text="boom"),
    "a redirect": reply(302, headers={"Location": f"{WITNESS_B}/v1/consistency"}),
}


@pytest.mark.parametrize("answer", BAD_PROOFS.values(), ids=BAD_PROOFS.keys())
@pytest.mark.parametrize(
    "where",
    [
        ("relay.test", "/v1/fleet/consistency"),
        ("witness-a.test", "/v1/consistency"),
        ("witness-b.test", "/v1/consistency"),
    ],
)
def test_a_consistency_proof_that_does_not_verify(
    net: Net, state_file: Path, where: tuple[str, str], answer: Answer
) -> None:
    net.deploy(1)
    trust = net.trust(state_file)
    trust.current(net.http(), RELAY)  # the client saw trees of 1
    grow_log(net, 2)
    net.deploy(2)  # logged at 4 (the relay's proof from 1 to 4)
    grow_log(net)  # heads of 5: A's proof from the bundle's 4, B's from 1; each is needed
    net.hostile[where] = answer
    error = refused(net, trust)
    assert isinstance(error, FleetNotTrusted)
    if isinstance(error.reason, TransparencyError):
        assert isinstance(error.reason, LogForked)
    assert saved_epoch(state_file) == 1


@pytest.mark.parametrize(
    "where", [("relay.test", "/v1/fleet/consistency"), ("witness-a.test", "/v1/consistency")]
)
def test_an_oversized_consistency_proof_is_refused_unread(
    net: Net, state_file: Path, where: tuple[str, str]
) -> None:
    """More than a MiB of proof (here 40,000 well-formed hashes) is refused for its size,
    before it is parsed: a relay or network cannot make the client decode without bound."""
    trust = accepted(net, state_file)
    grow_log(net, 2)
    net.deploy(2)
    grow_log(net)  # A's head is larger than the bundle's checkpoint: its proof is needed
    net.hostile[where] = proof_of([base64.b64encode(b"\x00" * 32).decode()] * 40_000)
    refused(
        net,
        trust,
        match="consistency proof (between log sizes 1 and 4 )?from the (relay|witness .*) is"
        " larger than",
    )


def test_a_consistency_proof_for_other_sizes_is_not_asked_for(net: Net, state_file: Path) -> None:
    """The client asks for the proof between exactly the sizes it holds."""
    trust = accepted(net, state_file)
    grow_log(net, 2)
    seen: list[str] = []

    def spy(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url.query, "ascii"))
        return net.honest(request)

    net.hostile[("witness-a.test", "/v1/consistency")] = spy
    trust.current(net.http(), RELAY)
    assert seen == ["old=1&new=3"]


#: What a hostile relay may serve instead of the bundle.
BAD_BUNDLES: dict[str, bytes] = {
    "empty": b"",
    "garbage": b"\xff" * 100,
    "JSON": b'{"bundle": "please"}',
    "two MiB of zeros": b"\x54" + b"\x00" * (2 << 20),
}


@pytest.mark.parametrize("content", BAD_BUNDLES.values(), ids=BAD_BUNDLES.keys())
def test_a_bundle_that_is_not_a_bundle(net: Net, state_file: Path, content: bytes) -> None:
    net.deploy(1)
    net.current = content
    refused(net, net.trust(state_file), Malformed)


class Endless:
    """A streamed body without end (256 MiB stands in for it) that counts what the client
    pulled from it."""

    def __init__(self) -> None:
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.sent < 256 << 20:
            self.sent += 64 * 1024
            yield b"\x54" * (64 * 1024)


#: Each answer the client reads from the relay or a witness, by (host, path).
ANSWERS = [
    ("relay.test", "/v1/fleet/bundle"),
    ("relay.test", "/v1/fleet/consistency"),
    ("relay.test", "/v1/fleet/epochs"),
    ("witness-a.test", "/v1/head"),
    ("witness-b.test", "/v1/head"),
    ("witness-a.test", "/v1/consistency"),
    ("witness-b.test", "/v1/consistency"),
]


def ask_for_everything(net: Net, state_file: Path) -> tuple[OtaTrust, DeploymentRecord]:
    """A client that accepted epoch 1, and a relay now at epoch 2 on grown logs: its next
    `current` needs every answer of ANSWERS but the epoch list, which `older` asks for."""
    trust = accepted(net, state_file)
    grow_log(net, 2)
    net.deploy(2)
    grow_log(net)  # A's head is larger than the bundle's checkpoint: its proof is needed
    current = net.sign(2).deployment()
    return trust, current


@pytest.mark.parametrize("host,path", ANSWERS)
def test_an_endless_answer_is_refused_unread(
    net: Net, state_file: Path, host: str, path: str
) -> None:
    """Before: the whole body was read before any check, so a relay or network sending
    one without end took the device's memory. Now each answer is read up to the most an
    honest one can be (a bundle about 1 MiB, a head 64 KiB, JSON 1 MiB) and refused past
    that, saving nothing."""
    trust, current = ask_for_everything(net, state_file)
    body = Endless()
    net.hostile[(host, path)] = lambda request: httpx.Response(200, content=body)
    before = snapshot(state_file)
    with pytest.raises(FleetNotTrusted, match=r"is larger than [0-9]+ bytes; nothing of it"):
        if path == "/v1/fleet/epochs":
            list(trust.older(net.http(), RELAY, trust.current(net.http(), RELAY).record))
        else:
            trust.current(net.http(), RELAY)
    assert 0 < body.sent <= 2 << 20, f"read {body.sent} bytes of a hostile answer"
    if path != "/v1/fleet/epochs":  # (`current` saved epoch 2 before `older` was refused)
        assert snapshot(state_file) == before
    assert current.epoch == 2


class Trickled(Endless):
    """A body of which each chunk comes a minute after the one before, by the clock the
    body's deadline is measured with (`clock`, patched in): each read is quick enough for
    httpx's timeout, the whole never ends."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0.0

    def monotonic(self) -> float:
        return self.clock

    def __iter__(self) -> Iterator[bytes]:
        for chunk in super().__iter__():
            self.clock += 60.0
            yield chunk


@pytest.mark.parametrize(
    "host,path,error,match",
    [
        ("relay.test", "/v1/fleet/bundle", FleetUnavailable, "did not arrive within 60 s"),
        ("witness-b.test", "/v1/head", FleetUnavailable, "witness-b.* cannot be reached"),
        ("witness-a.test", "/v1/consistency", FleetUnavailable, "no consistency proof"),
    ],
)
def test_an_answer_trickled_past_the_deadline_is_a_timeout(
    net: Net,
    state_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    path: str,
    error: type[BackupVaultError],
    match: str,
) -> None:
    """httpx's timeout is per read: a body trickled in never timed out. Now the whole body
    has a deadline, and one still arriving after it is handled as each answer's timeout
    always was."""
    trust, _ = ask_for_everything(net, state_file)
    if path == "/v1/head":  # a new device: no head of that witness kept to stand in for it
        trust = replace(trust, state_file=state_file.with_name("new.json"))
    body = Trickled()
    net.hostile[(host, path)] = lambda request: httpx.Response(200, content=body)
    monkeypatch.setattr("backupvault.http_answers.time", body)
    refused(net, trust, error=error, match=match)
    assert body.sent == 64 * 1024


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_a_witness_proof_not_to_be_had_now_is_an_outage_not_a_refusal(
    net: Net, state_file: Path, status: int
) -> None:
    """The witness gave its head, then no consistency proof: busy (429), or down behind
    its proxy (502-504). It said FleetNotTrusted (exit 7, "not trusted"), the alarm for a
    forked log, where it is an outage (exit 5); nothing is trusted or saved either way."""
    trust, _ = ask_for_everything(net, state_file)
    saved = state_file.read_bytes()
    net.hostile[("witness-a.test", "/v1/consistency")] = reply(status, json={"error": "busy"})
    error = refused(net, trust, error=FleetUnavailable, match="no consistency proof")
    assert error.exit_code == 5
    assert state_file.read_bytes() == saved


def test_a_witness_that_refuses_the_proof_is_still_not_trusted(net: Net, state_file: Path) -> None:
    """Any other answer is no proof for a log that must have one: still refused."""
    trust, _ = ask_for_everything(net, state_file)
    net.hostile[("witness-a.test", "/v1/consistency")] = reply(404, json={"error": "no"})
    refused(net, trust, error=FleetNotTrusted, match="no consistency proof")


def test_a_bundle_with_trailing_bytes(net: Net, state_file: Path) -> None:
    net.current = net.deploy(1) + b"\x00"
    refused(net, net.trust(state_file), Malformed)


def altered_root(note: str) -> str:
    """`note` with its root hash line changed (the signature no longer matches)."""
    lines = note.split("\n")
    lines[2] = base64.b64encode(b"\x01" * 32).decode()
    return "\n".join(lines)


#: What the network may answer instead of a witness's head (given its honest head and
#: the bundle witness's plain checkpoint).
BAD_HEADS: dict[str, Callable[[str, str], str | bytes]] = {
    "a plain checkpoint": lambda head, checkpoint: checkpoint,
    "an altered head": lambda head, checkpoint: altered_root(head),
    "a head without its signature": lambda head, checkpoint: head[: head.index("\n\n") + 2],
    "garbage": lambda head, checkpoint: b"\xff\xfe\x00",
    "JSON": lambda head, checkpoint: DEEP,
    "over 64 KiB": lambda head, checkpoint: head + "x" * (65 << 10),
}


@pytest.mark.parametrize("bad", BAD_HEADS.values(), ids=BAD_HEADS.keys())
@pytest.mark.parametrize("host", ["witness-a.test", "witness-b.test"])
def test_a_witness_head_that_is_not_a_head(
    net: Net, state_file: Path, host: str, bad: Callable[[str, str], str | bytes]
) -> None:
    net.deploy(1)
    answer = bad(honest_heads(net)[host], net.a.checkpoint())
    net.hostile[(host, "/v1/head")] = reply(
        200, content=answer.encode() if isinstance(answer, str) else answer
    )
    error = refused(net, net.trust(state_file))
    assert isinstance(error, FleetNotTrusted)
    assert isinstance(error.reason, MalformedNote | UnknownNoteKey | BadNoteSignature), error.reason


def test_a_head_signed_by_another_key(net: Net, state_file: Path) -> None:
    net.deploy(1)
    impostor = Signer(B_NAME, Ed25519PrivateKey.generate())
    fake = Witness(impostor, net.b.store, net.b.policy)
    net.hostile[("witness-b.test", "/v1/head")] = lambda r: httpx.Response(
        200, text=fake.head(FLEET_ID, net.now)
    )
    refused(net, net.trust(state_file), UnknownNoteKey)


@pytest.mark.parametrize("age", [DEFAULT_MAX_AGE + 1, -(MAX_CLOCK_SKEW + 1)])
def test_a_head_too_old_or_from_the_future(net: Net, state_file: Path, age: int) -> None:
    net.deploy(1)
    net.hostile[("witness-a.test", "/v1/head")] = lambda r: httpx.Response(
        200, text=net.a.head(FLEET_ID, net.now - age)
    )
    refused(net, net.trust(state_file), StaleHead)


#: HTTP failures of the relay, and what the client makes of them.
RELAY_FAILURES: dict[str, tuple[Answer, type[BackupVaultError]]] = {
    "500": (reply(500, text="boom"), FleetNotTrusted),
    "404": (reply(404), FleetNotTrusted),
    "a redirect": (reply(302, headers={"Location": f"{WITNESS_A}/bundle"}), FleetNotTrusted),
    "502": (reply(502), FleetUnavailable),
    "503": (reply(503, text="restarting"), FleetUnavailable),
    "504": (reply(504), FleetUnavailable),
}


def raises(error: httpx.HTTPError) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        raise error

    return answer


@pytest.mark.parametrize("failure", RELAY_FAILURES.values(), ids=RELAY_FAILURES.keys())
def test_the_relay_failing_to_serve_the_bundle(
    net: Net, state_file: Path, failure: tuple[Answer, type[BackupVaultError]]
) -> None:
    net.deploy(1)
    net.trust(state_file).current(net.http(), RELAY)
    net.deploy(2)
    net.hostile[("relay.test", "/v1/fleet/bundle")] = failure[0]
    refused(net, net.trust(state_file), error=failure[1], match="did not serve the fleet bundle")


def test_the_relay_unreachable_or_slow(net: Net, state_file: Path) -> None:
    net.deploy(1)
    net.hostile[("relay.test", "/v1/fleet/bundle")] = raises(httpx.ConnectError("refused"))
    refused(net, net.trust(state_file), error=RelayUnreachable)
    net.hostile[("relay.test", "/v1/fleet/bundle")] = raises(httpx.ReadTimeout("slow"))
    refused(net, net.trust(state_file), error=FleetUnavailable)


def test_a_redirect_is_never_followed_even_by_a_client_that_would(
    net: Net, state_file: Path
) -> None:
    """The relay redirects the bundle to a host it controls: a client built to follow
    redirects still ends up checking what it got, so the redirect gains nothing; the
    default client does not follow it at all."""
    other = net.log(net.sign(1, fleet_id=OTHER_FLEET), net.b)
    net.deploy(1)
    net.hostile[("relay.test", "/v1/fleet/bundle")] = reply(
        302, headers={"Location": "https://evil.test/bundle"}
    )
    net.hostile[("evil.test", "/bundle")] = reply(200, content=other)
    refused(net, net.trust(state_file, fleet_id=FLEET_ID), match="302")
    refused(
        net,
        net.trust(state_file, fleet_id=FLEET_ID),
        FleetMismatch,
        http=net.http(follow_redirects=True),
    )


@pytest.mark.parametrize(
    "answer",
    [
        reply(500),
        reply(302, headers={"Location": f"{WITNESS_A}/v1/head"}),
        raises(httpx.ConnectError("refused")),
        raises(httpx.ReadTimeout("slow")),
    ],
    ids=["500", "a redirect", "refused", "timeout"],
)
def test_a_witness_out_of_reach_on_first_use(net: Net, state_file: Path, answer: Answer) -> None:
    net.deploy(1)
    net.hostile[("witness-b.test", "/v1/head")] = answer
    refused(net, net.trust(state_file), error=FleetUnavailable, match="witness-b.test")


# ---- older epochs: hostile lists ---------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        reply(200, text=DEEP),
        reply(200, text='{"previous": [1e400]}'),
        reply(200, text='{"previous": [true]}'),
        reply(200, text='{"previous": [-1]}'),
        reply(200, text='{"previous": "1"}'),
        reply(200, text='{"previous": [' + "1," * (1 << 19) + "1]}"),
        reply(200, content=b"\xff"),
        reply(500),
    ],
    ids=["deep", "infinity", "boolean", "negative", "a string", "over a MiB", "garbage", "500"],
)
def test_a_hostile_list_of_older_epochs(net: Net, state_file: Path, answer: Answer) -> None:
    net.deploy(1)
    net.deploy(2)
    trust = net.trust(state_file)
    current = trust.current(net.http(), RELAY)
    net.hostile[("relay.test", "/v1/fleet/epochs")] = answer
    before = snapshot(state_file)
    with pytest.raises(FleetNotTrusted):
        list(trust.older(net.http(), RELAY, current.record))
    assert snapshot(state_file) == before


# ---- saved only after everything verified ------------------------------------------------------


def test_nothing_is_saved_before_the_last_witness_agreed(
    net: Net, state_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust = accepted(net, state_file)
    grow_log(net)
    net.deploy(2)
    saves: list[list[str]] = []
    original = TrustState.save

    def spy(state: TrustState) -> None:
        saves.append(list(net.asked))
        original(state)

    monkeypatch.setattr(TrustState, "save", spy)
    # The last check (B's head) fails: the checks before it (bundle, A's head, both
    # consistency proofs) passed, yet nothing was saved.
    net.hostile[("witness-b.test", "/v1/head")] = reply(200, text="no head\n\n— x AAAA\n")
    refused(net, trust)
    assert saves == []
    del net.hostile[("witness-b.test", "/v1/head")]
    net.asked.clear()
    assert trust.current(net.http(), RELAY).record.epoch == 2
    # Saved once, after the last answer it needed.
    assert len(saves) == 1 and saves[0] == net.asked
    assert net.asked[-1].startswith("witness-b.test")


def test_two_witnesses_of_one_name_are_refused(net: Net, tmp_path: Path) -> None:
    """Heads are kept by witness name: a second entry of the same witness (same key, other
    URL) would make one log count as two that agree."""
    twice = (WitnessEndpoint(net.a_signer.verifier, WITNESS_B),)
    with pytest.raises(InvalidInput, match="same name"):
        net.trust(tmp_path / "state.json", others=twice)


def test_an_upgrades_earlier_epoch_on_the_same_nodes_is_not_searched(
    net: Net, state_file: Path
) -> None:
    """A rotation (1 -> 2, new nodes), then an upgrade (2 -> 3: new code, the same nodes
    and keys): `fleet deploy` rewrote epoch 2's bundle as 3's, and the relay routes epoch 1
    (the rotation's) but not 2. A client that accepted epoch 2 looks for its key on epoch 1
    only: epoch 2's entries are on epoch 3's nodes. Before, it asked the relay for epoch 2,
    was answered 404, and stopped ("cannot check epoch 2"): the key on epoch 1 never
    moved."""
    trust = accepted(net, state_file)
    second_nodes = rotated_nodes(2)
    net.deploy(2, nodes=second_nodes)
    trust.current(net.http(), RELAY)
    net.deploy(3, nodes=second_nodes)
    del net.previous[2]
    current = trust.current(net.http(), RELAY)
    assert current.record.epoch == 3
    assert [r.epoch for r in trust.older(net.http(), RELAY, current.record)] == [1]
    assert saved_epoch(state_file) == 3


def test_a_rate_limited_consistency_proof_is_an_outage_not_a_refusal(
    net: Net, state_file: Path
) -> None:
    """The relay answers `/v1/fleet/consistency` with 429 past an address's bucket (many
    devices behind one NAT): the client said FleetNotTrusted ("the relay did not serve
    ...", exit 7, "the relay must serve the fleet bundle"), as if the fleet failed its
    checks. It is FleetUnavailable (exit 5) with the wait, and nothing is saved."""
    trust, _ = ask_for_everything(net, state_file)
    net.hostile[("relay.test", "/v1/fleet/consistency")] = reply(
        429,
        json={"error": "rate_limited", "detail": "too many log consistency requests"},
        headers={"Retry-After": "7"},
    )
    error = refused(net, trust, error=FleetUnavailable, match="asks to wait 7 s")
    assert error.exit_code == 5
    del net.hostile[("relay.test", "/v1/fleet/consistency")]
    assert trust.current(net.http(), RELAY).record.epoch == 2


@pytest.mark.parametrize("host", ["witness-a.test", "witness-b.test"])
def test_a_rotation_a_witness_out_of_reach_has_not_confirmed_is_an_outage(
    net: Net, state_file: Path, host: str
) -> None:
    """The fleet rotated to epoch 2 (logged by both witnesses) while one witness is out of
    reach: its last head, kept in the state, names epoch 1. That witness has not confirmed
    epoch 2, so the client must not use it; but nothing contradicts it either, so it is an
    outage (exit 5, try again), not "another record ... keep both as evidence" (exit 7).
    Once the witness answers, epoch 2 is accepted."""
    trust = accepted(net, state_file)
    net.now += 60
    net.deploy(2)
    net.hostile[(host, "/v1/head")] = reply(503)
    error = refused(net, trust, error=FleetUnavailable, match="cannot be reached to confirm")
    assert "epoch 2" in error.message and "names epoch 1" in error.message
    del net.hostile[(host, "/v1/head")]
    assert trust.current(net.http(), RELAY).record.epoch == 2
    # Epoch 1 again, with the witness out of reach: its head kept in the state, naming
    # epoch 2, says epoch 1 is retired (a device whose state lost the epoch, say).
    net.current = net.previous[1]
    net.hostile[(host, "/v1/head")] = reply(503)
    data = saved(state_file)
    data["fleets"][FLEET_ID.hex()]["epoch"] = 1
    state_file.write_text(json.dumps(data))
    refused(net, trust, EpochRetired)


@pytest.mark.parametrize("change", ["not a record", "another epoch", "another fleet"])
def test_a_kept_record_that_is_not_the_one_it_is_kept_as_is_a_clear_error(
    net: Net, state_file: Path, change: str
) -> None:
    """A record in the state is what the client moves an entry from (`older`) without
    asking the log again: a state file whose record is not a signed record, or is another
    epoch's or fleet's than it is kept under, is the file's error, named as such, at load
    (it was an error naming no file once an older epoch was looked for, or an epoch read
    under the wrong number)."""
    trust = accepted(net, state_file)
    data = saved(state_file)
    records = data["fleets"][FLEET_ID.hex()]["records"]
    records["0"] = {
        "not a record": "52" + "00" * 8,
        "another epoch": net.sign(5).to_bytes().hex(),
        "another fleet": net.sign(0, fleet_id=OTHER_FLEET).to_bytes().hex(),
    }[change]
    state_file.write_text(json.dumps(data))
    with pytest.raises(InvalidInput, match=r"state.json is malformed: .*record of epoch 0"):
        TrustState.load(state_file)
    refused(net, trust, error=InvalidInput, match="state.json is malformed")


def _another_operator(net: Net, state_file: Path) -> OtaTrust:
    net.deploy(1)
    return net.trust(state_file, operator_key=raw_public_key(Ed25519PrivateKey.generate()))


def _cosigned_by_another_witness(net: Net, state_file: Path) -> OtaTrust:
    net.deploy(1)
    bundle = FleetBundle.from_bytes(net.current)
    other = cosign(Ed25519PrivateKey.generate(), WITNESS_NAME, bundle.signed_record)
    net.current = replace(bundle, cosignature=other).to_bytes()
    return net.trust(state_file)


def _an_older_epoch_than_accepted(net: Net, state_file: Path) -> OtaTrust:
    old = net.deploy(1)
    trust = net.trust(state_file)
    net.deploy(2)
    trust.current(net.http(), RELAY)
    net.current = old
    return trust


@pytest.mark.parametrize(
    ("setup", "reason", "own_hint"),
    [
        (_another_operator, UnknownOperatorKey, "signed by "),
        (_cosigned_by_another_witness, WitnessSignatureInvalid, "cosigned by another witness"),
        (_an_older_epoch_than_accepted, EpochReplayed, "an old deployment record was replayed"),
    ],
    ids=["operator key", "witness cosignature", "older epoch"],
)
def test_every_refusal_says_what_to_do(
    net: Net,
    state_file: Path,
    setup: Callable[[Net, Path], OtaTrust],
    reason: type[BackupVaultError],
    own_hint: str,
) -> None:
    """A refusal whose reason had a hint of its own (why it may have happened) showed only
    that hint: "an old deployment record was replayed", and nothing on what the user is
    to do, nor that nothing of the password went out. Both are said now, with the why."""
    error = refused(net, setup(net, state_file), reason)
    assert error.hint is not None and own_hint in error.hint
    assert "nothing derived from your password was sent" in error.hint
    assert "report this to the operator" in error.hint
