"""How the CLI talks to people and scripts: messages, JSON, progress bars, exit codes."""

from __future__ import annotations

import errno
import functools
import json
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, Task, TaskID

from backupvault.errors import BackupVaultError


def _console(stderr: bool) -> Console:
    # rich is imported only when something is printed for people: it is a third of the
    # CLI's start-up time, which `--json` runs (scripts, `backup create` in cron) skip.
    from rich.console import Console

    # No markup: what is printed holds file names, and "song [live].mp3" would lose its
    # "[live]" and a name with "[/" would raise rich's MarkupError.
    return Console(stderr=stderr, highlight=False, soft_wrap=True, markup=False)


# Control characters but newline and tab (C0, DEL, C1): a message may hold what storage
# said (an error from an SFTP or S3 server) or a name from a snapshot, and the terminal
# would obey an escape sequence in it (erase the warning above, set the title, write
# the clipboard). rich leaves ESC through. And lone surrogates: a file name that is not
# UTF-8 (b"caf\xe9", from a Latin-1 disk or archive) is decoded with surrogateescape,
# and a UTF-8 locale's stdout (errors "strict") refused to write it: `backup list` and
# `backup ls` of such a snapshot, and a restore that had written every file, ended in
# "unexpected UnicodeEncodeError" (exit 1).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _escaped(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # the byte surrogateescape stood for
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with its control characters shown as escapes (\\x1b), not sent as such, and
    a byte of a name that is not UTF-8 shown as one too (\\xe9)."""
    return _CONTROL.sub(lambda m: _escaped(m.group()), text)


def one_line_name(name: str) -> str:
    """A file name on one line: a line break or tab in it is shown as an escape (as every
    other control character printed is: `printable`), so that it cannot make a line that
    passes for another entry, or for a message of ours."""
    return name.replace("\n", "\\n").replace("\t", "\\t")


@dataclass
class Output:
    """One per command run: `--json` switches every result to one JSON object on stdout."""

    json_mode: bool = False
    quiet: bool = False
    #: under --json, the warnings of this run so far: `result` adds them to its object
    warnings: list[str] = field(default_factory=list)

    @functools.cached_property
    def out(self) -> Console:
        return _console(stderr=False)

    @functools.cached_property
    def err(self) -> Console:
        return _console(stderr=True)

    def result(self, data: dict[str, Any], text: str) -> None:
        """The command's answer: `text` for people, `data` for `--json`."""
        if self.json_mode:
            if self.warnings:
                own = list(data.get("warnings", []))
                data = {**data, "warnings": own + [w for w in self.warnings if w not in own]}
            try:
                _stdout().write(json.dumps(data, sort_keys=True) + "\n")
                sys.stdout.flush()  # a full disk says so here, not at exit
            except OSError as exc:
                raise _not_written(exc, data) from None
        else:
            try:
                self.out.print(printable(text))
            except OSError as exc:  # rich's own exit on a broken pipe is kept
                raise _not_written(exc, data) from None

    def say_code(self, text: str) -> None:
        """A new recovery code on stdout, for people; ResultNotWritten if stdout takes
        nothing of it (closed too: rich then writes nothing, without a word)."""
        try:
            _stdout()
            self.out.print(printable(text))
        except OSError as exc:
            raise _not_written(exc, {}) from None

    def done(self, data: dict[str, Any], text: str) -> None:
        """The report of a command that acts (backs up, restores, forgets, prunes,
        checks): as `result`, but nothing for people under `-q`, as with restic's
        `--quiet`: a cron job then mails only warnings and errors."""
        if self.json_mode or not self.quiet:
            self.result(data, text)

    def note(self, text: str) -> None:
        """Side information for people (stderr, so stdout stays the answer)."""
        if not self.json_mode and not self.quiet:
            self.err.print(printable(text))

    def client_notice(self, text: str) -> None:
        """The vault client's messages: its warnings as `warn`, the rest as notes."""
        if text.startswith("warning: "):
            self.warn(text.removeprefix("warning: "))
        else:
            self.note(text)

    def warn(self, text: str) -> None:
        """Something a person must see, `-q` or not (stderr); under `--json`, the result
        object's `warnings`, so a script sees it too."""
        if self.json_mode:
            self.warnings.append(text)
        else:
            from rich.text import Text

            self.err.print(Text.assemble(("warning:", "bold yellow"), " ", printable(text)))

    def error(self, err: BackupVaultError) -> None:
        """The error a command ended with; under --json, one object on stderr that also
        carries the run's `warnings` (printed as they came without --json)."""
        if self.json_mode:
            payload: dict[str, Any] = {
                **err.details,
                "error": err.message,
                "hint": err.hint,
                "exit_code": err.exit_code,
            }
            if self.warnings:
                payload["warnings"] = list(self.warnings)
            sys.stderr.write(json.dumps(payload, sort_keys=True) + "\n")
        else:
            from rich.text import Text

            self.err.print(Text.assemble(("error:", "bold red"), " ", printable(err.message)))
            if err.hint:
                self.err.print(Text.assemble("  ", ("hint:", "dim"), " ", printable(err.hint)))

    def progress(self) -> ProgressBar:
        # stderr itself, not only rich's word for it: rich takes FORCE_COLOR or
        # TTY_COMPATIBLE=1 (set in CI jobs and containers for colours) for a terminal, and
        # the bar was drawn, frame after frame, into the log stderr went to.
        if self.quiet or self.json_mode or not self.err.is_terminal or not _stderr_is_a_tty():
            return ProgressBar(None)
        return ProgressBar(self.err)


