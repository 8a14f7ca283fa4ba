"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519, and tlog checkpoints
(https://c2sp.org/tlog-checkpoint).

A signed note is UTF-8 text without control characters other than newline:

    <text, ending in "\\n">
    "\\n"                                            (a blank line)
    "— " <key name> " " base64(key ID (4) || Ed25519 signature (64)) "\\n"   (one or more)

    key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]
    vkey   = <key name> "+" hex(key ID) "+" base64(0x01 || public key)

The signature is over the text, final newline included. A verifier ignores signatures by
keys it does not know (name and ID both must match), rejects the note if a known key's
signature fails, and rejects it if no known key signed.

A checkpoint is a signed note whose text is

    <origin> "\\n" <tree size, decimal, no leading zeros> "\\n" base64(root hash) "\\n"
    [<extension line> "\\n"]*
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backupvault.crypto.ed25519 import check_public_key
from backupvault.errors import InvalidInput
from backupvault.transparency.errors import (
    BadNoteSignature,
    MalformedNote,
    UnknownNoteKey,
    WrongOrigin,
)

ED25519_TYPE = 0x01
KEY_ID_LEN = 4
SIGNATURE_LEN = 64
#: Limits a verifier applies before any parsing (the spec asks for at least 16 signatures).
MAX_NOTE_BYTES = 64 * 1024
MAX_SIGNATURES = 64
SIGNATURE_PREFIX = "— "  # em dash (U+2014), space

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unbase64(text: str, what: str) -> bytes:
    """Strict standard base64: valid alphabet, padding, and canonical (re-encodes the same)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise MalformedNote(f"{what} is not base64") from None
    if _b64(raw) != text:
        raise MalformedNote(f"{what} is not canonical base64")
    return raw


def check_key_name(name: str) -> str:
    """A key name: non-empty, no Unicode spaces, no '+', no control characters."""
    if (
        not isinstance(name, str)
        or not name
        or "+" in name
        or any(ch.isspace() for ch in name)
        or _CONTROL.search(name)
        or len(name.encode()) > 256
    ):
        raise MalformedNote("a key name must be 1-256 bytes without spaces or '+'")
    return name


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte Ed25519 key ID of `name` and the raw 32-byte `public_key`."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519_TYPE]) + public_key).digest()[
        :KEY_ID_LEN
    ]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Verifier:
    """A named Ed25519 public key that checks note signatures."""

    name: str
    public_key: Ed25519PublicKey

    def __post_init__(self) -> None:
        check_key_name(self.name)
        # Under a small-order key a forged signature verifies for any text: every note,
        # cosignature and fleet head would be "signed" for whoever makes one.
        try:
            check_public_key(_raw_public(self.public_key), f"the key of {self.name}")
        except InvalidInput as err:
            raise MalformedNote(err.message) from None

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, _raw_public(self.public_key))

    def vkey(self) -> str:
        raw = _raw_public(self.public_key)
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([ED25519_TYPE]) + raw)}"

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse `<name>+<hex key ID>+<base64(0x01 || key)>`, checking the key ID."""
        parts = vkey.split("+", 2)  # the base64 part may itself contain '+'
        if len(parts) != 3:
            raise MalformedNote("a verifier key has three '+'-separated parts")
        name, hex_id, b64_key = parts
        check_key_name(name)
        material = unbase64(b64_key, "the verifier key")
        if len(material) != 33 or material[0] != ED25519_TYPE:
            raise MalformedNote("only Ed25519 verifier keys (type 0x01, 32 bytes) are supported")
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id) or bytes.fromhex(hex_id) != key_id(
            name, material[1:]
        ):
            raise MalformedNote("the verifier key's ID does not match its name and key")
        return cls(name, Ed25519PublicKey.from_public_bytes(material[1:]))


