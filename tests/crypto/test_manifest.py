"""The threshold vault's manifest (crypto/manifest.py): exact bytes, registration and
opening through a threshold evaluation, the t-identical rule, and tampering."""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import pytest

from backupvault.crypto import manifest, oprf, owner, threshold
from backupvault.crypto.ksf import DEFAULT_ARGON2ID, Argon2idParams
from backupvault.crypto.manifest import Manifest
from backupvault.errors import AuthenticationFailed, InvalidInput, WrongKey

TINY_ARGON2 = Argon2idParams(memory_kib=8, iterations=1, parallelism=1, salt=bytes(16))
PASSWORD = b"correct horse battery staple"
ROOT_KEY = bytes(range(32))
FLEET = bytes.fromhex("a1" * 32)


def _register(nodes: int = 5, t: int = 3) -> manifest.Registration:
    return manifest.register(
        PASSWORD,
        ROOT_KEY,
        fleet_id=FLEET,
        account="alice",
        entry="backup-root-key",
        epoch=4,
        nodes=nodes,
        threshold_count=t,
        ksf=TINY_ARGON2,
    )


def _recover_output(reg: manifest.Registration, indices: list[int], password: bytes) -> bytes:
    blind, blinded = oprf.blind(password)
    partials = [threshold.evaluate_partial(reg.shares[i - 1], blinded) for i in indices]
    combined = threshold.combine(reg.manifest.commitments, blinded, partials)
    return oprf.finalize(password, blind, combined.evaluated)


def test_register_then_open_with_any_t_nodes() -> None:
    reg = _register()
    for share in reg.shares:
        threshold.verify_share(share, reg.manifest.commitments)
    for indices in ([1, 2, 3], [2, 4, 5]):
        export_key, root_key = manifest.open_entry(
            reg.manifest, _recover_output(reg, indices, PASSWORD)
        )
        assert root_key == ROOT_KEY
        assert export_key == reg.export_key
    assert reg.manifest.pk_auth == owner.owner_public_key(reg.export_key)


def test_wrong_password_is_wrong_key() -> None:
    reg = _register()
    with pytest.raises(WrongKey):
        manifest.open_entry(reg.manifest, _recover_output(reg, [1, 2, 3], b"wrong"))


def test_manifest_bytes_are_exact() -> None:
    reg = _register()
    m = reg.manifest
    encoded = m.to_bytes()
    ksf = TINY_ARGON2.to_bytes()
    bound = (
        b"BVM1"
        + struct.pack(">QH", 1, 32)
        + FLEET
        + b"\x05alice"
        + b"\x0fbackup-root-key"
        + b"\x05\x03"
        + struct.pack(">H", len(ksf))
        + ksf
        + m.commitments.elements[0]
    )
    assert m.bound_part() == bound
    assert m.binding() == hashlib.sha512(b"backupvault/manifest/v1" + bound).digest()
    rest = (
        struct.pack(">Q", 4)
        + m.commitments.elements[1]
        + m.commitments.elements[2]
        + m.record.to_bytes()
        + m.pk_auth
        + b"\x00\x3c"
        + m.wrapped_root_key
    )
    assert encoded == bound + rest
    assert len(encoded) == len(bound) + 8 + 64 + 192 + 32 + 2 + 60
    assert Manifest.from_bytes(encoded) == m


def test_default_manifest_size() -> None:
    # docs/threshold.md quotes this size for the default KSF and t = 3.
    reg = manifest.register(
        PASSWORD,
        ROOT_KEY,
        fleet_id=FLEET,
        account="alice",
        entry="backup-root-key",
        epoch=1,
        nodes=5,
        threshold_count=3,
        ksf=DEFAULT_ARGON2ID,
    )
    assert len(reg.manifest.to_bytes()) == 493


@pytest.mark.parametrize(
    "mangle",
    [lambda b: b[:-1], lambda b: b + b"\x00", lambda b: b"BVM2" + b[4:], lambda b: b""],
    ids=["truncated", "trailing", "magic", "empty"],
)
def test_malformed_manifest_bytes_are_refused(mangle: object) -> None:
    assert callable(mangle)
    with pytest.raises(InvalidInput):
        Manifest.from_bytes(mangle(_register().manifest.to_bytes()))


def test_threshold_above_nodes_is_refused() -> None:
    encoded = bytearray(_register().manifest.to_bytes())
    position = 4 + 10 + 32 + 6 + 16  # the nodes byte
    assert encoded[position : position + 2] == b"\x05\x03"
    encoded[position] = 2
    with pytest.raises(InvalidInput, match="threshold"):
        Manifest.from_bytes(bytes(encoded))