class ResultNotWritten(BackupVaultError):
    """stdout took nothing of the command's answer (a full disk, a closed stream): what the
    command did stands, and under --json the error object carries the answer's fields (a
    first backup's `recovery_code` among them: it said "unexpected OSError ... a bug",
    and the code of the repository just made was seen nowhere)."""


def _not_written(exc: OSError, data: dict[str, Any]) -> ResultNotWritten:
    error = ResultNotWritten(
        f"the result could not be written to stdout ({exc.strerror or exc})",
        hint="what the command did stands; give stdout a file on a disk with free space"
        " (or a terminal) to see its result",
    )
    error.details.update(data)
    return error


def _stdout() -> Any:
    """sys.stdout, or OSError if the command was started without one (`>&-`): rich
    writes nothing then, without a word, a new recovery code too."""
    if sys.stdout is None:
        raise OSError(errno.EBADF, "stdout is closed")
    return sys.stdout


def _stderr_is_a_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (OSError, ValueError):  # closed
        return False


#: Terminal widths from which the bar, and then the speed and time left, are drawn: the
#: longest label and amount ("reading snapshots", "1023.9/1023.9 GiB") take 40 columns,
#: the speed and time left 22 more; a bar narrower than 10 says nothing.
WIDTH_FOR_BAR = 50
WIDTH_FOR_SPEED = 82

#: The speed, and the time left worked out from it, are drawn only this long after the
#: first advance (kept in the task's public fields, not read from rich's private samples).
#: rich divides the bytes counted after its first sample by the time since it: on the
#: first frames, one burst (an unchanged file counted whole, a pack's chunks written out)
#: over a few milliseconds, shown as TiB/s. A second smooths such bursts and still shows a
#: speed early in any work long enough to watch.
MIN_SPEED_SPAN_S = 1.0


def measured_speed(task: Task) -> float | None:
    """Bytes a second of `task`, as rich estimates it over its recent samples; None until
    MIN_SPEED_SPAN_S after its first advance (`first_at`, a field `ProgressBar.advance`
    sets: the task may be made well before work starts, as a restore's is)."""
    first = task.fields.get("first_at")
    if first is None or task.get_time() - first < MIN_SPEED_SPAN_S:
        return None
    return task.finished_speed or task.speed


class ProgressBar:
    """Adapts the backup package's progress callbacks to a rich bar on stderr. Disabled, it
    does nothing (and rich.progress is not even imported: it costs start-up time)."""

    def __init__(self, console: Console | None) -> None:
        """A bar on `console`, or nothing at all if it is None."""
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._advanced = False  # the task has its `first_at` (`measured_speed`)
        if console is not None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                ProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.table import Column
            from rich.text import Text

            from backupvault.backup.safe import human_size

            class SpeedColumn(ProgressColumn):
                """In binary units (MiB/s), as the summaries print sizes; rich's own
                speed column has only decimal ones."""

                def render(self, task: Task) -> Text:
                    speed = measured_speed(task)
                    return Text("" if speed is None else f"{human_size(int(speed))}/s")

            class TimeLeftColumn(TimeRemainingColumn):
                """Unknown ("-:--:--") until the speed it comes from is measured."""

                def render(self, task: Task) -> Text:
                    if task.total is not None and not task.finished and not measured_speed(task):
                        return Text("-:--:--", style="progress.remaining")
                    return super().render(task)

            class AmountColumn(DownloadColumn):
                """Bytes done of the total; nothing for a step with no total (reading
                snapshots), whose bar only pulses: "0/? bytes" told the user nothing."""

                def render(self, task: Task) -> Text:
                    return Text("") if task.total is None else super().render(task)

            # One line at any width: a column that does not fit is dropped, not wrapped
            # (a wrapped bar redraws as a new line on every refresh).
            width = console.width
            one_line = Column(no_wrap=True)
            columns: list[ProgressColumn] = [
                TextColumn("{task.description}", table_column=one_line)
            ]
            if width >= WIDTH_FOR_BAR:
                beside = 62 if width >= WIDTH_FOR_SPEED else 40
                columns.append(BarColumn(bar_width=min(40, width - beside)))
            columns.append(AmountColumn(binary_units=True, table_column=one_line))
            if width >= WIDTH_FOR_SPEED:
                columns += [SpeedColumn(table_column=one_line), TimeLeftColumn()]
            self._progress = Progress(*columns, console=console, transient=True)

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, total_bytes: int | None, label: str) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(label, total=total_bytes)
            self._advanced = False

    def advance(self, n: int) -> None:
        if self._progress is not None and self._task is not None:
            if self._advanced:
                self._progress.advance(self._task, n)
            else:
                self._advanced = True
                self._progress.update(self._task, advance=n, first_at=self._progress.get_time())

    def finish(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, visible=False)
            self._task = None
