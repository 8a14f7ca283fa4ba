"""The node's PKCS#11 sealing, against real SoftHSM2 tokens in per-test directories.

SoftHSM2 reads SOFTHSM2_CONF at C_Initialize and python-pkcs11 keeps one loaded module per
process; TokenSealer re-initializes the module when no sealer is open, so each test may use
its own token directory as long as it closes its sealers (the fixtures do). Tests that need
two tokens at once put both in one directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from backupvault.errors import AuthenticationFailed, BackupVaultError, InvalidInput
from backupvault.node.softhsm import (
    CONF_NAME,
    MODULE_ENV,
    TOKENS_DIR_NAME,
    activate_softhsm_conf,
    find_softhsm_module,
    init_softhsm_token,
    softhsm_env,
    softhsm_token_labels,
)
from backupvault.node.token import (
    BLOB_OVERHEAD,
    BLOB_VERSION,
    IV_LEN,
    MAX_PLAINTEXT_LEN,
    SEALING_KEY_LABEL,
    SECRET_AAD_PREFIX,
    SOFTHSM2_CONF_ENV,
    STORE_COUNTER_APPLICATION,
    TAG_LEN,
    SealedFile,
    TokenConfig,
    TokenError,
    TokenSealer,
)

PIN = "user-pin-5173-qx"
SO_PIN = "so-pin-8842-zw"
AAD = b"backupvault node secret: test"


@pytest.fixture(autouse=True)
def _restore_softhsm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # TokenSealer sets SOFTHSM2_CONF; monkeypatch puts the original value back afterwards.
    monkeypatch.delenv(SOFTHSM2_CONF_ENV, raising=False)


@pytest.fixture
def hsm_dir(tmp_path: Path) -> Path:
    return tmp_path / "softhsm"


@pytest.fixture
def config(hsm_dir: Path) -> TokenConfig:
    return init_softhsm_token(hsm_dir, "node-1", PIN, SO_PIN)


@pytest.fixture
def bare_sealer(config: TokenConfig) -> Iterator[TokenSealer]:
    """A session on a fresh token that has no sealing key yet."""
    with TokenSealer(config) as sealer:
        yield sealer


@pytest.fixture
def sealer(bare_sealer: TokenSealer) -> TokenSealer:
    assert bare_sealer.ensure_sealing_key() is True
    return bare_sealer


def raw_session(config: TokenConfig) -> Any:
    """A second session on the token, bypassing TokenSealer. PKCS#11 login state is per
    process, so while a TokenSealer is open this session sees the private objects too."""
    token = pkcs11.lib(str(config.module_path)).get_token(token_label=config.token_label)
    return token.open(rw=True)


def sealing_key(session: Any) -> Any:
    return session.get_key(object_class=ObjectClass.SECRET_KEY, label=SEALING_KEY_LABEL)


# ---- seal / unseal -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext", [b"", b"s", os.urandom(32), os.urandom(5000)], ids=["0", "1", "32", "5000"]
)
@pytest.mark.parametrize("aad", [b"", AAD])
def test_round_trip(sealer: TokenSealer, plaintext: bytes, aad: bytes) -> None:
    blob = sealer.seal(plaintext, aad)
    assert len(blob) == len(plaintext) + BLOB_OVERHEAD == len(plaintext) + 1 + IV_LEN + TAG_LEN
    assert blob[0] == BLOB_VERSION
    if len(plaintext) >= 8:  # a short plaintext may appear in random bytes by chance
        assert plaintext not in blob
    assert sealer.unseal(blob, aad) == plaintext


def test_every_seal_has_a_fresh_iv(sealer: TokenSealer) -> None:
    blobs = [sealer.seal(b"same secret", AAD) for _ in range(20)]
    assert len({blob[1 : 1 + IV_LEN] for blob in blobs}) == 20
    assert len({blob[1 + IV_LEN :] for blob in blobs}) == 20
    assert {sealer.unseal(blob, AAD) for blob in blobs} == {b"same secret"}


def test_seal_accepts_bytes_likes_and_refuses_other_types(sealer: TokenSealer) -> None:
    blob = sealer.seal(bytearray(b"abc"), memoryview(AAD))  # type: ignore[arg-type]
    assert sealer.unseal(blob, AAD) == b"abc"
    with pytest.raises(InvalidInput, match="plaintext must be bytes"):
        sealer.seal("text", AAD)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="aad must be bytes"):
        sealer.unseal(blob, None)  # type: ignore[arg-type]


def test_seal_refuses_oversized_plaintext(sealer: TokenSealer) -> None:
    with pytest.raises(InvalidInput, match="at most"):
        sealer.seal(bytes(MAX_PLAINTEXT_LEN + 1), AAD)


def test_wrong_aad_fails(sealer: TokenSealer) -> None:
    blob = sealer.seal(b"oprf seed", AAD)
    for aad in (b"", AAD[:-1], AAD + b"x", b"backupvault node secret: other"):
        with pytest.raises(AuthenticationFailed, match="failed authentication"):
            sealer.unseal(blob, aad)
    assert sealer.unseal(blob, AAD) == b"oprf seed"  # the failures left the session usable


def test_any_flipped_bit_fails(sealer: TokenSealer) -> None:
    blob = sealer.seal(b"storage key!", AAD)
    for index in range(len(blob)):  # version byte, IV, ciphertext and tag alike
        for mask in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[index] ^= mask
            with pytest.raises(AuthenticationFailed):
                sealer.unseal(bytes(tampered), AAD)
    assert sealer.unseal(blob, AAD) == b"storage key!"


def test_truncated_or_extended_blob_fails(sealer: TokenSealer) -> None:
    blob = sealer.seal(b"identity key", AAD)
    for length in range(len(blob)):
        with pytest.raises(AuthenticationFailed):
            sealer.unseal(blob[:length], AAD)
    with pytest.raises(AuthenticationFailed, match="shorter than"):
        sealer.unseal(blob[: BLOB_OVERHEAD - 1], AAD)
    with pytest.raises(AuthenticationFailed):
        sealer.unseal(blob + b"\x00", AAD)
    with pytest.raises(AuthenticationFailed, match="longer than"):
        sealer.unseal(b"\x01" + bytes(MAX_PLAINTEXT_LEN + BLOB_OVERHEAD), AAD)


def test_unknown_version_fails(sealer: TokenSealer) -> None:
    blob = sealer.seal(b"x", AAD)
    with pytest.raises(AuthenticationFailed, match="version 2"):
        sealer.unseal(b"\x02" + blob[1:], AAD)


def test_unseal_of_random_bytes_raises_only_authentication_failed(sealer: TokenSealer) -> None:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.one_of(
            st.binary(max_size=120),
            st.binary(min_size=BLOB_OVERHEAD - 1, max_size=120).map(lambda b: b"\x01" + b),
        ),
        st.binary(max_size=40),
    )
    def check(blob: bytes, aad: bytes) -> None:
        with pytest.raises(AuthenticationFailed):
            sealer.unseal(blob, aad)

    check()
    assert sealer.unseal(sealer.seal(b"still fine", b""), b"") == b"still fine"


# ---- the key lives in the token ----------------------------------------------------------


def test_key_persists_across_sessions(config: TokenConfig) -> None:
    with TokenSealer(config) as first:
        assert first.ensure_sealing_key() is True
        blob = first.seal(b"fleet hpke key", AAD)
    with pytest.raises(TokenError, match="closed"):
        first.seal(b"x", AAD)
    with TokenSealer(config) as second:
        assert second.unseal(blob, AAD) == b"fleet hpke key"  # found without ensure
        assert second.ensure_sealing_key() is False  # found, not made again
        session = raw_session(config)
        try:
            keys = list(session.get_objects({Attribute.LABEL: SEALING_KEY_LABEL}))
        finally:
            session.close()
        assert len(keys) == 1


def test_key_attributes_are_non_extractable_and_sensitive(
    config: TokenConfig, sealer: TokenSealer
) -> None:
    session = raw_session(config)
    try:
        key = sealing_key(session)
        assert key.key_type == KeyType.AES
        assert key[Attribute.VALUE_LEN] == 32
        for attribute in (
            Attribute.TOKEN,
            Attribute.PRIVATE,
            Attribute.SENSITIVE,
            Attribute.ALWAYS_SENSITIVE,
            Attribute.NEVER_EXTRACTABLE,
            Attribute.LOCAL,
            Attribute.ENCRYPT,
            Attribute.DECRYPT,
        ):
            assert key[attribute] is True, attribute
        for attribute in (
            Attribute.EXTRACTABLE,
            Attribute.MODIFIABLE,
            Attribute.COPYABLE,
            Attribute.WRAP,
            Attribute.UNWRAP,
            Attribute.DERIVE,
            Attribute.SIGN,
            Attribute.VERIFY,
        ):
            assert key[attribute] is False, attribute
    finally:
        session.close()


def test_key_value_cannot_be_read_or_exported(config: TokenConfig, sealer: TokenSealer) -> None:
    session = raw_session(config)
    try:
        key = sealing_key(session)
        with pytest.raises(pkcs11.AttributeSensitive):
            key[Attribute.VALUE]
        wrapper = session.generate_key(
            KeyType.AES, 256, capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP
        )
        for mechanism in (Mechanism.AES_KEY_WRAP, Mechanism.AES_KEY_WRAP_PAD):
            with pytest.raises(pkcs11.KeyUnextractable):
                wrapper.wrap_key(key, mechanism=mechanism)
        # Nor can anyone logged in relax the key or copy it into an extractable one.
        with pytest.raises(pkcs11.PKCS11Error):
            key[Attribute.EXTRACTABLE] = True
        with pytest.raises(pkcs11.PKCS11Error):
            key[Attribute.SENSITIVE] = False
        with pytest.raises(pkcs11.PKCS11Error):
            key.copy({Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False})
        assert key[Attribute.EXTRACTABLE] is False
    finally:
        session.close()
    assert sealer.unseal(sealer.seal(b"x", b""), b"") == b"x"


def test_an_unsafe_key_under_the_label_is_refused(
    config: TokenConfig, bare_sealer: TokenSealer
) -> None:
    session = raw_session(config)
    try:  # an imported, extractable key planted under the sealing key's label
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.LABEL: SEALING_KEY_LABEL,
                Attribute.VALUE: bytes(32),
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
            }
        )
    finally:
        session.close()
    with pytest.raises(TokenError, match="not sensitive") as info:
        bare_sealer.ensure_sealing_key()
    assert "generated inside the token" in str(info.value)
    with pytest.raises(TokenError, match="not sensitive"):
        bare_sealer.seal(b"x", AAD)


def test_seal_without_a_sealing_key_says_to_provision(bare_sealer: TokenSealer) -> None:
    with pytest.raises(TokenError, match="has no sealing key") as info:
        bare_sealer.seal(b"x", AAD)
    assert "ensure_sealing_key" in str(info.value)


def test_blob_from_another_token_fails(hsm_dir: Path) -> None:
    config_a = init_softhsm_token(hsm_dir, "node-a", PIN, SO_PIN)
    config_b = init_softhsm_token(hsm_dir, "node-b", PIN, SO_PIN)
    with TokenSealer(config_a) as a, TokenSealer(config_b) as b:
        a.ensure_sealing_key()
        b.ensure_sealing_key()
        assert a.token_serial != b.token_serial
        from_a = a.seal(b"secret of a", AAD)
        with pytest.raises(AuthenticationFailed, match="another token"):
            b.unseal(from_a, AAD)
        assert a.unseal(from_a, AAD) == b"secret of a"
        assert b.unseal(b.seal(b"secret of b", AAD), AAD) == b"secret of b"


def test_token_created_after_the_module_was_loaded_is_found(hsm_dir: Path) -> None:
    first = init_softhsm_token(hsm_dir, "early", PIN, SO_PIN)
    with TokenSealer(first) as sealer:
        sealer.ensure_sealing_key()
    late = init_softhsm_token(hsm_dir, "late", PIN, SO_PIN)
    with TokenSealer(late) as sealer:
        assert sealer.ensure_sealing_key() is True


# ---- configuration errors ----------------------------------------------------------------


def test_wrong_pin_is_a_token_error_naming_the_pin(config: TokenConfig) -> None:
    wrong = TokenConfig(
        config.module_path, config.token_label, "wrong-pin-0000", config.softhsm2_conf
    )
    with pytest.raises(TokenError, match="PIN is wrong") as info:
        TokenSealer(wrong)
    assert "wrong-pin-0000" not in str(info.value)
    assert PIN not in str(info.value)
    with TokenSealer(config) as sealer:  # the right PIN still works
        sealer.ensure_sealing_key()


def test_wrong_label_is_a_token_error_listing_the_tokens(config: TokenConfig) -> None:
    wrong = TokenConfig(config.module_path, "node-x", PIN, config.softhsm2_conf)
    with pytest.raises(TokenError, match="no PKCS#11 token labelled 'node-x'") as info:
        TokenSealer(wrong)
    assert "'node-1'" in str(info.value)  # what is there
    assert "check the token label" in str(info.value)
    assert "SOFTHSM2_CONF" in str(info.value)


@pytest.mark.parametrize("content", [None, b"not a shared library"])
def test_bad_module_is_a_token_error_naming_the_module(
    tmp_path: Path, content: bytes | None
) -> None:
    module = tmp_path / "libvendor-pkcs11.so"
    if content is not None:
        module.write_bytes(content)
    with pytest.raises(TokenError, match="PKCS#11 module") as info:
        TokenSealer(TokenConfig(module, "node-1", PIN))
    assert str(module) in str(info.value)
    assert "check the PKCS#11 module path" in str(info.value)


def test_one_sealer_per_token_per_process(config: TokenConfig, sealer: TokenSealer) -> None:
    with pytest.raises(TokenError, match="already open in this process"):
        TokenSealer(config)
    assert sealer.unseal(sealer.seal(b"x", b""), b"") == b"x"


def test_a_second_softhsm_store_is_refused_while_one_is_open(
    tmp_path: Path, sealer: TokenSealer
) -> None:
    other = init_softhsm_token(tmp_path / "other", "node-2", PIN, SO_PIN)
    with pytest.raises(TokenError, match="already in use in this process"):
        TokenSealer(other)
    assert sealer.unseal(sealer.seal(b"x", b""), b"") == b"x"  # the open one is unharmed
    sealer.close()
    with TokenSealer(other) as second:  # once it is closed the module switches stores
        assert second.ensure_sealing_key() is True


def test_config_never_shows_the_pin(config: TokenConfig, sealer: TokenSealer) -> None:
    assert PIN not in repr(config)
    assert PIN not in str(config)
    assert PIN not in repr(sealer)
    assert "node-1" in repr(config)


@pytest.mark.parametrize(
    ("label", "pin", "message"),
    [
        ("", PIN, "label is empty"),
        ("x" * 33, PIN, "longer than 32 bytes"),
        (" node", PIN, "whitespace"),
        ("node", "", "PIN is empty"),
    ],
)
def test_config_validation(label: str, pin: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        TokenConfig(Path("/usr/lib/softhsm/libsofthsm2.so"), label, pin)


# ---- sealed files ------------------------------------------------------------------------


def test_sealed_file_round_trip(tmp_path: Path, sealer: TokenSealer) -> None:
    path = tmp_path / "oprf-seed.sealed"
    secret_file = SealedFile(path, "oprf-seed", sealer)
    assert not secret_file.exists()
    secret_file.write(b"\x07" * 32)
    assert secret_file.exists()
    assert secret_file.read() == b"\x07" * 32
    assert secret_file.aad == SECRET_AAD_PREFIX + b"oprf-seed"
    assert sealer.unseal(path.read_bytes(), b"backupvault node secret: oprf-seed") == b"\x07" * 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret_file.write(b"replaced")
    assert secret_file.read() == b"replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oprf-seed.sealed", "softhsm"]


def test_sealed_file_survives_reopening_the_token(tmp_path: Path, config: TokenConfig) -> None:
    path = tmp_path / "identity.sealed"
    with TokenSealer(config) as sealer:
        sealer.ensure_sealing_key()
        SealedFile(path, "identity-key", sealer).write(b"identity")
    with TokenSealer(config) as sealer:
        assert SealedFile(path, "identity-key", sealer).read() == b"identity"


def test_sealed_file_tampered_or_swapped_fails(tmp_path: Path, sealer: TokenSealer) -> None:
    seed = SealedFile(tmp_path / "seed.sealed", "oprf-seed", sealer)
    storage = SealedFile(tmp_path / "storage.sealed", "storage-key", sealer)
    seed.write(b"seed value")
    storage.write(b"storage value")
    # The seed's file put in the storage key's place does not pass for the storage key.
    storage.path.write_bytes(seed.path.read_bytes())
    with pytest.raises(AuthenticationFailed, match=r"storage\.sealed") as info:
        storage.read()
    assert "'storage-key'" in str(info.value)
    blob = bytearray(seed.path.read_bytes())
    blob[-1] ^= 0x40
    seed.path.write_bytes(bytes(blob))
    with pytest.raises(AuthenticationFailed, match="failed authentication"):
        seed.read()
    seed.path.write_bytes(b"")
    with pytest.raises(AuthenticationFailed, match="truncated"):
        seed.read()


def test_sealed_file_missing_and_bad_names(tmp_path: Path, sealer: TokenSealer) -> None:
    with pytest.raises(InvalidInput, match="is missing"):
        SealedFile(tmp_path / "absent.sealed", "oprf-seed", sealer).read()
    for name in ("", "../x", "a b", "-x", "x" * 65):
        with pytest.raises(InvalidInput, match="not allowed"):
            SealedFile(tmp_path / "f", name, sealer)
    with pytest.raises(BackupVaultError, match="cannot write"):
        SealedFile(tmp_path / "no-such-dir" / "f", "oprf-seed", sealer).write(b"x")


# ---- SoftHSM2 tooling --------------------------------------------------------------------


def test_init_softhsm_token_lays_out_a_private_store_and_is_idempotent(hsm_dir: Path) -> None:
    config = init_softhsm_token(hsm_dir, "node-1", PIN, SO_PIN)
    again = init_softhsm_token(hsm_dir, "node-1", PIN, SO_PIN)
    assert again == config
    assert config.softhsm2_conf == hsm_dir.resolve() / CONF_NAME
    assert config.module_path == find_softhsm_module()
    conf_text = (hsm_dir / CONF_NAME).read_text()
    assert f"directories.tokendir = {hsm_dir.resolve() / TOKENS_DIR_NAME}\n" in conf_text
    assert stat.S_IMODE((hsm_dir / TOKENS_DIR_NAME).stat().st_mode) == 0o700
    assert softhsm_token_labels(hsm_dir / CONF_NAME) == ["node-1"]
    init_softhsm_token(hsm_dir, "node-2", PIN, SO_PIN)
    assert sorted(softhsm_token_labels(hsm_dir / CONF_NAME)) == ["node-1", "node-2"]


def test_softhsm_input_checks(hsm_dir: Path) -> None:
    with pytest.raises(InvalidInput, match="PIN must be"):
        init_softhsm_token(hsm_dir, "node-1", "123", SO_PIN)
    with pytest.raises(InvalidInput, match="longer than 32 bytes"):
        init_softhsm_token(hsm_dir, "n" * 40, PIN, SO_PIN)


def test_find_softhsm_module_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "libsofthsm2.so"
    fake.write_bytes(b"")
    assert find_softhsm_module(fake) == fake
    monkeypatch.setenv(MODULE_ENV, str(fake))
    assert find_softhsm_module() == fake
    monkeypatch.setenv(MODULE_ENV, str(tmp_path / "absent.so"))
    with pytest.raises(TokenError, match="does not exist") as info:
        find_softhsm_module()
    assert "apt-get install softhsm2" in str(info.value)


def test_softhsm_conf_helpers(hsm_dir: Path) -> None:
    config = init_softhsm_token(hsm_dir, "node-1", PIN, SO_PIN)
    assert config.softhsm2_conf is not None
    env = softhsm_env(config.softhsm2_conf, base={"PATH": "/bin"})
    assert env == {"PATH": "/bin", SOFTHSM2_CONF_ENV: str(config.softhsm2_conf)}
    activate_softhsm_conf(config.softhsm2_conf)
    assert os.environ[SOFTHSM2_CONF_ENV] == str(config.softhsm2_conf)
    with pytest.raises(InvalidInput, match="does not exist"):
        activate_softhsm_conf(hsm_dir / "absent.conf")


# ---- the store counter -------------------------------------------------------------------


def test_store_counter_is_kept_in_the_token_and_never_goes_back(
    config: TokenConfig, sealer: TokenSealer
) -> None:
    assert sealer.store_counter() is None
    sealer.advance_store_counter(0)
    assert sealer.store_counter() == 0
    for value in (1, 2, 2, 7):
        sealer.advance_store_counter(value)
    assert sealer.store_counter() == 7
    with pytest.raises(TokenError, match="cannot go back"):
        sealer.advance_store_counter(6)
    sealer.close()
    session = raw_session(config)
    try:  # not logged in: the counter is a private object, invisible
        assert list(session.get_objects({Attribute.CLASS: ObjectClass.DATA})) == []
    finally:
        session.close()
    with TokenSealer(config) as again:  # a new process's view: kept in the token
        assert again.store_counter() == 7
        session = raw_session(config)
        try:  # two slots, rewritten in turn: the newest value and the one before it
            slots = list(session.get_objects({Attribute.CLASS: ObjectClass.DATA}))
            assert sorted(int(o[Attribute.LABEL]) for o in slots) == [2, 7]
            assert all(o[Attribute.PRIVATE] is True and o[Attribute.TOKEN] is True for o in slots)
        finally:
            session.close()


def test_a_torn_counter_rewrite_loses_one_step_and_a_lost_counter_reads_as_none(
    hsm_dir: Path, config: TokenConfig
) -> None:
    with TokenSealer(config) as sealer:
        before = set(hsm_dir.glob(f"{TOKENS_DIR_NAME}/*/*.object"))
        sealer.advance_store_counter(5)
        (first,) = set(hsm_dir.glob(f"{TOKENS_DIR_NAME}/*/*.object")) - before
        sealer.advance_store_counter(6)
        sealer.advance_store_counter(7)  # rewrites the slot that held 5: the first file
    # A crash between SoftHSM2's truncate and write of that rewrite leaves the file empty.
    first.write_bytes(b"")
    with TokenSealer(config) as sealer:
        assert sealer.store_counter() == 6  # the other slot: one step behind
        sealer.advance_store_counter(8)  # a new slot replaces the lost one
        assert sealer.store_counter() == 8
    for path in hsm_dir.glob(f"{TOKENS_DIR_NAME}/*/*.object"):
        if path not in before:
            path.write_bytes(b"")
    with TokenSealer(config) as sealer:  # both lost: never recorded, so the node catches up
        assert sealer.store_counter() is None


def test_a_counter_slot_not_written_by_the_node_is_refused(
    config: TokenConfig, sealer: TokenSealer
) -> None:
    session = raw_session(config)
    try:
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.APPLICATION: STORE_COUNTER_APPLICATION,
                Attribute.LABEL: "12 ",
            }
        )
    finally:
        session.close()
    with pytest.raises(TokenError, match="no valid counter"):
        sealer.store_counter()
