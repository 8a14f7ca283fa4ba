"""How large a fleet can be, and how large a body the relay must take for it (review s61).

A body holds one sealed copy per node. The relay took at most 64 KiB whatever the fleet,
so with long fleet tokens (an external issuer's, up to 4,096 characters) a registration's
commit never fit from 11 nodes up: every try ended "fleet unavailable … may still take
effect". And from 24 nodes up a manifest no longer fits a node's answer, so no entry
could be registered at all, which nothing said before a client tried."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.client.fake_fleet import FAST_KSF, FLEET_ID, FakeFleet

from backupvault.client.threshold import FleetKeys, ThresholdVault
from backupvault.client.vault import VaultClient
from backupvault.crypto.seal import Kem, NodePrivateKey
from backupvault.errors import InvalidInput
from backupvault.protocol import COPY_BUDGET, MAX_FLEET_NODES, fleet_size_refused
from backupvault.relay import RelayConfig, generate_operator_key, private_key_pem, public_key_pem
from backupvault.tokens import MAX_TOKEN_CHARS

LONGEST_NAME = "n" * 64  # account and entry names are 1-64 characters


def _largest_copies(nodes: int) -> dict[str, int]:
    """Every operation of an entry's life (register, recover, change the password, delete)
    by a device with the longest names and fleet token, on hybrid KEM keys: the largest
    body each sent, per node."""
    fleet = FakeFleet(nodes)
    fleet.nodes = [
        replace(node, hpke=NodePrivateKey.generate(Kem.MLKEM768_X25519)) for node in fleet.nodes
    ]
    largest: dict[str, int] = {}

    def measured(request: httpx.Request) -> httpx.Response:
        op = request.url.path.rsplit("/", 1)[1]
        largest[op] = max(largest.get(op, 0), -(-len(request.content) // nodes))
        return fleet.handle(request)

    client = VaultClient(
        "http://relay.test",
        "token",
        LONGEST_NAME,
        FLEET_ID,
        [node.hpke.public_key() for node in fleet.nodes],
        ksf_params=FAST_KSF,
        http=httpx.Client(transport=httpx.MockTransport(measured)),
        fleet_token="t" * MAX_TOKEN_CHARS,
        device_key=Ed25519PrivateKey.generate(),
        entry=LONGEST_NAME,
    )
    signing = tuple(node.signing.public_key().public_bytes_raw() for node in fleet.nodes)
    vault = ThresholdVault(client, FleetKeys(signing, fleet.t, 0), delivery_patience=0.5)
    vault.register("first password", bytes(32), ksf=FAST_KSF)
    recovered = vault.recover("first password", ksf_floor=FAST_KSF)
    vault.change_password(recovered, "second password", ksf=FAST_KSF)
    vault.delete(vault.recover("second password", ksf_floor=FAST_KSF))
    return largest


def test_the_largest_fleet_s_every_request_fits_the_relay_s_budget_per_node() -> None:
    largest = _largest_copies(MAX_FLEET_NODES)
    assert set(largest) >= {"register-share", "commit-shares", "change-share", "evaluate"}
    assert max(largest.values()) <= COPY_BUDGET, largest


def test_eleven_nodes_with_long_tokens_need_more_than_the_old_64_kib_a_body() -> None:
    nodes = 11
    largest = max(_largest_copies(nodes).values())
    assert largest * nodes > 64 * 1024  # what the relay took before, whatever the fleet
    assert largest * nodes <= _relay(nodes).max_body_bytes


def test_one_node_more_cannot_hold_an_entry_and_is_refused_before_anything_is_made() -> None:
    with pytest.raises(InvalidInput, match="manifest: at most"):
        _largest_copies(MAX_FLEET_NODES + 1)
    assert fleet_size_refused(MAX_FLEET_NODES) is None
    refused = fleet_size_refused(MAX_FLEET_NODES + 2)  # the next odd size
    assert refused is not None and f"at most {MAX_FLEET_NODES} nodes" in refused


def _relay(nodes: int, **options: object) -> RelayConfig:
    return RelayConfig(
        node_urls=tuple(f"http://10.0.0.{i}:8700" for i in range(1, nodes + 1)),
        issuer="https://accounts.example",
        audience="backupvault",
        operator_public_key=public_key_pem(generate_operator_key()),
        signing_key=private_key_pem(generate_operator_key()),
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(("nodes", "default"), [(5, 65536), (9, 9 * COPY_BUDGET), (23, 188416)])
def test_the_relay_s_default_body_limit_grows_with_the_fleet(nodes: int, default: int) -> None:
    assert _relay(nodes).max_body_bytes == default


def test_a_body_limit_some_honest_request_could_pass_is_refused_at_start() -> None:
    assert _relay(9, max_body_bytes=9 * COPY_BUDGET).max_body_bytes == 9 * COPY_BUDGET
    with pytest.raises(InvalidInput) as refused:
        _relay(9, max_body_bytes=65536)
    assert "less than a fleet of 9 nodes may send in one request" in refused.value.message
    assert refused.value.hint is not None and str(9 * COPY_BUDGET) in refused.value.hint
