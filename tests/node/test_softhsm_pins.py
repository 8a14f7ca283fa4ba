"""A SoftHSM2 token's PINs never go on a command line: `softhsm2-util --init-token --pin
PIN --so-pin SO_PIN` showed both to every host user (`ps`, /proc/<pid>/cmdline) while it
ran, for each node `local up` provisions. They are typed at its prompts instead."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from pathlib import Path

import pytest

from backupvault.node.softhsm import init_softhsm_token
from backupvault.node.token import TokenError, TokenSealer

REAL_UTIL = shutil.which("softhsm2-util")
pytestmark = pytest.mark.skipif(REAL_UTIL is None, reason="SoftHSM2 is not installed")


def test_the_pins_are_on_no_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A softhsm2-util first on PATH writes down its arguments, as `ps` would show them."""
    seen = tmp_path / "argv.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    spy = bin_dir / "softhsm2-util"
    spy.write_text(f'#!/bin/sh\necho "$@" >> {seen}\nexec {REAL_UTIL} "$@"\n')
    spy.chmod(spy.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    pin, so_pin = "user-pin-4711", "so-pin-0815"

    config = init_softhsm_token(tmp_path / "hsm", "pins-test", pin, so_pin)

    argv = seen.read_text()
    assert "--init-token" in argv  # the spy did see the initialisation
    assert pin not in argv and so_pin not in argv
    with TokenSealer(config) as sealer:  # the user PIN is the one given
        sealer.ensure_sealing_key()
    with pytest.raises(TokenError), TokenSealer(dataclasses.replace(config, pin=so_pin)):
        pass  # and the SO PIN is not the user PIN
