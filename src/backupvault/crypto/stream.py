"""Streaming AEAD: AES-256-GCM in the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár).

Pure: no I/O. Callers push bytes in with `update` and get chunks out through a sink callable.

Construction (all integers big-endian):
  okm          = HKDF-SHA256(ikm = key, salt = salt, info = "backupvault/v1 stream", L = 36)
  stream_key   = okm[0:32]
  nonce_prefix = okm[32:36]
  nonce(i, f)  = nonce_prefix (4) || i as u56 (7) || f (1)    f = 0x01 on the final chunk, else 0x00
  chunk i      = AES-256-GCM(stream_key, nonce(i, f), plaintext_i, associated_data)
               = ciphertext_i (len(plaintext_i)) || tag (16)

Every chunk but the last carries exactly `chunk_size` plaintext bytes; the last carries
0..chunk_size bytes (an empty stream is one empty final chunk, 16 bytes). The stream is the
concatenation of the chunks, with no other framing.

Why: the counter in the nonce fixes each chunk's position (reordering, dropping and
duplicating fail); the final flag makes truncation at a chunk boundary and appending after
the last chunk fail; the per-stream salt gives every stream its own key and nonce prefix, so
a nonce never repeats under a key even if a caller reused `key`; the associated data (the
backup header) is bound into every tag, so chunks cannot move between streams.

The sink receives a memoryview into a buffer this object reuses: it is valid only during the
call (write it, or copy it). Decrypted plaintext reaches the sink only after its chunk's tag
verified, but a stream is authentic only once `finalize` returned: until then it may have been
truncated, so consumers must treat what they got so far as provisional.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupvault.errors import AuthenticationFailed, InvalidInput, UsageError

KEY_LEN: Final = 32
SALT_LEN: Final = 32
TAG_LEN: Final = 16
CHUNK_SIZE: Final = 1 << 20
MIN_CHUNK_SIZE: Final = 64
MAX_CHUNK_SIZE: Final = 16 << 20

_INFO: Final = b"backupvault/v1 stream"
_PREFIX_LEN: Final = 4
_COUNTER_LEN: Final = 7
_MAX_CHUNKS: Final = 1 << (8 * _COUNTER_LEN)
_FLAG_MORE: Final = b"\x00"
_FLAG_FINAL: Final = b"\x01"

Sink = Callable[[memoryview], object]
"""Receives each output chunk; the view is only valid during the call."""


def ciphertext_size(plaintext_size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Size of the encrypted stream for `plaintext_size` bytes of plaintext."""
    _check_chunk_size(chunk_size)
    if plaintext_size < 0:
        raise InvalidInput("plaintext size must not be negative")
    chunks = max(1, -(-plaintext_size // chunk_size))
    return plaintext_size + chunks * TAG_LEN


def _check_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInput(
            f"chunk size {chunk_size} is out of range ({MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes)"
        )


class _StreamState(abc.ABC):
    """What encryptor and decryptor share: the derived key, nonces, hold-back buffering."""

    def __init__(
        self, key: bytes, salt: bytes, associated_data: bytes, chunk_size: int, unit: int
    ) -> None:
        if len(key) != KEY_LEN:
            raise InvalidInput(f"stream key must be {KEY_LEN} bytes, got {len(key)}")
        if len(salt) != SALT_LEN:
            raise InvalidInput(f"stream salt must be {SALT_LEN} bytes, got {len(salt)}")
        _check_chunk_size(chunk_size)
        okm = HKDF(
            algorithm=hashes.SHA256(), length=KEY_LEN + _PREFIX_LEN, salt=salt, info=_INFO
        ).derive(key)
        self._aead = AESGCM(okm[:KEY_LEN])
        self._prefix = okm[KEY_LEN:]
        self._ad = bytes(associated_data)
        self.chunk_size = chunk_size
        # `unit` is the size of one full input chunk: chunk_size (encrypt) or + TAG_LEN (decrypt).
        self._unit = unit
        self._counter = 0
        # Hold-back: the last complete input unit stays here until more input shows it was
        # not the final one. `_held` is a zero-copy view (immutable input) or an owned buffer.
        self._held: memoryview | None = None
        self._partial = bytearray()
        self._done = False

    def _nonce(self, final: bool) -> bytes:
        if self._counter >= _MAX_CHUNKS:
            raise InvalidInput("stream too long: the chunk counter would wrap")
        return (
            self._prefix
            + self._counter.to_bytes(_COUNTER_LEN, "big")
            + (_FLAG_FINAL if final else _FLAG_MORE)
        )

    @abc.abstractmethod
    def _process(self, unit: memoryview, final: bool) -> None:
        """Encrypt or decrypt one chunk and hand it to the sink."""

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Take more input; emit every chunk now known not to be the last one."""
        if self._done:
            raise UsageError("stream already finalized or failed")
        view = memoryview(data).cast("B")
        # Only immutable input may be held by reference; anything else is copied when kept.
        immutable = view.readonly and isinstance(view.obj, bytes)
        n = len(view)
        pos = 0
        try:
            while pos < n:
                if self._held is not None:
                    held, self._held = self._held, None
                    self._process(held, final=False)
                if self._partial:
                    take = min(self._unit - len(self._partial), n - pos)
                    self._partial += view[pos : pos + take]
                    pos += take
                    if len(self._partial) == self._unit:
                        self._held = memoryview(self._partial)
                        self._partial = bytearray()
                elif n - pos >= self._unit:
                    piece = view[pos : pos + self._unit]
                    self._held = piece if immutable else memoryview(bytes(piece))
                    pos += self._unit
                else:
                    self._partial += view[pos:]
                    pos = n
        except BaseException:
            self._done = True
            raise

    def finalize(self) -> None:
        """End of input: emit the final chunk."""
        if self._done:
            raise UsageError("stream already finalized or failed")
        self._done = True
        last = self._held if self._held is not None else memoryview(self._partial)
        self._held = None
        self._process(last, final=True)
        self._partial = bytearray()


class StreamEncryptor(_StreamState):
    """Encrypts a stream of any length in constant memory; see the module docstring."""

    def __init__(
        self,
        key: bytes,
        salt: bytes,
        associated_data: bytes,
        sink: Sink,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        super().__init__(key, salt, associated_data, chunk_size, unit=chunk_size)
        self._sink = sink
        self._out = bytearray(chunk_size + TAG_LEN)

    def _process(self, unit: memoryview, final: bool) -> None:
        out = memoryview(self._out)[: len(unit) + TAG_LEN]
        self._aead.encrypt_into(self._nonce(final), unit, self._ad, out)
        self._counter += 1
        self._sink(out)


class StreamDecryptor(_StreamState):
    """Decrypts and authenticates a stream made by `StreamEncryptor`.

    Raises `AuthenticationFailed` on any change: altered, reordered, dropped, duplicated or
    foreign chunks, truncation, data after the final chunk, a wrong key or associated data.
    """

    def __init__(
        self,
        key: bytes,
        salt: bytes,
        associated_data: bytes,
        sink: Sink,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        super().__init__(key, salt, associated_data, chunk_size, unit=chunk_size + TAG_LEN)
        self._sink = sink
        self._out = bytearray(chunk_size)

    @property
    def chunks_verified(self) -> int:
        return self._counter

    def _try_open(self, unit: memoryview, final: bool) -> memoryview | None:
        out = memoryview(self._out)[: len(unit) - TAG_LEN]
        try:
            self._aead.decrypt_into(self._nonce(final), unit, self._ad, out)
        except InvalidTag:
            # decrypt_into leaves unauthenticated plaintext in the buffer: wipe it.
            out[:] = bytes(len(out))
            return None
        return out

    def _process(self, unit: memoryview, final: bool) -> None:
        index = self._counter
        if len(unit) < TAG_LEN:
            if index == 0 and len(unit) == 0:
                raise AuthenticationFailed("backup is truncated: the encrypted stream is empty")
            raise AuthenticationFailed(
                f"backup is truncated: chunk {index} is {len(unit)} bytes, "
                f"shorter than its {TAG_LEN}-byte authentication tag"
            )
        plaintext = self._try_open(unit, final)
        if plaintext is None:
            # Slow path, on failure only: find out which attack this was, for a clear message.
            if final and self._try_open(unit, final=False) is not None:
                raise AuthenticationFailed(
                    f"backup is truncated: chunk {index} is intact but the chunks after it "
                    "are missing (no final chunk)"
                )
            if not final and self._try_open(unit, final=True) is not None:
                raise AuthenticationFailed(
                    f"data was appended after the final chunk (chunk {index}): "
                    "the backup was altered"
                )
            if final:
                raise AuthenticationFailed(
                    f"final chunk {index} failed authentication: the backup was truncated "
                    "or altered, or the key is wrong"
                )
            raise AuthenticationFailed(
                f"chunk {index} failed authentication: the data was altered or the key is wrong"
            )
        self._counter += 1
        self._sink(plaintext)


def encrypt(
    key: bytes, salt: bytes, associated_data: bytes, plaintext: bytes, chunk_size: int = CHUNK_SIZE
) -> bytes:
    """One-shot encryption of a whole stream held in memory."""
    out = bytearray()
    encryptor = StreamEncryptor(key, salt, associated_data, out.extend, chunk_size)
    encryptor.update(plaintext)
    encryptor.finalize()
    return bytes(out)


def decrypt(
    key: bytes,
    salt: bytes,
    associated_data: bytes,
    ciphertext: bytes,
    chunk_size: int = CHUNK_SIZE,
) -> bytes:
    """One-shot decryption of a whole stream held in memory."""
    out = bytearray()
    decryptor = StreamDecryptor(key, salt, associated_data, out.extend, chunk_size)
    decryptor.update(ciphertext)
    decryptor.finalize()
    return bytes(out)
