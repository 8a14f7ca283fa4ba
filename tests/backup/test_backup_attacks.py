"""Attacks on stored backups: each one a clear error, with the destination untouched."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import single_blob
import zstandard
from backup_trees import SMALL_CHUNK, make_tree, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from single_blob import create_backup

from backupvault.backup import BackupNotFound, archive, restore_backup
from backupvault.backup.archive import ArchiveStats
from backupvault.backup.format import HEADER_LEN, WRAP_AAD_LEN, BackupHeader
from backupvault.crypto.stream import TAG_LEN
from backupvault.errors import AuthenticationFailed, BackupVaultError, InvalidInput

CT = SMALL_CHUNK + TAG_LEN


class Case:
    """A store with one multi-chunk backup, and a way to tamper with it and restore."""

    def __init__(self, tmp_path: Path, root_key: bytes) -> None:
        self.tmp = tmp_path
        self.root_key = root_key
        self.source = make_tree(tmp_path)
        (self.source / "more.bin").write_bytes(os.urandom(6 * SMALL_CHUNK))
        self.store = tmp_path / "store"
        info = create_backup(self.source, str(self.store), root_key, chunk_size=SMALL_CHUNK)
        self.object = self.store / info.name
        self.original_id = info.backup_id
        self.original = self.object.read_bytes()
        self.dest_parent = tmp_path / "restore-here"
        self.dest_parent.mkdir()
        (self.dest_parent / "bystander.txt").write_text("do not touch")

    def chunks(self, data: bytes | None = None) -> tuple[bytes, list[bytes]]:
        data = self.original if data is None else data
        body = data[HEADER_LEN:]
        return data[:HEADER_LEN], [body[i : i + CT] for i in range(0, len(body), CT)]

    def restore_fails(
        self,
        tampered: bytes,
        match: str,
        error: type[BackupVaultError] = AuthenticationFailed,
        root_key: bytes | None = None,
        backup_id: str | None = None,
    ) -> None:
        self.object.write_bytes(tampered)
        for existing in (False, True):
            dest = self.dest_parent / "dest"
            if existing:
                dest.mkdir()
            before = snapshot(self.dest_parent)
            with pytest.raises(error, match=match):
                restore_backup(str(self.store), root_key or self.root_key, dest, backup_id)
            after = snapshot(self.dest_parent)
            # No temporary folder left, dest as it was; only the parent's mtime may move.
            del before["."], after["."]
            assert after == before
            if existing:
                dest.rmdir()


@pytest.fixture
def case(tmp_path: Path, root_key: bytes) -> Case:
    return Case(tmp_path, root_key)


def test_untampered_backup_restores(case: Case) -> None:
    restore_backup(str(case.store), case.root_key, case.dest_parent / "dest")
    assert snapshot(case.dest_parent / "dest") == snapshot(case.source)


def test_the_case_has_many_chunks(case: Case) -> None:
    _, chunks = case.chunks()
    assert len(chunks) >= 7


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        (lambda n: 0, "does not start with BVBACKUP"),
        (lambda n: 5, "does not start with BVBACKUP"),
        (lambda n: 8, "backup is truncated: the header is 8 bytes"),
        (lambda n: HEADER_LEN - 1, "backup is truncated: the header"),
        (lambda n: HEADER_LEN, "backup is truncated: the encrypted stream is empty"),
        (lambda n: HEADER_LEN + 10, "backup is truncated: chunk 0 is 10 bytes"),
        (lambda n: HEADER_LEN + CT, "backup is truncated: chunk 0 is intact"),
        (lambda n: HEADER_LEN + 3 * CT, "backup is truncated: chunk 2 is intact"),
        (lambda n: HEADER_LEN + 3 * CT + 100, "final chunk 3 failed authentication"),
        (lambda n: n - 1, "failed authentication"),
        (lambda n: n - TAG_LEN, "failed authentication"),
    ],
)
def test_truncation(case: Case, cut: Callable[[int], int], match: str) -> None:
    length = cut(len(case.original))
    error: type[BackupVaultError] = InvalidInput if length < HEADER_LEN else AuthenticationFailed
    case.restore_fails(case.original[:length], match, error)


def test_truncation_at_every_chunk_boundary(case: Case) -> None:
    header, chunks = case.chunks()
    for keep in range(1, len(chunks)):
        case.restore_fails(header + b"".join(chunks[:keep]), "backup is truncated")


def test_dropped_swapped_reordered_duplicated_chunks(case: Case) -> None:
    header, c = case.chunks()
    attacks = [
        [c[0], *c[2:]],  # drop
        [c[1], c[0], *c[2:]],  # swap the first two
        [*c[:2], c[3], c[2], *c[4:]],  # reorder in the middle
        [c[0], *c],  # duplicate
        list(reversed(c)),
    ]
    for attacked in attacks:
        case.restore_fails(header + b"".join(attacked), "failed authentication|truncated")


def test_chunks_swapped_in_from_another_backup_with_the_same_root_key(case: Case) -> None:
    other_info = create_backup(
        case.source, str(case.tmp / "other"), case.root_key, chunk_size=SMALL_CHUNK
    )
    other = (case.tmp / "other" / other_info.name).read_bytes()
    header, chunks = case.chunks()
    other_header, other_chunks = case.chunks(other)
    mixed = [*chunks[:2], other_chunks[2], *chunks[3:]]
    case.restore_fails(header + b"".join(mixed), "chunk 2 failed authentication")
    # The whole body of the other backup under this header, and the other header on this body.
    case.restore_fails(header + b"".join(other_chunks), "chunk 0 failed authentication")
    case.restore_fails(other_header + b"".join(chunks), "chunk 0 failed authentication")


def test_every_header_bit_position_is_authenticated(case: Case) -> None:
    for position in range(HEADER_LEN):
        tampered = bytearray(case.original)
        tampered[position] ^= 0x01
        error: type[BackupVaultError]
        if position < 8:
            match, error = "does not start with BVBACKUP", InvalidInput
        elif position == 8:
            match, error = "version 3 is not supported", InvalidInput
        elif position == 9:
            match, error = "unknown backup payload type", InvalidInput
        elif position == 10:
            match, error = "unknown backup key kind", InvalidInput
        elif 15 <= position < 31 or 83 <= position < 99:  # backup id, key check
            match, error = "not made with this key", AuthenticationFailed
        elif position < WRAP_AAD_LEN:
            match = "header failed authentication|chunk size|creation time|ceiling|entries"
            error = BackupVaultError
        else:
            match, error = "header failed authentication", AuthenticationFailed
        case.restore_fails(bytes(tampered), match, error)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_body_bit_flips_anywhere(case: Case, data: st.DataObject) -> None:
    position = data.draw(st.integers(min_value=HEADER_LEN, max_value=len(case.original) - 1))
    tampered = bytearray(case.original)
    tampered[position] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    case.restore_fails(bytes(tampered), "chunk \\d+ failed authentication")


def test_wrong_root_key(case: Case) -> None:
    case.restore_fails(case.original, "not made with this key", root_key=os.urandom(32))


def test_extension_after_the_final_chunk(case: Case) -> None:
    _, chunks = case.chunks()
    for extra in (b"\x00", os.urandom(40), os.urandom(CT), chunks[0]):
        case.restore_fails(case.original + extra, "failed authentication|appended after")


def test_garbage_files(case: Case) -> None:
    case.restore_fails(os.urandom(5000), "does not start with BVBACKUP", InvalidInput)
    case.restore_fails(b"", "does not start with BVBACKUP", InvalidInput)
    case.restore_fails(
        case.original[:HEADER_LEN] + os.urandom(3 * CT), "chunk 0 failed authentication"
    )


def test_object_renamed_to_another_id(case: Case) -> None:
    forged = case.store / case.object.name.replace(case.object.name[-36:-4], "f" * 32)
    case.object.rename(forged)
    case.object = forged
    # Asked for by the forged id: refused. As the latest: it is that (authentic) backup.
    case.restore_fails(case.original, "renamed or replaced", backup_id="f" * 32)
    info = restore_backup(str(case.store), case.root_key, case.dest_parent / "dest")
    assert info.backup_id == case.original_id != "f" * 32


def test_missing_object(case: Case) -> None:
    case.object.unlink()
    with pytest.raises(BackupNotFound, match="no backups at"):
        restore_backup(str(case.store), case.root_key, case.dest_parent / "dest")
    assert not (case.dest_parent / "dest").exists()


def test_header_parser_reports_fields() -> None:
    # The version byte says how long the header is (version 1: 146 bytes, 2: 159).
    for version in (b"\x01", b"\x02"):
        with pytest.raises(InvalidInput, match="exactly"):
            BackupHeader.from_bytes(b"BVBACKUP" + version + bytes(HEADER_LEN))
    with pytest.raises(InvalidInput, match="version 0 is not supported"):
        BackupHeader.from_bytes(b"BVBACKUP" + bytes(HEADER_LEN))


def test_a_staging_folder_swapped_for_a_link_as_it_is_made_is_not_touched(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single-blob restore shares the repository restore's staging folder: replaced by a
    link to another folder of the user's the moment it is made, that folder was made
    0700 before the write through the link was refused."""
    elsewhere = case.tmp / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    real_mkdir = Path.mkdir

    def mkdir_then_swapped(self: Path, *args: object, **kwargs: object) -> None:
        real_mkdir(self, *args, **kwargs)
        if self.name.endswith(".restoring"):
            self.rmdir()
            self.symlink_to(elsewhere)

    monkeypatch.setattr(Path, "mkdir", mkdir_then_swapped)
    dest = case.dest_parent / "dest"
    with pytest.raises(BackupVaultError, match=r"staging folder .* was replaced"):
        restore_backup(str(case.store), case.root_key, dest)
    monkeypatch.undo()
    assert not os.path.lexists(dest)
    assert list(elsewhere.iterdir()) == [] and elsewhere.stat().st_mode & 0o777 == 0o755


