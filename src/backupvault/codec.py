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
_Decode = Callable[[bytes, int, int], tuple[Any, int]]


class Message:
    """Base for wire messages; subclasses are frozen dataclasses with a class-level TAG."""

    TAG: ClassVar[int]
    # The most items a list field may hold when decoded, by field name (`MAX_ITEMS` if not
    # named): a list longer than any honest sender makes is refused at its count, before
    # its items are read (review s60: a peer's million-record page held a node's loop 3 s).
    LIST_LIMITS: ClassVar[dict[str, int]] = {}
    # Built once per class, at first use (the type hints resolve only once every class
    # they name exists): each field's name with its encoder, and the class's decoder.
    # Testing each field's type at every value made decoding a large part of a node's
    # CPU (docs/performance-history.md, run 8).
    _encoders_cache: ClassVar[list[tuple[str, _Encoder]] | None] = None
    _decode_cache: ClassVar[_Decode | None] = None

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
    def _decode(cls) -> _Decode:
        cached = cls.__dict__.get("_decode_cache")
        if cached is None:
            cached = _compile_decoder(cls)
            cls._decode_cache = cached
        return cached

    def to_bytes(self) -> bytes:
        out = bytearray((self.TAG,))
        for name, encode in self._encoders():
            encode(out, getattr(self, name))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        # Slices of bytes are bytes; a bytearray or memoryview is copied once here.
        data = data if type(data) is bytes else bytes(data)
        value, end = cls._decode()(data, 0, len(data))
        if end != len(data):
            raise InvalidInput(f"{len(data) - end} unexpected trailing bytes after {cls.__name__}")
        return value  # type: ignore[no-any-return]


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


# ---- decoding: one generated function per message class ---------------------------------
#
# A class's decoder is Python source made from its field types and compiled once, as
# dataclasses makes `__init__`: `decode(data, pos, end) -> (message, pos after it)`, reading
# the message that starts at `pos` and must end by `end`, every field inline. Nested
# messages are read in place (no copy of their bytes, no reader object); a nested message
# must fill its length exactly. It is two to three times as fast as a decoder per field
# (a node decodes some 200 nested messages a fan-out, most of them a value's recent ops:
# docs/performance.md, "What was changed"). The checks and their messages are those of
# the encoding above, in the same order.


def _truncated() -> InvalidInput:
    return InvalidInput("message is truncated")


def _wrong_tag(cls: type[Message], tag: int) -> InvalidInput:
    return InvalidInput(f"expected a {cls.__name__} message (tag {cls.TAG}), got tag {tag}")


def _trailing(cls: type[Message], count: int) -> InvalidInput:
    return InvalidInput(f"{count} unexpected trailing bytes after {cls.__name__}")


def _malformed(cls: type[Message], err: Exception) -> InvalidInput:
    return InvalidInput(f"malformed {cls.__name__}: {err}")


def _not_utf8() -> InvalidInput:
    return InvalidInput("text field is not UTF-8")


class _Source:
    """Lines of a generated decoder, with fresh local names and the objects they use."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {}
        self._count = 0

    def local(self) -> str:
        self._count += 1
        return f"v{self._count}"

    def use(self, value: Any) -> str:
        name = f"g{len(self.names)}"
        self.names[name] = value
        return name

    def add(self, indent: int, *lines: str) -> None:
        self.lines += ["    " * indent + line for line in lines]


def _emit_blob(src: _Source, indent: int) -> str:
    """Read a u32 length and check it; returns the name of the blob's end (it starts at
    `pos`), which the caller consumes by setting `pos` to it."""
    length, stop = src.local(), src.local()
    src.add(
        indent,
        "if pos + 4 > end: raise truncated()",
        f"{length} = u32(data, pos)[0]",
        "pos += 4",
        f"if {length} > {MAX_FIELD}: raise InvalidInput('field too large')",
        f"{stop} = pos + {length}",
        f"if {stop} > end: raise truncated()",
    )
    return stop


def _emit_field(
    src: _Source, kind: Any, indent: int, owner: type[Message], most: int = MAX_ITEMS
) -> str:
    """Emit the reading of one value of `kind` at `pos` (a list of at most `most` items);
    returns the local holding it."""
    out = src.local()
    if kind is int:
        src.add(indent, "if pos + 8 > end: raise truncated()", f"{out} = u64(data, pos)[0]")
        src.add(indent, "pos += 8")
    elif kind is bool:
        src.add(indent, "if pos >= end: raise truncated()", f"{out} = data[pos]")
        src.add(indent, f"if {out} > 1: raise InvalidInput('boolean must be 0 or 1')")
        src.add(indent, f"{out} = {out} == 1", "pos += 1")
    elif kind is bytes or kind is str:
        stop = _emit_blob(src, indent)
        src.add(indent, f"{out} = data[pos:{stop}]", f"pos = {stop}")
        if kind is str:
            src.add(indent, "try:", f"    {out} = {out}.decode()")
            src.add(indent, "except UnicodeDecodeError: raise not_utf8() from None")
    elif isinstance(kind, type) and issubclass(kind, Message):
        stop = _emit_blob(src, indent)
        nested, after = src.use(kind._decode()), src.local()
        src.add(indent, f"{out}, {after} = {nested}(data, pos, {stop})")
        src.add(indent, f"if {after} != {stop}: raise trailing({src.use(kind)}, {stop} - {after})")
        src.add(indent, f"pos = {stop}")
    elif get_origin(kind) is list:
        (item_kind,) = get_args(kind)
        count = src.local()
        src.add(indent, "if pos + 4 > end: raise truncated()", f"{count} = u32(data, pos)[0]")
        src.add(indent, "pos += 4")
        src.add(indent, f"if {count} > {most}: raise InvalidInput('list too long')")
        src.add(indent, f"{out} = []", f"for _ in range({count}):")
        item = _emit_field(src, item_kind, indent + 1, owner)
        src.add(indent + 1, f"{out}.append({item})")
    elif isinstance(kind, types.UnionType):
        raise TypeError("unions are not encodable; use a flag field")
    else:
        raise TypeError(f"codec cannot decode {kind!r} in {owner.__name__}")
    return out


def _compile_decoder(cls: type[Message]) -> _Decode:
    src = _Source()
    src.add(1, "if pos >= end: raise truncated()", f"if data[pos] != {cls.TAG}:")
    src.add(2, "raise wrong_tag(cls, data[pos])")
    src.add(1, "pos += 1")
    fields = [
        _emit_field(src, kind, 1, cls, cls.LIST_LIMITS.get(name, MAX_ITEMS))
        for name, kind in cls._field_types()
    ]
    src.add(1, "try:", f"    return cls({', '.join(fields)}), pos")
    src.add(1, "except (TypeError, ValueError) as err: raise malformed(cls, err) from None")
    code = "\n".join([f"def decode_{cls.__name__}(data, pos, end):", *src.lines])
    scope: dict[str, Any] = {
        **src.names,
        "cls": cls,
        "u32": _U32.unpack_from,
        "u64": _U64.unpack_from,
        "InvalidInput": InvalidInput,
        "truncated": _truncated,
        "wrong_tag": _wrong_tag,
        "trailing": _trailing,
        "malformed": _malformed,
        "not_utf8": _not_utf8,
    }
    exec(compile(code, f"<decoder of {cls.__qualname__}>", "exec"), scope)
    return typing.cast(_Decode, scope[f"decode_{cls.__name__}"])


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
