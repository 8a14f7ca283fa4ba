"""`verify-deployment` and `witness verify-log` in one process, against a relay, a witness
and nodes played by an httpx MockTransport: what each says when the relay serves a retired
epoch, when a node is down or lies, when the state file holds more than this run saw, and
when an answer is hostile JSON."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.cli.main import main
from backupvault.client.errors import FleetNotTrusted
from backupvault.client.trust import OtaTrust
from backupvault.codec import MAX_EPOCH, MAX_JSON, epoch_number, untrusted_json
from backupvault.deploy.verify import (
    DeploymentCheckFailed,
    DeploymentUnreachable,
    FleetReport,
    LogCheckFailed,
    TrustInputs,
    load_checkpoint_state,
    verify_deployment,
    verify_log,
)
from backupvault.errors import InvalidInput
from backupvault.files import MAX_STATE_BYTES
from backupvault.transparency import FleetBundle, Verifier, sign_record
from backupvault.transparency.bundle import MAX_BUNDLE_BYTES
from backupvault.transparency.errors import UnknownFleet
from backupvault.transparency.note import Checkpoint, Signer, open_checkpoint
from backupvault.transparency.record import raw_public_key
from backupvault.transparency.witness import Witness, WitnessPolicy

from .conftest import FLEET_ID, MEASUREMENT, WITNESS_NAME, WitnessFactory, make_record, node

RELAY = "https://relay.test"
WITNESS = "https://witness.test"
OTHER_FLEET = bytes.fromhex("feedfacefeedface")
DEEP = "[" * 100_000 + "]" * 100_000
CLIENT = httpx.Client  # the tests of the CLI put a MockTransport under httpx.Client

#: What a node answers on GET /v1/measurement: its honest answer, None (it is down), or
#: a Response.
NodeAnswer = Callable[[int, int], httpx.Response | None]


def honest(index: int, epoch: int) -> httpx.Response:
    answer = {"node": index, "fleet_id": FLEET_ID.hex(), "epoch": epoch}
    return httpx.Response(200, json={**answer, "measurement": MEASUREMENT.hex()})


class World:
    """The operator, one witness that logs every record, a relay and the nodes."""

    def __init__(self, witness: Witness, operator: Ed25519PrivateKey, key: Verifier) -> None:
        self.witness, self.operator, self.key = witness, operator, key
        self.current = b""
        self.previous: dict[int, bytes] = {}
        self.epochs: str | None = None  # raw /v1/fleet/epochs answer (None: the real one)
        self.consistency: str | None = None  # raw /v1/consistency answer (None: real)
        self.nodes: dict[int, NodeAnswer] = {}
        self.serving_epoch = 1  # the epoch the nodes say they run
        #: A hostile answer in place of the honest one for one (host, path).
        self.hostile: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]] = {}

    def deploy(self, epoch: int, fleet_id: bytes = FLEET_ID, retired_below: int = 0) -> bytes:
        record = make_record(epoch=epoch, fleet_id=fleet_id, retired_below=retired_below)
        signed = sign_record(record, self.operator)
        return FleetBundle.from_receipt(signed, self.witness.submit(signed.to_bytes())).to_bytes()

    def handle(self, request: httpx.Request) -> httpx.Response:
        host, path, query = request.url.host, request.url.path, request.url.params
        if (host, path) in self.hostile:
            return self.hostile[host, path](request)
        if host == "witness.test" and path == "/v1/checkpoint":
            return httpx.Response(200, text=self.witness.checkpoint())
        if host == "witness.test" and path == "/v1/head":
            try:
                return httpx.Response(
                    200,
                    text=self.witness.head(
                        bytes.fromhex(query["fleet"]),
                        int(time.time()),
                        bytes.fromhex(query.get("nonce", "")),
                    ),
                )
            except UnknownFleet:
                return httpx.Response(404)
        if path in ("/v1/consistency", "/v1/fleet/consistency"):
            if self.consistency is not None:
                return httpx.Response(200, text=self.consistency)
            proof = self.witness.consistency(int(query["old"]), int(query["new"]))
            return httpx.Response(
                200, json={"proof": [base64.b64encode(h).decode() for h in proof]}
            )
        if host == "relay.test" and path == "/v1/fleet/epochs":
            if self.epochs is not None:
                return httpx.Response(200, text=self.epochs)
            return httpx.Response(200, json={"current": 0, "previous": sorted(self.previous)})
        if host == "relay.test" and path == "/v1/fleet/bundle":
            if "epoch" in query:
                old = self.previous.get(int(query["epoch"]))
                return httpx.Response(404) if old is None else httpx.Response(200, content=old)
            return httpx.Response(200, content=self.current)
        if host.endswith(".vault.test") and path == "/v1/measurement":
            index = int(host.split(".")[0].removeprefix("node"))
            answer = self.nodes.get(index, honest)(index, self.serving_epoch)
            if answer is None:
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
            return answer
        return httpx.Response(404)

    def http(self) -> httpx.Client:
        return CLIENT(transport=httpx.MockTransport(self.handle))

    def trust(self, *, witness: bool = True) -> TrustInputs:
        witnesses = ((self.key, WITNESS),) if witness else ()
        return TrustInputs(raw_public_key(self.operator), self.key, witnesses=witnesses)

    def run(self, *, witness: bool = True, **kw: object) -> list[FleetReport]:
        return verify_deployment(
            self.trust(witness=witness),
            relay_url=RELAY,
            http=self.http(),
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture
def world(
    make_witness: WitnessFactory,
    operator_key: Ed25519PrivateKey,
    witness_key: Ed25519PrivateKey,
) -> World:
    witness = make_witness(policy=both_fleets(operator_key))
    return World(witness, operator_key, Signer(WITNESS_NAME, witness_key).verifier)


def both_fleets(operator_key: Ed25519PrivateKey) -> WitnessPolicy:
    """A witness policy logging FLEET_ID's and OTHER_FLEET's records by the operator."""
    operator = raw_public_key(operator_key)
    return WitnessPolicy(operators={FLEET_ID: operator, OTHER_FLEET: operator})


def failed(report: FleetReport) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


def size_in(state: Path, world: World) -> int:
    return open_checkpoint(json.loads(state.read_text())["checkpoint"], world.key).size


# ---- the current epoch's head ----------------------------------------------------------------


def test_a_retired_epoch_served_as_current_is_refused_even_without_a_witness_url(
    world: World,
) -> None:
    retired = world.deploy(1)
    world.deploy(2)  # logged: epoch 1 is retired
    world.current = retired  # the relay still serves it as the current one
    [asked] = world.run(check_node_measurements=False)
    assert not asked.ok and "witness" in next(iter(failed(asked)))
    [unasked] = world.run(witness=False, check_node_measurements=False)
    assert not unasked.ok and unasked.verdict == "REFUSED"
    assert failed(unasked) == {
        "fleet head at the witness": failed(unasked)["fleet head at the witness"]
    }
    assert failed(unasked)["fleet head at the witness"].startswith(
        "not checked: give --witness-url"
    )
    assert "verdict: REFUSED" in unasked.text()


def test_the_cli_wants_a_witness_url_without_an_ota_config(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world.current = world.deploy(1)
    monkeypatch.setattr(httpx, "Client", lambda **kw: world.http())
    base = ["verify-deployment", "--operator-key", raw_public_key(world.operator).hex()]
    base += ["--witness-key", world.key.vkey(), "--skip-nodes"]
    bundle = tmp_path / "bundle.bin"
    bundle.write_bytes(world.current)
    for where in (["--relay", RELAY], ["--bundle", str(bundle)]):
        with pytest.raises(SystemExit) as done:
            main([*base, *where])
        assert done.value.code == 2
        assert "give --witness-url" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main([*base, "--relay", RELAY, "--witness-url", WITNESS])
    assert done.value.code == 0, capsys.readouterr()
    assert "verdict: every check passed" in capsys.readouterr().out


# ---- the state file ----------------------------------------------------------------------------


def test_the_state_remembers_the_epoch_and_refuses_going_back(world: World, tmp_path: Path) -> None:
    first, second = world.deploy(1), world.deploy(2)
    state = tmp_path / "audit.json"
    world.current, world.previous = second, {1: first}
    assert all(r.ok for r in world.run(state_file=state, check_node_measurements=False))
    assert json.loads(state.read_text())["fleets"][FLEET_ID.hex()]["epoch"] == 2
    kept = state.read_text()
    # Later the relay goes back to epoch 1: the state alone refuses it, before any witness
    # is asked (a witness shown a fork, or none given, would not).
    world.current, world.previous = first, {}
    for witness in (True, False):
        [back] = world.run(witness=witness, state_file=state, check_node_measurements=False)
        assert not back.ok
        assert list(failed(back)) == ["epoch not older than the last accepted"]
    assert state.read_text() == kept  # not updated on a failure


def test_a_relay_listing_an_epoch_the_current_record_retires_fails_it(
    world: World, tmp_path: Path
) -> None:
    """Clients ask a retired epoch nothing; an auditor is told that the relay still lists
    one (an honest relay refuses to), and the state is not updated."""
    first, second, third = world.deploy(1), world.deploy(2), world.deploy(3, retired_below=2)
    world.current, world.previous = third, {1: first, 2: second}
    state = tmp_path / "audit.json"
    reports = {r.epoch: r for r in world.run(state_file=state, check_node_measurements=False)}
    assert reports[3].ok and reports[2].ok
    assert reports[3].as_dict()["retired_below"] == 2
    assert "retires the epochs below 2" in reports[3].text()
    assert failed(reports[1]) == {
        "not retired": "the current record (epoch 3) retires the epochs below 2, yet the relay"
        " lists this one"
    }
    assert reports[1].verdict == "REFUSED"
    assert not state.exists()
    world.previous = {2: second}  # as an honest relay lists them
    assert all(r.ok for r in world.run(state_file=state, check_node_measurements=False))


def test_the_state_checkpoint_never_shrinks(world: World, tmp_path: Path) -> None:
    world.current = world.deploy(1)  # its receipt: a tree of 1
    for epoch in range(1, 6):  # the witness logs 5 more records (another fleet)
        world.deploy(epoch, OTHER_FLEET)
    # An OTA client's state, as a client keeps it: the witness's newest checkpoint (6).
    state = tmp_path / "client-state.json"
    state.write_text(json.dumps({"version": 1, "checkpoint": world.witness.checkpoint()}))
    assert size_in(state, world) == 6
    assert all(r.ok for r in world.run(state_file=state, check_node_measurements=False))
    assert size_in(state, world) == 6
    assert json.loads(state.read_text())["fleets"][FLEET_ID.hex()]["epoch"] == 1
    # and an empty state gets the witness's tree as its head shows it (a client keeps that
    # one too), not only the bundle's receipt's (1)
    state.write_text(json.dumps({"version": 1}))
    world.run(state_file=state, check_node_measurements=False)
    assert size_in(state, world) == 6
    state.write_text(json.dumps({"version": 1}))
    world.run(state_file=state, witness=False, check_node_measurements=False)
    assert "checkpoint" not in json.loads(state.read_text())  # no head: nothing verified


@pytest.mark.parametrize("content", [DEEP, "[]", "{", "\x00"], ids=["deep", "list", "cut", "NUL"])
def test_a_damaged_state_file_is_a_clear_error(world: World, tmp_path: Path, content: str) -> None:
    """For `verify-deployment --state` and `witness verify-log --state` alike (a JSON
    nested too deeply ended both in RecursionError), and the file is kept as it was."""
    world.current = world.deploy(1)
    state = tmp_path / "audit.json"
    state.write_text(content)
    with pytest.raises(InvalidInput, match=r"state file .*audit\.json"):
        world.run(state_file=state, check_node_measurements=False)
    with pytest.raises(InvalidInput, match=r"state file .*audit\.json"):
        verify_log(WITNESS, world.key, state, http=world.http())
    assert state.read_text() == content


def test_what_another_process_saved_meanwhile_is_kept(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client of this device may save the shared state file while `verify-deployment`
    or `witness verify-log` runs: each save is applied to the file as it is then, under
    its lock, never a copy loaded earlier saved over it."""
    world.current = world.deploy(1)
    state = tmp_path / "client-state.json"
    state.write_text(json.dumps({"version": 1}))
    meanwhile = {"heads": {"w": "a head"}, "time": 1_900_000_000}
    other = {OTHER_FLEET.hex(): {"epoch": 7}}
    handle = world.handle

    def handle_then_save(request: httpx.Request) -> httpx.Response:
        if request.url.path in ("/v1/head", "/v1/consistency"):  # while the run checks
            saved = json.loads(state.read_text())
            saved.update(meanwhile, fleets={**saved.get("fleets", {}), **other})
            state.write_text(json.dumps(saved))
        return handle(request)

    monkeypatch.setattr(world, "handle", handle_then_save)
    assert all(r.ok for r in world.run(state_file=state, check_node_measurements=False))
    saved = json.loads(state.read_text())
    assert {k: saved[k] for k in meanwhile} == meanwhile
    assert saved["fleets"] == {**other, FLEET_ID.hex(): {"epoch": 1}}

    world.deploy(2, OTHER_FLEET)  # the log grows: verify-log asks for a consistency proof
    meanwhile["time"] += 1
    verify_log(WITNESS, world.key, state, http=world.http())
    saved = json.loads(state.read_text())
    assert saved["time"] == meanwhile["time"] and size_in(state, world) == 2


