"""What this device remembers about repositories: the last snapshot it made of each
source, and which repository each storage folder it backs up to holds. Storage that
hides or deletes that snapshot (a rollback), or serves another repository of the same key
in a folder's place, is then noticed at the next backup.

A JSON file per repository in the state folder ($BACKUPVAULT_STATE_DIR, else
$XDG_STATE_HOME/backupvault, else ~/.local/state/backupvault), and one for the folders
(`places.json`). They hold ids (and hashes of the folders' URLs) only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path

from backupvault.backup.storage import Storage
from backupvault.errors import BackupVaultError, InvalidInput
from backupvault.files import locked, replace_file

_PLACES = "places.json"
_LOCK_WAIT = 30.0  # seconds: another backup holds a state file's lock for milliseconds


def default_dir() -> Path:
    if configured := os.environ.get("BACKUPVAULT_STATE_DIR"):
        return Path(configured)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "backupvault"


def place_of(storage: Storage) -> str:
    """Where a repository is, as `DeviceState` keeps it: a local folder's absolute path,
    else the storage URL."""
    return storage.root if storage.is_local else storage.display_url


def _load(path: Path, field: str) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    found = data.get(field) if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _save(path: Path, field: str, values: dict[str, str]) -> None:
    # Best effort: without it only the rollback warning is lost.
    with contextlib.suppress(OSError, InvalidInput):
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, json.dumps({field: values}, sort_keys=True).encode())


class DeviceState:
    def __init__(self, folder: Path, repo_id: bytes, place: str) -> None:
        """`place`: where the repository is (the storage URL, a local folder's absolute
        path), kept hashed."""
        self.path = folder / f"repo-{repo_id.hex()}.json"
        self._places = folder / _PLACES
        self._place = _hashed(place)
        self._repo_id = repo_id.hex()

    def last_made(self, source: str) -> str | None:
        return _load(self.path, "latest").get(source)

    def all_made(self) -> dict[str, str]:
        """Each source this device backed up here -> the last snapshot it made of it."""
        return _load(self.path, "latest")

    def held_before(self) -> str | None:
        """The id of the repository this device last backed up to at this place, if it
        was another one (a snapshot made there since is in no state of this one)."""
        before = _load(self._places, "places").get(self._place)
        return before if before not in (None, self._repo_id) else None

    def forgot(self, removed: Collection[str], newest: Mapping[str, str]) -> None:
        """`backup forget` removed the snapshots `removed`: a source whose last snapshot made
        here is one of them now has the newest left of it (`newest`, by source) as its last,
        or none. Else, once `backup prune` drops the forget record, the next backup would
        take that snapshot's absence for storage hiding it. Best effort, as `_save`."""
        with contextlib.suppress(BackupVaultError), locked(self.path, timeout=_LOCK_WAIT):
            latest = _load(self.path, "latest")
            gone = [source for source, last in latest.items() if last in removed]
            if not gone:
                return
            for source in gone:
                if source in newest:
                    latest[source] = newest[source]
                else:
                    del latest[source]
            _save(self.path, "latest", latest)

    def made(self, source: str, snapshot_id: str) -> None:
        # Each file is read, changed and written under its lock: two backups of this
        # device at once (two sources, one repository) would otherwise each write what
        # they read, and one source's record would be lost. Best effort, as `_save`.
        with contextlib.suppress(BackupVaultError), locked(self.path, timeout=_LOCK_WAIT):
            latest = _load(self.path, "latest")
            latest[source] = snapshot_id
            _save(self.path, "latest", latest)
        with contextlib.suppress(BackupVaultError), locked(self._places, timeout=_LOCK_WAIT):
            places = _load(self._places, "places")
            if places.get(self._place) != self._repo_id:
                places[self._place] = self._repo_id
                _save(self._places, "places", places)


def repository_held(folder: Path, place: str) -> str | None:
    """The id of the repository this device last backed up to at `place`, if any."""
    return _load(folder / _PLACES, "places").get(_hashed(place))


def _hashed(place: str) -> str:
    return hashlib.sha256(place.encode(errors="surrogateescape")).hexdigest()


def another_repository(place: str, before: str, now: bytes) -> str:
    """The warning for a place that holds another repository than when this device last
    backed up there (`DeviceState.held_before`)."""
    return (
        f"{place} holds another repository than when this device last backed up there"
        f" (repository {before}, now {now.hex()}): storage may be serving another repository"
        " made with this key in its place, or that one was deleted and this one made anew"
    )
