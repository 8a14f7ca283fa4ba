"""`local down`, `status` and `up` signal only the processes `local up` started: a pid in
processes.json that now belongs to another process (reused after a reboot), or that is no
process at all (-1: every process of the user), is never signalled nor taken for a node."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupvault.deploy import local
from backupvault.deploy.local import LocalDeployment


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process of this user that has nothing to do with the deployment."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _record(root: Path, entry: dict[str, object]) -> None:
    (root / "processes.json").write_text(json.dumps({"relay": entry}))


def test_a_reused_pid_is_not_stopped(tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    """processes.json from before a reboot names a pid the bystander has now (the file of
    an older version records no start time; a newer one records another start time)."""
    for entry in (
        {"pid": bystander.pid},
        {"pid": bystander.pid, "started": local._start_time(bystander.pid) - 1},  # type: ignore[operator]
    ):
        _record(tmp_path, entry)
        deployment = LocalDeployment(tmp_path)
        assert deployment.running() == []
        assert deployment.down() == []
        assert bystander.poll() is None  # still running: it was never signalled


def test_a_process_local_up_started_is_stopped(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    _record(tmp_path, LocalDeployment._entry(bystander.pid))
    assert LocalDeployment(tmp_path).down() == ["relay"]
    assert bystander.wait(timeout=10) is not None  # gone (reaped by `down` itself)


@pytest.mark.parametrize("pid", [-1, 0, -2, True, "1", 1.0])
def test_no_signal_to_a_pid_that_is_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pid: object
) -> None:
    """-1 would be every process the user may signal (all of them, for root)."""
    sent: list[tuple[object, int]] = []
    monkeypatch.setattr(local.os, "kill", lambda p, sig: sent.append((p, sig)))
    monkeypatch.setattr(local, "_wait_gone", lambda p, timeout=5.0: True)
    _record(tmp_path, {"pid": pid})
    deployment = LocalDeployment(tmp_path)
    assert deployment.down() == []
    assert sent == []


def test_a_process_that_exited_stays_recorded_and_is_never_signalled(
    tmp_path: Path, bystander: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status` shows an exited process by its pid, not running (and `wait_ready` names
    it at once), so starting or stopping another process must keep its entry; nothing is
    sent to its pid, which another process may have by now."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    (tmp_path / "processes.json").write_text(
        json.dumps({"node0": {"pid": exited.pid, "started": 1}})
    )
    deployment = LocalDeployment(tmp_path)
    deployment._record("relay", bystander.pid)
    assert deployment.running() == ["relay"]
    sent: list[int] = []  # signals sent, the existence probe (signal 0) aside
    kill = local.os.kill

    def record_kill(pid: int, sig: int) -> None:
        if sig:
            sent.append(pid)
        kill(pid, sig)

    monkeypatch.setattr(local.os, "kill", record_kill)
    deployment.stop_process("relay")
    assert sent == [bystander.pid]
    assert deployment.running() == []
    assert deployment._recorded() == {"node0": {"pid": exited.pid, "started": 1}}
    deployment.stop_process("node0")  # forgotten, and its pid never signalled
    assert sent == [bystander.pid]
    assert deployment._recorded() == {}


@pytest.mark.parametrize("text", ["{", "[1, 2]", '"x"', "[" * 100_000])
def test_a_damaged_processes_file_is_one_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "processes.json").write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "backupvault", "local", "down", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "processes.json is not a list of this deployment's processes" in done.stderr
    assert "bug" not in done.stderr


def test_a_stop_returns_only_once_the_killed_process_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process that outlives its shutdown time is killed, and the stop waits until it is
    gone: a node still dying on a loaded machine answered its successor's health poll,
    and `wait_ready` took that for the new process being ready."""
    signals: list[int] = []
    polls_after_kill = 3

    def alive(pid: int | None) -> bool:
        nonlocal polls_after_kill
        if not signals:
            return True  # ignores SIGTERM
        polls_after_kill -= 1
        return polls_after_kill > 0  # SIGKILL takes a few polls to land

    monkeypatch.setattr(local, "_alive", alive)
    monkeypatch.setattr(local.os, "kill", lambda pid, sig: signals.append(sig))
    monkeypatch.setattr(local.os, "waitpid", lambda pid, flags: (0, 0))
    local._wait_gone(4242, timeout=0.2)
    assert signals == [local.signal.SIGKILL]
    assert polls_after_kill == 0


def test_a_process_that_outlives_its_kill_stays_recorded_and_is_named(
    tmp_path: Path, bystander: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process still there after SIGKILL (stuck in the kernel, on a dead disk say) was
    dropped from processes.json as if stopped: it kept its port, no later `local` command
    knew it, and the next start of its name failed to listen with nothing to say why."""
    monkeypatch.setattr(local, "_wait_gone", lambda pid, timeout=5.0: False)  # never goes
    deployment = LocalDeployment(tmp_path)
    deployment._record("relay", bystander.pid)
    with pytest.raises(local.DeploymentError) as stuck:
        deployment.stop_process("relay")
    assert f"relay (pid {bystander.pid}) is still running after SIGKILL" in stuck.value.message
    assert "relay" in deployment._recorded()  # still recorded


def test_local_down_stops_the_others_and_keeps_a_stuck_one_recorded(
    tmp_path: Path, bystander: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        deployment = LocalDeployment(tmp_path)
        deployment._record("node0", bystander.pid)
        deployment._record("relay", other.pid)
        wait_gone = local._wait_gone
        monkeypatch.setattr(
            local, "_wait_gone", lambda pid, timeout=5.0: pid != bystander.pid and wait_gone(pid)
        )
        with pytest.raises(local.DeploymentError, match=r"node0 .* still running after SIGKILL"):
            deployment.down()
        assert other.wait(timeout=10) is not None  # stopped all the same
        assert list(deployment._recorded()) == ["node0"]
    finally:
        other.kill()
        other.wait()
