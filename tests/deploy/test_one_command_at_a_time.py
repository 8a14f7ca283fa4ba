"""One `local` command at a time starts, stops or changes a deployment's processes. Two
`local up` at once on a stopped deployment each started every process; the second copy
of each failed to listen, both commands failed, and a process neither had recorded kept
the port (every later `local up` then failed on it until it was killed by hand)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupvault.deploy.local import DeploymentError, LocalDeployment


@pytest.fixture
def first_up_provisioning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A `local up` under way in another thread, held in its provisioning until the test
    ends; yields the names of the threads that provisioned."""
    provisioning, release = threading.Event(), threading.Event()
    provisioned: list[str] = []

    def provision(self: LocalDeployment, nodes: int) -> None:
        provisioned.append(threading.current_thread().name)
        provisioning.set()
        release.wait(30)
        raise DeploymentError("the first `local up` stops here")

    monkeypatch.setattr(LocalDeployment, "provision", provision)

    def first_up() -> None:
        with pytest.raises(DeploymentError):
            LocalDeployment(tmp_path).up(1)

    first = threading.Thread(target=first_up, name="first")
    first.start()
    try:
        assert provisioning.wait(30)
        yield provisioned
    finally:
        release.set()
        first.join(30)


def test_a_second_local_command_on_a_folder_in_use_is_refused_and_does_nothing(
    tmp_path: Path, first_up_provisioning: list[str]
) -> None:
    second = LocalDeployment(tmp_path)
    for command in (lambda: second.up(1), second.down, second.rotate, second.upgrade):
        with pytest.raises(DeploymentError) as refused:
            command()
        assert "another `backupvault local` command" in refused.value.message
        assert f"(pid {os.getpid()})" in refused.value.message
        assert str(tmp_path) in refused.value.message
        assert "wait for it to finish" in (refused.value.hint or "")
    assert first_up_provisioning == ["first"]


def test_the_lock_goes_with_the_command_that_held_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that failed (or was killed: the kernel drops its lock) leaves nothing
    that refuses the next one; `upgrade` runs `up` under its own lock."""
    monkeypatch.setattr(LocalDeployment, "provision", lambda self, nodes: None)
    monkeypatch.setattr(LocalDeployment, "provisioned", lambda self: True)
    monkeypatch.setattr(LocalDeployment, "epochs", lambda self: [])
    monkeypatch.setattr(LocalDeployment, "witnesses", lambda self: [])
    started: list[str] = []
    monkeypatch.setattr(LocalDeployment, "start_relay", lambda self: started.append("relay"))
    monkeypatch.setattr(LocalDeployment, "wait_ready", lambda self, timeout: None)
    deployment = LocalDeployment(tmp_path)
    deployment.up(1)
    with deployment._exclusive():
        deployment.up(1)  # nested: the same command
    LocalDeployment(tmp_path).up(1)
    assert started == ["relay"] * 3
    killed = subprocess.run(
        [sys.executable, "-c", "import os, sys; from backupvault.deploy.local import"
         " LocalDeployment as L; from pathlib import Path;"
         " L(Path(sys.argv[1]))._exclusive().__enter__(); os._exit(9)",
         str(tmp_path)],
        check=False,
    )  # fmt: skip
    assert killed.returncode == 9
    LocalDeployment(tmp_path).up(1)
    assert started == ["relay"] * 4


def test_local_up_on_a_folder_in_use_exits_1_with_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "bv"
    holder = LocalDeployment(root)
    root.mkdir(mode=0o700)
    with holder._exclusive():
        done = subprocess.run(
            [sys.executable, "-m", "backupvault", "local", "up", "--dir", str(root)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert f"another `backupvault local` command (pid {os.getpid()})" in done.stderr
    assert "bug" not in done.stderr
    assert sorted(p.name for p in root.iterdir()) == ["local.lock"]  # nothing provisioned
