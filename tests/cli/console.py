"""Running the installed `backupvault` console script as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: The console script pip installed next to this interpreter.
CONSOLE_SCRIPT = Path(sys.executable).parent / "backupvault"


def backupvault(
    *args: str,
    stdin: str = "",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """One run of the console script; BACKUPVAULT_CONFIG is unset unless `env` sets it."""
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT} is missing: run `make setup`"
    environment = {k: v for k, v in os.environ.items() if k != "BACKUPVAULT_CONFIG"}
    environment.update(env or {})
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environment,
        cwd=cwd,
    )
