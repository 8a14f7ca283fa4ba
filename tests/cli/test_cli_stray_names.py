"""A name in a repository folder that is no object of it (a README, a sync tool's file) is
left out with one warning per folder and command (docs/format.md, "Repository layout"),
a warning as every other: `warning: ...` on stderr, and under --json in the result's
`warnings` (docs/cli.md). The backup library logged it with no handler, so logging's
last resort printed it bare on stderr, also under --json (where stderr is for one error
object), never in `warnings`, and twice in most commands (once per storage handle)."""

from __future__ import annotations

import json
from pathlib import Path

from console import backupvault  # tests/cli/console.py


def test_a_stray_name_is_one_warning_as_every_other(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "notes.txt").write_text("meet at 7\n")
    storage = str(tmp_path / "storage")
    made = backupvault("backup", "create", str(source), "--storage", storage, "--recovery-code")
    assert made.returncode == 0, made.stderr
    code = made.stdout.splitlines()[1].strip()
    (tmp_path / "storage" / "snapshots" / "README").write_text("not a snapshot\n")
    said = "snapshots at "

    for command in (["backup", "check"], ["backup", "list"], ["backup", "prune", "--dry-run"]):
        args = [*command, "--storage", storage, "--recovery-code", "-"]
        done = backupvault(*args, stdin=code)
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stderr.splitlines() if said in line]
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("warning: ") and "'README'" in lines[0]

        done = backupvault("--json", *args, stdin=code)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        warnings = json.loads(done.stdout)["warnings"]
        assert [w for w in warnings if said in w and "'README'" in w] == [warnings[0]]
