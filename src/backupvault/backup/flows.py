"""Create, restore and list backups: archive -> compress -> encrypt -> storage, and back.

Restore writes into a hidden temporary folder next to `dest` and renames it into place only
after the final chunk of the stream authenticated; on any failure the temporary folder is
removed and `dest` is as it was. It writes only through `SafeDestination` (backup/safe.py),
within the caps of the authenticated header, after checking free space (a version-1 header
declares no totals: its caps are the ceilings, and the space check asks for the object's
size). Without an id it restores the newest backup its key opens, by the header's
authenticated `created_at`.

`dest` on restore must not exist (its parent must) or be an empty folder. Afterwards it is a
copy of the backed-up folder (its contents, mode and mtime), or, for a backup of a single
file, a folder holding that file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from backupvault.backup import archive, format
from backupvault.backup.errors import (
    Altered,
    BackupNotFound,
    Corrupt,
    StorageError,
)
from backupvault.backup.progress import NoProgress, Progress
from backupvault.backup.safe import (
    Limits,
    SafeDestination,
    Skipped,
    Staging,
    check_destination,
    check_space,
    remove_abandoned,
)
from backupvault.backup.storage import (
    PartialUpload,
    Storage,
    StoredBackup,
)
from backupvault.crypto import stream
from backupvault.errors import AuthenticationFailed, BackupVaultError, InvalidInput, WrongKey


@dataclass(frozen=True)
class BackupSummary:
    """A backup as listed from storage. Not authenticated: the listing shows object names
    and each header's key kind ("password", "recovery code", "unknown" for a version-1
    header; None if the header is unreadable), which only a restore authenticates."""

    backup_id: str
    created_at: datetime
    size: int | None
    name: str
    key: str | None


@dataclass(frozen=True)
class RestoreInfo:
    backup_id: str
    created_at: datetime
    dest: Path
    files: int
    folders: int
    links: int
    bytes: int
    key: str
    skipped: list[Skipped] = field(default_factory=list)
    #: The folder or file backed up, as the snapshot names it ("" if it names none).
    source: str = ""
    #: When the latest of them all was restored (no --host or --path): how many other
    #: folders (as each was recorded) and other hosts the repository holds snapshots of;
    #: a restore of the latest is of whichever was backed up last.
    other_folders: int = 0
    other_hosts: int = 0
    #: Backups passed over as damaged (name -> why), the latest that opens restored.
    passed_over: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # a rollback storage may have made


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
            except AuthenticationFailed as exc:
                # The stream's chunks fail with crypto's error: damage, as any other.
                self.error = Altered(exc.message, hint=exc.hint)
                raise self.error from None
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
                raise Corrupt("backup has unexpected data after its archive")
        if self._plaintext:
            raise Corrupt("backup has unexpected data after its archive")


def _root_key(root_key: bytes) -> bytes:
    if not isinstance(root_key, bytes | bytearray) or len(root_key) != format.ROOT_KEY_LEN:
        raise InvalidInput(f"root key must be {format.ROOT_KEY_LEN} bytes")
    return bytes(root_key)


def list_backups(
    storage_url: str,
    *,
    missing_ok: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> list[BackupSummary]:
    """Backups at `storage_url`, oldest first, from object names and each header's key kind
    (not authenticated). A storage folder that does not exist is `StorageNotFound`, or no
    backups if `missing_ok`."""
    storage = Storage(storage_url, storage_options)
    return [
        BackupSummary(b.backup_id, b.created_at, b.size, b.name, _key_kind(storage, b.name))
        for b in storage.list(missing_ok=missing_ok)
    ]


def list_partials(
    storage_url: str, *, storage_options: Mapping[str, Any] | None = None
) -> list[PartialUpload]:
    """Hidden objects of backups that never completed (a killed `backup create`)."""
    return Storage(storage_url, storage_options).partials()


def _key_kind(storage: Storage, name: str) -> str | None:
    try:
        return format.BackupHeader.from_start(storage.read_start(name, format.HEADER_LEN)).key_name
    except (InvalidInput, StorageError):
        return None


def _choose(storage: Storage, key: bytes, backup_id: str | None) -> tuple[StoredBackup, list[str]]:
    """The backup to restore, and the names of backups passed over as damaged.

    With an id (or a prefix), the object of that name. Without one, the latest backup this
    key opens, by the `created_at` in its authenticated header: object names, their order
    and their times are storage's to forge, and a backup made with another key (a recovery
    code, an older vault key) is not a candidate.
    """
    if backup_id is not None:
        return storage.find(backup_id), []
    backups = storage.list(missing_ok=False)
    if not backups:
        raise BackupNotFound(f"no backups at {storage.display_url}")
    best: tuple[int, StoredBackup] | None = None
    damaged: list[str] = []
    last_error: BackupVaultError | None = None
    for candidate in backups:
        try:
            header = format.BackupHeader.from_start(
                storage.read_start(candidate.name, format.HEADER_LEN)
            )
            format.open_header(header, key)
        except WrongKey as exc:
            last_error = exc
            continue
        except (InvalidInput, AuthenticationFailed, BackupNotFound) as exc:
            damaged.append(candidate.name)
            last_error = exc
            continue
        # The header's id, not the name's: a renamed object is still that backup.
        chosen = StoredBackup(
            candidate.name, header.backup_id_hex, header.created_at, candidate.size
        )
        if best is None or header.created_at_us > best[0]:
            best = (header.created_at_us, chosen)
    if best is None and len(backups) == 1 and last_error is not None:
        raise last_error  # the one backup there is: say exactly what is wrong with it
    if best is None and damaged:
        raise Altered(
            f"no backup at {storage.display_url} opens with this key, and "
            f"{_plural(len(damaged), 'backup header')} failed to parse or authenticate "
            f"(the latest: {damaged[-1]})"
        )
    if best is None:
        raise WrongKey(
            f"none of the {len(backups)} backups at {storage.display_url} opens with this key",
            hint="a backup made with --recovery-code opens only with its own code; "
            "one made with a password opens with that vault password",
        )
    return best[1], damaged


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def restore_backup(
    storage_url: str,
    root_key: bytes,
    dest: str | os.PathLike[str],
    backup_id: str | None = None,
    progress: Progress | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> RestoreInfo:
    """Restore a backup (the latest this key opens if `backup_id` is None; an id prefix is
    enough) to `dest`.

    Everything is authenticated before `dest` changes; see the module docstring for `dest`.
    """
    key = _root_key(root_key)
    dest_path = Path(dest).absolute()
    check_destination(dest_path)
    storage = Storage(storage_url, storage_options)
    chosen, damaged = _choose(storage, key, backup_id)
    total = storage.size(chosen.name)  # also: a clear error if the object is gone
    reporter = progress or NoProgress()
    reporter.start(total, "restoring")
    try:
        with storage.open_read(chosen.name) as source:
            start = _read_exact(source, format.VERSION_PREFIX_LEN)
            header_bytes = start + _read_exact(source, format.header_length(start) - len(start))
            header = format.BackupHeader.from_bytes(header_bytes)
            data_key = format.open_header(header, key)
            if header.backup_id_hex != chosen.backup_id:
                raise Altered(
                    f"backup object {chosen.name} holds backup {header.backup_id_hex}: "
                    "it was renamed or replaced"
                )
            limits = Limits(
                max_entries=header.entries,
                max_bytes=header.content_bytes,
                space_estimate=None if header.declares_totals else total,
            )
            removed = remove_abandoned(dest_path)  # before the space they hold is checked
            check_space(dest_path.parent, limits)
            reporter.advance(len(header_bytes))
            with Staging(dest_path) as staging:
                reader = _DecryptingReader(
                    source,
                    data_key,
                    header.stream_salt,
                    header_bytes,
                    header.chunk_size,
                    reporter.advance,
                )
                try:
                    with SafeDestination(staging.fd, limits) as writer:
                        stats = archive.extract_archive(reader, writer)
                    reader.read_to_end()
                except BaseException as exc:
                    # A failed chunk may surface through zstd or tar as another error.
                    if reader.error is not None and reader.error is not exc:
                        raise reader.error from None
                    raise
                # A single-file backup has no root entry: a plain new folder.
                staging.finish(None if stats.has_root else staging.default_mode)
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
        key=header.key_name,
        skipped=stats.skipped,
        passed_over=dict.fromkeys(damaged, "its header does not parse or authenticate"),
        warnings=removed,
    )


def _read_exact(source: Any, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        piece = source.read(size - len(data))
        if not piece:
            break
        data += piece
    return bytes(data)  # if short, header parsing says "truncated"
