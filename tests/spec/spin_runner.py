"""Run spin's verifier (pan) on a Promela model in a temporary folder: the one runner the
model tests share. Fails (never skips) when spin or gcc is missing."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parents[2] / "spec"


@dataclass(frozen=True)
class PanResult:
    output: str
    errors: int
    states: int
    trail: bool


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: the model check needs spin and gcc "
            "(scripts/setup.sh installs them; by hand: apt-get install -y spin gcc)"
        )
    return path


def run_pan(
    model_name: str,
    tmp_path: Path,
    *defines: str,
    optimize: str = "-O2",
    memlim_mb: int = 4000,
    hash_bits: int = 24,
) -> PanResult:
    """Verify spec/`model_name` with `-D` `defines`; pan writes its files in `tmp_path`."""
    spin, gcc = _tool("spin"), _tool("gcc")
    model = tmp_path / model_name
    shutil.copy(SPEC / model_name, model)
    flags = [f"-D{d}" for d in defines]
    subprocess.run([spin, *flags, "-a", model.name], cwd=tmp_path, check=True, timeout=60)
    build = ["-w", "-DSAFETY", "-DNOREDUCE", f"-DMEMLIM={memlim_mb}", "-o", "pan", "pan.c"]
    subprocess.run(
        [gcc, optimize, *build],
        cwd=tmp_path,
        check=True,
        timeout=120,
    )
    done = subprocess.run(
        ["./pan", "-m100000", f"-w{hash_bits}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
    )
    output = done.stdout + done.stderr
    errors = re.search(r"errors: (\d+)", output)
    states = re.search(r"(\d+) states, stored", output)
    assert errors is not None and states is not None, output
    return PanResult(
        output, int(errors.group(1)), int(states.group(1)), model.with_suffix(".pml.trail").exists()
    )
