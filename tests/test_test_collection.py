"""Test folders collect together in any combination. A folder without `__init__.py` puts
its modules on sys.path under their bare names, so two such folders' `conftest.py` are the
same module `conftest`: pytest keeps the last one loaded, and a test that imports helpers
`from conftest` got the other folder's (tests/hsm and tests/backup failed to collect when
run together, whichever came first)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HSM_AND_BACKUP = (str(TESTS / "hsm"), str(TESTS / "backup"))


def test_no_test_module_imports_helpers_from_a_conftest() -> None:
    importing = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # `from .conftest import` in a package is its own module; a bare name is not.
            bare_from = isinstance(node, ast.ImportFrom) and (
                node.level == 0 and node.module == "conftest"
            )
            bare = isinstance(node, ast.Import) and any(a.name == "conftest" for a in node.names)
            if bare_from or bare:
                importing.append(str(path.relative_to(TESTS)))
    assert importing == [], "move the helpers to a module of their own: " + ", ".join(importing)


def test_hsm_and_backup_tests_collect_in_one_run() -> None:
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "--collect-only", "-q", *HSM_AND_BACKUP],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=TESTS.parent,
    )
    assert collected.returncode == 0, collected.stdout[-3000:]
    assert "error" not in collected.stdout.lower().splitlines()[-1]
