"""Chunks of a restore in file order, decrypted ahead on worker threads, pack by pack.

Packs are read in the order their first chunk is needed (each pack once, only the byte
range holding needed chunks); workers authenticate and decompress them a few packs
ahead of the writer; a chunk is kept until its last use, within a memory budget
(`KEEP_BYTES`): past it, the chunks held longest are let go and read again, alone, when
they are needed. So files are written sequentially, one after the other, while reading
and decryption run in parallel, and a tree whose files share content (copies, hard links,
versions of one file) or whose packs serve files far apart restores in bounded memory.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from backupvault.backup.errors import Altered
from backupvault.backup.repo.index import Location
from backupvault.backup.repo.repository import Repository

Plain = bytes | bytearray
#: Plaintext held for later uses (at least; 4 packs if they are larger): kept all, a
#: restore held every chunk a later file uses again, so a large file stored twice (a copy,
#: a hard link) took its whole size in memory.
KEEP_BYTES: Final = 256 << 20


class ChunkSource:
    def __init__(
        self,
        repo: Repository,
        locations: Mapping[bytes, Location],
        files: list[list[bytes]],
        workers: int,
    ) -> None:
        self.repo = repo
        self.locations = locations
        self.uses: Counter[bytes] = Counter(c for chunks in files for c in chunks)
        # pack id -> the chunks needed from it (a dict as an ordered set), in order of first use
        needed: dict[bytes, dict[bytes, None]] = {}
        for chunks in files:
            for chunk_id in chunks:
                needed.setdefault(locations[chunk_id].pack_id, {})[chunk_id] = None
        self.packs = [(pack_id, list(chunk_ids)) for pack_id, chunk_ids in needed.items()]
        #: chunks read and not used up yet, oldest first; `held` bytes of them
        self.ready: dict[bytes, Plain] = {}
        self.held = 0
        self.budget = max(KEEP_BYTES, 4 * repo.config.pack_size)
        self._order = {pack_id: i for i, (pack_id, _) in enumerate(self.packs)}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="restore")
        self._ahead = workers * 2
        self._next = 0
        self._inflight: deque[Future[dict[bytes, Plain]]] = deque()

    def _read_pack(self, pack_id: bytes, chunk_ids: list[bytes]) -> dict[bytes, Plain]:
        locs = [self.locations[c] for c in chunk_ids]
        start = min(loc.offset for loc in locs)
        end = max(loc.offset + loc.length for loc in locs)
        data = self.repo.backend.get(f"data/{pack_id.hex()}", start, end)
        if len(data) != end - start:
            raise Altered(f"pack {pack_id.hex()} is truncated")
        view = memoryview(data)
        opened: dict[bytes, Plain] = {}
        for chunk_id, loc in zip(chunk_ids, locs, strict=True):
            blob = view[loc.offset - start : loc.offset - start + loc.length]
            opened[chunk_id] = self.repo.sealer.open(chunk_id, blob, loc.raw_length)
        return opened

    def _fill(self) -> None:
        while self._next < len(self.packs) and len(self._inflight) < self._ahead:
            pack_id, chunk_ids = self.packs[self._next]
            self._inflight.append(self._pool.submit(self._read_pack, pack_id, chunk_ids))
            self._next += 1

    def _hold(self, chunks: dict[bytes, Plain]) -> None:
        for chunk_id, data in chunks.items():
            self.ready[chunk_id] = data
            self.held += len(data)

    def _let_go(self, chunk_id: bytes) -> None:
        self.held -= len(self.ready.pop(chunk_id))

    def _came_back(self, chunk_id: bytes) -> bool:
        """Whether the planned read of the chunk's pack has come back (packs are read, and
        their reads taken back, in plan order)."""
        taken = self._next - len(self._inflight)
        return self._order[self.locations[chunk_id].pack_id] < taken

    def _get(self, chunk_id: bytes) -> Plain:
        """The chunk's plaintext: held, from its planned read, or read again alone (it was
        let go to stay within the budget)."""
        while chunk_id not in self.ready and not self._came_back(chunk_id):
            self._fill()
            if not self._inflight:
                raise AssertionError(f"chunk {chunk_id.hex()} was not planned")
            self._hold(self._inflight.popleft().result())
            self._fill()
        if chunk_id not in self.ready:
            self._hold(self._read_pack(self.locations[chunk_id].pack_id, [chunk_id]))
        return self.ready[chunk_id]

    def chunks(self, chunk_ids: list[bytes]) -> Iterator[Plain]:
        """The plaintext of `chunk_ids`, in order (call for files in the order given)."""
        for chunk_id in chunk_ids:
            data = self._get(chunk_id)
            self.uses[chunk_id] -= 1
            if self.uses[chunk_id]:
                self.ready[chunk_id] = self.ready.pop(chunk_id)  # used last: let go last
            else:
                self._let_go(chunk_id)
            # Over the budget: let go of what was held longest (chunks read early for
            # files far ahead, or kept for a use again), never the one handed out now.
            while self.held > self.budget and (oldest := next(iter(self.ready))) != chunk_id:
                self._let_go(oldest)
            yield data

    def close(self) -> None:
        for future in self._inflight:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
