"""The first-backup rate row (bench/backup_vs_restic.py, `rate_row`) gives our backup's CPU
time beside its wall time, from the children's times around it. The command's helper was
made inside that window, and making it compiles the package in a child process
(`compileall`, about 0.13 s of CPU here even when nothing is left to compile): that CPU
was added to every backup's, about a tenth of a 512 MiB backup's 1.2-1.5 s."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import backup_vs_restic

SETUP_CPU = 0.4  # seconds of CPU the helper's set-up spends in a child process


class _Helper:
    """In place of `Backupvault`: a set-up that costs CPU in a child, a backup that costs
    none (it only makes the repository folder)."""

    def __init__(self, work: Path) -> None:
        del work
        burn = (
            f"import time\nend = time.process_time() + {SETUP_CPU}\n"
            "while time.process_time() < end: pass"
        )
        subprocess.run([sys.executable, "-c", burn], check=True)

    def backup(self, repo: Path, source: Path) -> None:
        del source
        repo.mkdir()


def test_the_rate_rows_cpu_is_the_backups_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup_vs_restic, "Backupvault", _Helper)
    row = backup_vs_restic.rate_row(tmp_path, 1 << 20, runs=1)
    found = re.search(r"ours [0-9.]+ s, ([0-9.]+) s CPU", str(row["reference"]))
    assert found is not None, row["reference"]
    assert float(found.group(1)) < SETUP_CPU / 2
