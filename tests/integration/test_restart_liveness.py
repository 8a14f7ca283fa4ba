"""Restarts with real processes: a node whose store matches its token's counter serves at
once, so a majority that has just restarted serves with the fifth node still down; a
node whose store was rolled back catches up first, and the guess count never goes back:
it takes its peers' signed count reports and serves again on the conservative count."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupvault.client.errors import Destroyed, FleetUnavailable, WrongPassword
from backupvault.deploy.local import DeploymentError
from backupvault.node.token import ROW_KEY_FILE

from .conftest import FAST_KSF, Vault, started_vault, wait_for

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    """A fleet of this module's own: it rolls back nodes' stores, and a node that found
    its store rolled back distrusts its older rows for good, so until t peers report an
    entry's count it takes no share of it (a registration's included)."""
    with started_vault(tmp_path_factory.mktemp("restart-deployment")) as started:
        yield started


def _health(vault: Vault, index: int) -> dict[str, object]:
    """The node's `ready` and `intact_start`, from its metrics (signed with the local
    relay key: the unsigned health answers `ready` alone), once its process listens."""
    answer: dict[str, object] = {}

    def answered() -> bool:
        answer.update(vault.deployment.metrics().get(f"node{index}", {}).get("health", {}))
        return bool(answer)

    wait_for(answered, 30, f"node{index} to listen")
    return answer


def _metric(vault: Vault, index: int, name: str) -> int:
    """Node `index`'s counter `name` (0 while it does not answer)."""
    return int(vault.deployment.metrics().get(f"node{index}", {}).get(name, 0))


def _copy_data_folder(source: Path, target: Path) -> None:
    """A backup of a node's whole data folder, as docs/operations.md says to take one
    (the node stopped): the token is outside it (`local up` keeps it in DIR/node<i>-token),
    so restoring the copy rolls the store back but not the token's counter."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)


def test_restarted_majority_serves_with_a_node_down_and_rollback_keeps_the_count(
    vault: Vault, tmp_path: Path
) -> None:
    deployment = vault.deployment
    client = vault.threshold("restart-user", "restart-entry")
    root_key = os.urandom(32)
    client.register(PASSWORD, root_key, ksf=FAST_KSF)
    try:
        deployment.stop_process("node4", signal.SIGKILL)
        # Backups of node0's and node1's whole data folders, taken while they are stopped.
        # The SoftHSM2 token is not in them (as a real HSM's counter is not on the disk,
        # docs/fleet.md), so their restore below is a rollback the token shows.
        for index in (0, 1, 2):
            deployment.stop_process(f"node{index}")
        for index in (0, 1):
            _copy_data_folder(vault.root / f"node{index}", tmp_path / f"node{index}-old")
        for index in (0, 1, 2):
            deployment.start_node(index)
        # Ready without waiting for node4 or the 40 s quarantine: the stores are intact.
        deployment.wait_ready(15, nodes=[0, 1, 2])
        assert all(_health(vault, i)["intact_start"] is True for i in (0, 1, 2))
        assert client.recover(PASSWORD, ksf_floor=FAST_KSF).root_key == root_key
        for remaining in (9, 8, 7):
            with pytest.raises(WrongPassword) as wrong:
                client.recover("wrong password", ksf_floor=FAST_KSF)
            assert wrong.value.guesses_remaining == remaining

        # Roll node0 and node1 back to before those guesses, node4 still down.
        for index in (0, 1):
            deployment.stop_process(f"node{index}")
            _copy_data_folder(tmp_path / f"node{index}-old", vault.root / f"node{index}")
            assert deployment.inspect(index, "restart-user", "restart-entry")["attempts_used"] == 0
        for index in (0, 1):
            deployment.start_node(index)
        # Only node2 and node3 are intact and up: fewer than a majority of caught-up
        # peers, so the rolled-back nodes wait (refusing) until node4 is back.
        with pytest.raises(FleetUnavailable):
            client.status()
        assert all(_health(vault, i)["ready"] is False for i in (0, 1))
        deployment.start_node(4)
        deployment.wait_ready(90, nodes=[0, 1, 4])
        assert all(_health(vault, i)["intact_start"] is False for i in (0, 1))
        assert _health(vault, 4)["intact_start"] is True
        # Each rolled-back node took the guesses it missed from its peers' pages.
        assert all(_metric(vault, i, "records_caught_up") >= 1 for i in (0, 1))
        # The rolled-back nodes distrust their own counts (docs/threshold.md, "Counters
        # and erasure"): status answers the most each can have used (attempts 2-4 since
        # the owner's reset at 1), not the old copy's 10 left; the read also makes them
        # ask their peers for signed count reports.
        assert client.status().guesses_remaining == 7
        # With t reports each, they count every attempt up to the highest reported and
        # evaluate again: the guesses left fall exactly as with no rollback.
        wait_for(
            lambda: all(_metric(vault, i, "count_reports_taken") >= 3 for i in (0, 1)),
            15,
            "the rolled-back nodes to take their peers' count reports",
        )
        seen = []
        for _ in range(10):
            try:
                client.recover("wrong password", ksf_floor=FAST_KSF)
            except WrongPassword as err:
                seen.append(err.guesses_remaining)
            except Destroyed:
                break
        assert seen == [6, 5, 4, 3, 2, 1]  # the 10th wrong guess destroyed the entry
        assert all(_metric(vault, i, "evaluations") >= 6 for i in (0, 1))
        with pytest.raises(Destroyed):
            client.recover(PASSWORD, ksf_floor=FAST_KSF)

        # A node erases its share at its own count of L (not on its peers' reports, nor
        # on the value's word: docs/threshold.md, "Counters and erasure"); each that did
        # counts it.
        def erased() -> list[int]:
            own = [deployment.inspect(i, "restart-user", "restart-entry")["own"] for i in range(5)]
            return [i for i in range(5) if not own[i]["keeps_share"]]

        wait_for(lambda: erased() != [], 15, "a node at its own count of L to erase its share")
        assert all(_metric(vault, i, "shares_erased") >= 1 for i in erased())
    finally:
        vault.ensure_all_running()


def _held_generation(node_dir: Path) -> int:
    """The row key generation a node's data folder holds (row-key.sealed: "G" || u32)."""
    return int.from_bytes((node_dir / ROW_KEY_FILE).read_bytes()[1:5], "big")