def test_an_ota_clients_state_stays_readable_by_the_client(world: World, tmp_path: Path) -> None:
    world.current = world.deploy(1)
    state = tmp_path / "client-state.json"
    client = OtaTrust(
        operator_key=raw_public_key(world.operator),
        witness=world.key,
        state_file=state,
        witness_url=WITNESS,
    )
    client.current(world.http(), RELAY)
    records = json.loads(state.read_text())["fleets"][FLEET_ID.hex()]["records"]
    assert all(r.ok for r in world.run(state_file=state, check_node_measurements=False))
    assert json.loads(state.read_text())["fleets"][FLEET_ID.hex()]["records"] == records
    assert client.current(world.http(), RELAY).record.epoch == 1


def ota_client(world: World, state: Path, **kw: object) -> OtaTrust:
    return OtaTrust(
        operator_key=raw_public_key(world.operator),
        witness=world.key,
        state_file=state,
        witness_url=WITNESS,
        **kw,  # type: ignore[arg-type]
    )


def test_a_clients_state_file_does_not_lose_its_fleet_pin(world: World, tmp_path: Path) -> None:
    """An OTA client without fleet_id pins the first fleet it accepts. Before, given its
    state file, verify-deployment checked whatever fleet the relay served (another of the
    same operator), called it TRUSTED and wrote it into the file: the client then held two
    fleets, was pinned to none, and accepted the other fleet from then on."""
    world.current = world.deploy(1)
    state = tmp_path / "client-state.json"
    client = ota_client(world, state)
    client.current(world.http(), RELAY)
    world.current = world.deploy(1, OTHER_FLEET)
    with pytest.raises(FleetNotTrusted):
        client.current(world.http(), RELAY)
    kept = state.read_text()

    [report] = world.run(state_file=state, check_node_measurements=False)
    assert report.verdict == "REFUSED"
    detail = failed(report)["fleet id"]
    assert f"expected {FLEET_ID.hex()}" in detail and "the state file" in detail
    assert state.read_text() == kept
    with pytest.raises(FleetNotTrusted):  # still pinned
        client.current(world.http(), RELAY)


