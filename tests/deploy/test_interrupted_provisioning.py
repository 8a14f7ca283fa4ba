"""A `local up` stopped while it provisioned (Ctrl-C, or killed) leaves keys, tokens and
configs but no client.toml. The next `local up` refused with "operator.key already
exists; refusing to overwrite it", hinting to move the operator key away, and `local
down` said the folder held no deployment: the user was stuck. What an unfinished
provisioning made was never used by anyone (client.toml, written last, is what clients
use), so the next `local up` starts it over."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupvault.deploy import local
from backupvault.deploy.local import LocalDeployment


def test_local_up_after_an_interrupted_provisioning_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "bv"
    provision_fleet = LocalDeployment._provision_fleet

    def interrupted(self: LocalDeployment, *args: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the node tokens are made

    monkeypatch.setattr(LocalDeployment, "_provision_fleet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        LocalDeployment(root).up(1)
    assert (root / "operator.key").exists() and not (root / "client.toml").exists()
    assert LocalDeployment(root).running() == []  # its witnesses were stopped
    old_key = (root / "operator.key").read_bytes()
    # As if that `local up` had been killed instead: a witness it started still runs.
    LocalDeployment(root).start_witness("witness")
    stray = LocalDeployment(root)._running_pid("witness")
    assert stray is not None
    monkeypatch.setattr(LocalDeployment, "_provision_fleet", provision_fleet)
    deployment = LocalDeployment(root)
    try:
        deployment.up(1)
        status = deployment.status()
        assert all(info["running"] and info["healthy"] for info in status.values()), status
        assert (root / "operator.key").read_bytes() != old_key  # made anew
        assert not local._alive(stray)  # stopped, not left holding the old files
    finally:
        deployment.down()


def test_a_provisioned_deployment_is_never_started_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a folder without client.toml is taken for an unfinished provisioning."""
    root = tmp_path / "bv"
    root.mkdir(mode=0o700)
    for name in ("client.toml", "operator.key", "fleet.toml"):
        (root / name).write_text("kept\n")
    started: list[str] = []
    monkeypatch.setattr(LocalDeployment, "epochs", lambda self: [])
    monkeypatch.setattr(LocalDeployment, "witnesses", lambda self: [])
    monkeypatch.setattr(LocalDeployment, "start_relay", lambda self: started.append("relay"))
    monkeypatch.setattr(LocalDeployment, "wait_ready", lambda self, timeout: None)
    LocalDeployment(root).up(1)
    assert started == ["relay"]
    assert all((root / n).read_text() == "kept\n" for n in ("operator.key", "fleet.toml"))
