"""Create, restore and list backups: archive -> compress -> encrypt -> storage, and back.

Restore writes into a hidden temporary folder next to `dest` and renames it into place only
after the final chunk of the stream authenticated; on any failure the temporary folder is
removed and `dest` is as it was.

`dest` on restore must not exist (its parent must) or be an empty folder. Afterwards it is a
copy of the backed-up folder (its contents, mode and mtime), or, for a backup of a single
file, a folder holding that file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from backupvault.backup import archive, format
from backupvault.backup.archive import Progress
from backupvault.backup.errors import DestinationError, SourceError
from backupvault.backup.storage import Storage, object_name
from backupvault.crypto import stream
from backupvault.errors import AuthenticationFailed, InvalidInput


@dataclass(frozen=True)
class BackupSummary:
    """A backup as listed from storage. Not authenticated: the listing shows object names."""

    backup_id: str
    created_at: datetime
    size: int | None
    name: str


@dataclass(frozen=True)
class BackupInfo:
    backup_id: str
    created_at: datetime
    name: str
    url: str
    size: int
    files: int
    folders: int
    links: int
    source_bytes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreInfo:
    backup_id: str
    created_at: datetime
    dest: Path
    files: int
    folders: int
    links: int
    bytes: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


class _EncryptingWriter:
    """Plaintext in (from the compressor), ciphertext out to storage, counting bytes."""

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


class _DecryptingReader:
    """Reads ciphertext from storage, hands out authenticated plaintext.

    End of storage data finalizes the stream, so the last read raises if it was truncated.
    """

    def __init__(
        self,
        source: Any,
        key: bytes,
        salt: bytes,
        header: bytes,
        chunk_size: int,
        progress: Callable[[int], None],
    ) -> None:
        self._source = source
        self._plaintext = bytearray()
        self._decryptor = stream.StreamDecryptor(
            key, salt, header, self._plaintext.extend, chunk_size
        )
        self._read_size = chunk_size + stream.TAG_LEN
        self._progress = progress
        self.finished = False
        self.error: BaseException | None = None

    def _fill(self) -> None:
        while not self._plaintext and not self.finished:
            data = self._source.read(self._read_size)
            try:
                if data:
                    self._progress(len(data))
                    self._decryptor.update(data)
                else:
                    self.finished = True
                    self._decryptor.finalize()
            except BaseException as exc:
                self.error = exc
                raise

    def read(self, size: int = -1) -> bytes:
        self._fill()
        if size < 0 or size >= len(self._plaintext):
            data = bytes(self._plaintext)
            self._plaintext.clear()
        else:
            data = bytes(self._plaintext[:size])
            del self._plaintext[:size]
        return data

    def read_to_end(self) -> None:
        """Verify the rest of the stream, which must hold no further plaintext."""
        while not self.finished:
            if self.read(1 << 20):
                raise InvalidInput("backup has unexpected data after its archive")
        if self._plaintext:
            raise InvalidInput("backup has unexpected data after its archive")


class _NoProgress:
    def start(self, total_bytes: int | None, label: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


def _root_key(root_key: bytes) -> bytes:
    if not isinstance(root_key, bytes | bytearray) or len(root_key) != format.ROOT_KEY_LEN:
        raise InvalidInput(f"root key must be {format.ROOT_KEY_LEN} bytes")
    return bytes(root_key)


def create_backup(
    source: str | os.PathLike[str],
    storage_url: str,
    root_key: bytes,
    progress: Progress | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_size: int = stream.CHUNK_SIZE,
    compression_level: int = archive.DEFAULT_LEVEL,
) -> BackupInfo:
    """Archive, compress and encrypt `source` (a file or folder) into a new backup object.

    The object appears in storage only when complete; a failure leaves earlier backups and
    no partial object behind.
    """
    key = _root_key(root_key)
    source_path = Path(source).absolute()
    if not source_path.exists():
        raise SourceError(f"backup source {source_path} does not exist")
    if not (source_path.is_dir() or source_path.is_file()):
        raise SourceError(f"backup source {source_path} is not a file or folder")
    reporter = progress or _NoProgress()
    storage = Storage(storage_url, storage_options)
    header, data_key = format.seal_header(key, chunk_size=chunk_size)
    header_bytes = header.to_bytes()
    name = object_name(header.backup_id, header.created_at)
    reporter.start(archive.source_size(source_path), "backing up")
    try:
        with storage.upload(name) as out:
            out.write(header_bytes)
            writer = _EncryptingWriter(
                out, data_key, header.stream_salt, header_bytes, header.chunk_size
            )
            stats = archive.write_archive(source_path, writer, reporter, compression_level)
            writer.finalize()
    finally:
        reporter.finish()
    return BackupInfo(
        backup_id=header.backup_id_hex,
        created_at=header.created_at,
        name=name,
        url=f"{storage.display_url.rstrip('/')}/{name}",
        size=len(header_bytes) + writer.written,
        files=stats.files,
        folders=stats.folders,
        links=stats.links,
        source_bytes=stats.bytes,
        skipped=stats.skipped,
    )


def list_backups(
    storage_url: str, *, storage_options: Mapping[str, Any] | None = None
) -> list[BackupSummary]:
    """Backups at `storage_url`, oldest first (from object names: not authenticated)."""
    return [
        BackupSummary(b.backup_id, b.created_at, b.size, b.name)
        for b in Storage(storage_url, storage_options).list()
    ]


def _check_destination(dest: Path) -> None:
    if dest.is_symlink():
        raise DestinationError(f"restore destination {dest} is a symbolic link")
    if dest.exists():
        if not dest.is_dir():
            raise DestinationError(f"restore destination {dest} exists and is not a folder")
        if any(dest.iterdir()):
            raise DestinationError(
                f"restore destination {dest} is not empty",
                hint="restore into a new or empty folder",
            )
    elif not dest.parent.is_dir():
        raise DestinationError(f"the folder {dest.parent} to restore into does not exist")


def _remove_tree(path: Path) -> None:
    def make_writable_and_retry(func: Callable[..., Any], failed: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            if not os.path.islink(failed) and os.path.isdir(failed):
                os.chmod(failed, 0o700)
        with contextlib.suppress(OSError):
            func(failed)

    if path.exists() or path.is_symlink():
        os.chmod(path, 0o700)
        shutil.rmtree(path, onerror=make_writable_and_retry)


@contextlib.contextmanager
def _staging_folder(dest: Path) -> Iterator[tuple[Path, int]]:
    """A new folder next to `dest` (same filesystem); removed unless moved away."""
    while True:
        staging = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.restoring"
        try:
            staging.mkdir(mode=0o777)  # the umask applies: that is the default mode
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise DestinationError(f"cannot create a folder in {dest.parent}: {exc}") from None
    default_mode = stat.S_IMODE(staging.stat().st_mode)
    staging.chmod(0o700)  # private while the content is unauthenticated
    try:
        yield staging, default_mode
    finally:
        if staging.exists() or staging.is_symlink():
            _remove_tree(staging)


def restore_backup(
    storage_url: str,
    root_key: bytes,
    dest: str | os.PathLike[str],
    backup_id: str | None = None,
    progress: Progress | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> RestoreInfo:
    """Restore a backup (the latest if `backup_id` is None; an id prefix is enough) to `dest`.

    Everything is authenticated before `dest` changes; see the module docstring for `dest`.
    """
    key = _root_key(root_key)
    dest_path = Path(dest).absolute()
    _check_destination(dest_path)
    storage = Storage(storage_url, storage_options)
    chosen = storage.find(backup_id)
    total = storage.size(chosen.name)  # also: a clear error if the object is gone
    reporter = progress or _NoProgress()
    reporter.start(total, "restoring")
    try:
        with storage.open_read(chosen.name) as source:
            header_bytes = _read_exact(source, format.HEADER_LEN)
            header = format.BackupHeader.from_bytes(header_bytes)
            data_key = format.open_header(header, key)
            if header.backup_id_hex != chosen.backup_id:
                raise AuthenticationFailed(
                    f"backup object {chosen.name} holds backup {header.backup_id_hex}: "
                    "it was renamed or replaced"
                )
            reporter.advance(len(header_bytes))
            with _staging_folder(dest_path) as (staging, default_mode):
                reader = _DecryptingReader(
                    source,
                    data_key,
                    header.stream_salt,
                    header_bytes,
                    header.chunk_size,
                    reporter.advance,
                )
                try:
                    stats = archive.extract_archive(reader, staging)
                    reader.read_to_end()
                except BaseException as exc:
                    # A failed chunk may surface through zstd or tar as another error.
                    if reader.error is not None and reader.error is not exc:
                        raise reader.error from None
                    raise
                if not stats.has_root:
                    staging.chmod(default_mode)  # a single-file backup: a plain new folder
                try:
                    os.replace(staging, dest_path)
                except OSError as exc:
                    raise DestinationError(
                        f"cannot move the restored data into {dest_path}: {exc.strerror}"
                    ) from None
    finally:
        reporter.finish()
    return RestoreInfo(
        backup_id=header.backup_id_hex,
        created_at=header.created_at,
        dest=dest_path,
        files=stats.files,
        folders=stats.folders,
        links=stats.links,
        bytes=stats.bytes,
        skipped=stats.skipped,
    )


def _read_exact(source: Any, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        piece = source.read(size - len(data))
        if not piece:
            break
        data += piece
    return bytes(data)  # if short, header parsing says "truncated"