def test_a_pinned_state_file_and_another_expected_fleet_are_refused(
    world: World, tmp_path: Path
) -> None:
    """Asked to check another fleet (an OTA config naming it) with a state file that pins
    one, verify-deployment says so before it asks anything, and saves nothing."""
    world.current = world.deploy(1, OTHER_FLEET)
    state = tmp_path / "client-state.json"
    state.write_text(json.dumps({"version": 1, "fleet_id": FLEET_ID.hex()}))
    trust = replace(world.trust(), fleet_id=OTHER_FLEET)
    with pytest.raises(InvalidInput, match=f"pins fleet {FLEET_ID.hex()}.*{OTHER_FLEET.hex()}"):
        verify_deployment(trust, relay_url=RELAY, state_file=state, http=world.http())
    assert json.loads(state.read_text()) == {"version": 1, "fleet_id": FLEET_ID.hex()}


def test_a_pin_of_the_older_format_is_kept_and_written(world: World, tmp_path: Path) -> None:
    """A client's file without "fleet_id" pins the one fleet with records; verify-deployment
    expects it, and writes it as "fleet_id" when it saves. An audit file (epochs only)
    pins nothing: it may keep several fleets."""
    world.current = world.deploy(1)
    state = tmp_path / "client-state.json"
    ota_client(world, state).current(world.http(), RELAY)
    data = json.loads(state.read_text())
    del data["fleet_id"]
    state.write_text(json.dumps(data))
    assert all(r.ok for r in world.run(state_file=state, check_node_measurements=False))
    assert json.loads(state.read_text())["fleet_id"] == FLEET_ID.hex()

    audit = tmp_path / "audit.json"
    world.current = world.deploy(1, OTHER_FLEET)
    assert all(r.ok for r in world.run(state_file=audit, check_node_measurements=False))
    world.current = world.deploy(2)
    assert all(r.ok for r in world.run(state_file=audit, check_node_measurements=False))
    saved = json.loads(audit.read_text())
    assert set(saved["fleets"]) == {FLEET_ID.hex(), OTHER_FLEET.hex()}
    assert "fleet_id" not in saved


