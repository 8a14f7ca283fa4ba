"""Objects that hold keys keep them out of their repr, as `KeyShare`, `NodePrivateKey` and
`ResponseKey` do: a repr reaches a log line, an exception message or an error report
that records a traceback's locals. Each key below opens far more than one message: a
repository's chunk and index keys open every backup in it, a node's storage and row keys
its store, its identity and signing keys speak for it to its peers and clients, and the
relay's signing key makes nodes answer whoever holds it."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.backup.repo.keys import new_config
from backupvault.crypto.seal import NodePrivateKey
from backupvault.node.main import NodeKeys
from backupvault.relay.config import RelayConfig
from backupvault.tokens import private_key_pem, public_key_pem


def _hidden(shown: str, secret: bytes) -> None:
    for text in (repr(secret), repr(secret)[2:18], secret.hex(), secret.hex()[:16]):
        assert text not in shown


def test_repository_keys_are_left_out_of_the_repr() -> None:
    _config, keys = new_config(bytes(range(32)))
    shown = repr(keys)
    for secret in (keys.chunk_id, keys.chunk, keys.index):
        _hidden(shown, secret)
    assert str(keys.chunker_seed) not in shown  # keyed from the repository key too
    assert "RepoKeys(" in shown and repr(keys.repo_id) in shown


def test_a_nodes_keys_are_left_out_of_the_repr() -> None:
    identity, signing, storage, row_key = (bytes([b]) * 32 for b in (0x11, 0x22, 0x33, 0x44))
    keys = NodeKeys(identity, NodePrivateKey.generate(), signing, storage, row_key, 7)
    shown = repr(keys)
    for secret in (identity, signing, storage, row_key, keys.hpke.secret):
        _hidden(shown, secret)
    assert "generation=7" in shown


def test_the_relays_signing_key_is_left_out_of_the_config_repr() -> None:
    pem = private_key_pem(Ed25519PrivateKey.generate())
    config = RelayConfig(
        node_urls=("http://127.0.0.1:9",),
        issuer="issuer",
        audience="relay",
        operator_public_key=public_key_pem(Ed25519PrivateKey.generate()),
        signing_key=pem,
    )
    body = b"".join(pem.splitlines()[1:-1])
    shown = repr(config)
    assert body.decode()[:24] not in shown and "PRIVATE KEY" not in shown
    assert "issuer='issuer'" in shown