_SKIPPABLE = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"note"
_EMPTY_FRAME = zstandard.ZstdCompressor().compress(b"")


def _seal_archive(
    tmp_path: Path, root_key: bytes, before: bytes, after: bytes, padding: int = 0
) -> Path:
    """A single-blob backup of one small file whose sealed payload is `before`, then the
    archive's zstd frame (its tar followed by `padding` more zero bytes), then `after`:
    what a writer that holds RK could seal. Returns the storage folder."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_bytes(b"hello")
    storage = tmp_path / "store"

    def write(out: single_blob.Writable) -> ArchiveStats:
        out.write(before)
        compressor = zstandard.ZstdCompressor().stream_writer(out, closefd=False)  # type: ignore[arg-type]
        with tarfile.open(fileobj=compressor, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(source / "a.txt", arcname="a.txt")
        for _ in range(padding >> 20):
            compressor.write(bytes(1 << 20))
        compressor.flush(zstandard.FLUSH_FRAME)
        out.write(after)
        return ArchiveStats()

    single_blob.seal_backup(
        str(storage),
        root_key,
        write,
        key_kind=single_blob.KEY_RECOVERY_CODE,
        bounds=single_blob.SourceTotals(100, 1 << 20),
    )
    return storage


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"", b"x"),
        (b"", b"\x00" * 10),
        (b"", zstandard.ZstdCompressor().compress(b"a second archive" * 100)),
        (b"", zstandard.ZstdCompressor().compress(bytes(1000))),
        (b"", _EMPTY_FRAME),
        (b"", _SKIPPABLE),
        (_SKIPPABLE, b""),
        (_EMPTY_FRAME, b""),
    ],
    ids=["byte", "zeros", "frame", "zero-frame", "empty-frame", "skippable", "lead-skippable",
         "lead-empty-frame"],
)  # fmt: skip
def test_data_around_the_zstd_frame_is_refused(
    tmp_path: Path, root_key: bytes, before: bytes, after: bytes
) -> None:
    """format.md, "Payload": the payload is exactly one zstd frame. Whatever a writer that
    holds RK seals before or after it is refused, a further frame of zeros, an empty
    frame or a skippable one (RFC 8878, 3.1.2) included, and nothing reaches `dest`."""
    storage = _seal_archive(tmp_path, root_key, before, after)
    dest = tmp_path / "out" / "dest"
    dest.parent.mkdir()
    with pytest.raises(InvalidInput, match=r"after its end|corrupt|one zstd frame"):
        restore_backup(str(storage), root_key, dest)
    assert not dest.exists()


def test_zeros_after_the_tar_end_are_read_only_as_far_as_a_tar_record(
    tmp_path: Path, root_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tar's end is two zero blocks, padded to a 10240-byte record; a frame that
    goes on with zeros past that (a few bytes of zstd can hold terabytes of them) is
    refused there, not decompressed to its end."""
    storage = _seal_archive(tmp_path, root_key, b"", b"", padding=8 << 20)
    decompressed = 0
    real_init = archive.TarReader.__init__

    class Counting:
        def __init__(self, source: archive.Readable) -> None:
            self.source = source

        def read(self, size: int = -1) -> bytes:
            nonlocal decompressed
            data = self.source.read(size)
            decompressed += len(data)
            return data

    def counting_init(self: archive.TarReader, source: archive.Readable) -> None:
        real_init(self, Counting(source))

    monkeypatch.setattr(archive.TarReader, "__init__", counting_init)
    dest = tmp_path / "out" / "dest"
    dest.parent.mkdir()
    with pytest.raises(InvalidInput, match=r"after its end"):
        restore_backup(str(storage), root_key, dest)
    assert not dest.exists()
    assert decompressed < 1 << 20


@settings(max_examples=40, deadline=None)
@given(
    content=st.sampled_from([b"", b"abc" * 50_000, bytes(300_000), os.urandom(200_000)]),
    checksum=st.booleans(),
    sized=st.booleans(),
    pieces=st.lists(st.integers(1, 70_000), min_size=1, max_size=8),
)
def test_one_frame_ends_exactly_where_the_zstd_frame_does(
    content: bytes, checksum: bool, sized: bool, pieces: list[int]
) -> None:
    """The frame walker finds the end of any frame zstd writes (raw, RLE and compressed
    blocks, with or without a checksum or a content size), however the bytes arrive; one
    byte more is refused, one byte less is a frame cut off."""
    import io

    frame = zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=sized).compress(
        content
    )
    for data, whole in ((frame, True), (frame[:-1], False), (frame + b"\x00", None)):
        walker = archive.OneFrame(io.BytesIO(data))
        sizes = iter(pieces)
        try:
            while walker.read(next(sizes, 65536)):
                pass
        except InvalidInput:
            assert whole is None
            continue
        assert whole is not None
        if whole:
            walker.check_ended()
        else:
            with pytest.raises(InvalidInput, match="cut off"):
                walker.check_ended()