def test_a_pin_made_while_the_run_checks_is_kept(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save is applied to the file as it is then: a client that pinned another fleet
    there meanwhile keeps its pin (the save is refused, not made over it)."""
    world.current = world.deploy(1)
    state = tmp_path / "client-state.json"
    state.write_text(json.dumps({"version": 1}))
    handle = world.handle

    def handle_then_pin(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/head":
            state.write_text(json.dumps({"version": 1, "fleet_id": OTHER_FLEET.hex()}))
        return handle(request)

    monkeypatch.setattr(world, "handle", handle_then_pin)
    with pytest.raises(InvalidInput, match=f"pins fleet {OTHER_FLEET.hex()}"):
        world.run(state_file=state, check_node_measurements=False)
    assert json.loads(state.read_text()) == {"version": 1, "fleet_id": OTHER_FLEET.hex()}


# ---- nodes that are down, and nodes that lie ----------------------------------------------------


def test_a_node_that_is_down_is_unreachable_not_a_mismatch(world: World) -> None:
    world.current = world.deploy(1)
    world.nodes[2] = lambda index, epoch: None
    [report] = world.run()
    down = [c for c in report.checks if not c.ok]
    assert [c.name for c in down] == ["node 2 measurement (https://node2.vault.test:7100)"]
    assert down[0].detail.startswith("unreachable: not verified (ConnectError")
    assert down[0].status == "unreachable"
    assert report.verdict == "INCOMPLETE" and not report.ok
    assert report.as_dict()["verdict"] == "incomplete"
    assert report.as_dict()["checks"][-3]["status"] == "unreachable"
    assert "??   node 2 measurement" in report.text()
    # 503 from a proxy in front of a node is an outage too
    world.nodes[2] = lambda index, epoch: httpx.Response(503)
    assert world.run()[0].verdict == "INCOMPLETE"


def test_a_node_with_another_measurement_is_still_a_mismatch(world: World) -> None:
    world.current = world.deploy(1)
    world.nodes[0] = lambda index, epoch: httpx.Response(
        200, json={"measurement": "ab" * 32, "fleet_id": FLEET_ID.hex(), "epoch": epoch}
    )
    [report] = world.run()
    assert not report.ok and report.verdict == "REFUSED"
    assert "runs abab" in failed(report)["node 0 measurement (https://node0.vault.test:7100)"]
    world.nodes[2] = lambda index, epoch: None  # and another one down: still refused
    assert world.run()[0].verdict == "REFUSED"


def test_a_node_naming_epoch_true_is_a_mismatch(world: World) -> None:
    world.current = world.deploy(1)
    world.nodes[1] = lambda index, epoch: honest(index, True)  # type: ignore[arg-type]
    [report] = world.run()
    assert not report.ok  # JSON `true` is not epoch 1
    assert (
        "not an epoch number"
        in failed(report)["node 1 measurement (https://node1.vault.test:7100)"]
    )


def test_the_cli_exit_codes_tell_an_outage_from_a_mismatch(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world.current = world.deploy(1)
    monkeypatch.setattr(httpx, "Client", lambda **kw: world.http())
    args = ["--json", "verify-deployment", "--relay", RELAY, "--witness-url", WITNESS]
    args += ["--operator-key", raw_public_key(world.operator).hex()]
    args += ["--witness-key", world.key.vkey()]
    world.nodes[2] = lambda index, epoch: None
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    assert done.value.code == 5
    assert json.loads(out)["verdict"] == "incomplete"
    assert json.loads(err)["exit_code"] == 5 and "node 2 measurement" in json.loads(err)["error"]
    assert "does not match" not in err
    world.nodes[0] = lambda index, epoch: httpx.Response(
        200, json={"measurement": "ab" * 32, "fleet_id": FLEET_ID.hex(), "epoch": epoch}
    )
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    assert done.value.code == 7 and json.loads(out)["verdict"] == "refused"
    assert "node 0 measurement" in json.loads(err)["error"]


# ---- hostile JSON ------------------------------------------------------------------------------


def test_untrusted_json_raises_only_invalid_input() -> None:
    assert untrusted_json(b'{"previous": [2, 1]}', "x") == {"previous": [2, 1]}
    for bad in (DEEP, "[NaN]", "[Infinity]", b"\xff", "{", " " * (MAX_JSON + 1), "1" * 5000):
        with pytest.raises(InvalidInput):
            untrusted_json(bad, "x")
    assert epoch_number(0, "e") == 0 and epoch_number(MAX_EPOCH, "e") == MAX_EPOCH
    for bad_epoch in (True, 1.0, float("inf"), "1", -1, MAX_EPOCH + 1, None, [1]):
        with pytest.raises(InvalidInput):
            epoch_number(bad_epoch, "e")


def test_a_node_answering_deep_json_fails_its_own_check(world: World) -> None:
    world.current = world.deploy(1)
    world.nodes[3] = lambda index, epoch: httpx.Response(200, text=DEEP)
    [report] = world.run()
    assert report.verdict == "REFUSED"
    assert (
        "nested too deeply" in failed(report)["node 3 measurement (https://node3.vault.test:7100)"]
    )


@pytest.mark.parametrize("answer", ['{"current": 1, "previous": [1e400]}', DEEP, "[]"])
def test_a_relay_listing_hostile_epochs_is_refused(world: World, answer: str) -> None:
    world.current = world.deploy(1)
    world.epochs = answer
    with pytest.raises(DeploymentCheckFailed, match="lists its fleet epochs malformed"):
        world.run(check_node_measurements=False)


@pytest.mark.parametrize(
    "answer", ['{"current": 2, "previous": [1e400]}', DEEP, '{"previous": [true]}']
)
def test_a_client_refuses_hostile_epochs(world: World, tmp_path: Path, answer: str) -> None:
    world.deploy(1)
    world.current = world.deploy(2)
    client = OtaTrust(
        operator_key=raw_public_key(world.operator),
        witness=world.key,
        state_file=tmp_path / "state.json",
        witness_url=WITNESS,
    )
    verified = client.current(world.http(), RELAY)
    world.epochs = answer
    with pytest.raises(FleetNotTrusted):
        list(client.older(world.http(), RELAY, verified.record))


@pytest.mark.parametrize("answer", [DEEP, '{"proof": 1e400}', '{"proof": [[[]]]}'])
def test_verify_log_refuses_a_hostile_consistency_proof(
    world: World, tmp_path: Path, answer: str
) -> None:
    world.deploy(1)
    state = tmp_path / "log.json"
    verify_log(WITNESS, world.key, state, http=world.http())
    world.deploy(2)
    world.consistency = answer
    with pytest.raises(LogCheckFailed, match="no consistency proof"):
        verify_log(WITNESS, world.key, state, http=world.http())
    assert open_checkpoint(json.loads(state.read_text())["checkpoint"], world.key).size == 1


def test_verify_log_keeps_the_version_and_the_vkey(world: World, tmp_path: Path) -> None:
    world.deploy(1)
    state = tmp_path / "log.json"
    verify_log(WITNESS, world.key, state, http=world.http())
    saved = json.loads(state.read_text())
    assert saved["version"] == 1 and saved["vkey"] == world.key.vkey()


# ---- answers without end ----------------------------------------------------------------------


class Endless:
    """A streamed body without end (256 MiB stands in for it) that counts what was pulled."""

    def __init__(self) -> None:
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.sent < 256 << 20:
            self.sent += 64 * 1024
            yield b"\x54" * (64 * 1024)


def endless(world: World, host: str, path: str) -> Endless:
    body = Endless()
    world.hostile[host, path] = lambda request: httpx.Response(200, content=body)
    return body


#: Past this, a hostile answer was read well beyond what any honest one needs.
READ_AT_MOST = 2 << 20


@pytest.mark.parametrize("path", ["/v1/fleet/bundle", "/v1/fleet/epochs"])
def test_a_relay_answer_without_end_is_refused_unread(world: World, path: str) -> None:
    """Before: the whole body was read before any check, so a relay (or whoever is in
    front of it) sending one without end took the auditor's memory."""
    world.current = world.deploy(1)
    body = endless(world, "relay.test", path)
    with pytest.raises(DeploymentCheckFailed, match=r"is larger than [0-9]+ bytes; nothing of"):
        world.run(check_node_measurements=False)
    assert 0 < body.sent <= READ_AT_MOST


@pytest.mark.parametrize(
    "host,path,check",
    [
        ("witness.test", "/v1/head", "witness witness.test/backupvault head"),
        ("relay.test", "/v1/fleet/consistency", "log consistency with the last checkpoint seen"),
        (
            "node2.vault.test",
            "/v1/measurement",
            "node 2 measurement (https://node2.vault.test:7100)",
        ),
    ],
)
def test_a_witness_or_node_answer_without_end_fails_its_check(
    world: World, tmp_path: Path, host: str, path: str, check: str
) -> None:
    world.current = world.deploy(1)
    state = tmp_path / "state.json"
    world.run(state_file=state)  # remembers the checkpoint: the next run needs a proof
    world.current = world.deploy(2)
    body = endless(world, host, path)
    [report] = world.run(state_file=state)
    assert report.verdict == "REFUSED"
    assert "is larger than" in failed(report)[check]
    assert 0 < body.sent <= READ_AT_MOST


def test_verify_log_refuses_a_checkpoint_without_end(world: World) -> None:
    world.deploy(1)
    body = endless(world, "witness.test", "/v1/checkpoint")
    with pytest.raises(LogCheckFailed, match=r"checkpoint from https://witness\.test is larger"):
        verify_log(WITNESS, world.key, None, http=world.http())
    assert 0 < body.sent <= READ_AT_MOST


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(503, json={"error": "witness_unavailable", "detail": "busy"}),
        httpx.Response(429, json={"error": "rate_limited", "detail": "wait"}),
        httpx.Response(504),
    ],
)
def test_a_consistency_proof_the_relay_cannot_give_now_is_an_outage_not_a_fork(
    world: World, tmp_path: Path, answer: httpx.Response
) -> None:
    """The relay's witness proxy answers 503 while the witness is slow or its slots are
    full, and 429 past an address's bucket: the run said REFUSED, "no consistency proof
    ... could be fetched" under the log-consistency check (exit 7, evidence of a fork),
    for an outage. It is `unreachable: not verified` (INCOMPLETE, exit 5); a proof that
    is fetched and fails is still REFUSED."""
    world.current = world.deploy(1)
    state = tmp_path / "state.json"
    world.run(state_file=state)  # remembers the checkpoint: the next run needs a proof
    world.current = world.deploy(2)
    world.hostile["relay.test", "/v1/fleet/consistency"] = lambda request: answer
    [report] = world.run(state_file=state)
    check = "log consistency with the last checkpoint seen"
    assert report.verdict == "INCOMPLETE", failed(report)
    assert failed(report)[check].startswith("unreachable: not verified")
    assert size_in(state, world) == 1  # nothing remembered from an unverified run
    world.hostile["relay.test", "/v1/fleet/consistency"] = lambda request: httpx.Response(
        200, json={"proof": [base64.b64encode(b"\x00" * 32).decode()]}
    )
    [report] = world.run(state_file=state)
    assert report.verdict == "REFUSED" and check in failed(report)


