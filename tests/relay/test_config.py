"""The relay's TOML config, and `serve` running a real server from it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backupvault.errors import InvalidInput
from backupvault.fanout import FanoutAnswers
from backupvault.protocol import SealedCopies
from backupvault.relay import (
    RelayConfig,
    generate_operator_key,
    load_config,
    load_operator_private_key,
    mint_token,
    private_key_pem,
    public_key_pem,
    save_operator_key,
)

from .conftest import StubNode, unused_url


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(body)
    return path


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    save_operator_key(generate_operator_key(), tmp_path / "operator.key", tmp_path / "operator.pub")
    (tmp_path / "relay.key").write_bytes(private_key_pem(generate_operator_key()))
    return tmp_path


def test_loads_a_full_config_with_paths_relative_to_the_file(key_dir: Path) -> None:
    path = _write(
        key_dir,
        """
[relay]
nodes = ["http://10.0.0.1:8700/", "https://node2.example:8700"]
issuer = "https://accounts.example"
audience = "backupvault"
operator_public_key = "operator.pub"
signing_key = "relay.key"
rate_per_minute = 30
burst = 5
max_body_bytes = 32768
connect_timeout = 1.5
request_timeout = 8
health_timeout = 0.5
health_cache_seconds = 1
max_concurrent_forwards = 64
max_connections_per_address = 512
token_leeway_seconds = 10
""",
    )
    config = load_config(path)
    assert config.max_connections_per_address == 512
    assert config.node_urls == ("http://10.0.0.1:8700", "https://node2.example:8700")
    assert config.operator_public_key == key_dir / "operator.pub"
    assert config.signing_key == key_dir / "relay.key"
    assert config.rate_per_second == pytest.approx(0.5)
    assert (config.burst, config.max_body_bytes, config.max_concurrent_forwards) == (5, 32768, 64)
    assert config.public_key.public_bytes_raw() == (load_config(path).public_key.public_bytes_raw())


def test_accepts_an_inline_pem_and_defaults(tmp_path: Path) -> None:
    pem = public_key_pem(generate_operator_key()).decode()
    signing = private_key_pem(generate_operator_key()).decode()
    path = _write(
        tmp_path,
        f'[relay]\nnodes = ["http://n1:1"]\nissuer = "i"\naudience = "a"\n'
        f'operator_public_key = """{pem}"""\nsigning_key = """{signing}"""\n',
    )
    config = load_config(path)
    assert config.operator_public_key == pem.encode()
    assert (config.rate_per_minute, config.burst, config.max_body_bytes) == (60.0, 20, 65536)
    assert config.max_connections_per_address == 128


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('nodes = ["http://n:1"]\nissuer = "i"\naudience = "a"', "missing relay setting"),
        ('nodes = []\nissuer = "i"\naudience = "a"\nKEY', "at least one node"),
        ('nodes = ["ftp://n:1"]\nissuer = "i"\naudience = "a"\nKEY', "http:// or https://"),
        ('nodes = ["http://n:1", "http://n:1"]\nissuer = "i"\naudience = "a"\nKEY', "distinct"),
        ('nodes = "http://n:1"\nissuer = "i"\naudience = "a"\nKEY', "list of URL"),
        ('nodes = ["http://n:1"]\nissuer = ""\naudience = "a"\nKEY', "must not be empty"),
        ('nodes = ["http://n:1"]\nissuer = "i"\naudience = "a"\nKEY\nburst = 0', "burst"),
        ('nodes = ["http://n:1"]\nissuer = "i"\naudience = "a"\nKEY\nburst = 1.5', "burst"),
        (
            'nodes = ["http://n:1"]\nissuer = "i"\naudience = "a"\nKEY\n'
            "max_connections_per_address = 0",
            "max_connections_per_address",
        ),
        (
            'nodes = ["http://n:1"]\nissuer = "i"\naudience = "a"\nKEY\nrequest_timeout = -1',
            "request_timeout",
        ),
        ('nodes = ["http://n:1"]\nissuer = "i"\naudience = "a"\nKEY\nrate = 5', "unknown"),
        (
            'nodes = ["http://n:1"]\nissuer = "i"\naudience = "a"\nKEY\ntls_cert = "c.pem"',
            "tls_cert and tls_key",
        ),
        (
            'nodes = ["http://n:1"]\nissuer = "i"\naudience = "a"\n'
            'operator_public_key = "nope.pem"\nsigning_key = "relay.key"',
            "cannot read",
        ),
        (
            'nodes = ["http://n:1"]\nissuer = "i"\naudience = "a"\n'
            'operator_public_key = "operator.pub"\nsigning_key = "operator.pub"',
            "signing_key",
        ),
    ],
)
def test_bad_configs_say_what_is_wrong(key_dir: Path, table: str, message: str) -> None:
    key = 'operator_public_key = "operator.pub"\nsigning_key = "relay.key"'
    body = "[relay]\n" + table.replace("KEY", key) + "\n"
    with pytest.raises(InvalidInput, match=message):
        load_config(_write(key_dir, body))


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_config(_write(tmp_path, "[relay\n"))
    with pytest.raises(InvalidInput, match=r"no \[relay\] table"):
        load_config(_write(tmp_path, "[node]\nx = 1\n"))


def test_config_checks_the_key_type(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        RelayConfig(
            node_urls=("http://n:1",),
            issuer="i",
            audience="a",
            operator_public_key=b"junk",
            signing_key=b"junk",
        )


def test_serve_runs_a_real_relay_from_a_config_file(key_dir: Path, stubs: list[StubNode]) -> None:
    path = _write(
        key_dir,
        f'[relay]\nnodes = ["{stubs[0].url}"]\nissuer = "i"\naudience = "a"\n'
        'operator_public_key = "operator.pub"\nsigning_key = "relay.key"\n',
    )
    relay = unused_url()
    port = int(relay.rsplit(":", 1)[1])
    code = (
        "import sys; from backupvault.relay import load_config, serve; "
        f"serve(load_config(sys.argv[1]), '127.0.0.1', {port})"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                health = httpx.get(f"{relay}/v1/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "the relay did not come up"
                time.sleep(0.05)
        assert health.json()["nodes"] == [{"url": stubs[0].url, "up": True}]
        token = mint_token(
            load_operator_private_key(key_dir / "operator.key"),
            "dave",
            issuer="i",
            audience="a",
            ttl_seconds=60,
        )
        response = httpx.post(
            f"{relay}/v1/vault/e1/manifest",
            content=SealedCopies([b"\x01\x02"]).to_bytes(),
            headers={
                "Content-Type": "application/octet-stream",
                "Authorization": f"Bearer {token}",
            },
        )
        assert response.status_code == 200
        [reply] = FanoutAnswers.for_nodes(response.content, 1).replies
        assert reply.body == b"node0|\x01\x02"
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
    assert token not in output
    assert "account=dave" in output


@pytest.mark.parametrize(
    ("top", "named", "meant"),
    [
        ('lisen = "127.0.0.1:9600"\n', "lisen", "listen"),
        ("[relays]\nburst = 5\n", "relays", "relay"),
    ],
    ids=["lisen", "[relays]"],
)
def test_a_file_level_field_the_relay_does_not_take_is_named(
    key_dir: Path, top: str, named: str, meant: str
) -> None:
    """A misspelt `listen` was ignored: the relay served on the default port instead."""
    relay = (
        '[relay]\nnodes = ["http://10.0.0.1:8700"]\nissuer = "i"\naudience = "a"\n'
        'operator_public_key = "operator.pub"\nsigning_key = "relay.key"\n'
    )
    assert load_config(_write(key_dir, 'listen = "127.0.0.1:9600"\n' + relay)).node_urls
    with pytest.raises(InvalidInput) as refused:
        load_config(_write(key_dir, top + relay if top.startswith("lisen") else relay + top))
    assert f"unknown field {named!r}" in refused.value.message
    assert refused.value.hint is not None and repr(meant) in refused.value.hint


def test_a_previous_fleet_the_current_record_retires_is_refused(
    key_dir: Path, tmp_path: Path
) -> None:
    """Clients never ask an epoch the current record retires (docs/transparency.md,
    "Retiring an epoch"); a relay still routing one keeps nodes on the network that may
    be anyone's by now, so it says which to remove instead of starting."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from tests.transparency.conftest import FLEET_ID, WITNESS_NAME, make_record

    from backupvault.transparency import FleetBundle
    from backupvault.transparency.note import Signer
    from backupvault.transparency.record import raw_public_key, sign_record
    from backupvault.transparency.witness import Witness, WitnessPolicy
    from backupvault.transparency.witness_store import WitnessStore

    operator, witness_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    store = WitnessStore(tmp_path / "w.sqlite", WITNESS_NAME, raw_public_key(witness_key))
    witness = Witness(
        Signer(WITNESS_NAME, witness_key),
        store,
        WitnessPolicy(operators={FLEET_ID: raw_public_key(operator)}),
    )
    try:
        for epoch, retired_below in ((1, 0), (2, 0), (3, 2)):
            signed = sign_record(make_record(epoch=epoch, retired_below=retired_below), operator)
            bundle = FleetBundle.from_receipt(signed, witness.submit(signed.to_bytes()))
            (tmp_path / f"bundle{epoch}.bin").write_bytes(bundle.to_bytes())
    finally:
        store.close()

    def config(*previous: int) -> Path:
        tables = "".join(
            f'[[relay.previous_fleets]]\nnodes = ["http://old{e}:1"]\n'
            f'bundle_file = "bundle{e}.bin"\n'
            for e in previous
        )
        return _write(
            key_dir,
            '[relay]\nnodes = ["http://n:1"]\nissuer = "i"\naudience = "a"\n'
            'operator_public_key = "operator.pub"\nsigning_key = "relay.key"\n'
            f'bundle_file = "bundle3.bin"\n{tables}',
        )

    assert [p.epoch for p in load_config(config(2)).previous_fleets] == [2]
    with pytest.raises(
        InvalidInput, match=r"retires epochs below 2, and previous_fleets still lists \[1\]"
    ):
        load_config(config(2, 1))
