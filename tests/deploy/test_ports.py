"""Ports chosen for local services: free, and never handed out twice by one process."""

from __future__ import annotations

import socket

import pytest

from backupvault.deploy import local
from backupvault.deploy.local import HOST, PORTS_ENV, DeploymentError, free_port, local_ports


def test_ports_chosen_together_are_all_different() -> None:
    # A soak chooses ~40 ports before any is bound; drawn at random without memory, 500
    # draws from the range would repeat one with probability above 0.9999.
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert all(port in local_ports() for port in ports)


def test_a_port_in_use_is_not_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener, socket.socket() as probe:
        listener.bind((HOST, 0))
        listener.listen()
        probe.bind((HOST, 0))
        taken, other = listener.getsockname()[1], probe.getsockname()[1]
        probe.close()
        monkeypatch.setattr(local, "local_ports", lambda: [taken, other])
        monkeypatch.setattr(local, "_handed_out", set())
        assert free_port() == other
        # Both are now unavailable: one listens, the other was handed out.
        with pytest.raises(DeploymentError, match="no free loopback port"):
            free_port()


def test_a_narrower_range_is_taken_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PORTS_ENV, "21000-21009")
    monkeypatch.setattr(local, "_handed_out", set())
    assert local_ports() == range(21000, 21010)
    assert {free_port() for _ in range(5)} <= set(range(21000, 21010))


@pytest.mark.parametrize("setting", ["21000", "x-y", "21010-21000", "80-90", "60000-70000"])
def test_a_bad_range_is_refused_with_its_form(
    monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv(PORTS_ENV, setting)
    with pytest.raises(DeploymentError, match="FIRST-LAST"):
        free_port()
