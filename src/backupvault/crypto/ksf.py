"""Key stretching functions (KSF) for OPAQUE (RFC 9807 §4.3).

OPAQUE hardens the OPRF output with a memory-hard function before it becomes the
randomized password, so that whoever steals a node's OPRF key still pays this cost per
guess. We use Argon2id (RFC 9106) from argon2-cffi (the reference C implementation).

The parameters are a value (`Argon2idParams`) with a compact, fully specified byte
encoding, so that the vault can store them next to the registration record and hand them
to the client at login; raising them later is a re-registration with new parameters.

`IDENTITY_KSF` (Stretch(x) = x) exists only because the RFC 9807 test vectors use it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Protocol

from argon2.low_level import Type, hash_secret_raw

from backupvault.errors import InvalidInput


class KSF(Protocol):
    """What OPAQUE needs from a key stretching function."""

    def stretch(self, data: bytes) -> bytes:
        """Harden `data` (the OPRF output); deterministic for fixed parameters."""
        ...


@dataclass(frozen=True)
class IdentityKSF:
    """Stretch(x) = x: the KSF of the RFC 9807 test vectors. Never for real passwords."""

    def stretch(self, data: bytes) -> bytes:
        return bytes(data)


IDENTITY_KSF = IdentityKSF()

# Encoding of Argon2idParams (big-endian integers), 15 + salt_len bytes:
#   0      u8   format tag, 0x01 = Argon2id version 1.3 (0x13)
#   1..4   u32  memory_kib
#   5..8   u32  iterations
#   9      u8   parallelism
#   10..11 u16  output_len
#   12..13 u16  reserved, must be 0 (room for flags without a new tag)
#   14     u8   salt_len
#   15..   salt
_HEADER = struct.Struct(">BIIBHHB")
_FORMAT_ARGON2ID_V13 = 0x01


@dataclass(frozen=True)
class Argon2idParams:
    """Argon2id v1.3 parameters (RFC 9106 §3.1), validated on construction."""

    memory_kib: int
    iterations: int
    parallelism: int
    salt: bytes
    output_len: int = 64

    # Bounds: wide enough for any sane deployment, narrow enough that a tampered record
    # cannot make a client allocate more than 4 GiB or spin for hours.
    MAX_MEMORY_KIB: ClassVar[int] = 4 * 1024 * 1024
    MAX_ITERATIONS: ClassVar[int] = 1000
    #: memory_kib * iterations: 64 GiB of passes, about a minute of one core (each bound
    #: alone would let 4 GiB x 1000 passes, about an hour). RFC 9106's first recommended
    #: option (2 GiB, t = 1) is 1/32 of it.
    MAX_WORK_KIB: ClassVar[int] = 64 * 1024 * 1024
    MAX_PARALLELISM: ClassVar[int] = 64
    MIN_SALT_LEN: ClassVar[int] = 8  # RFC 9106 §3.1; argon2 refuses shorter salts
    MAX_SALT_LEN: ClassVar[int] = 64
    MIN_OUTPUT_LEN: ClassVar[int] = 16
    MAX_OUTPUT_LEN: ClassVar[int] = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.salt, bytes):
            raise InvalidInput("Argon2id salt must be bytes")
        for name in ("memory_kib", "iterations", "parallelism", "output_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidInput(f"Argon2id {name} must be an integer")
        if not 1 <= self.parallelism <= self.MAX_PARALLELISM:
            raise InvalidInput(f"Argon2id parallelism must be 1..{self.MAX_PARALLELISM}")
        if not 8 * self.parallelism <= self.memory_kib <= self.MAX_MEMORY_KIB:
            raise InvalidInput(
                f"Argon2id memory must be 8*parallelism..{self.MAX_MEMORY_KIB} KiB, "
                f"got {self.memory_kib}"
            )
        if not 1 <= self.iterations <= self.MAX_ITERATIONS:
            raise InvalidInput(f"Argon2id iterations must be 1..{self.MAX_ITERATIONS}")
        if self.memory_kib * self.iterations > self.MAX_WORK_KIB:
            raise InvalidInput(
                f"Argon2id memory x iterations must be at most {self.MAX_WORK_KIB} KiB"
                f" (about a minute of work), got {self.memory_kib} KiB x {self.iterations}"
            )
        if not self.MIN_SALT_LEN <= len(self.salt) <= self.MAX_SALT_LEN:
            raise InvalidInput(
                f"Argon2id salt must be {self.MIN_SALT_LEN}..{self.MAX_SALT_LEN} bytes"
            )
        if not self.MIN_OUTPUT_LEN <= self.output_len <= self.MAX_OUTPUT_LEN:
            raise InvalidInput(
                f"Argon2id output length must be {self.MIN_OUTPUT_LEN}..{self.MAX_OUTPUT_LEN}"
            )

    def weaker_than(self, floor: Argon2idParams) -> str | None:
        """What makes these parameters cheaper than `floor` for someone testing passwords,
        or None if no field is. Every cost field is held to the floor: memory and
        iterations; memory per lane, since more lanes of less memory each let a guessing
        rig spread one guess over more, smaller cores (total memory alone is no floor:
        64 lanes of 1 MiB pass a 64 MiB check); and the output length. The salt costs a
        guesser nothing either way here (the input is already unique per entry)."""
        if self.memory_kib < floor.memory_kib:
            return f"{self.memory_kib} KiB of memory, at least {floor.memory_kib} KiB needed"
        if self.iterations < floor.iterations:
            return f"{self.iterations} iterations, at least {floor.iterations} needed"
        if self.memory_kib * floor.parallelism < floor.memory_kib * self.parallelism:
            return (
                f"{self.parallelism} lanes of {self.memory_kib // self.parallelism} KiB, at"
                f" least {floor.memory_kib // floor.parallelism} KiB per lane needed"
            )
        if self.output_len < floor.output_len:
            return f"{self.output_len}-byte output, at least {floor.output_len} needed"
        return None

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(
            _FORMAT_ARGON2ID_V13,
            self.memory_kib,
            self.iterations,
            self.parallelism,
            self.output_len,
            0,
            len(self.salt),
        )
        return header + self.salt

    @classmethod
    def from_bytes(cls, data: bytes) -> Argon2idParams:
        if not isinstance(data, bytes | bytearray):
            raise InvalidInput("Argon2id parameters must be bytes")
        if len(data) < _HEADER.size:
            raise InvalidInput(f"Argon2id parameters: need at least {_HEADER.size} bytes")
        tag, memory_kib, iterations, parallelism, output_len, reserved, salt_len = (
            _HEADER.unpack_from(data)
        )
        if tag != _FORMAT_ARGON2ID_V13:
            raise InvalidInput(f"Argon2id parameters: unknown format tag {tag:#04x}")
        if reserved != 0:
            raise InvalidInput("Argon2id parameters: reserved field is not zero")
        if len(data) != _HEADER.size + salt_len:
            raise InvalidInput(
                f"Argon2id parameters: expected {_HEADER.size + salt_len} bytes, got {len(data)}"
            )
        return cls(
            memory_kib=memory_kib,
            iterations=iterations,
            parallelism=parallelism,
            salt=bytes(data[_HEADER.size :]),
            output_len=output_len,
        )

    def stretch(self, data: bytes) -> bytes:
        return hash_secret_raw(
            secret=bytes(data),
            salt=self.salt,
            time_cost=self.iterations,
            memory_cost=self.memory_kib,
            parallelism=self.parallelism,
            hash_len=self.output_len,
            type=Type.ID,
            version=0x13,
        )


def stretch(params: KSF, data: bytes) -> bytes:
    """Stretch `data` with the given KSF (Argon2idParams or IDENTITY_KSF)."""
    return params.stretch(data)


# The salt may be a constant: the KSF input is the OPRF output, already unique per user and
# password because the OPRF key is per credential identifier (RFC 9807 §4.3 uses no salt).
ZERO_SALT = bytes(16)

# Production default: RFC 9106 §4 second recommended option (Argon2id, 64 MiB, t=3) with
# p=1 instead of 4: the total work is the same, extra lanes only help a multi-core defender,
# and a client may be a single-core phone. Measured on the 2-core development machine:
# about 0.165 s per call (docs/crypto.md has the figures).
DEFAULT_ARGON2ID = Argon2idParams(
    memory_kib=64 * 1024, iterations=3, parallelism=1, salt=ZERO_SALT, output_len=64
)

# opaque-ke's Argon2id KSF (the argon2 crate's defaults), for interop: v1.3, m=19456 KiB,
# t=2, p=1, salt = 16 zero bytes, 64-byte output.
OPAQUE_KE_ARGON2ID = Argon2idParams(
    memory_kib=19456, iterations=2, parallelism=1, salt=ZERO_SALT, output_len=64
)
