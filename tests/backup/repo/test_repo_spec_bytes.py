"""The repository format as docs/format.md ("Repository format (version 3)") names it, byte
by byte: a repository built here by hand from the page alone (struct layouts, the labels
it gives, HKDF/HMAC/BLAKE3/AES-GCM as it defines them) restores with the code, and what
the code writes parses here with the page's layouts. A drift of either side (a field's
size or order, a label, an associated data) fails one of these."""

from __future__ import annotations

import hmac
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupvault.backup.errors import Corrupt
from backupvault.backup.repo import Repository, create_snapshot, restore_snapshot
from backupvault.backup.repo.chunks import one_frame
from backupvault.backup.repo.repository import SHARED, RepositoryLocked
from backupvault.backup.storage import Storage
from backupvault.errors import BackupVaultError, InvalidInput

ROOT_KEY = bytes(range(32))
REPO_KEY = bytes(range(100, 132))
REPO_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
SNAPSHOT_ID = bytes.fromhex("5a" * 16)
PACK_ID = bytes.fromhex("7e" * 16)
INDEX_ID = bytes.fromhex("1d" * 16)
LOCK_ID = bytes.fromhex("10" * 16)
CREATED_US = 1_750_000_000_123_456
MTIME_NS = 1_700_000_000_123_456_000
# chunk_min, chunk_avg, chunk_max, pack_size: small, inside the documented ranges
PARAMS = (1024, 4096, 16384, 65536)


def hkdf(ikm: bytes, salt: bytes | None, info: str, length: int = 32) -> bytes:
    """format.md: HKDF-SHA256, an empty salt when "none"."""
    return HKDF(hashes.SHA256(), length, salt, info.encode()).derive(ikm)


