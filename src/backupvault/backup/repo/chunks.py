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
from typing import Final, NamedTuple

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyfastcdc import FastCDC

from backupvault.backup.errors import Altered, Corrupt
from backupvault.backup.repo.keys import (
    HMAC_SHA256_IDS,
    NONCE_LEN,
    TAG_LEN,
    RepoConfig,
    RepoKeys,
)

CHUNK_ID_LEN: Final = 32
BLOB_OVERHEAD: Final = NONCE_LEN + 1 + TAG_LEN
RAW: Final = 0
ZSTD: Final = 1
ZSTD_LEVEL: Final = 1
_MAX_CHUNK: Final = 16 * 1024 * 1024
_SAMPLE: Final = 32 * 1024


def one_frame(
    decompressor: zstandard.ZstdDecompressor, data: bytes | bytearray, most: int, what: str
) -> bytes:
    """The content of `data`, which must be exactly one zstd frame that declares its
    content size, at most `most` bytes (docs/format.md: `zstd(x)`). A frame without a size
    would be decompressed up to `most` whatever it declares; bytes after the frame, a
    frame cut short or one whose content is not its declared size are refused (one-shot,
    `allow_extra_data=False`: zstd checks all three; a decompression object, used until
    session 62, took about 9 % more CPU for a frame of 1 MiB)."""
    try:
        declared = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError as exc:
        raise Corrupt(f"{what} is corrupt: {exc}") from None
    if declared > most:  # CONTENTSIZE_UNKNOWN is 2^64 - 1: refused here too
        raise Corrupt(f"{what} is corrupt: not a zstd frame of at most {most} bytes")
    try:
        content = decompressor.decompress(data, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise Corrupt(f"{what} is corrupt: not exactly one zstd frame ({exc})") from None
    if len(content) != declared:
        raise Corrupt(f"{what} is corrupt: not exactly one zstd frame")
    return content


class Prepared(NamedTuple):
    """A chunk named and compressed, not yet encrypted: sealed later straight into its
    place in a pack (`Sealer.seal_into`), which saves copying every blob once."""

    compression: int
    payload: bytes | memoryview

    @property
    def size(self) -> int:
        """The sealed blob's length."""
        return BLOB_OVERHEAD + len(self.payload)


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
        """The chunks of `data`: none if it is empty (docs/format.md, "Chunking")."""
        if not data:
            return
        if len(data) <= self.min_size:
            yield memoryview(data)
            return
        for chunk in self._cdc.cut_buf(data):
            yield chunk.data

    def cut_window(self, window: memoryview, final: bool) -> tuple[list[memoryview], int]:
        """(chunks, bytes they cover) of a window of a stream read in pieces: every chunk
        if `final` (the stream ends with the window); else all but the last. FastCDC scans
        a chunk from its start and cuts at the first position whose gear hash matches (or
        at `max_size`), looking at no byte past it: a cut before the window's end is the
        one a cut of the whole stream makes. Only the last chunk, which may end where it
        does because the bytes did, is cut again with the next window's bytes (so at most
        `max_size` bytes are carried over, and usually about `avg_size`)."""
        chunks = [chunk.data for chunk in self._cdc.cut_buf(window)] if window else []
        if final or not chunks:
            return chunks, len(window)
        last = chunks.pop()
        return chunks, len(window) - len(last)


class Sealer:
    """Names, compresses and encrypts chunks; thread-safe (one compressor per thread)."""

    def __init__(self, config: RepoConfig, keys: RepoKeys) -> None:
        self._id_key = keys.chunk_id
        self._hmac_ids = config.version == HMAC_SHA256_IDS
        self._aead = AESGCM(keys.chunk)
        self._local = threading.local()

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._hmac_ids:
            # An HMAC object's update releases the GIL on large inputs; hmac.digest does not.
            mac = hmac.new(self._id_key, digestmod=hashlib.sha256)
            mac.update(data)
            return mac.digest()
        # Keyed BLAKE3 (a PRF, as HMAC is) is about twice as fast as SHA-256 with SHA-NI
        # on one core, and releases the GIL on large inputs.
        return blake3.blake3(data, key=self._id_key).digest()

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        """One per thread, used again: making one per chunk was 4 % of a restore's CPU."""
        decompressor: zstandard.ZstdDecompressor | None = getattr(self._local, "unzstd", None)
        if decompressor is None:
            decompressor = self._local.unzstd = zstandard.ZstdDecompressor()
        return decompressor

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

    def prepare(self, data: bytes | memoryview) -> Prepared:
        """Compress `data` if that helps (the payload may be a view of `data`)."""
        if self._worth_compressing(data):
            compressed = self._compressor().compress(data)
            if len(compressed) < len(data):
                return Prepared(ZSTD, compressed)
        return Prepared(RAW, data)

    def prepare_all(self, chunks: list[memoryview]) -> list[Prepared]:
        """`prepare` of each chunk; those small enough that zstd is always tried on them
        are compressed in one call (`multi_compress_to_buffer`: the same frames as
        `compress`), which lets go of the GIL once for them all rather than once each."""
        small = [i for i, chunk in enumerate(chunks) if len(chunk) <= 4 * _SAMPLE]
        prepared = [Prepared(RAW, chunk) for chunk in chunks]
        if small:
            frames = self._compressor().multi_compress_to_buffer([chunks[i] for i in small])
            for n, i in enumerate(small):
                frame = memoryview(frames[n])  # type: ignore[arg-type]  # (a buffer; its stub omits it)
                if len(frame) < len(chunks[i]):
                    prepared[i] = Prepared(ZSTD, frame)
        for i, chunk in enumerate(chunks):
            if len(chunk) > 4 * _SAMPLE:
                prepared[i] = self.prepare(chunk)
        return prepared

    def seal_into(self, chunk_id: bytes, prepared: Prepared, blob: memoryview) -> None:
        """Encrypt the chunk into `blob`, exactly `prepared.size` bytes (AES-GCM releases
        the GIL here)."""
        if len(blob) != prepared.size:
            raise ValueError(f"a blob of {prepared.size} bytes needs exactly that much room")
        blob[0] = prepared.compression
        nonce = os.urandom(NONCE_LEN)
        blob[1 : 1 + NONCE_LEN] = nonce
        aad = chunk_id + bytes([prepared.compression])
        self._aead.encrypt_into(nonce, prepared.payload, aad, blob[1 + NONCE_LEN :])

    def open(
        self, chunk_id: bytes, blob: bytes | bytearray | memoryview, raw_length: int
    ) -> bytes | bytearray:
        """The chunk's plaintext, only if the blob authenticates as `chunk_id`."""
        name = chunk_id.hex()[:16]
        if len(blob) < BLOB_OVERHEAD or not 0 <= raw_length <= _MAX_CHUNK:
            raise Altered(f"chunk {name} is damaged (bad length)")
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
            raise Altered(
                f"chunk {name} failed authentication: it was altered or swapped"
            ) from None
        data: bytes | bytearray
        if compression == ZSTD:
            data = one_frame(self._decompressor(), payload, raw_length, f"chunk {name}")
        elif compression == RAW:
            data = payload
        else:
            raise Corrupt(f"chunk {name} has unknown compression {compression}")
        if len(data) != raw_length or not hmac.compare_digest(self.chunk_id(data), chunk_id):
            raise Altered(f"chunk {name} does not match its id")
        return data
