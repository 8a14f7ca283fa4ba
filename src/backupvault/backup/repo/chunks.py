"""Chunks: content-defined cutting (keyed FastCDC), naming (keyed BLAKE3 under the chunk-id
key; HMAC-SHA256 in version 2 repositories), and sealing (zstd if it helps, then
AES-256-GCM under the chunk key).

Blob layout (docs/format.md, "Chunk blob"): u8 compression || nonce (12) ||
AES-GCM(chunk key, nonce, data, aad = chunk id || u8 compression). The id is checked again
after opening, so a blob is accepted only as the chunk it claims to be.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Iterator
from typing import Final

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyfastcdc import FastCDC

from backupvault.backup.repo.keys import (
    HMAC_SHA256_IDS,
    NONCE_LEN,
    TAG_LEN,
    RepoConfig,
    RepoKeys,
)
from backupvault.errors import AuthenticationFailed, InvalidInput

CHUNK_ID_LEN: Final = 32
BLOB_OVERHEAD: Final = NONCE_LEN + 1 + TAG_LEN
RAW: Final = 0
ZSTD: Final = 1
ZSTD_LEVEL: Final = 1
_MAX_CHUNK: Final = 16 * 1024 * 1024
_SAMPLE: Final = 32 * 1024
_BLOB_ROUND: Final = 256 * 1024  # blob buffers come in multiples of this
_BLOB_POOLED: Final = 128 * 1024  # smaller blobs: plain bytearrays (below glibc's mmap threshold)
_BLOB_SPARE: Final = 96 * 1024 * 1024  # free blob buffers kept, in bytes


class _BlobBuffer(bytearray):
    """A buffer of `BlobBuffers` (so that only those are taken back)."""


class BlobBuffers:
    """Buffers for sealed blobs, used again once their pack is written. A fresh page costs
    a fault: measured on the 2-core VM, a first backup of 512 MiB spent about 0.3 s of
    its 1.9 s of CPU faulting in and zeroing new blob memory (the allocator gives large
    blocks back to the kernel when they are freed). Blobs of 128 KiB or more only, their
    sizes rounded up to multiples of 256 KiB; a blob takes a free buffer of its size or up
    to 3 steps larger."""

    def __init__(self) -> None:
        self._free: dict[int, list[_BlobBuffer]] = {}  # capacity in steps -> buffers
        self._free_bytes = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> memoryview:
        """`size` bytes of a free buffer, or of a new one; a small blob gets a buffer of
        its own (the allocator keeps small blocks for reuse itself)."""
        if size < _BLOB_POOLED:
            return memoryview(bytearray(size))
        steps = -(-size // _BLOB_ROUND)
        with self._lock:
            for fits in range(steps, steps + 4):
                spare = self._free.get(fits)
                if spare:
                    buffer = spare.pop()
                    self._free_bytes -= len(buffer)
                    return memoryview(buffer)[:size]
        return memoryview(_BlobBuffer(steps * _BLOB_ROUND))[:size]

    def give_back(self, blobs: list[bytes | bytearray | memoryview]) -> None:
        """Take back the buffers of `blobs` that came from `take`: whoever holds them must
        be done with them (their pack is written)."""
        with self._lock:
            for blob in blobs:
                if not isinstance(blob, memoryview) or not isinstance(blob.obj, _BlobBuffer):
                    continue
                if self._free_bytes + len(blob.obj) > _BLOB_SPARE:
                    break
                self._free.setdefault(len(blob.obj) // _BLOB_ROUND, []).append(blob.obj)
                self._free_bytes += len(blob.obj)


class Chunker:
    """Cuts files into chunks with FastCDC, its gear table keyed from the repository key."""

    def __init__(self, config: RepoConfig, keys: RepoKeys) -> None:
        self.min_size = config.chunk_min
        self.max_size = config.chunk_max
        self._cdc = FastCDC(
            config.chunk_avg,
            min_size=config.chunk_min,
            max_size=config.chunk_max,
            seed=keys.chunker_seed,
        )

    def cut(self, data: bytes | memoryview) -> Iterator[memoryview]:
        if len(data) <= self.min_size:
            yield memoryview(data)
            return
        for chunk in self._cdc.cut_buf(data):
            yield chunk.data

    def cut_window(self, window: memoryview, final: bool) -> tuple[list[memoryview], int]:
        """(chunks, bytes they cover) of a window of a stream read in pieces: every chunk
        if `final` (the stream ends with the window); else only those starting at least
        `max_size` bytes before the window's end. FastCDC decides a cut from at most
        `max_size` bytes after the chunk's start (fewer only when the data ends sooner), so
        those chunks are exactly the ones `cut` makes of the whole stream; the rest starts
        the next window."""
        if final:
            return (list(self.cut(window)) if window else []), len(window)
        chunks: list[memoryview] = []
        end = 0
        pieces = self._cdc.cut_buf(window)
        while len(window) - end >= self.max_size:
            chunk = next(pieces).data
            chunks.append(chunk)
            end += len(chunk)
        return chunks, end


class Sealer:
    """Names, compresses and encrypts chunks; thread-safe (one compressor per thread)."""

    def __init__(self, config: RepoConfig, keys: RepoKeys) -> None:
        self._id_key = keys.chunk_id
        self._hmac_ids = config.version == HMAC_SHA256_IDS
        self._aead = AESGCM(keys.chunk)
        self._local = threading.local()
        self.buffers = BlobBuffers()

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._hmac_ids:
            # An HMAC object's update releases the GIL on large inputs; hmac.digest does not.
            mac = hmac.new(self._id_key, digestmod=hashlib.sha256)
            mac.update(data)
            return mac.digest()
        # Keyed BLAKE3 (a PRF, as HMAC is) is about twice as fast as SHA-256 with SHA-NI
        # on one core, and releases the GIL on large inputs.
        return blake3.blake3(data, key=self._id_key).digest()

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor: zstandard.ZstdCompressor | None = getattr(self._local, "zstd", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
            self._local.zstd = compressor
        return compressor

    def _worth_compressing(self, data: bytes | memoryview) -> bool:
        """Whether zstd is likely to shrink `data`: a 32 KiB sample from its middle must
        shrink by 3% (media and other compressed data fail fast and cheaply)."""
        if len(data) <= 4 * _SAMPLE:
            return True
        middle = len(data) // 2
        sample = memoryview(data)[middle : middle + _SAMPLE]
        return len(self._compressor().compress(sample)) < 0.97 * _SAMPLE

    def seal(self, chunk_id: bytes, data: bytes | memoryview) -> memoryview:
        """The chunk's blob, in a buffer from `buffers` (give it back once written)."""
        payload: bytes | memoryview = data
        compression = RAW
        if self._worth_compressing(data):
            compressed = self._compressor().compress(data)
            if len(compressed) < len(data):
                payload, compression = compressed, ZSTD
        blob = self.buffers.take(BLOB_OVERHEAD + len(payload))
        blob[0] = compression
        nonce = os.urandom(NONCE_LEN)
        blob[1 : 1 + NONCE_LEN] = nonce
        aad = chunk_id + bytes([compression])
        self._aead.encrypt_into(nonce, payload, aad, blob[1 + NONCE_LEN :])
        return blob

    def open(
        self, chunk_id: bytes, blob: bytes | bytearray | memoryview, raw_length: int
    ) -> bytes | bytearray:
        """The chunk's plaintext, only if the blob authenticates as `chunk_id`."""
        name = chunk_id.hex()[:16]
        if len(blob) < BLOB_OVERHEAD or not 0 <= raw_length <= _MAX_CHUNK:
            raise AuthenticationFailed(f"chunk {name} is damaged (bad length)")
        view = memoryview(blob)
        compression = view[0]
        payload = bytearray(len(view) - BLOB_OVERHEAD)
        try:
            self._aead.decrypt_into(
                bytes(view[1 : 1 + NONCE_LEN]),
                view[1 + NONCE_LEN :],
                chunk_id + bytes([compression]),
                payload,
            )
        except InvalidTag:
            raise AuthenticationFailed(
                f"chunk {name} failed authentication: it was altered or swapped"
            ) from None
        data: bytes | bytearray
        if compression == ZSTD:
            try:
                data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_length)
            except zstandard.ZstdError as exc:
                raise InvalidInput(f"chunk {name} is corrupt: {exc}") from None
        elif compression == RAW:
            data = payload
        else:
            raise InvalidInput(f"chunk {name} has unknown compression {compression}")
        if len(data) != raw_length or not hmac.compare_digest(self.chunk_id(data), chunk_id):
            raise AuthenticationFailed(f"chunk {name} does not match its id")
        return data
