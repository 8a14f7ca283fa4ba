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

`untrusted_json` and `epoch_number` hold JSON from a relay, a node or a witness to the same
rule: malformed, huge, too deeply nested or out-of-range input raises `InvalidInput`, never
another exception.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Self, TypeVar, get_args, get_origin, get_type_hints

from backupvault.errors import InvalidInput

MAX_FIELD = 1 << 24  # 16 MiB: larger than any message we send, small enough to bound memory
MAX_ITEMS = 1 << 20

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


_Encoder = Callable[[bytearray, Any], None]
_Decoder = Callable[["_Reader"], Any]


class Message:
    """Base for wire messages; subclasses are frozen dataclasses with a class-level TAG."""

    TAG: ClassVar[int]
    # Built once per class, at first use (the type hints resolve only once every class
    # they name exists): each field's name with its encoder, and the fields' decoders.
    # Testing each field's type at every value made decoding a large part of a node's
    # CPU (docs/performance-history.md, run 8).
    _encoders_cache: ClassVar[list[tuple[str, _Encoder]] | None] = None
    _decoders_cache: ClassVar[list[_Decoder] | None] = None

    @classmethod
    def _field_types(cls) -> list[tuple[str, Any]]:
        hints = get_type_hints(cls)
        return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def _encoders(cls) -> list[tuple[str, _Encoder]]:
        cached = cls.__dict__.get("_encoders_cache")
        if cached is None:
            cached = [(name, _encoder(kind)) for name, kind in cls._field_types()]
            cls._encoders_cache = cached
        return cached

    @classmethod
    def _decoders(cls) -> list[_Decoder]:
        cached = cls.__dict__.get("_decoders_cache")
        if cached is None:
            cached = [_decoder(kind) for _, kind in cls._field_types()]
            cls._decoders_cache = cached
        return cached

    def to_bytes(self) -> bytes:
        out = bytearray((self.TAG,))
        for name, encode in self._encoders():
            encode(out, getattr(self, name))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        reader = _Reader(data)
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
        values = [decode(reader) for decode in cls._decoders()]
        try:
            return cls(*values)
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


def _encode_bool(out: bytearray, value: Any) -> None:
    out.append(1 if value else 0)


def _encode_int(out: bytearray, value: Any) -> None:
    if not 0 <= value < 1 << 64:
        raise InvalidInput(f"integer {value} does not fit in u64")
    out += _U64.pack(value)


def _encode_bytes(out: bytearray, value: Any) -> None:
    raw = bytes(value)
    if len(raw) > MAX_FIELD:
        raise InvalidInput("field too large")
    out += _U32.pack(len(raw))
    out += raw


def _encode_str(out: bytearray, value: Any) -> None:
    _encode_bytes(out, value.encode())


def _encode_message(out: bytearray, value: Any) -> None:
    _encode_bytes(out, value.to_bytes())


def _encoder(kind: Any) -> _Encoder:
    if kind is bool:
        return _encode_bool
    if kind is int:
        return _encode_int
    if kind is bytes:
        return _encode_bytes
    if kind is str:
        return _encode_str
    if isinstance(kind, type) and issubclass(kind, Message):
        return _encode_message
    if get_origin(kind) is list:
        (item_kind,) = get_args(kind)
        encode_item = _encoder(item_kind)

        def encode_list(out: bytearray, value: Any) -> None:
            out += _U32.pack(len(value))
            for item in value:
                encode_item(out, item)

        return encode_list
    raise TypeError(f"codec cannot encode {kind!r}")


def _decode_bool(reader: _Reader) -> bool:
    flag = reader.u8()
    if flag > 1:
        raise InvalidInput("boolean must be 0 or 1")
    return flag == 1


def _decode_str(reader: _Reader) -> str:
    try:
        return reader.blob().decode()
    except UnicodeDecodeError:
        raise InvalidInput("text field is not UTF-8") from None


def _decoder(kind: Any) -> _Decoder:
    if kind is bool:
        return _decode_bool
    if kind is int:
        return _Reader.u64
    if kind is bytes:
        return _Reader.blob
    if kind is str:
        return _decode_str
    if isinstance(kind, type) and issubclass(kind, Message):
        message = kind
        return lambda reader: message.from_bytes(reader.blob())
    if get_origin(kind) is list:
        (item_kind,) = get_args(kind)
        decode_item = _decoder(item_kind)

        def decode_list(reader: _Reader) -> list[Any]:
            count = reader.u32()
            if count > MAX_ITEMS:
                raise InvalidInput("list too long")
            return [decode_item(reader) for _ in range(count)]

        return decode_list
    if isinstance(kind, types.UnionType):
        raise TypeError("unions are not encodable; use a flag field")
    raise TypeError(f"codec cannot decode {kind!r}")


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        # Slices of bytes are bytes; a bytearray or memoryview is copied once here.
        self._data = data if type(data) is bytes else bytes(data)
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _advance(self, n: int) -> int:
        """The position of the next n bytes, which are then consumed."""
        pos = self._pos
        if pos + n > len(self._data):
            raise InvalidInput("message is truncated")
        self._pos = pos + n
        return pos

    def u8(self) -> int:
        return self._data[self._advance(1)]

    def u32(self) -> int:
        return int(_U32.unpack_from(self._data, self._advance(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack_from(self._data, self._advance(8))[0])

    def blob(self) -> bytes:
        length = self.u32()
        if length > MAX_FIELD:
            raise InvalidInput("field too large")
        pos = self._advance(length)
        return self._data[pos : pos + length]


# ---- JSON from a peer that is not trusted ---------------------------------------------------

#: Larger than any JSON answer the relay, a node or a witness gives (an epoch list, a
#: consistency proof, a measurement), small enough to parse at once.
MAX_JSON = 1 << 20
MAX_EPOCH = (1 << 64) - 1  # an epoch is a u64 in records and messages


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def untrusted_json(data: bytes | str, what: str) -> Any:
    """`data` parsed as JSON, or `InvalidInput` naming `what` (too large, malformed, nested
    too deeply for the parser, or NaN/Infinity)."""
    if len(data) > MAX_JSON:
        raise InvalidInput(f"{what} is larger than {MAX_JSON} bytes")
    try:
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        detail = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise InvalidInput(f"{what} is not valid JSON: {detail}") from None


def epoch_number(value: object, what: str) -> int:
    """`value` if it is an epoch (a JSON integer in 0 … 2^64-1, not a boolean, a float or
    a string), else `InvalidInput` naming `what`."""
    if type(value) is not int:
        raise InvalidInput(f"{what} is not an epoch number (a JSON {type(value).__name__})")
    if not 0 <= value <= MAX_EPOCH:
        raise InvalidInput(f"{what} is out of range for an epoch (0 to 2^64-1)")
    return value