def test_a_node_that_cannot_start_is_named_at_once_with_its_error(vault: Vault) -> None:
    """`wait_ready` does not wait out its timeout for a process that has exited: it says
    which one and why (the bench's fill once waited 120 s on five nodes that had failed)."""
    deployment = vault.deployment
    store = vault.root / "node3" / "store.sqlite"
    aside = store.with_name("store.sqlite.aside")
    deployment.stop_process("node3")
    try:
        # A store that claims a row key generation the node's data folder does not hold
        # (nor a rotation's next one). Not a fixed number: every erased share rotates the
        # row key, and the first test leaves node3 at generation 7 to 10 (it depends on
        # timing): a store claiming 7 then named the generation node3 held, and was
        # opened as a wiped one, caught up and ready ("did not raise", now and then).
        claimed = _held_generation(store.parent) + 100
        store.rename(aside)
        with sqlite3.connect(store) as db:
            db.execute("CREATE TABLE row_key (id INTEGER PRIMARY KEY, generation INTEGER)")
            db.execute("INSERT INTO row_key VALUES (0, ?)", (claimed,))
        deployment.start_node(3)
        started = time.monotonic()
        with pytest.raises(DeploymentError) as failed:
            deployment.wait_ready(60, nodes=[3])
        assert time.monotonic() - started < 30
        assert "node3 exited before becoming ready" in failed.value.message
        assert f"generation {claimed}," in failed.value.message
    finally:
        deployment.stop_process("node3")
        for path in store.parent.glob("store.sqlite*"):
            if path != aside:
                path.unlink()
        aside.rename(store)
        vault.ensure_all_running()


def test_a_node_whose_peer_port_another_program_holds_names_the_port(vault: Vault) -> None:
    """The node's peer listener binds in its start-up, after its HTTP port: a program on
    the peer port made it exit with a traceback and "Application startup failed", which
    `local up` passed on as the reason."""
    deployment = vault.deployment
    peer = tomllib.loads(deployment.node_config(3).read_text())["node"]["peer_listen"]
    host, _, port = peer.rpartition(":")
    deployment.stop_process("node3")
    try:
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind((host, int(port)))
            squatter.listen()
            deployment.start_node(3)
            with pytest.raises(DeploymentError) as failed:
                deployment.wait_ready(60, nodes=[3])
        assert f"cannot listen on {peer}" in failed.value.message
        assert "peer_listen" in failed.value.message
        assert "Traceback" not in (vault.root / "logs" / "node3.log").read_text()
    finally:
        deployment.stop_process("node3")
        vault.ensure_all_running()
