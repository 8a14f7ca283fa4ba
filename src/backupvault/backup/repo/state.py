"""What this device remembers about repositories: the last snapshot it made of each
source. Storage that hides or deletes it (a rollback) is then noticed at the next backup.

A JSON file per repository in the state folder ($BACKUPVAULT_STATE_DIR, else
$XDG_STATE_HOME/backupvault, else ~/.local/state/backupvault). It holds ids only.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


def default_dir() -> Path:
    if configured := os.environ.get("BACKUPVAULT_STATE_DIR"):
        return Path(configured)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "backupvault"


class DeviceState:
    def __init__(self, folder: Path, repo_id: bytes) -> None:
        self.path = folder / f"repo-{repo_id.hex()}.json"

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        latest = data.get("latest") if isinstance(data, dict) else None
        return {str(k): str(v) for k, v in latest.items()} if isinstance(latest, dict) else {}

    def _save(self, latest: dict[str, str]) -> None:
        # Best effort: without it only the rollback warning is lost.
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.path.with_suffix(".tmp")
            temp.write_text(json.dumps({"latest": latest}, sort_keys=True))
            os.replace(temp, self.path)

    def last_made(self, source: str) -> str | None:
        return self._load().get(source)

    def made(self, source: str, snapshot_id: str) -> None:
        latest = self._load()
        latest[source] = snapshot_id
        self._save(latest)
