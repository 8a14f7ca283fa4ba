"""C2SP signed notes and checkpoints, including the spec's own example."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.transparency.errors import (
    BadNoteSignature,
    MalformedNote,
    UnknownNoteKey,
    WrongOrigin,
)
from backupvault.transparency.note import (
    Checkpoint,
    Signer,
    Verifier,
    key_id,
    open_checkpoint,
    open_note,
    sign_note,
)

# From https://c2sp.org/signed-note ("Example").
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2"
    "ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)


def test_spec_example_verifies() -> None:
    verifier = Verifier.from_vkey(SPEC_VKEY)
    assert verifier.vkey() == SPEC_VKEY
    assert verifier.key_id.hex() == "530d903a"
    note = open_note(SPEC_NOTE, [verifier])
    assert note.text == "This is an example message.\n"
    assert note.verified == ("example.com/foo",)
    with pytest.raises(BadNoteSignature):
        open_note(SPEC_NOTE.replace("example message", "example massage"), [verifier])


def test_key_id_definition() -> None:
    import hashlib

    key = Ed25519PrivateKey.generate()
    signer = Signer("log.test/a", key)
    raw = signer.verifier.vkey().split("+", 2)[2]
    assert Verifier.from_vkey(signer.verifier.vkey()) == signer.verifier
    public = base64.b64decode(raw)[1:]
    assert signer.verifier.key_id == hashlib.sha256(b"log.test/a\n\x01" + public).digest()[:4]
    assert key_id("log.test/a", public) == signer.verifier.key_id


def test_sign_and_open_with_several_signers() -> None:
    a, b = (
        Signer("a.test", Ed25519PrivateKey.generate()),
        Signer("b.test", Ed25519PrivateKey.generate()),
    )
    note = sign_note("hello\n\nworld\n", [a, b])
    assert note.startswith("hello\n\nworld\n\n— a.test ")
    opened = open_note(note, [b.verifier])
    assert opened.text == "hello\n\nworld\n"  # the last blank line separates the signatures
    assert opened.verified == ("b.test",)
    assert open_note(note.encode(), [a.verifier, b.verifier]).verified == ("a.test", "b.test")


def test_unknown_key_refused_and_ignored() -> None:
    a = Signer("a.test", Ed25519PrivateKey.generate())
    note = sign_note("text\n", [a])
    stranger = Verifier("a.test", Ed25519PrivateKey.generate().public_key())  # same name
    with pytest.raises(UnknownNoteKey):
        open_note(note, [stranger])
    other_name = Verifier("b.test", a.private_key.public_key())  # same key, other name
    with pytest.raises(UnknownNoteKey):
        open_note(note, [other_name])
    # an extra signature by an unknown key is ignored when a known one verifies
    extra = note + Signer("z.test", Ed25519PrivateKey.generate()).signature_line("text\n")
    assert open_note(extra, [a.verifier]).verified == ("a.test",)


def test_bad_signature_from_known_key_refused() -> None:
    a = Signer("a.test", Ed25519PrivateKey.generate())
    note = sign_note("text\n", [a])
    raw = bytearray(base64.b64decode(note.rsplit(" ", 1)[1]))
    raw[10] ^= 1
    forged = note.rsplit(" ", 1)[0] + " " + base64.b64encode(bytes(raw)).decode() + "\n"
    with pytest.raises(BadNoteSignature):
        open_note(forged, [a.verifier])
    short = note.rsplit(" ", 1)[0] + " " + base64.b64encode(bytes(raw[:20])).decode() + "\n"
    with pytest.raises(BadNoteSignature):
        open_note(short, [a.verifier])


MALFORMED = [
    "no signatures\n",
    "text\n\n",
    "text\n\n— a.test AAAA",  # no final newline
    "text\n\n- a.test AAAAAAAA\n",  # hyphen, not an em dash
    "text\n\n— a.test\n",
    "text\n\n— a+b AAAAAAAA\n",
    "text\n\n—  AAAAAAAA\n",
    "text\n\n— a.test AAAA*AAA\n",
    "text\n\n— a.test AAAAAAB=\n",  # not canonical base64
    "text\n\n— a.test AAAA\n",  # shorter than a key ID and one byte
    "te\x01xt\n\n— a.test AAAAAAAA\n",
    "text\r\n\n— a.test AAAAAAAA\n",
    "text\n\n— a.test AAAAAAAA\n\n",
]


@pytest.mark.parametrize("note", MALFORMED)
def test_malformed_notes(note: str) -> None:
    verifier = Verifier("a.test", Ed25519PrivateKey.generate().public_key())
    with pytest.raises(MalformedNote):
        open_note(note, [verifier])


def test_malformed_bytes_and_sizes() -> None:
    verifier = Verifier("a.test", Ed25519PrivateKey.generate().public_key())
    with pytest.raises(MalformedNote):
        open_note(b"\xff\xfe\n\n" + "— a.test AAAAAAAA\n".encode(), [verifier])
    with pytest.raises(MalformedNote):
        open_note("x" * 70_000 + "\n\n— a.test AAAAAAAA\n", [verifier])
    with pytest.raises(MalformedNote):
        open_note("x\n\n" + "— a.test AAAAAAAA\n" * 65, [verifier])
    with pytest.raises(MalformedNote):
        sign_note("no newline", [Signer("a.test", Ed25519PrivateKey.generate())])
    for bad in ("", "a b", "a+b", "a\tb"):
        with pytest.raises(MalformedNote):
            Signer(bad, Ed25519PrivateKey.generate())
    for vkey in ("a.test+00000000", "a.test+00000000+AAAA", SPEC_VKEY.replace("530d", "530e")):
        with pytest.raises(MalformedNote):
            Verifier.from_vkey(vkey)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_text_never_crashes(text: str) -> None:
    verifier = Verifier("a.test", Ed25519PrivateKey.generate().public_key())
    with pytest.raises((MalformedNote, UnknownNoteKey)):
        open_note(text, [verifier])


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_roundtrip_and_format() -> None:
    signer = Signer("log.test/w", Ed25519PrivateKey.generate())
    cp = Checkpoint("log.test/w", 20852163, bytes(range(32)))
    assert cp.to_text() == (
        "log.test/w\n20852163\n" + base64.b64encode(bytes(range(32))).decode() + "\n"
    )
    note = cp.sign(signer)
    assert open_checkpoint(note, signer.verifier) == cp
    with_ext = Checkpoint("log.test/w", 0, bytes(32), ("ext one",))
    assert open_checkpoint(with_ext.sign(signer), signer.verifier) == with_ext


def test_checkpoint_wrong_origin() -> None:
    signer = Signer("log.test/w", Ed25519PrivateKey.generate())
    note = Checkpoint("other.test/log", 3, bytes(32)).sign(signer)
    with pytest.raises(WrongOrigin):
        open_checkpoint(note, signer.verifier)
    assert open_checkpoint(note, signer.verifier, origin="other.test/log").size == 3


@pytest.mark.parametrize(
    "text",
    [
        "log\n5\n",
        "log\n05\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "log\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "log\n18446744073709551616\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "log\n5\n" + base64.b64encode(bytes(31)).decode() + "\n",
        "\n5\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "log\n5\n" + base64.b64encode(bytes(32)).decode() + "\n\n",
    ],
)
def test_malformed_checkpoints(text: str) -> None:
    signer = Signer("log", Ed25519PrivateKey.generate())
    with pytest.raises(MalformedNote):
        open_checkpoint(sign_note(text, [signer]) if text.endswith("\n") else text, signer.verifier)


#: A small-order Ed25519 key (the identity point): under it the signature
#: (R = identity, S = 0) verifies for every message.
SMALL_ORDER_KEY = bytes([1]) + bytes(31)
FORGED_SIGNATURE = SMALL_ORDER_KEY + bytes(32)


def test_a_small_order_witness_key_is_refused() -> None:
    """A vkey (or a 64-hex witness key) naming a small-order point made every note,
    cosignature and fleet head "signed" by it for anyone: the forged signature below
    verified for any text. Such a key is refused where it is read, as a record's keys
    are."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from backupvault.client.trust import load_witness_verifier
    from backupvault.errors import InvalidInput
    from backupvault.transparency.note import key_id

    name = "witness.example/log"
    Ed25519PublicKey.from_public_bytes(SMALL_ORDER_KEY).verify(FORGED_SIGNATURE, b"any text")
    material = base64.b64encode(b"\x01" + SMALL_ORDER_KEY).decode()
    vkey = f"{name}+{key_id(name, SMALL_ORDER_KEY).hex()}+{material}"
    with pytest.raises(MalformedNote, match="prime-order"):
        Verifier.from_vkey(vkey)
    with pytest.raises(MalformedNote, match="prime-order"):
        Verifier(name, Ed25519PublicKey.from_public_bytes(SMALL_ORDER_KEY))
    with pytest.raises(InvalidInput, match="witness_public_key is not a witness key"):
        load_witness_verifier(SMALL_ORDER_KEY.hex(), name)
