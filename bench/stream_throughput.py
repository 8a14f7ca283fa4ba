"""Streaming AEAD and whole-backup throughput, against raw AES-256-GCM measured in the same run.

Reference: AES-256-GCM (`AESGCM.encrypt_into` and `decrypt_into`, one reused output buffer,
the fastest way `cryptography` offers) over the same bytes in the same 1 MiB chunks, with no
framing at all, each direction against its own: OpenSSL decrypts faster than it encrypts.
Goal: stream encrypt and decrypt each at >= 0.8x that. Whole backups are measured against
restic in `backup_vs_restic`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backupvault.crypto import stream

MB = 1_000_000
REPEATS = 3


def _best_seconds(actions: list[Callable[[], object]], repeats: int = REPEATS) -> list[float]:
    """Best time of each action; one warm-up each, then rounds interleaved for fairness."""
    for action in actions:
        action()
    best = [float("inf")] * len(actions)
    for _ in range(repeats):
        for index, action in enumerate(actions):
            started = time.perf_counter()
            action()
            best[index] = min(best[index], time.perf_counter() - started)
    return best


def _raw_gcm(data: bytes, key: bytes, chunk: int) -> None:
    aead = AESGCM(key)
    out = bytearray(chunk + stream.TAG_LEN)
    view = memoryview(data)
    nonce = bytes(12)
    for offset in range(0, len(data), chunk):
        piece = view[offset : offset + chunk]
        aead.encrypt_into(nonce, piece, None, memoryview(out)[: len(piece) + stream.TAG_LEN])


def _raw_gcm_decrypt(sealed: bytes, key: bytes, chunk: int) -> None:
    """Opens what `_raw_gcm` seals (the same 1 MiB chunks, each with its tag)."""
    aead = AESGCM(key)
    out = bytearray(chunk)
    view = memoryview(sealed)
    nonce = bytes(12)
    step = chunk + stream.TAG_LEN
    for offset in range(0, len(sealed), step):
        unit = view[offset : offset + step]
        aead.decrypt_into(nonce, unit, None, memoryview(out)[: len(unit) - stream.TAG_LEN])


def _stream_encrypt(data: bytes, key: bytes, salt: bytes, header: bytes, chunk: int) -> None:
    encryptor = stream.StreamEncryptor(key, salt, header, lambda _: None, chunk)
    view = memoryview(data)
    for offset in range(0, len(data), chunk):
        encryptor.update(view[offset : offset + chunk])
    encryptor.finalize()


def _stream_decrypt(blob: bytes, key: bytes, salt: bytes, header: bytes, chunk: int) -> None:
    decryptor = stream.StreamDecryptor(key, salt, header, lambda _: None, chunk)
    view = memoryview(blob)
    step = chunk + stream.TAG_LEN
    for offset in range(0, len(blob), step):
        decryptor.update(view[offset : offset + step])
    decryptor.finalize()


def run(quick: bool) -> list[dict[str, object]]:
    size = (32 if quick else 256) << 20
    chunk = stream.CHUNK_SIZE
    key, salt, header = os.urandom(32), os.urandom(32), os.urandom(146)
    data = os.urandom(size)
    blob = stream.encrypt(key, salt, header, data, chunk)
    aead = AESGCM(key)
    sealed = b"".join(
        aead.encrypt(bytes(12), data[offset : offset + chunk], None)
        for offset in range(0, size, chunk)
    )

    raw, enc, raw_dec, dec = (
        size / seconds / MB
        for seconds in _best_seconds(
            [
                lambda: _raw_gcm(data, key, chunk),
                lambda: _stream_encrypt(data, key, salt, header, chunk),
                lambda: _raw_gcm_decrypt(sealed, key, chunk),
                lambda: _stream_decrypt(blob, key, salt, header, chunk),
            ]
        )
    )
    reference = "raw AES-256-GCM (encrypt_into, 1 MiB chunks)"
    decrypt_reference = f"raw AES-256-GCM decrypt_into, 1 MiB chunks: {raw_dec:.0f} MB/s"
    rows: list[dict[str, object]] = [
        {"name": "raw AES-256-GCM", "value": raw, "unit": "MB/s", "reference": None,
         "ratio": None, "goal": None},
        {"name": "stream encrypt", "value": enc, "unit": "MB/s", "reference": reference,
         "ratio": enc / raw, "goal": ">= 0.8"},
        {"name": "stream decrypt", "value": dec, "unit": "MB/s",
         "reference": decrypt_reference, "ratio": dec / raw_dec, "goal": ">= 0.8"},
    ]  # fmt: skip

    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