@dataclass(frozen=True)
class Signer:
    """A named Ed25519 private key that signs notes."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.private_key.public_key())

    def signature_line(self, text: str) -> str:
        sig = self.private_key.sign(text.encode())
        return f"{SIGNATURE_PREFIX}{self.name} {_b64(self.verifier.key_id + sig)}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise MalformedNote("a note's text must end with a newline")
    if _CONTROL.search(text):
        raise MalformedNote("a note must not contain control characters other than newline")


def sign_note(text: str, signers: Sequence[Signer]) -> str:
    """The signed note: `text`, a blank line, one signature line per signer."""
    _check_text(text)
    if not signers:
        raise ValueError("a signed note needs at least one signer")
    return text + "\n" + "".join(s.signature_line(text) for s in signers)


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class Note:
    """A note whose signatures were checked: `verified` names the keys that verified."""

    text: str
    signatures: tuple[Signature, ...]
    verified: tuple[str, ...]


def parse_note(note: str | bytes) -> tuple[str, tuple[Signature, ...]]:
    """Split a signed note into its text and signatures (nothing verified yet)."""
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise MalformedNote("the note is too long")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedNote("a note must be UTF-8") from None
    if not isinstance(note, str):
        raise MalformedNote("a note is text")
    if len(note) > MAX_NOTE_BYTES or len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise MalformedNote("the note is too long")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedNote("a note must be UTF-8") from None
    if _CONTROL.search(note):
        raise MalformedNote("a note must not contain control characters other than newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedNote("a signed note has a blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise MalformedNote("a signed note ends with signature lines, each ending in newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNote(f"a note may carry at most {MAX_SIGNATURES} signatures")
    signatures = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise MalformedNote("a signature line starts with an em dash and a space")
        name, sep, b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not sep:
            raise MalformedNote("a signature line is '— <key name> <base64 signature>'")
        check_key_name(name)
        raw = unbase64(b64, "a signature")
        if len(raw) < KEY_ID_LEN + 1:
            raise MalformedNote("a signature is too short")
        signatures.append(Signature(name, raw[:KEY_ID_LEN], raw[KEY_ID_LEN:]))
    return text, tuple(signatures)


def open_note(note: str | bytes, verifiers: Sequence[Verifier]) -> Note:
    """Parse and verify a signed note against the known `verifiers`."""
    text, signatures = parse_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[str] = []
    for sig in signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue  # unknown keys are ignored (the spec requires it)
        if len(sig.signature) != SIGNATURE_LEN:
            raise BadNoteSignature(f"the signature by {sig.name} is not {SIGNATURE_LEN} bytes")
        try:
            verifier.public_key.verify(sig.signature, text.encode())
        except InvalidSignature:
            raise BadNoteSignature(f"the signature by {sig.name} does not verify") from None
        if sig.name not in verified:
            verified.append(sig.name)
    if not verified:
        raise UnknownNoteKey(
            "the note is not signed by any key we trust",
            hint="known keys: " + ", ".join(sorted(v.name for v in verifiers)),
        )
    return Note(text, signatures, tuple(verified))


# --- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: its origin, tree size and root hash (+ opaque extension lines)."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin or _CONTROL.search(self.origin):
            raise MalformedNote("a checkpoint's origin must be one non-empty line")
        if not 0 <= self.size < 1 << 64:
            raise MalformedNote("a checkpoint's tree size is a u64")
        if len(self.root_hash) != 32:
            raise MalformedNote("a checkpoint's root hash is 32 bytes")
        for ext in self.extensions:
            if not ext or "\n" in ext or _CONTROL.search(ext):
                raise MalformedNote("checkpoint extension lines are single non-empty lines")

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), _b64(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise MalformedNote("a checkpoint's text ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedNote("a checkpoint has an origin, a tree size and a root hash line")
        origin, size, root_b64, *extensions = lines
        if not _SIZE.fullmatch(size) or int(size) >= 1 << 64:
            raise MalformedNote("a checkpoint's tree size is a decimal u64 without leading zeros")
        root_hash = unbase64(root_b64, "the checkpoint's root hash")
        return cls(origin, int(size), root_hash, tuple(extensions))

    def sign(self, signer: Signer) -> str:
        return sign_note(self.to_text(), [signer])


def open_checkpoint(note: str | bytes, verifier: Verifier, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint by `verifier` whose origin must be `origin` (by default
    the verifier's key name, as C2SP recommends)."""
    opened = open_note(note, [verifier])
    checkpoint = Checkpoint.from_text(opened.text)
    expected = verifier.name if origin is None else origin
    if checkpoint.origin != expected:
        raise WrongOrigin(
            f"the checkpoint is from log {checkpoint.origin!r}, expected {expected!r}"
        )
    return checkpoint