@pytest.mark.parametrize("status", [503, 429])
def test_verify_log_with_no_proof_now_is_an_outage_not_a_fork(
    world: World, tmp_path: Path, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """The witness gave its checkpoint, then (restarting, or behind a busy proxy) no
    consistency proof: exit 7, "not consistent with what we saw before", which a monitor
    takes for a fork. It is exit 5, the state file unchanged."""
    world.deploy(1)
    state = tmp_path / "log.json"
    verify_log(WITNESS, world.key, state, http=world.http())
    world.deploy(2)
    world.hostile["witness.test", "/v1/consistency"] = lambda request: httpx.Response(status)
    with pytest.raises(DeploymentUnreachable, match="no consistency proof") as caught:
        verify_log(WITNESS, world.key, state, http=world.http())
    assert caught.value.exit_code == 5
    assert open_checkpoint(json.loads(state.read_text())["checkpoint"], world.key).size == 1


def test_a_state_file_larger_than_any_is_refused_unread(tmp_path: Path) -> None:
    """`--state` naming a huge file (or a device) was read whole before any check."""
    huge = tmp_path / "state.json"
    with huge.open("wb") as file:
        file.truncate(MAX_STATE_BYTES + 1)
    with pytest.raises(InvalidInput, match="larger than any state file"):
        load_checkpoint_state(huge)


def test_a_bundle_file_larger_than_any_bundle_is_refused_unread(
    world: World, tmp_path: Path
) -> None:
    """`--bundle /dev/zero` (or a FIFO, or a huge file) was read whole before any check,
    and took the machine's memory (the kernel killed the run). Now no more than the
    largest bundle is read, and the error says what the file should be."""
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as file:
        file.truncate(MAX_BUNDLE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(InvalidInput, match="larger than any fleet bundle"):
        verify_deployment(world.trust(), bundle_file=huge, http=world.http())
    exact = tmp_path / "bundle.bin"
    exact.write_bytes(world.deploy(1))
    [report] = verify_deployment(
        world.trust(), bundle_file=exact, http=world.http(), check_node_measurements=False
    )
    assert report.ok, failed(report)


# ---- a witness showing another history ---------------------------------------------------------


def _forked_witness(world: World, make_witness: WitnessFactory, *records: bytes) -> Witness:
    """The witness's key signing a second history (its own database): what a compromised
    or restored witness might show an auditor."""
    fork = make_witness(policy=both_fleets(world.operator), db="fork.sqlite")
    for signed in records:
        fork.submit(signed)

    def head(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=fork.head(FLEET_ID, int(time.time())))

    def consistency(request: httpx.Request) -> httpx.Response:
        query = request.url.params
        proof = fork.consistency(int(query["old"]), int(query["new"]))
        return httpx.Response(200, json={"proof": [base64.b64encode(h).decode() for h in proof]})

    world.hostile[("witness.test", "/v1/head")] = head
    world.hostile[("witness.test", "/v1/consistency")] = consistency
    return fork


def test_a_head_from_another_history_than_the_bundle_is_refused(
    world: World, make_witness: WitnessFactory
) -> None:
    """The relay serves a bundle whose receipt is from the witness's log [X, R]; the
    witness's head, naming the same record R at the same index, is from another history
    [Y, R] of the same size. A client refuses that (the head must extend the bundle's
    checkpoint); so must the audit."""
    other = sign_record(make_record(epoch=1, fleet_id=OTHER_FLEET), world.operator).to_bytes()
    world.witness.submit(other)
    record = sign_record(make_record(epoch=1), world.operator)
    world.current = FleetBundle.from_receipt(
        record, world.witness.submit(record.to_bytes())
    ).to_bytes()
    assert all(r.ok for r in world.run(check_node_measurements=False))
    forked = sign_record(make_record(epoch=7, fleet_id=OTHER_FLEET), world.operator).to_bytes()
    _forked_witness(world, make_witness, forked, record.to_bytes())
    [report] = world.run(check_node_measurements=False)
    assert not report.ok and report.verdict == "REFUSED"
    assert list(failed(report)) == [f"witness {WITNESS_NAME} head"]
    assert "different roots" in failed(report)[f"witness {WITNESS_NAME} head"]


def test_a_head_from_another_history_than_the_state_is_refused(
    world: World, make_witness: WitnessFactory, tmp_path: Path
) -> None:
    """An audit with --state saw the witness's tree of 3; the witness then shows a head
    of a larger tree that does not extend it (a fork after the record): refused, and the
    state keeps the tree it saw."""
    record = sign_record(make_record(epoch=1), world.operator)
    world.current = FleetBundle.from_receipt(
        record, world.witness.submit(record.to_bytes())
    ).to_bytes()
    others = [
        sign_record(make_record(epoch=e, fleet_id=OTHER_FLEET), world.operator).to_bytes()
        for e in (1, 2, 3)
    ]
    for signed in others[:2]:
        world.witness.submit(signed)
    state = tmp_path / "audit.json"
    assert all(r.ok for r in world.run(state_file=state, check_node_measurements=False))
    assert size_in(state, world) == 3  # the head's tree, not only the bundle's (1)
    kept = state.read_text()
    forked = [
        sign_record(make_record(epoch=e, fleet_id=OTHER_FLEET), world.operator).to_bytes()
        for e in (7, 8, 9)
    ]
    _forked_witness(world, make_witness, record.to_bytes(), *forked)
    [report] = world.run(state_file=state, check_node_measurements=False)
    assert not report.ok and report.verdict == "REFUSED"
    assert list(failed(report)) == [f"witness {WITNESS_NAME} head"]
    assert "does not extend the one of size 3" in failed(report)[f"witness {WITNESS_NAME} head"]
    assert state.read_text() == kept


def test_a_fork_shown_to_one_run_while_another_saves_the_log_is_seen(
    world: World, make_witness: WitnessFactory, tmp_path: Path
) -> None:
    """`witness verify-log` and `verify-deployment` each verify a fork of 3 against the
    kept tree of 1, while another process of the device saves the witness's own tree of 2
    (both extend 1, neither the other). Their save must not keep the fork over that on
    size alone: they verify again from the tree saved, and the fork shows (review s61)."""
    record = sign_record(make_record(epoch=1), world.operator)
    world.current = FleetBundle.from_receipt(
        record, world.witness.submit(record.to_bytes())
    ).to_bytes()
    state = tmp_path / "audit.json"
    verify_log(WITNESS, world.key, state, http=world.http())
    kept = json.loads(state.read_text())
    world.deploy(2, OTHER_FLEET)  # the witness's own tree of 2
    forked = [
        sign_record(make_record(epoch=e, fleet_id=OTHER_FLEET), world.operator).to_bytes()
        for e in (7, 8)
    ]
    fork = _forked_witness(world, make_witness, record.to_bytes(), *forked)
    world.hostile[("witness.test", "/v1/checkpoint")] = lambda request: httpx.Response(
        200, text=fork.checkpoint()
    )
    fork_consistency = world.hostile[("witness.test", "/v1/consistency")]

    def another_process_saves(request: httpx.Request) -> httpx.Response:
        if size_in(state, world) == 1:
            state.write_text(json.dumps({**kept, "checkpoint": world.witness.checkpoint()}))
        return fork_consistency(request)

    world.hostile[("witness.test", "/v1/consistency")] = another_process_saves
    with pytest.raises(LogCheckFailed, match="not consistent with what we saw before"):
        verify_log(WITNESS, world.key, state, http=world.http())
    assert size_in(state, world) == 2
    assert json.loads(state.read_text())["checkpoint"] == world.witness.checkpoint()

    state.write_text(json.dumps(kept))
    [report] = world.run(state_file=state, check_node_measurements=False)
    assert report.verdict == "REFUSED"
    assert "does not extend the one of size 2" in failed(report)[f"witness {WITNESS_NAME} head"]
    assert json.loads(state.read_text())["checkpoint"] == world.witness.checkpoint()


def test_a_head_whose_growth_the_witness_cannot_prove_now_is_an_outage(world: World) -> None:
    """The witness's head is of a larger tree than the bundle's receipt, and its
    /v1/consistency does not answer now (503): the head check is not made (INCOMPLETE,
    exit 5), not failed as a fork; nothing else fails."""
    world.current = world.deploy(1)
    world.deploy(1, OTHER_FLEET)  # the log grows past the receipt's tree
    world.hostile[("witness.test", "/v1/consistency")] = lambda request: httpx.Response(503)
    [report] = world.run(check_node_measurements=False)
    assert report.verdict == "INCOMPLETE"
    [check] = [c for c in report.checks if not c.ok]
    assert check.name == f"witness {WITNESS_NAME} head" and check.unreachable
    del world.hostile[("witness.test", "/v1/consistency")]
    assert world.run(check_node_measurements=False)[0].ok


def test_another_witness_showing_a_fork_of_what_the_clients_state_kept_is_refused(
    world: World, make_witness: WitnessFactory, tmp_path: Path
) -> None:
    """An audit with an OTA client's state file, which keeps the last head of each
    witness: witness B now shows a head of another history of the same size than the
    one the client kept from it. The client refuses that (LogForked); so must the audit,
    and it must not take the head the client kept for B's own."""
    from backupvault.transparency.witness_store import WitnessStore

    key = Ed25519PrivateKey.generate()
    b_name = "witness-b.test/backupvault"

    def witness_b(db: str) -> Witness:
        store = WitnessStore(tmp_path / db, b_name, raw_public_key(key))
        return Witness(Signer(b_name, key), store, both_fleets(world.operator))

    record = sign_record(make_record(epoch=1), world.operator)
    world.current = FleetBundle.from_receipt(
        record, world.witness.submit(record.to_bytes())
    ).to_bytes()
    b, fork = witness_b("b.sqlite"), witness_b("b-fork.sqlite")
    try:
        for log, other in ((b, 7), (fork, 8)):
            log.submit(record.to_bytes())
            log.submit(
                sign_record(
                    make_record(epoch=other, fleet_id=OTHER_FLEET), world.operator
                ).to_bytes()
            )
        state = tmp_path / "client-state.json"
        kept = {b_name: b.head(FLEET_ID, int(time.time()))}
        state.write_text(json.dumps({"version": 1, "heads": kept}))
        world.hostile[("witness-b.test", "/v1/head")] = lambda request: httpx.Response(
            200, text=fork.head(FLEET_ID, int(time.time()))
        )
        trust = replace(
            world.trust(), witnesses=((world.key, WITNESS), (b.verifier, "https://witness-b.test"))
        )
        [report] = verify_deployment(
            trust, relay_url=RELAY, http=world.http(), state_file=state,
            check_node_measurements=False,
        )  # fmt: skip
        assert report.verdict == "REFUSED"
        assert list(failed(report)) == [f"witness {b_name} head"]
        assert "different roots" in failed(report)[f"witness {b_name} head"]
        assert json.loads(state.read_text())["heads"] == kept
    finally:
        b.store.close()
        fork.store.close()


@pytest.mark.parametrize("measurement", ["ab" * 31, "ab" * 33, ""])
def test_an_expected_measurement_of_the_wrong_length_is_a_usage_error(
    world: World, capsys: pytest.CaptureFixture[str], measurement: str
) -> None:
    """`--expect-measurement` "takes 64 hex characters", but took any hex: one cut short
    matched no fleet, and the verdict was REFUSED (exit 7), as for a fleet that runs
    other firmware."""
    world.current = world.deploy(1)
    args = ["verify-deployment", "--relay", RELAY, "--witness-url", WITNESS, "--skip-nodes"]
    args += ["--operator-key", raw_public_key(world.operator).hex()]
    args += ["--witness-key", world.key.vkey(), "--expect-measurement", measurement]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    assert "--expect-measurement takes 64 hex characters" in capsys.readouterr().err


# ---- a state file of another witness ----------------------------------------------------------


def another_witness_state(tmp_path: Path) -> Path:
    """The state file `witness verify-log` keeps for another witness (a production fleet
    has two or more): its checkpoint is signed by that witness's key, not this one's."""
    other = Signer("witness-b.test/backupvault", Ed25519PrivateKey.generate())
    note = Checkpoint(other.name, 1, bytes(32)).sign(other)
    state = tmp_path / "log-b.json"
    state.write_text(json.dumps({"version": 1, "vkey": other.verifier.vkey(), "checkpoint": note}))
    return state


@pytest.mark.parametrize("mixed_up", ["another witness's", "damaged"])
def test_verify_log_with_a_state_file_it_cannot_open_blames_the_file_not_the_log(
    world: World, tmp_path: Path, mixed_up: str
) -> None:
    """Before: the witness's own checkpoint verified, the state file's did not, and
    verify-log exited 7 (a fork or rollback: a monitor pages for tampering) saying "the
    witness checkpoint does not verify ... check the witness key"."""
    world.deploy(1)
    state = another_witness_state(tmp_path)
    if mixed_up == "damaged":
        state.write_text(json.dumps({"version": 1, "checkpoint": "not a signed note"}))
    kept = state.read_text()
    with pytest.raises(InvalidInput) as refused:
        verify_log(WITNESS, world.key, state, http=world.http())
    assert not isinstance(refused.value, LogCheckFailed)
    assert refused.value.exit_code == 1
    assert f"the state file {state}" in refused.value.message
    assert WITNESS_NAME in refused.value.message and "own --state" in str(refused.value.hint)
    assert state.read_text() == kept


def test_verify_deployment_with_another_witness_s_state_file_names_the_file(
    world: World, tmp_path: Path
) -> None:
    """Before: "the note is not signed by any key we trust", with no word of the state
    file, as if the witness or the bundle were at fault."""
    world.current = world.deploy(1)
    state = another_witness_state(tmp_path)
    kept = state.read_text()
    with pytest.raises(InvalidInput) as refused:
        world.run(state_file=state, check_node_measurements=False)
    assert f"the state file {state}" in refused.value.message
    assert state.read_text() == kept


def test_a_damaged_head_in_the_state_file_is_the_file_s_fault_not_a_mismatch(
    world: World, tmp_path: Path
) -> None:
    """A head the state file kept for another witness that does not verify with that
    witness's key: before, the witness's check failed and the run exited 7, "the
    deployment does not match its public record: do not trust this fleet"."""
    world.current = world.deploy(1)
    other = Signer("witness-b.test/backupvault", Ed25519PrivateKey.generate())
    state = tmp_path / "client-state.json"
    state.write_text(json.dumps({"version": 1, "heads": {other.name: "junk"}}))
    trust = replace(
        world.trust(), witnesses=((world.key, WITNESS), (other.verifier, "https://witness-b.test"))
    )
    with pytest.raises(InvalidInput) as refused:
        verify_deployment(
            trust, relay_url=RELAY, http=world.http(), state_file=state,
            check_node_measurements=False,
        )  # fmt: skip
    assert not isinstance(refused.value, DeploymentCheckFailed)
    assert f"the state file {state}" in refused.value.message
    assert other.name in refused.value.message


# ---- a URL of the wrong service -----------------------------------------------------------------


def test_a_relay_url_that_is_another_service_says_so_on_one_line(world: World) -> None:
    """`--relay` given a node's or the witness's URL (404 on /v1/fleet/epochs): the error
    was httpx's text, "Client error '404 Not Found' for url ...", then a second line
    "For more information check: https://developer.mozilla.org/...", and a hint about
    relay.toml's bundle_file."""
    world.current = world.deploy(1)
    world.hostile["relay.test", "/v1/fleet/epochs"] = lambda request: httpx.Response(404)
    with pytest.raises(DeploymentCheckFailed) as refused:
        world.run(check_node_measurements=False)
    message = refused.value.message
    assert "\n" not in message and "mozilla" not in message
    assert "404" in message and "/v1/fleet/epochs" in message
    assert "--relay" in str(refused.value.hint)


def test_a_node_answering_an_error_is_one_line_in_its_check(world: World) -> None:
    world.current = world.deploy(1)
    world.nodes[1] = lambda index, epoch: httpx.Response(404)
    [report] = world.run()
    detail = failed(report)["node 1 measurement (https://node1.vault.test:7100)"]
    assert "\n" not in detail and "mozilla" not in detail and "404" in detail


# Review s60: verify-deployment checked each older epoch's bundle against the state file's
# checkpoint only, never against the witness head it verified for the current epoch in the
# same run, and judged "not retired" by the epoch inside the bundle served.


def test_an_older_epoch_from_another_history_is_not_trusted(
    world: World,
    make_witness: WitnessFactory,
    operator_key: Ed25519PrivateKey,
    tmp_path: Path,
) -> None:
    world.deploy(1)
    world.current = world.deploy(2)  # the public log: [epoch 1, epoch 2]
    # The same witness key signs a second history, shown only here: leaves of its own,
    # then another epoch 1 (other nodes) in a tree of 5.
    fork = make_witness(policy=both_fleets(operator_key), db="fork.sqlite")
    evil = sign_record(
        make_record(epoch=1, nodes=[node(i, url=f"https://evil{i}.test") for i in range(5)]),
        operator_key,
    )
    for epoch in range(1, 5):
        other = sign_record(make_record(epoch=epoch, fleet_id=OTHER_FLEET), operator_key)
        fork.submit(other.to_bytes())
    world.previous = {1: FleetBundle.from_receipt(evil, fork.submit(evil.to_bytes())).to_bytes()}

    state = tmp_path / "audit.json"
    reports = world.run(check_node_measurements=False, state_file=state)
    verdicts = {r.epoch: r.verdict for r in reports}
    saved = (
        open_checkpoint(json.loads(state.read_text())["checkpoint"], world.key).size
        if state.exists()
        else None
    )
    # The older bundle's tree of 5 is no extension of the head of 2 seen in this run.
    assert verdicts[1] != "TRUSTED", f"verdicts {verdicts}"
    assert saved in (None, 2), f"the other history's checkpoint (size {saved}) was saved"


def test_a_retired_epoch_listed_by_the_relay_cannot_hide_behind_another_bundle(
    world: World,
) -> None:
    """The relay lists (and routes) epoch 1, which the current record retires, and answers
    `?epoch=1` with the current bundle: the `not retired` check reads the epoch from the
    bundle served, not from the epoch listed, and passes. A client refuses such a bundle
    ("the relay's bundle for epoch 1 is for epoch 3")."""
    world.deploy(1)
    world.deploy(2)
    world.current = world.deploy(3, retired_below=3)
    world.previous = {1: world.current}  # listed as epoch 1, served: epoch 3's bundle
    reports = world.run(check_node_measurements=False)
    failed = [c for r in reports for c in r.checks if not c.ok]
    assert [c.name for c in failed] == ["the epoch listed", "not retired"], failed
