"""Every restic command opens its repository with the password through scrypt, which
restic calibrates at `init` to about half a second on the machine (here N=32768, r=8,
p=6: `restic cat config` 0.7 s against `restic version` 0.01 s). Our side of the
comparison (bench/backup_vs_restic.py) runs with a recovery code, a full-strength key
that nothing stretches. So each of restic's times held that fixed cost and ours no
counterpart of it, unsaid: enough to decide the rows whose commands are short (run 54:
50,000 small files backed up in 3.12 s against restic's 3.19 s, "met", about 1.2× with
restic's key opening taken out). The rows now say what restic spends on it and give the
ratio without it; the ratio as a user meets it stays the figure held to the goal."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from bench import backup_vs_restic


def test_a_time_row_says_what_restic_spends_opening_its_key() -> None:
    row = backup_vs_restic._time_row("small files: backup", 3.12, 3.19, 0.6)
    assert row["ratio"] == pytest.approx(3.12 / 3.19)
    assert row["met"] is True
    assert row["restic_key_seconds"] == 0.6
    assert row["ratio_without_restic_key"] == pytest.approx(3.12 / 2.59)
    assert "0.60 s of it opening its key" in row["reference"]
    assert "without it 1.20×" in row["reference"]


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed")
def test_restic_spends_a_fixed_time_opening_its_repository(tmp_path: Path) -> None:
    restic = backup_vs_restic.Restic(tmp_path)
    repo = tmp_path / "repo"
    restic.init(repo)
    started = time.perf_counter()
    restic._run("version")
    version = time.perf_counter() - started
    assert restic.key_seconds(repo, runs=1) > max(0.05, 3 * version)
