"""A small, strict binary encoding for the messages between clients, nodes and relay.

A message is a frozen dataclass subclassing `Message` with a unique `TAG` (u8). Encoding:

    message = tag (u8) || field_1 || field_2 || …      (fields in declaration order)
    int     = u64, big-endian (values 0 … 2^64-1)
    bool    = u8, 0x00 or 0x01
    bytes   = u32 length, big-endian || the bytes       (at most MAX_FIELD bytes)
    str     = like bytes, UTF-8
    Message = like bytes, holding the nested message's encoding
    list[M] = u32 count || each item encoded as a nested Message

Decoding rejects a wrong tag, a short or long buffer, trailing bytes, out-of-range
lengths, bad UTF-8 and non-canonical booleans with `InvalidInput`, so a parser fed random
bytes can only raise that. This module is a leaf: every part may import it.
"""

from __future__ import annotations

import dataclasses
import struct
import types
import typing
from typing import Any, ClassVar, Self, TypeVar, get_args, get_origin, get_type_hints

from backupvault.errors import InvalidInput

MAX_FIELD = 1 << 24  # 16 MiB: larger than any message we send, small enough to bound memory
MAX_ITEMS = 1 << 20

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Message:
    """Base for wire messages; subclasses are frozen dataclasses with a class-level TAG."""

    TAG: ClassVar[int]
    _fields_cache: ClassVar[list[tuple[str, Any]] | None] = None

    @classmethod
    def _field_types(cls) -> list[tuple[str, Any]]:
        cached = cls.__dict__.get("_fields_cache")
        if cached is None:
            hints = get_type_hints(cls)
            cached = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
            cls._fields_cache = cached
        return cached

    def to_bytes(self) -> bytes:
        out = bytearray(_U8.pack(self.TAG))
        for name, kind in self._field_types():
            _encode(out, kind, getattr(self, name))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        reader = _Reader(memoryview(data))
        tag = reader.u8()
        if tag != cls.TAG:
            raise InvalidInput(f"expected a {cls.__name__} message (tag {cls.TAG}), got tag {tag}")
        value = cls._decode_fields(reader)
        if reader.remaining():
            raise InvalidInput(
                f"{reader.remaining()} unexpected trailing bytes after {cls.__name__}"
            )
        return value

    @classmethod
    def _decode_fields(cls, reader: _Reader) -> Self:
        values = {name: _decode(reader, kind) for name, kind in cls._field_types()}
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise InvalidInput(f"malformed {cls.__name__}: {err}") from None


M = TypeVar("M", bound=Message)


def decode_any(data: bytes, choices: typing.Iterable[type[M]]) -> M:
    """Decode a message that may be any of `choices`, picked by its tag."""
    if not data:
        raise InvalidInput("empty message")
    for cls in choices:
        if data[0] == cls.TAG:
            return cls.from_bytes(data)
    raise InvalidInput(f"unknown message tag {data[0]}")


def _encode(out: bytearray, kind: Any, value: Any) -> None:
    if kind is bool:
        out += _U8.pack(1 if value else 0)
    elif kind is int:
        if not 0 <= value < 1 << 64:
            raise InvalidInput(f"integer {value} does not fit in u64")
        out += _U64.pack(value)
    elif kind is bytes or kind is str:
        raw = value.encode() if kind is str else bytes(value)
        if len(raw) > MAX_FIELD:
            raise InvalidInput("field too large")
        out += _U32.pack(len(raw)) + raw
    elif isinstance(kind, type) and issubclass(kind, Message):
        _encode(out, bytes, value.to_bytes())
    elif get_origin(kind) is list:
        (item_kind,) = get_args(kind)
        out += _U32.pack(len(value))
        for item in value:
            _encode(out, item_kind, item)
    else:
        raise TypeError(f"codec cannot encode {kind!r}")


def _decode(reader: _Reader, kind: Any) -> Any:
    if kind is bool:
        flag = reader.u8()
        if flag > 1:
            raise InvalidInput("boolean must be 0 or 1")
        return flag == 1
    if kind is int:
        return reader.u64()
    if kind is bytes:
        return reader.blob()
    if kind is str:
        try:
            return reader.blob().decode()
        except UnicodeDecodeError:
            raise InvalidInput("text field is not UTF-8") from None
    if isinstance(kind, type) and issubclass(kind, Message):
        return kind.from_bytes(reader.blob())
    if get_origin(kind) is list:
        (item_kind,) = get_args(kind)
        count = reader.u32()
        if count > MAX_ITEMS:
            raise InvalidInput("list too long")
        return [_decode(reader, item_kind) for _ in range(count)]
    if isinstance(kind, types.UnionType):
        raise TypeError("unions are not encodable; use a flag field")
    raise TypeError(f"codec cannot decode {kind!r}")


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int) -> memoryview:
        if n > self.remaining():
            raise InvalidInput("message is truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return int(_U8.unpack(self._take(1))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def blob(self) -> bytes:
        length = self.u32()
        if length > MAX_FIELD:
            raise InvalidInput("field too large")
        return bytes(self._take(length))
