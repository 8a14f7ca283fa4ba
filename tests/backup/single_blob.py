"""The single-blob writer, for tests only: backupvault writes repository snapshots now and
only reads single-blob backups (docs/format.md, "Single-blob backups"). Tests make such
backups with this module, byte for byte as the last version that wrote them did (header
sealed under RK, zstd-compressed pax tar, streaming AEAD), to check that restore and list
still read them and refuse damaged or hostile ones.

Tests in other folders load it by path: `importlib.util.spec_from_file_location`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import stat
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol, cast

import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backupvault.backup import archive, format
from backupvault.backup.errors import SourceError
from backupvault.backup.keykinds import KEY_PASSWORD, KEY_RECOVERY_CODE
from backupvault.backup.progress import NoProgress, Progress
from backupvault.backup.safe import Skipped
from backupvault.backup.storage import Storage, object_name, redact_url
from backupvault.crypto import stream
from backupvault.errors import InvalidInput

__all__ = ["KEY_PASSWORD", "KEY_RECOVERY_CODE", "create_backup", "seal_backup", "seal_header"]

DEFAULT_LEVEL = 3
_COPY_SIZE = 1 << 20


class Writable(Protocol):
    def write(self, data: bytes) -> object: ...


# ---- header -------------------------------------------------------------------------------


def seal_header(
    root_key: bytes,
    *,
    key_kind: int,
    content_bytes: int,
    entries: int,
    chunk_size: int = stream.CHUNK_SIZE,
    created_at_us: int | None = None,
) -> tuple[format.BackupHeader, bytes]:
    """A version-2 header with a fresh random DK; returns (header, DK)."""
    format._check_root_key(root_key)
    if not stream.MIN_CHUNK_SIZE <= chunk_size <= stream.MAX_CHUNK_SIZE:
        raise InvalidInput(f"chunk size {chunk_size} is out of range")
    if key_kind not in format.KEY_KINDS:
        raise InvalidInput(f"unknown key kind {key_kind}")
    if not 0 <= content_bytes <= format.MAX_CONTENT_BYTES:
        raise InvalidInput(f"a backup holds at most {format.MAX_CONTENT_BYTES} bytes")
    if not 1 <= entries <= format.MAX_ENTRIES:
        raise InvalidInput(f"a backup holds 1 to {format.MAX_ENTRIES} files, folders and links")
    data_key = os.urandom(format.DATA_KEY_LEN)
    backup_id = os.urandom(format.BACKUP_ID_LEN)
    unsealed = format.BackupHeader(
        key_kind=key_kind,
        chunk_size=chunk_size,
        backup_id=backup_id,
        created_at_us=time.time_ns() // 1000 if created_at_us is None else created_at_us,
        content_bytes=content_bytes,
        entries=entries,
        stream_salt=os.urandom(stream.SALT_LEN),
        key_check=format._key_check(root_key, format.VERSION, backup_id),
        wrap_nonce=os.urandom(format.WRAP_NONCE_LEN),
        wrapped_dk=b"",
    )
    wrap_key = AESGCM(format._derive(root_key, format._WRAP_INFO))
    wrapped = wrap_key.encrypt(unsealed.wrap_nonce, data_key, unsealed.wrap_aad())
    return dataclasses.replace(unsealed, wrapped_dk=wrapped), data_key


# ---- archive ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceTotals:
    entries: int
    bytes: int

    def with_headroom(self) -> SourceTotals:
        return SourceTotals(
            self.entries + self.entries // 64 + 64, self.bytes + self.bytes // 64 + (1 << 20)
        )


def _walk(source: Path) -> Iterator[tuple[str, str]]:
    """(path on disk, name in the archive) for the source and everything under it."""
    if not source.is_dir():
        yield str(source), source.name
        return
    yield str(source), "."
    pending: list[tuple[str, str]] = [(str(source), "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as entries:
            children = sorted(entries, key=lambda e: e.name)
        subfolders: list[tuple[str, str]] = []
        for entry in children:
            arcname = prefix + entry.name
            yield entry.path, arcname
            if entry.is_dir(follow_symlinks=False):
                subfolders.append((entry.path, arcname + "/"))
        pending.extend(reversed(subfolders))


def scan_source(source: Path) -> SourceTotals:
    total = entries = 0
    seen: set[tuple[int, int]] = set()
    for path, _ in _walk(source):
        st = os.lstat(path)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            continue
        entries += 1
        if stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:  # hard links are archived once
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return SourceTotals(entries, total)


class _SourceReader:
    def __init__(self, handle: Any, progress: Progress) -> None:
        self._handle = handle
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._handle.read(size)
        self._progress.advance(len(data))
        return data


class _TarSink:
    """What tarfile writes to in plain "w" mode (no stream buffering): write and tell."""

    def __init__(self, compressor: Any) -> None:
        self._compressor = compressor
        self._offset = 0

    def write(self, data: bytes) -> int:
        self._compressor.write(data)
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset


def write_archive(
    source: Path,
    out: Writable,
    progress: Progress,
    level: int = DEFAULT_LEVEL,
) -> archive.ArchiveStats:
    """A zstd-compressed pax tar of `source` to `out`."""
    stats = archive.ArchiveStats()
    compressor = zstandard.ZstdCompressor(level=level).stream_writer(
        cast(IO[bytes], out), closefd=False, write_return_read=True
    )
    tar = tarfile.TarFile(
        fileobj=cast(IO[bytes], _TarSink(compressor)),
        mode="w",
        format=tarfile.PAX_FORMAT,
        copybufsize=_COPY_SIZE,
        encoding="utf-8",
    )
    for path, arcname in _walk(source):
        info = tar.gettarinfo(name=path, arcname=arcname)
        # Whole microseconds, written as an exact decimal (str(float) may not be).
        micros = os.lstat(path).st_mtime_ns // 1000
        info.mtime = micros / 1_000_000
        sign = "-" if micros < 0 else ""
        whole, fraction = divmod(abs(micros), 1_000_000)
        info.pax_headers = {"mtime": f"{sign}{whole}.{fraction:06d}"}
        if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
            stats.skipped.append(Skipped(arcname, "not a regular file, folder or link"))
            continue
        if info.isreg():
            with open(path, "rb") as handle:
                tar.addfile(info, _SourceReader(handle, progress))
            stats.files += 1
            stats.bytes += info.size
        else:
            tar.addfile(info)
            if info.isdir():
                stats.has_root |= arcname == "."
                stats.folders += arcname != "."
            elif info.issym():
                stats.links += 1
            else:
                stats.files += 1
    tar.close()
    compressor.flush(zstandard.FLUSH_FRAME)
    return stats


# ---- the object ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupInfo:
    backup_id: str
    created_at: datetime
    name: str
    url: str
    size: int
    files: int
    key: str
    skipped: list[Skipped] = field(default_factory=list)


class _EncryptingWriter:
    def __init__(self, out: Any, key: bytes, salt: bytes, header: bytes, chunk_size: int) -> None:
        self._out = out
        self.written = 0
        self._encryptor = stream.StreamEncryptor(key, salt, header, self._emit, chunk_size)

    def _emit(self, chunk: memoryview) -> None:
        self._out.write(chunk)
        self.written += len(chunk)

    def write(self, data: bytes) -> int:
        self._encryptor.update(data)
        return len(data)

    def finalize(self) -> None:
        self._encryptor.finalize()


@contextlib.contextmanager
def _upload(storage: Storage, name: str) -> Iterator[Any]:
    """Write `name` as `.<name>.<16 hex>.partial`, renamed when the block completes."""
    temp = storage.path(f".{name}.{secrets.token_hex(8)}.partial")
    storage.fs.makedirs(storage.root, exist_ok=True)
    handle = storage.fs.open(temp, "wb")
    try:
        yield handle
        handle.close()  # uploads the object on remote filesystems
        client = getattr(storage.fs, "client", None)
        if type(storage.fs).__name__ == "WebdavFileSystem" and client is not None:
            client.move(temp, storage.path(name))
        else:
            storage.fs.mv(temp, storage.path(name))
    except BaseException:
        with contextlib.suppress(Exception):
            handle.close()
        with contextlib.suppress(Exception):
            storage.fs.rm_file(temp)
        raise


def seal_backup(
    storage_url: str,
    root_key: bytes,
    write_payload: Callable[[Writable], archive.ArchiveStats],
    *,
    key_kind: int,
    bounds: SourceTotals,
    storage_options: Mapping[str, Any] | None = None,
    chunk_size: int = stream.CHUNK_SIZE,
    created_at_us: int | None = None,
) -> tuple[str, int, format.BackupHeader, archive.ArchiveStats]:
    """Store a backup object whose payload `write_payload` writes (zstd-compressed tar
    bytes), declaring `bounds`: (name, size, header, what the payload writer counted)."""
    storage = Storage(storage_url, storage_options)
    header, data_key = seal_header(
        root_key,
        key_kind=key_kind,
        content_bytes=bounds.bytes,
        entries=bounds.entries,
        chunk_size=chunk_size,
        created_at_us=created_at_us,
    )
    header_bytes = header.to_bytes()
    name = object_name(header.backup_id, header.created_at)
    with _upload(storage, name) as out:
        out.write(header_bytes)
        writer = _EncryptingWriter(out, data_key, header.stream_salt, header_bytes, chunk_size)
        stats = write_payload(writer)
        writer.finalize()
    return name, len(header_bytes) + writer.written, header, stats


def create_backup(
    source: str | os.PathLike[str],
    storage_url: str,
    root_key: bytes,
    progress: Progress | None = None,
    *,
    key_kind: int = KEY_PASSWORD,
    storage_options: Mapping[str, Any] | None = None,
    chunk_size: int = stream.CHUNK_SIZE,
) -> BackupInfo:
    """A single-blob backup of `source` (a file or folder), as `backup create` made them."""
    source_path = Path(source).absolute()
    if not source_path.exists():
        raise SourceError(f"backup source {source_path} does not exist")
    bounds = scan_source(source_path).with_headroom()
    reporter = progress or NoProgress()
    reporter.start(bounds.bytes, "backing up")
    try:
        name, size, header, stats = seal_backup(
            storage_url,
            root_key,
            lambda out: write_archive(source_path, out, reporter),
            key_kind=key_kind,
            bounds=bounds,
            storage_options=storage_options,
            chunk_size=chunk_size,
        )
    finally:
        reporter.finish()
    return BackupInfo(
        backup_id=header.backup_id_hex,
        created_at=header.created_at,
        name=name,
        url=f"{redact_url(storage_url).rstrip('/')}/{name}",
        size=size,
        files=stats.files,
        key=header.key_name,
        skipped=stats.skipped,
    )
