"""The package as a user gets it: `python -m build` makes a wheel and an sdist, each
installs into a fresh virtualenv and runs `backupvault --version`; `make setup` says how
to put the command on PATH."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from backupvault import __version__

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the backend (hatchling) is a dev dependency, so this works offline.
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def fresh_venv(where: Path) -> Path:
    """A new virtualenv that sees the dev environment's dependencies (cryptography, ...)
    through a .pth line, but not its editable backupvault: only what gets installed."""
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def install_and_run(artifact: Path, where: Path) -> str:
    python = fresh_venv(where)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-build-isolation", "--no-index", str(artifact)],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    version = subprocess.run(
        [str(where / "bin" / "backupvault"), "--version"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    located = subprocess.run(
        [
            str(python),
            "-c",
            "import backupvault, backupvault.cli.passwords as p; "
            "print(backupvault.__file__); print(len(p.common_passwords()))",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert located[0].startswith(str(where)), located  # the installed copy, not src/
    assert int(located[1]) > 50  # package data made it in
    return version


def test_the_wheel_installs_and_runs(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("backupvault-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "backupvault/cli/common-passwords.txt" in names
    assert any(n.endswith("/licenses/LICENSE") for n in names)
    assert install_and_run(wheel, tmp_path / "venv") == f"backupvault, version {__version__}\n"


def test_the_sdist_installs_and_runs(dist: Path, tmp_path: Path) -> None:
    (sdist,) = dist.glob("backupvault-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for wanted in ("LICENSE", "README.md", "pyproject.toml", "src/backupvault/__init__.py"):
        assert wanted in names, wanted
    assert install_and_run(sdist, tmp_path / "venv") == f"backupvault, version {__version__}\n"


def test_make_setup_says_how_to_put_backupvault_on_path() -> None:
    done = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert ". .venv/bin/activate" in done.stdout.strip().splitlines()[-2]
