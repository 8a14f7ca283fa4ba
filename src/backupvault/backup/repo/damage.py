"""Damaged chunks during a restore: which ones, and which files of the snapshot use them.

A restore that meets a chunk that does not authenticate still fails and writes nothing
into its destination, but it first authenticates every other chunk it needs, so its error
names every file that cannot be restored rather than one chunk id. `backup check` names
the files behind a damaged or missing chunk with `files_using` too, snapshot by snapshot.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

from backupvault.backup.errors import Altered, StorageError
from backupvault.backup.repo.chunksource import ChunkSource, Plain
from backupvault.backup.repo.index import Index, Location
from backupvault.backup.repo.repository import Repository
from backupvault.backup.repo.snapshots import Snapshot
from backupvault.backup.repo.tree import FILE, Entry
from backupvault.errors import AuthenticationFailed, InvalidInput

#: At most this many paths in a message; the rest are counted.
SHOWN_PATHS = 20


@dataclass(frozen=True)
class DamagedFiles:
    """The files of one snapshot that cannot be restored: each uses a chunk that is damaged
    or missing (a restore of the snapshot fails naming them)."""

    snapshot_id: str
    created_at: datetime
    source: str
    host: str
    paths: list[str]  # in tree order

    @classmethod
    def of(cls, snapshot: Snapshot, paths: list[str]) -> DamagedFiles:
        summary = snapshot.summary
        return cls(snapshot.id_hex, snapshot.header.created_at, summary.source, summary.host, paths)

    def row(self) -> dict[str, object]:
        """The JSON form: an item of `damaged_files` in check, repair and restore."""
        return {
            "backup_id": self.snapshot_id,
            "created_at": self.created_at.isoformat(),
            "source": self.source,
            "host": self.host,
            "paths": self.paths,
        }


class NotingChunkSource(ChunkSource):
    """A `ChunkSource` that notes a chunk that fails authentication (in `damaged`: chunk
    id -> why) and goes on, instead of failing the read of its whole pack. A chunk stored
    in more than one pack (two backups stored it at once; or storage lost its pack and a
    later backup stored it again) is read from another pack of `index` that holds it
    before it is noted. The noted chunk is handed out as empty: check `damaged` for every
    chunk id before using it."""

    def __init__(
        self,
        repo: Repository,
        index: Index,
        files: list[list[bytes]],
        workers: int,
    ) -> None:
        super().__init__(repo, index.chunks, files, workers)
        self.index = index
        self.damaged: dict[bytes, str] = {}
        self._noting = threading.Lock()
        self._copies: dict[bytes, list[Location]] | None = None  # made on the first damage

    def _read_pack(self, pack_id: bytes, chunk_ids: list[bytes]) -> dict[bytes, Plain]:
        locs = [self.locations[c] for c in chunk_ids]
        start = min(loc.offset for loc in locs)
        end = max(loc.offset + loc.length for loc in locs)
        data = self.repo.backend.get(f"data/{pack_id.hex()}", start, end)
        view = memoryview(data)
        opened: dict[bytes, Plain] = {}
        for chunk_id, loc in zip(chunk_ids, locs, strict=True):
            try:
                opened[chunk_id] = self._open(chunk_id, loc, view[loc.offset - start :])
            except (AuthenticationFailed, InvalidInput) as exc:
                other = self._other_copy(chunk_id, pack_id)
                if other is not None:
                    opened[chunk_id] = other
                    continue
                with self._noting:
                    self.damaged[chunk_id] = exc.message
                opened[chunk_id] = b""
        return opened

    def _open(self, chunk_id: bytes, loc: Location, rest: memoryview) -> Plain:
        """The chunk at the start of `rest`, the pack's bytes from its offset on."""
        if loc.length > len(rest):
            raise Altered(
                f"chunk {chunk_id.hex()[:16]} is cut off: pack {loc.pack_id.hex()} is truncated"
            )
        return self.repo.sealer.open(chunk_id, rest[: loc.length], loc.raw_length)

    def _other_copy(self, chunk_id: bytes, damaged_pack: bytes) -> Plain | None:
        """The chunk from another pack that holds it and where it authenticates, if any."""
        for loc in self._copies_of(chunk_id):
            if loc.pack_id == damaged_pack:
                continue
            try:
                data = self.repo.backend.get(
                    f"data/{loc.pack_id.hex()}", loc.offset, loc.offset + loc.length
                )
                return self._open(chunk_id, loc, memoryview(data))
            except (AuthenticationFailed, InvalidInput, StorageError):
                continue
        return None

    def _copies_of(self, chunk_id: bytes) -> list[Location]:
        with self._noting:
            if self._copies is None:
                needed = set(self.uses)
                self._copies = {}
                for pack_id, entries in self.index.packs.items():
                    for e in entries:
                        if e.chunk_id in needed:
                            self._copies.setdefault(e.chunk_id, []).append(
                                Location(pack_id, e.offset, e.length, e.raw_length)
                            )
            return self._copies.get(chunk_id, [])

    def is_damaged(self, chunk_id: bytes) -> bool:
        with self._noting:
            return chunk_id in self.damaged


def files_using(entries: Iterable[Entry], chunk_ids: Collection[bytes]) -> list[str]:
    """The paths (for people) of the files among `entries` that use any of `chunk_ids`,
    in tree order."""
    wanted = set(chunk_ids)
    return [
        os.fsdecode(e.path) for e in entries if e.kind == FILE and not wanted.isdisjoint(e.chunks)
    ]


def listed(paths: list[str], limit: int = SHOWN_PATHS) -> str:
    """`paths` joined for a message: the first `limit` of them, then how many more."""
    shown = ", ".join(paths[:limit])
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"


def damaged_files_error(
    damaged: dict[bytes, str], files: DamagedFiles, dest: str | os.PathLike[str]
) -> Altered:
    """The error of a restore that found `damaged` chunks (id -> why), used by `files`."""
    paths = files.paths
    first = next(iter(damaged.values()))
    more = len(damaged) - 1
    what = first if not more else f"{first} (and {more} more damaged chunk{'s' * (more > 1)})"
    whose = (
        f"the file that uses {'it' if not more else 'them'} cannot be restored"
        if len(paths) == 1
        else f"the {len(paths)} files that use {'it' if not more else 'them'} cannot be restored"
    )
    error = Altered(
        f"{what}; {whose}: {listed(paths)}",
        hint=f"nothing was written into {os.fspath(dest)}; to restore the other files, name "
        "each file or folder to restore with --include (repeat it for more); "
        "`backupvault backup check --read-data` lists all damage in the repository, and "
        "`backupvault backup repair` drops the damaged chunks, so that the next backup "
        "stores these files again if they are still in its source (until then, it reuses "
        "the damaged chunks)",
    )
    error.details["damaged_files"] = [files.row()]
    return error
