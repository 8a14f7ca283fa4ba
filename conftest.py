"""Fixtures for the whole suite.

Every `backup create` remembers its snapshot in the device's state folder
(~/.local/state/backupvault unless $BACKUPVAULT_STATE_DIR says otherwise). Tests run the
CLI in subprocesses, which inherit the environment: so each test, and every module-scoped
fixture before it, gets a temporary state folder, and nothing a test does lands in the
home folder of whoever runs it (tests/cli/test_cli_backup.py checks this).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

STATE_ENV = "BACKUPVAULT_STATE_DIR"


@pytest.fixture(autouse=True, scope="session")
def session_device_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """For processes started by session- or module-scoped fixtures."""
    folder = tmp_path_factory.mktemp("device-state")
    previous = os.environ.get(STATE_ENV)
    os.environ[STATE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(STATE_ENV, None)
    else:
        os.environ[STATE_ENV] = previous


@pytest.fixture(autouse=True)
def device_state(
    session_device_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test its own state folder (made only when something is written there): one
    test's snapshots never warn in another."""
    folder = tmp_path / "device-state"
    monkeypatch.setenv(STATE_ENV, str(folder))
    return folder


@pytest.fixture(scope="session")
def single_blob() -> ModuleType:
    """The test-only single-blob writer (tests/backup/single_blob.py): backupvault only reads
    that format now, and tests outside tests/backup make such backups with it."""
    if "single_blob" not in sys.modules:
        path = Path(__file__).parent / "tests" / "backup" / "single_blob.py"
        spec = importlib.util.spec_from_file_location("single_blob", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["single_blob"] = module
        spec.loader.exec_module(module)
    return sys.modules["single_blob"]
