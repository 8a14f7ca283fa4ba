"""Answers from a relay that are hostile JSON: a client listing older fleet epochs refuses
them (FleetNotTrusted), and `codec.untrusted_json` / `codec.epoch_number` raise only
InvalidInput."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.client.errors import FleetNotTrusted
from backupvault.client.trust import OtaTrust
from backupvault.codec import MAX_EPOCH, MAX_JSON, epoch_number, untrusted_json
from backupvault.deploy.verify import (
    FleetReport,
    TrustInputs,
    verify_deployment,
)
from backupvault.errors import InvalidInput
from backupvault.transparency import FleetBundle, Verifier, sign_record
from backupvault.transparency.errors import UnknownFleet
from backupvault.transparency.note import Signer, open_checkpoint
from backupvault.transparency.record import raw_public_key
from backupvault.transparency.witness import Witness

from .conftest import FLEET_ID, MEASUREMENT, WITNESS_NAME, WitnessFactory, make_record

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

    def deploy(self, epoch: int, fleet_id: bytes = FLEET_ID) -> bytes:
        signed = sign_record(make_record(epoch=epoch, fleet_id=fleet_id), self.operator)
        return FleetBundle.from_receipt(signed, self.witness.submit(signed.to_bytes())).to_bytes()

    def handle(self, request: httpx.Request) -> httpx.Response:
        host, path, query = request.url.host, request.url.path, request.url.params
        if host == "witness.test" and path == "/v1/checkpoint":
            return httpx.Response(200, text=self.witness.checkpoint())
        if host == "witness.test" and path == "/v1/head":
            try:
                return httpx.Response(
                    200, text=self.witness.head(bytes.fromhex(query["fleet"]), int(time.time()))
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
    from backupvault.transparency.witness import WitnessPolicy

    operators = {FLEET_ID: raw_public_key(operator_key), OTHER_FLEET: raw_public_key(operator_key)}
    witness = make_witness(policy=WitnessPolicy(operators=operators))
    return World(witness, operator_key, Signer(WITNESS_NAME, witness_key).verifier)


def failed(report: FleetReport) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


def size_in(state: Path, world: World) -> int:
    return open_checkpoint(json.loads(state.read_text())["checkpoint"], world.key).size


def test_untrusted_json_raises_only_invalid_input() -> None:
    assert untrusted_json(b'{"previous": [2, 1]}', "x") == {"previous": [2, 1]}
    for bad in (DEEP, "[NaN]", "[Infinity]", b"\xff", "{", " " * (MAX_JSON + 1), "1" * 5000):
        with pytest.raises(InvalidInput):
            untrusted_json(bad, "x")
    assert epoch_number(0, "e") == 0 and epoch_number(MAX_EPOCH, "e") == MAX_EPOCH
    for bad_epoch in (True, 1.0, float("inf"), "1", -1, MAX_EPOCH + 1, None, [1]):
        with pytest.raises(InvalidInput):
            epoch_number(bad_epoch, "e")


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