@pytest.mark.parametrize(
    "changes",
    [{"version": 2}, {"account": "mallory"}, {"entry": "other"}, {"nodes": 7}],
    ids=["version", "account", "entry", "nodes"],
)
def test_an_altered_bound_field_does_not_open(changes: dict[str, object]) -> None:
    # The envelope's server_identity is H(bound part): a manifest with any bound field
    # changed fails like a wrong password, even with the right OPRF output.
    reg = _register()
    output = _recover_output(reg, [1, 2, 3], PASSWORD)
    altered = dataclasses.replace(reg.manifest, **changes)
    with pytest.raises(WrongKey):
        manifest.open_entry(altered, output)


def test_epoch_and_higher_commitments_are_guarded_by_the_share_check() -> None:
    # Not password-bound (a proactive refresh changes them), so a manifest with another
    # epoch still opens; but a substituted C_1 makes every honest node refuse its share,
    # and the t-identical rule keeps a minority's version from the client.
    reg = _register()
    output = _recover_output(reg, [1, 2, 3], PASSWORD)
    assert manifest.open_entry(dataclasses.replace(reg.manifest, epoch=9), output)[1] == ROOT_KEY
    elements = list(reg.manifest.commitments.elements)
    elements[1] = oprf.scalar_mult_base(oprf.random_scalar())
    forged = threshold.Commitments(tuple(elements))
    for share in reg.shares:
        with pytest.raises(AuthenticationFailed):
            threshold.verify_share(share, forged)


def test_altered_ksf_pk_auth_or_wrapped_root_key_is_refused() -> None:
    reg = _register()
    output = _recover_output(reg, [1, 2, 3], PASSWORD)
    other = _register().manifest
    slower = dataclasses.replace(TINY_ARGON2, iterations=2)
    with pytest.raises(WrongKey):
        manifest.open_entry(dataclasses.replace(reg.manifest, ksf=slower), output)
    with pytest.raises(AuthenticationFailed, match="pk_auth"):
        manifest.open_entry(dataclasses.replace(reg.manifest, pk_auth=other.pk_auth), output)
    with pytest.raises(AuthenticationFailed, match="wrapped root key"):
        manifest.open_entry(
            dataclasses.replace(reg.manifest, wrapped_root_key=other.wrapped_root_key), output
        )


def test_t_identical_rule() -> None:
    honest = _register().manifest
    forged = _register().manifest  # e.g. commitments the hostile nodes chose
    good = honest.to_bytes()
    bad = forged.to_bytes()
    assert manifest.agreed_manifest({i: good for i in range(1, 6)}, 3) == honest
    # Two hostile nodes agree on a forgery; three honest nodes answer: the honest wins.
    answers = {1: bad, 2: bad, 3: good, 4: good, 5: good}
    assert manifest.agreed_manifest(answers, 3) == honest
    # Three honest nodes are down: the two hostile ones cannot reach t.
    with pytest.raises(AuthenticationFailed, match=r"counts: \[2\]"):
        manifest.agreed_manifest({1: bad, 2: bad}, 3)
    # Honest nodes that disagree (one stale) below t: refused, not guessed.
    with pytest.raises(AuthenticationFailed):
        manifest.agreed_manifest({1: bad, 2: bad, 3: good, 4: good}, 3)
    with pytest.raises(AuthenticationFailed):
        manifest.agreed_manifest({}, 3)


def test_agreed_manifest_must_have_the_fleet_threshold() -> None:
    low = _register(nodes=5, t=2).manifest.to_bytes()
    with pytest.raises(AuthenticationFailed, match="threshold 2"):
        manifest.agreed_manifest({i: low for i in range(1, 6)}, 3)


def test_registration_validates_its_inputs() -> None:
    with pytest.raises(InvalidInput):
        manifest.register(
            PASSWORD,
            ROOT_KEY[:31],
            fleet_id=FLEET,
            account="a",
            entry="e",
            epoch=1,
            nodes=5,
            threshold_count=3,
            ksf=TINY_ARGON2,
        )
    for fleet_id, account, nodes, t in ((b"", "a", 5, 3), (FLEET, "", 5, 3), (FLEET, "a", 2, 3)):
        with pytest.raises(InvalidInput):
            manifest.register(
                PASSWORD,
                ROOT_KEY,
                fleet_id=fleet_id,
                account=account,
                entry="e",
                epoch=1,
                nodes=nodes,
                threshold_count=t,
                ksf=TINY_ARGON2,
            )
    assert "hidden" in repr(_register())


def test_a_manifest_with_a_small_order_pk_auth_is_refused() -> None:
    # Nodes check owner statements with pk_auth: under the identity, anyone could sign the
    # entry's resets. A manifest that names one is malformed, at every node that parses it.
    reg = _register()
    identity = bytes.fromhex("01" + "00" * 31)
    encoded = reg.manifest.to_bytes()
    bad = encoded.replace(reg.manifest.pk_auth, identity)
    assert bad != encoded
    with pytest.raises(InvalidInput, match="pk_auth"):
        Manifest.from_bytes(bad)
    with pytest.raises(InvalidInput, match="pk_auth"):
        dataclasses.replace(reg.manifest, pk_auth=identity)
