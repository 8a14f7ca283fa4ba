"""Streaming AEAD: round trips at every size boundary and every attack on the chunk sequence."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.crypto import stream
from backupvault.errors import AuthenticationFailed, InvalidInput, UsageError

KEY = bytes(range(32))
SALT = bytes(range(32, 64))
AD = b"header bytes"
CS = 64  # small chunks: many chunks from little data
CT = CS + stream.TAG_LEN


def enc(plaintext: bytes, key: bytes = KEY, salt: bytes = SALT, ad: bytes = AD) -> bytes:
    return stream.encrypt(key, salt, ad, plaintext, CS)


def dec(ciphertext: bytes, key: bytes = KEY, salt: bytes = SALT, ad: bytes = AD) -> bytes:
    return stream.decrypt(key, salt, ad, ciphertext, CS)


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 2 * CS, 3 * CS + 5])
def test_round_trip_at_chunk_boundaries(size: int) -> None:
    plaintext = os.urandom(size)
    ciphertext = enc(plaintext)
    assert len(ciphertext) == stream.ciphertext_size(size, CS)
    assert dec(ciphertext) == plaintext


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(max_size=5 * CS),
    pieces=st.lists(st.integers(min_value=0, max_value=3 * CT), max_size=12),
    mutable=st.booleans(),
)
def test_any_split_of_the_input_gives_the_same_stream(
    plaintext: bytes, pieces: list[int], mutable: bool
) -> None:
    def feed(update: Callable[[bytes | bytearray], None], data: bytes) -> None:
        position = 0
        for size in pieces:
            piece = data[position : position + size]
            update(bytearray(piece) if mutable else piece)
            position += size
        update(data[position:])

    out = bytearray()
    encryptor = stream.StreamEncryptor(KEY, SALT, AD, out.extend, CS)
    feed(encryptor.update, plaintext)
    encryptor.finalize()
    assert bytes(out) == enc(plaintext)

    back = bytearray()
    decryptor = stream.StreamDecryptor(KEY, SALT, AD, back.extend, CS)
    feed(decryptor.update, bytes(out))
    decryptor.finalize()
    assert bytes(back) == plaintext


def test_mutable_input_is_copied_not_referenced() -> None:
    buffer = bytearray(b"a" * CS)
    out = bytearray()
    encryptor = stream.StreamEncryptor(KEY, SALT, AD, out.extend, CS)
    encryptor.update(buffer)  # held back: it might be the final chunk
    buffer[:] = b"b" * CS
    encryptor.finalize()
    assert dec(bytes(out)) == b"a" * CS


def test_construction_matches_the_documented_nonces_and_key() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    okm = HKDF(hashes.SHA256(), 36, SALT, b"backupvault/v1 stream").derive(KEY)
    aead = AESGCM(okm[:32])
    plaintext = os.urandom(CS + 10)
    expected = aead.encrypt(okm[32:] + bytes(7) + b"\x00", plaintext[:CS], AD) + aead.encrypt(
        okm[32:] + (1).to_bytes(7, "big") + b"\x01", plaintext[CS:], AD
    )
    assert enc(plaintext) == expected


def chunks(ciphertext: bytes) -> list[bytes]:
    return [ciphertext[i : i + CT] for i in range(0, len(ciphertext), CT)]


PLAIN = bytes(range(256)) * 1 + b"tail"  # 4 full chunks and a short final one
CIPHER = enc(PLAIN)


def test_truncation_at_each_chunk_boundary_says_truncated() -> None:
    parts = chunks(CIPHER)
    assert len(parts) == 5
    for keep in range(1, len(parts)):
        with pytest.raises(AuthenticationFailed, match="truncated"):
            dec(b"".join(parts[:keep]))
    with pytest.raises(AuthenticationFailed, match="truncated: the encrypted stream is empty"):
        dec(b"")


@pytest.mark.parametrize("cut", [1, 5, stream.TAG_LEN - 1, stream.TAG_LEN, CT - 1, CT + 3])
def test_truncation_inside_a_chunk_fails(cut: int) -> None:
    with pytest.raises(AuthenticationFailed):
        dec(CIPHER[: len(CIPHER) - cut])


def test_empty_stream_truncated_to_nothing_and_to_a_partial_tag() -> None:
    empty = enc(b"")
    assert len(empty) == stream.TAG_LEN
    with pytest.raises(AuthenticationFailed, match="shorter than its 16-byte"):
        dec(empty[:7])


def test_dropped_reordered_and_duplicated_chunks_fail() -> None:
    parts = chunks(CIPHER)
    attacks = {
        "drop": parts[:1] + parts[2:],
        "swap": [parts[1], parts[0], *parts[2:]],
        "duplicate": [parts[0], *parts],
        "final moved earlier": [parts[0], parts[4]],
    }
    for name, attacked in attacks.items():
        with pytest.raises(AuthenticationFailed, match="chunk") as caught:
            dec(b"".join(attacked))
        assert "failed authentication" in str(caught.value) or "truncated" in str(caught.value), (
            name
        )


def test_reordered_chunk_names_its_index() -> None:
    parts = chunks(CIPHER)
    with pytest.raises(AuthenticationFailed, match=r"^chunk 0 failed authentication: the data"):
        dec(b"".join([parts[1], parts[0], *parts[2:]]))


def test_extension_after_a_full_final_chunk_is_named() -> None:
    plaintext = os.urandom(2 * CS)
    ciphertext = enc(plaintext)
    for extra in (b"\x00", os.urandom(CT), chunks(ciphertext)[0]):
        with pytest.raises(AuthenticationFailed, match="appended after the final chunk"):
            dec(ciphertext + extra)


def test_extension_after_a_short_final_chunk_fails() -> None:
    with pytest.raises(AuthenticationFailed, match="chunk 4"):
        dec(CIPHER + os.urandom(CT))


def test_chunks_cannot_move_between_streams() -> None:
    other_salt = enc(PLAIN, salt=os.urandom(32))
    other_ad = enc(PLAIN, ad=b"another header")
    for other in (other_salt, other_ad):
        mixed = chunks(CIPHER)
        mixed[2] = chunks(other)[2]
        with pytest.raises(AuthenticationFailed, match="chunk 2 failed authentication"):
            dec(b"".join(mixed))


def test_every_bit_flip_fails() -> None:
    ciphertext = enc(b"x" * (CS + 3))
    for position in range(len(ciphertext)):
        for bit in (0, 7):
            flipped = bytearray(ciphertext)
            flipped[position] ^= 1 << bit
            with pytest.raises(AuthenticationFailed):
                dec(bytes(flipped))


def test_wrong_key_salt_or_associated_data_fail() -> None:
    with pytest.raises(AuthenticationFailed, match="key is wrong"):
        dec(CIPHER, key=os.urandom(32))
    with pytest.raises(AuthenticationFailed):
        dec(CIPHER, salt=os.urandom(32))
    with pytest.raises(AuthenticationFailed):
        dec(CIPHER, ad=AD + b"!")


def test_failed_chunk_reaches_no_sink_and_poisons_the_decryptor() -> None:
    parts = chunks(CIPHER)
    parts[1] = bytes(CT)
    seen: list[bytes] = []
    decryptor = stream.StreamDecryptor(KEY, SALT, AD, lambda v: seen.append(bytes(v)), CS)
    with pytest.raises(AuthenticationFailed):
        decryptor.update(b"".join(parts))
    assert seen == [PLAIN[:CS]]
    assert decryptor.chunks_verified == 1
    with pytest.raises(UsageError):
        decryptor.update(b"more")
    with pytest.raises(UsageError):
        decryptor.finalize()


def test_plaintext_is_released_only_after_its_chunk_verified() -> None:
    seen: list[bytes] = []
    decryptor = stream.StreamDecryptor(KEY, SALT, AD, lambda v: seen.append(bytes(v)), CS)
    decryptor.update(CIPHER[:CT])  # a whole chunk, but it might be the final one
    assert seen == []
    decryptor.update(CIPHER[CT : CT + 1])
    assert seen == [PLAIN[:CS]]


@pytest.mark.parametrize(
    ("key", "salt", "chunk_size"),
    [(b"short", SALT, CS), (KEY, b"short", CS), (KEY, SALT, 63), (KEY, SALT, (16 << 20) + 1)],
)
def test_bad_parameters_are_invalid_input(key: bytes, salt: bytes, chunk_size: int) -> None:
    with pytest.raises(InvalidInput):
        stream.StreamEncryptor(key, salt, AD, lambda v: None, chunk_size)


def test_finalize_twice_is_a_usage_error() -> None:
    encryptor = stream.StreamEncryptor(KEY, SALT, AD, lambda v: None, CS)
    encryptor.finalize()
    with pytest.raises(UsageError):
        encryptor.finalize()