def gcm(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def ungcm(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """nonce (12) ‖ AES-GCM(...), as every sealed object of the format is."""
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)


def spec_key_check(label: str, message: bytes) -> bytes:
    """`HMAC(HKDF(RK, none, "backupvault/v2 <label>", 32), message)[0:16]`."""
    return hmac.digest(hkdf(ROOT_KEY, None, f"backupvault/v2 {label}"), message, "sha256")[:16]


def spec_config() -> bytes:
    magic, version = b"BVREPCFG", 3
    check = spec_key_check("repo key-check", magic + bytes([version]) + REPO_ID)
    nonce = b"\x01" * 12
    prefix = struct.pack(">8sB16sIIII16s12s", magic, version, REPO_ID, *PARAMS, check, nonce)
    assert len(prefix) == 69
    return prefix + gcm(
        hkdf(ROOT_KEY, None, "backupvault/v2 repo rmk-wrap"), nonce, REPO_KEY, prefix
    )


def subkey(label: str) -> bytes:
    return hkdf(REPO_KEY, REPO_ID, f"backupvault/v2 {label}")


def spec_blob(
    data: bytes, compression: int, nonce: bytes, after: bytes = b""
) -> tuple[bytes, bytes]:
    """(chunk id, blob): `u8 compression ‖ nonce ‖ AES-GCM(chunk key, nonce, data,
    chunk id ‖ u8 compression)`, the id keyed BLAKE3 of the plaintext (version 3); `after`
    is sealed after the zstd frame (no writer does)."""
    chunk_id = blake3.blake3(data, key=subkey("chunk-id")).digest()
    payload = zstandard.ZstdCompressor(level=1).compress(data) + after if compression else data
    aad = chunk_id + bytes([compression])
    return chunk_id, bytes([compression]) + nonce + gcm(subkey("chunk-seal"), nonce, payload, aad)


def spec_tree(entries: list[bytes]) -> bytes:
    return struct.pack(">I", len(entries)) + b"".join(entries)


def spec_entry(kind: int, path: bytes, mode: int, rest: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(path)) + path + struct.pack(">Hq", mode, MTIME_NS) + rest


def spec_file(path: bytes, mode: int, size: int, chunk_ids: list[bytes]) -> bytes:
    rest = struct.pack(">QQqI", size, 4242, MTIME_NS, len(chunk_ids)) + b"".join(chunk_ids)
    return spec_entry(1, path, mode, rest)


def build_repository(
    root: Path,
    *,
    after_blob_frame: bytes = b"",
    after_tree_frame: bytes = b"",
    tree_sizes: bool = True,
) -> dict[str, bytes]:
    """A whole repository written from docs/format.md alone; the files it holds. The
    `after_*` bytes are sealed after a zstd frame, where the page allows nothing."""
    text = b"a chunk stored raw\n"
    log = b"a chunk that zstd shrinks, said again and again\n" * 40
    text_id, text_blob = spec_blob(text, 0x00, b"\x02" * 12)
    log_id, log_blob = spec_blob(log, 0x01, b"\x03" * 12, after_blob_frame)

    # Pack: blobs, then the sealed header and its u32 length.
    entries = [
        (log_id, 0, len(log_blob), len(log)),
        (text_id, len(log_blob), len(text_blob), len(text)),
    ]
    header = struct.pack(">I", len(entries)) + b"".join(struct.pack(">32sIII", *e) for e in entries)
    sealed_header = b"\x04" * 12 + gcm(
        subkey("index-seal"), b"\x04" * 12, header, b"BVPACK02" + PACK_ID
    )
    pack = log_blob + text_blob + sealed_header + struct.pack(">I", len(sealed_header))

    # Index object: nothing superseded, one pack record.
    body = struct.pack(">I", 0) + struct.pack(">I", 1) + PACK_ID + header
    index = b"\x05" * 12 + gcm(subkey("index-seal"), b"\x05" * 12, body, b"BVINDEX2" + INDEX_ID)

    # Snapshot: header (141), u32 len(sealed summary), sealed summary, sealed tree.
    magic, version = b"BVSNAPSH", 2
    check = spec_key_check("snapshot key-check", magic + bytes([version]) + SNAPSHOT_ID)
    wrap_nonce, data_key = b"\x06" * 12, bytes(range(200, 232))
    prefix = struct.pack(
        ">8sB16s16s16sQ16s12s",
        magic,
        version,
        SNAPSHOT_ID,
        REPO_ID,
        bytes(16),
        CREATED_US,
        check,
        wrap_nonce,
    )
    assert len(prefix) == 93
    snap_header = prefix + gcm(
        hkdf(ROOT_KEY, None, "backupvault/v2 snapshot dk-wrap"), wrap_nonce, data_key, prefix
    )
    assert len(snap_header) == 141
    source, host = b"/home/spec/src", b"spec-host"
    summary = (
        struct.pack(">BQQQQQQ", 1, 2, 2, 1, len(text) + len(log), len(text) + len(log), len(pack))
        + struct.pack(">H", len(source))
        + source
        + struct.pack(">H", len(host))
        + host
        + bytes([2])  # key_kind: recovery code
    )
    tree = spec_tree(
        [
            spec_entry(2, b".", 0o750),
            spec_file(b"notes.txt", 0o640, len(text), [text_id]),
            spec_entry(2, b"sub", 0o700),
            spec_file(b"sub/chat.log", 0o600, len(text) + len(log), [log_id, text_id]),
            spec_entry(3, b"latest", 0o777, struct.pack(">H", 12) + b"sub/chat.log"),
        ]
    )
    sealed_summary = b"\x07" * 12 + gcm(data_key, b"\x07" * 12, summary, snap_header + b"summary")
    sealed_tree = b"\x08" * 12 + gcm(
        data_key,
        b"\x08" * 12,
        zstandard.ZstdCompressor(write_content_size=tree_sizes).compress(tree) + after_tree_frame,
        snap_header + b"tree",
    )
    snapshot = snap_header + struct.pack(">I", len(sealed_summary)) + sealed_summary + sealed_tree

    for name, data in {
        "config": spec_config(),
        f"data/{PACK_ID.hex()}": pack,
        f"index/{INDEX_ID.hex()}": index,
        f"snapshots/{SNAPSHOT_ID.hex()}": snapshot,
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return {"notes.txt": text, "sub/chat.log": log + text}


def test_a_repository_built_from_the_spec_restores(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    files = build_repository(root)
    assert len((root / "config").read_bytes()) == 117

    opened = Repository.open(Storage(str(root)), ROOT_KEY)
    (listed,) = opened.list_snapshots()
    assert listed.id_hex == SNAPSHOT_ID.hex()
    assert listed.header.created_at_us == CREATED_US
    assert listed.header.parent is None
    summary = listed.summary
    assert (summary.kind, summary.files, summary.folders, summary.links) == (1, 2, 2, 1)
    assert (summary.source, summary.host, summary.key_name) == (
        "/home/spec/src",
        "spec-host",
        "recovery code",
    )

    out = tmp_path / "out"
    restore_snapshot(str(root), ROOT_KEY, out, snapshot_id=SNAPSHOT_ID.hex(), key="recovery code")
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    assert stat.S_IMODE((out / "notes.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((out / "sub").stat().st_mode) == 0o700
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert (out / "notes.txt").stat().st_mtime_ns == MTIME_NS
    assert os.readlink(out / "latest") == "sub/chat.log"


def test_a_lock_and_a_forget_record_built_from_the_spec_are_read(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    build_repository(root)
    index_key = subkey("index-seal")
    now_us = 1_999_999_999_000_000  # refreshed far ahead: not stale by the holder's time
    host, machine = b"spec-host", b"\x42" * 16
    plain = struct.pack(">BQQI", 2, now_us, now_us, 31337) + host + b"\x00" + machine
    (root / "locks").mkdir()
    (root / "locks" / LOCK_ID.hex()).write_bytes(
        b"\x09" * 12 + gcm(index_key, b"\x09" * 12, plain, b"BVLOCK02" + LOCK_ID)
    )
    gone = bytes.fromhex("66" * 16)
    record = b"\x0a" * 12 + gcm(
        index_key, b"\x0a" * 12, struct.pack(">Q", CREATED_US), b"BVFORGT2" + gone
    )
    assert len(record) == 36
    (root / "forgotten").mkdir()
    (root / "forgotten" / gone.hex()).write_bytes(record)

    opened = Repository.open(Storage(str(root)), ROOT_KEY)
    (lock,) = opened.locks()
    assert (lock.lock_id, lock.kind, lock.pid, lock.host, lock.machine) == (
        LOCK_ID.hex(),
        2,
        31337,
        "spec-host",
        machine,
    )
    assert (lock.created_us, lock.refreshed_us) == (now_us, now_us)
    assert opened.was_forgotten(gone.hex())
    assert not opened.was_forgotten(SNAPSHOT_ID.hex())


def test_what_the_code_writes_parses_with_the_spec(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    content = os.urandom(5000) + b"\x00" * 5000
    (source / "f.bin").write_bytes(content)
    root = tmp_path / "repo"
    create_snapshot(
        str(source),
        str(root),
        ROOT_KEY,
        repo_params=dict(
            zip(("chunk_min", "chunk_avg", "chunk_max", "pack_size"), PARAMS, strict=True)
        ),
    )

    config = (root / "config").read_bytes()
    assert len(config) == 117
    magic, version, repo_id, *params, check, nonce = struct.unpack_from(">8sB16sIIII16s12s", config)
    assert (magic, version, tuple(params)) == (b"BVREPCFG", 3, PARAMS)
    assert check == spec_key_check("repo key-check", magic + b"\x03" + repo_id)
    repo_key = AESGCM(hkdf(ROOT_KEY, None, "backupvault/v2 repo rmk-wrap")).decrypt(
        nonce, config[69:], config[:69]
    )

    def key(label: str) -> bytes:
        return hkdf(repo_key, repo_id, f"backupvault/v2 {label}")

    # Every chunk of every pack, found through the index object by the spec's layout.
    (index_path,) = (root / "index").iterdir()
    body = ungcm(
        key("index-seal"), index_path.read_bytes(), b"BVINDEX2" + bytes.fromhex(index_path.name)
    )
    (superseded,) = struct.unpack_from(">I", body)
    pos = 4 + 16 * superseded
    (packs,) = struct.unpack_from(">I", body, pos)
    pos += 4
    chunks: dict[bytes, bytes] = {}
    for _ in range(packs):
        pack_id = body[pos : pos + 16]
        (count,) = struct.unpack_from(">I", body, pos + 16)
        pos += 20
        pack = (root / "data" / pack_id.hex()).read_bytes()
        (sealed_len,) = struct.unpack(">I", pack[-4:])
        header = ungcm(key("index-seal"), pack[-4 - sealed_len : -4], b"BVPACK02" + pack_id)
        assert header == body[pos - 4 : pos + 44 * count]
        for chunk_id, offset, length, raw_length in struct.iter_unpack(
            ">32sIII", body[pos : pos + 44 * count]
        ):
            blob = pack[offset : offset + length]
            data = ungcm(key("chunk-seal"), blob[1:], chunk_id + blob[:1])
            if blob[0] == 1:
                data = zstandard.ZstdDecompressor().decompress(data)
            assert blob[0] in (0, 1) and len(data) == raw_length
            assert blake3.blake3(data, key=key("chunk-id")).digest() == chunk_id
            chunks[chunk_id] = data
        pos += 44 * count
    assert pos == len(body)

    (snap_path,) = (root / "snapshots").iterdir()
    snapshot = snap_path.read_bytes()
    magic, version, sid, rid, parent, _created, _check, wrap_nonce = struct.unpack_from(
        ">8sB16s16s16sQ16s12s", snapshot
    )
    assert (magic, version, sid, rid, parent) == (
        b"BVSNAPSH",
        2,
        bytes.fromhex(snap_path.name),
        repo_id,
        bytes(16),
    )
    data_key = AESGCM(hkdf(ROOT_KEY, None, "backupvault/v2 snapshot dk-wrap")).decrypt(
        wrap_nonce, snapshot[93:141], snapshot[:93]
    )
    (summary_len,) = struct.unpack_from(">I", snapshot, 141)
    summary = ungcm(data_key, snapshot[145 : 145 + summary_len], snapshot[:141] + b"summary")
    assert summary[0] == 1 and summary[-1] in (0, 1, 2)
    tree = zstandard.ZstdDecompressor().decompress(
        ungcm(data_key, snapshot[145 + summary_len :], snapshot[:141] + b"tree")
    )
    (count,) = struct.unpack_from(">I", tree)
    pos, paths = 4, []
    for _ in range(count):
        kind, n = struct.unpack_from(">BH", tree, pos)
        path = tree[pos + 3 : pos + 3 + n]
        pos += 3 + n + struct.calcsize(">Hq")
        if kind == 1:
            size, _inode, _ctime, k = struct.unpack_from(">QQqI", tree, pos)
            pos += struct.calcsize(">QQqI")
            ids = [tree[p : p + 32] for p in range(pos, pos + 32 * k, 32)]
            pos += 32 * k
            assert b"".join(chunks[i] for i in ids) == content and size == len(content)
        paths.append((kind, path))
    assert pos == len(tree)
    assert paths == [(2, b"."), (1, b"f.bin")]


def test_a_lock_of_an_unknown_kind_counts_as_one_of_another_version(tmp_path: Path) -> None:
    """format.md, "Locks": kind is 1 (shared) or 2 (exclusive); an object in locks/ that
    does not open as a lock (damage, or a lock of another version) counts as exclusive. A
    lock of kind 3, sealed under the index key (a later version's), was read as a lock
    and named "a backup or check" to the user."""
    root = tmp_path / "repo"
    build_repository(root)
    now_us = 1_999_999_999_000_000
    plain = struct.pack(">BQQI", 3, now_us, now_us, 31337) + b"spec-host" + b"\x00" + b"\x42" * 16
    (root / "locks").mkdir()
    (root / "locks" / LOCK_ID.hex()).write_bytes(
        b"\x09" * 12 + gcm(subkey("index-seal"), b"\x09" * 12, plain, b"BVLOCK02" + LOCK_ID)
    )
    opened = Repository.open(Storage(str(root)), ROOT_KEY)
    with pytest.raises(RepositoryLocked, match=r"does not open as a lock: lock .* kind 3"):
        opened.lock(SHARED).acquire()
    assert [lock.lock_id for lock in opened.locks()] == [LOCK_ID.hex()]  # still in force


@pytest.mark.parametrize(
    "after",
    [b"junk", b"\x00", zstandard.ZstdCompressor().compress(b"a second frame")],
)
def test_bytes_after_a_zstd_frame_are_refused(tmp_path: Path, after: bytes) -> None:
    """format.md: a compressed blob's data and a snapshot's tree are each `zstd(x)`, one
    frame. A one-shot decompress read the first frame and dropped what followed it, so
    sealed bytes no writer makes were taken without a word."""
    tree_after = tmp_path / "tree"
    build_repository(tree_after, after_tree_frame=after)
    opened = Repository.open(Storage(str(tree_after)), ROOT_KEY)
    with pytest.raises(InvalidInput, match="not exactly one zstd frame"):
        opened.read_snapshot(SNAPSHOT_ID.hex())

    blob_after = tmp_path / "blob"
    build_repository(blob_after, after_blob_frame=after)
    with pytest.raises(BackupVaultError, match=r"chat\.log"):
        restore_snapshot(str(blob_after), ROOT_KEY, tmp_path / "out", key="recovery code")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda f: f[:-3], "cut short"),
        (lambda f: f[:5] + bytes([11]) + f[6:], "declares more than it holds"),
        (lambda f: f[:5] + bytes([9]) + f[6:], "declares less than it holds"),
        (lambda f: f + b"x", "a byte after it"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_zstd_frame_not_exactly_its_declared_content_is_refused(
    change: Callable[[bytes], bytes], why: str
) -> None:
    """`zstd(x)` is exactly one frame whose content is its declared size (format.md): a
    frame cut short, one whose header declares another size than it holds, or bytes after
    it are damage, never content of another length."""
    frame = zstandard.ZstdCompressor().compress(b"a" * 10)  # its header: 1 byte of size
    assert frame[5] == 10 and one_frame(zstandard.ZstdDecompressor(), frame, 100, "x") == b"a" * 10
    with pytest.raises(Corrupt, match="x is corrupt"):
        one_frame(zstandard.ZstdDecompressor(), change(frame), 100, "x")


def test_a_zstd_frame_that_does_not_declare_its_size_is_refused(tmp_path: Path) -> None:
    """format.md: `zstd(x)` is one frame *with its content size*; one without was
    decompressed up to the largest tree a reader takes, whatever it held."""
    root = tmp_path / "repo"
    build_repository(root, tree_sizes=False)
    opened = Repository.open(Storage(str(root)), ROOT_KEY)
    with pytest.raises(InvalidInput, match="not a zstd frame of at most"):
        opened.read_snapshot(SNAPSHOT_ID.hex())
