"""`local rotate` whose deploy one of the two witnesses failed (review s61): the first
witness had logged the new epoch's record, so a rotation made again with new node keys was
refused by it ("a new record needs a larger epoch"), and `local rotate` said "the current
fleet was never deployed" (it read the unfinished epoch's fleet.toml). Run again, it now
deploys the nodes it made, and the first witness gives the receipt it gave."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupvault.deploy import local as local_module
from backupvault.deploy.local import LocalDeployment
from backupvault.deploy.records import WitnessRefused

NODES = 1


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[LocalDeployment]:
    made = LocalDeployment(tmp_path / "local")
    try:
        made.up(NODES, timeout=90)
        yield made
    finally:
        made.down()


def test_a_rotation_the_second_witness_failed_is_finished_by_running_it_again(
    deployment: LocalDeployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert deployment.witnesses() == ["witness", "witness2"]
    real_submit = local_module.submit
    calls: list[str] = []

    def second_fails(url: str, *args: object, **kwargs: object) -> object:
        calls.append(url)
        if url == deployment.witness_url("witness2"):
            raise WitnessRefused("witness2 is down (the test's)")
        return real_submit(url, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(local_module, "submit", second_fails)
    with pytest.raises(WitnessRefused):
        deployment.rotate()
    assert calls == [deployment.witness_url("witness"), deployment.witness_url("witness2")]
    made = deployment.fleet(2)
    assert made.epoch is None  # provisioned, not deployed
    monkeypatch.setattr(local_module, "submit", real_submit)

    done = subprocess.run(
        [sys.executable, "-m", "backupvault", "local", "rotate", "--dir", str(deployment.root)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    deployed = deployment.fleet(2)
    assert deployed.epoch == 2
    assert deployed.nodes == made.nodes  # the nodes the first try made, not new ones
    assert deployment.epochs() == [1, 2]
