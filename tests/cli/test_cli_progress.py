"""The progress bar on a terminal: sizes and speed in the binary units the summaries use."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from backupvault.cli.output import Output, ProgressBar


def test_the_bar_counts_in_mib_and_mib_per_second() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    with ProgressBar(console) as bar:
        bar.start(512 << 20, "backing up")
        for _ in range(4):
            bar.advance(64 << 20)
            time.sleep(0.05)
        bar._progress.refresh()  # type: ignore[union-attr]  # draw now, not at the next tick
        drawn = screen.getvalue()
        bar.finish()
    assert "256.0/512.0 MiB" in drawn
    assert re.search(r"[\d.]+ (MiB|GiB)/s", drawn), drawn
    assert " MB" not in drawn and "GB/s" not in drawn


def test_no_bar_without_a_terminal_or_with_json_or_quiet() -> None:
    for output in (Output(), Output(json_mode=True), Output(quiet=True)):
        assert output.progress()._progress is None
