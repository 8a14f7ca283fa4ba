"""The header: the documented layout, strict parsing, and fuzzing of the parser."""

from __future__ import annotations

import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st
from single_blob import seal_header

from backupvault.backup.format import (
    HEADER_LEN,
    KEY_PASSWORD,
    KEY_RECOVERY_CODE,
    MAGIC,
    WRAP_AAD_LEN,
    BackupHeader,
    open_header,
)
from backupvault.errors import AuthenticationFailed, InvalidInput

FIELDS = {"key_kind": KEY_PASSWORD, "content_bytes": 1000, "entries": 3}


def test_layout_matches_docs_format_md() -> None:
    root_key = os.urandom(32)
    header, data_key = seal_header(
        root_key,
        key_kind=KEY_RECOVERY_CODE,
        content_bytes=123_456_789,
        entries=4321,
        chunk_size=1 << 20,
        created_at_us=1_700_000_000_000_000,
    )
    raw = header.to_bytes()
    assert (HEADER_LEN, WRAP_AAD_LEN) == (159, 111)
    assert len(raw) == HEADER_LEN
    assert raw[0:8] == b"BVBACKUP" and raw[8] == 2 and raw[9] == 1 and raw[10] == 2
    assert struct.unpack(">I", raw[11:15])[0] == 1 << 20
    assert raw[15:31] == header.backup_id
    assert struct.unpack(">Q", raw[31:39])[0] == 1_700_000_000_000_000
    assert struct.unpack(">Q", raw[39:47])[0] == 123_456_789
    assert struct.unpack(">I", raw[47:51])[0] == 4321
    assert raw[51:83] == header.stream_salt

    def derive(info: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 32, None, info).derive(root_key)

    check = hmac.new(derive(b"backupvault/v1 backup key-check"), raw[0:9] + raw[15:31], "sha256")
    assert raw[83:99] == check.digest()[:16]
    wrap = AESGCM(derive(b"backupvault/v1 backup dk-wrap"))
    assert wrap.decrypt(raw[99:111], raw[111:159], raw[0:111]) == data_key
    assert BackupHeader.from_bytes(raw) == header
    assert open_header(header, root_key) == data_key


def test_every_backup_gets_fresh_keys_ids_and_salts() -> None:
    root_key = os.urandom(32)
    first, first_key = seal_header(root_key, **FIELDS)
    second, second_key = seal_header(root_key, **FIELDS)
    assert first_key != second_key
    assert first.backup_id != second.backup_id
    assert first.stream_salt != second.stream_salt
    assert first.wrap_nonce != second.wrap_nonce


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (8, b"\x00", "version 0 is not supported"),
        (8, b"\x03", "version 3 is not supported"),
        (9, b"\x07", "unknown backup payload type 7"),
        (10, b"\x03", "unknown backup key kind 3"),
        (11, struct.pack(">I", 63), "invalid chunk size 63"),
        (11, struct.pack(">I", (16 << 20) + 1), "invalid chunk size"),
        (31, struct.pack(">Q", 0), "invalid creation time"),
        (31, struct.pack(">Q", 2**64 - 1), "invalid creation time"),
        (39, struct.pack(">Q", (1 << 50) + 1), "over the ceiling"),
        (47, struct.pack(">I", 0), "entries, outside"),
        (47, struct.pack(">I", (1 << 24) + 1), "entries, outside"),
    ],
)
def test_each_field_is_validated(offset: int, value: bytes, match: str) -> None:
    raw = bytearray(seal_header(os.urandom(32), **FIELDS)[0].to_bytes())
    raw[offset : offset + len(value)] = value
    with pytest.raises(InvalidInput, match=match):
        BackupHeader.from_bytes(bytes(raw))


def test_wrong_root_key_and_altered_wrap() -> None:
    root_key = os.urandom(32)
    header, _ = seal_header(root_key, **FIELDS)
    with pytest.raises(AuthenticationFailed, match="not made with this key"):
        open_header(header, os.urandom(32))
    raw = bytearray(header.to_bytes())
    raw[-1] ^= 0x80
    with pytest.raises(AuthenticationFailed, match="header failed authentication"):
        open_header(BackupHeader.from_bytes(bytes(raw)), root_key)
    with pytest.raises(InvalidInput, match="root key must be 32 bytes"):
        open_header(header, b"\x00" * 31)


@given(st.binary(max_size=2 * HEADER_LEN))
def test_random_bytes_give_only_invalid_input(data: bytes) -> None:
    try:
        header = BackupHeader.from_bytes(data)
    except InvalidInput:
        return
    assert header.to_bytes() == data  # only well-formed headers parse, and they round-trip


@given(
    st.binary(min_size=HEADER_LEN - len(MAGIC), max_size=HEADER_LEN - len(MAGIC)),
    st.integers(min_value=0, max_value=HEADER_LEN - 1),
)
def test_random_headers_with_the_magic_parse_or_fail_cleanly(tail: bytes, cut: int) -> None:
    data = MAGIC + tail
    for candidate in (data, data[:cut]):
        try:
            header = BackupHeader.from_bytes(candidate)
        except InvalidInput:
            continue
        assert header.to_bytes() == candidate
        with pytest.raises(AuthenticationFailed):
            open_header(header, os.urandom(32))
