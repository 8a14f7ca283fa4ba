"""The progress bar on a terminal: sizes and speed in the binary units the summaries use."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from backupvault.cli.output import Output, ProgressBar


class Clock:
    """A console's clock, which the bar times its samples by, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _terminal(width: int = 120) -> tuple[io.StringIO, Clock, Console]:
    """A terminal `width` columns wide drawn into a string, on a clock moved by hand."""
    screen = io.StringIO()
    clock = Clock()
    console = Console(
        file=screen, force_terminal=True, width=width, color_system=None, get_time=clock
    )
    return screen, clock, console


def test_the_bar_counts_in_mib_and_mib_per_second() -> None:
    screen, clock, console = _terminal()
    with ProgressBar(console) as bar:
        bar.start(512 << 20, "backing up")
        for _ in range(4):
            bar.advance(64 << 20)
            clock.now += 0.5
        bar._progress.refresh()  # type: ignore[union-attr]  # draw now, not at the next tick
        drawn = screen.getvalue()
        bar.finish()
    assert "256.0/512.0 MiB" in drawn
    assert re.search(r"[\d.]+ (MiB|GiB)/s", drawn), drawn
    assert " MB" not in drawn and "GB/s" not in drawn


def test_no_speed_nor_time_left_until_a_second_of_work_is_measured() -> None:
    """The first frames drew a burst (an unchanged file counted whole) over the
    millisecond since the first sample: "62.5 GiB/s", and a time left of 0:00:01. Both
    wait for samples a second apart, then show what was measured."""
    screen, clock, console = _terminal()
    with ProgressBar(console) as bar:
        bar.start(768 << 20, "backing up")
        bar.advance(64 << 20)  # at 1000.0
        clock.now = 1000.001
        bar.advance(64 << 20)  # rich's figure: 64 MiB over 1 ms
        clock.now = 1000.9
        bar._progress.refresh()  # type: ignore[union-attr]
        early = screen.getvalue()
        clock.now = 1001.25
        bar.advance(176 << 20)  # 240 MiB over the 1.25 s since the first sample
        bar._progress.refresh()  # type: ignore[union-attr]
        later = screen.getvalue()[len(early) :]
        bar.finish()
    assert "128.0/768.0 MiB" in early and "/s" not in early, early
    assert "-:--:--" in early and "0:00:00" not in early, early
    assert "192.0 MiB/s" in later and "0:00:03" in later, later  # 464 MiB left


def test_no_speed_when_work_starts_long_after_the_bar() -> None:
    """A restore's bar is made before its first write, which may come seconds later as a
    burst: the second counts from the first advance, not from the bar."""
    screen, clock, console = _terminal()
    with ProgressBar(console) as bar:
        bar.start(768 << 20, "restoring")
        clock.now = 1005.0
        bar.advance(64 << 20)
        clock.now = 1005.001
        bar.advance(64 << 20)
        bar._progress.refresh()  # type: ignore[union-attr]
        drawn = screen.getvalue()
        bar.finish()
    assert "128.0/768.0 MiB" in drawn and "/s" not in drawn, drawn


def test_a_step_with_no_total_shows_no_amount() -> None:
    """Prune's first step (reading the snapshots) has no total: its line says what it does
    and pulses, with no "0/? bytes" beside it."""
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    with ProgressBar(console) as bar:
        bar.start(None, "reading snapshots")
        bar._progress.refresh()  # type: ignore[union-attr]
        drawn = screen.getvalue()
        bar.finish()
    assert "reading snapshots" in drawn
    assert "/?" not in drawn and "bytes" not in drawn, drawn


def test_no_bar_without_a_terminal_or_with_json_or_quiet() -> None:
    for output in (Output(), Output(json_mode=True), Output(quiet=True)):
        assert output.progress()._progress is None


def test_quiet_drops_notes_and_reports_but_not_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    """`-q`: no notes, no report of a command that worked; warnings (the vault client's
    too: a node whose answer does not verify, wrong guesses since the last recovery) stay."""
    quiet = Output(quiet=True)
    quiet.note("a new key was registered")
    quiet.done({"ok": True}, "snapshot saved")
    quiet.client_notice("the relay asks to slow down: waiting 1 s")
    quiet.client_notice("warning: vault node 2 sent a partial evaluation that does not verify")
    quiet.warn("2 wrong passwords were tried since your last successful recovery")
    quiet.result({"ok": True}, "the answer")
    out, err = capsys.readouterr()
    assert out == "the answer\n"
    assert err.splitlines() == [
        "warning: vault node 2 sent a partial evaluation that does not verify",
        "warning: 2 wrong passwords were tried since your last successful recovery",
    ]
    scripted = Output(json_mode=True, quiet=True)
    scripted.done({"ok": True}, "snapshot saved")
    out, err = capsys.readouterr()
    assert (out, err) == ('{"ok": true}\n', "")
    # --json: a warning goes into the object (once, beside the command's own), not stderr
    scripted.client_notice("warning: 1 wrong password was tried since your last recovery")
    scripted.warn("snapshot X is gone")
    scripted.done({"ok": True, "warnings": ["snapshot X is gone"]}, "snapshot saved")
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out)["warnings"] == [
        "snapshot X is gone",
        "1 wrong password was tried since your last recovery",
    ]


@pytest.mark.parametrize("width", [20, 30, 40, 49, 50, 60, 81, 82, 100, 160])
@pytest.mark.parametrize("label", ["restoring", "reading snapshots"])
def test_the_bar_is_one_line_at_any_width(width: int, label: str) -> None:
    """A line wider than the terminal wraps, and a wrapped bar is redrawn as a new line at
    every refresh (COLUMNS=40 filled the screen): columns that do not fit are dropped."""
    _screen, clock, console = _terminal(width)
    with ProgressBar(console) as bar:
        progress = bar._progress
        assert progress is not None
        bar.start(1023 << 30, label)
        for _ in range(3):
            bar.advance((1000 << 30) // 3)
            clock.now += 0.6  # the speed is drawn once measured over a second
        lines = console.render_lines(progress.get_renderable(), console.options)
        bar.finish()
    texts = ["".join(segment.text for segment in line).rstrip() for line in lines]
    assert len(texts) == 1, texts
    assert len(texts[0]) <= width
    if width >= 40:
        assert re.search(r"[\d,]+\.\d/1,023\.0 GiB", texts[0]), texts
    if width >= 82:
        assert re.search(r"(KiB|MiB|GiB|TiB)/s", texts[0]), texts


@pytest.mark.parametrize("forced", [{"FORCE_COLOR": "1"}, {"TTY_COMPATIBLE": "1"}])
def test_no_bar_into_a_stderr_that_is_no_terminal_whatever_the_environment_says(
    tmp_path: Path, forced: dict[str, str]
) -> None:
    """rich takes FORCE_COLOR (or TTY_COMPATIBLE=1), which CI jobs and containers set for
    colours, for a terminal: a backup drew its bar, frame after frame, into the log its
    stderr went to (review s61). Errors may keep their colours; the bar is for a person."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_text("alpha\n")
    done = subprocess.run(
        [sys.executable, "-m", "backupvault", "backup", "create", str(source),
         "--storage", str(tmp_path / "storage"), "--recovery-code"],
        capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **forced},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "backing up" not in done.stderr and "\x1b[?25l" not in done.stderr, done.stderr
