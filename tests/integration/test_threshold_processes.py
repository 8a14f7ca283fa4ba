"""The threshold vault through real processes (5 nodes, the relay's fan-out, the client):
registration, recovery, counted wrong guesses, destruction at the limit, nodes down, a
wrong partial named, and the CLI on the threshold flow.

Each test uses its own account and entry; nodes a test stops are started again after it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from backupvault.client.errors import Destroyed, WrongPassword
from backupvault.client.vault import NodeOutcome, VaultClient
from backupvault.codec import Message
from backupvault.crypto import oprf, threshold
from backupvault.protocol import EntryStatus, EvaluateResponse, Op

from .conftest import FAST_KSF, NODES, Vault

PASSWORD = "correct horse battery staple"
LIMIT = 10


@pytest.fixture(autouse=True)
def full_fleet(vault: Vault) -> Iterator[None]:
    vault.ensure_all_running()
    yield
    vault.ensure_all_running()


def test_register_recover_and_every_node_acknowledges(vault: Vault) -> None:
    tv = vault.threshold("th-alice", "th-entry")
    root_key = os.urandom(32)
    done = tv.register(PASSWORD, root_key, ksf=FAST_KSF)
    assert (done.version, done.acknowledged, done.missing) == (1, tuple(range(NODES)), ())
    status = tv.status()
    assert (status.status, status.version) == (EntryStatus.LIVE, 1)
    assert len(status.agreeing) >= 3  # a slow node's answer may be cut off by the relay
    recovered = tv.recover(PASSWORD, ksf_floor=FAST_KSF)
    assert recovered.root_key == root_key
    assert (recovered.wrong_guesses_before, recovered.rejected) == (0, ())
    assert recovered.reset_missing == ()


def test_wrong_guesses_are_counted_and_a_success_resets_them(vault: Vault) -> None:
    tv = vault.threshold("th-counter", "th-entry")
    root_key = os.urandom(32)
    tv.register(PASSWORD, root_key, ksf=FAST_KSF)
    for left in (LIMIT - 1, LIMIT - 2, LIMIT - 3):
        with pytest.raises(WrongPassword) as caught:
            tv.recover("not the password", ksf_floor=FAST_KSF)
        assert caught.value.guesses_remaining == left
    assert tv.status().guesses_remaining == LIMIT - 3
    recovered = tv.recover(PASSWORD, ksf_floor=FAST_KSF)
    assert (recovered.root_key, recovered.wrong_guesses_before) == (root_key, 3)
    assert tv.status().guesses_remaining == LIMIT


def test_the_entry_is_destroyed_after_the_limit(vault: Vault) -> None:
    tv = vault.threshold("th-burnt", "th-entry")
    tv.register(PASSWORD, os.urandom(32), ksf=FAST_KSF)
    for _ in range(LIMIT - 1):
        with pytest.raises(WrongPassword):
            tv.recover("wrong", ksf_floor=FAST_KSF)
    with pytest.raises(Destroyed):
        tv.recover("wrong", ksf_floor=FAST_KSF)
    with pytest.raises(Destroyed):
        tv.recover(PASSWORD, ksf_floor=FAST_KSF)
    assert tv.status().status == EntryStatus.DESTROYED


def test_one_node_down_registers_degraded_and_two_down_still_recover(vault: Vault) -> None:
    vault.deployment.stop_process("node4", signal.SIGKILL)
    tv = vault.threshold("th-down", "th-entry")
    root_key = os.urandom(32)
    done = tv.register(PASSWORD, root_key, ksf=FAST_KSF)
    assert done.acknowledged == (0, 1, 2, 3)
    [missing] = done.missing
    assert missing.startswith("node 4:")
    vault.deployment.stop_process("node1", signal.SIGKILL)
    recovered = tv.recover(PASSWORD, ksf_floor=FAST_KSF)
    assert recovered.root_key == root_key
    assert [m.split(":")[0] for m in recovered.reset_missing] == ["node 1", "node 4"]


def test_a_share_owed_to_a_node_that_was_down_is_delivered_at_the_next_contact(
    vault: Vault,
) -> None:
    """docs/threshold.md, "Finishing later": node 4 is down at registration, so the shares
    are on exactly t + 1 nodes. Once node 4 is back, the device's next contact (a status,
    no password) delivers node 4's share, sealed to node 4 when it was dealt; then two of
    the first holders may go down and the key still opens."""
    vault.deployment.stop_process("node4", signal.SIGKILL)
    tv = vault.threshold("th-late", "th-entry")
    root_key = os.urandom(32)
    assert tv.register(PASSWORD, root_key, ksf=FAST_KSF).acknowledged == (0, 1, 2, 3)
    assert tv.status().pending == ("node 4: share of version 1 not yet confirmed",)
    vault.ensure_all_running()
    # Node 4 may take the share staged first (before it has caught up on M): the next
    # contact then finds it held.
    deadline = time.monotonic() + 30
    while tv.status().pending and time.monotonic() < deadline:
        time.sleep(0.5)
    assert tv.status().pending == ()
    vault.deployment.stop_process("node0", signal.SIGKILL)
    vault.deployment.stop_process("node1", signal.SIGKILL)
    assert tv.recover(PASSWORD, ksf_floor=FAST_KSF).root_key == root_key


def test_a_password_change_a_node_missed_is_finished_after_the_whole_fleet_restarted(
    vault: Vault,
) -> None:
    """Review s40 (M1): node 4 is down through a password change, then every node
    restarts (`local down` and `local up`, a reboot). Each restart is intact, so node 4
    asks nobody and still holds version 1, and the other nodes' repairs were lost with
    their memory. The device's next contact delivers node 4's share at once: the node
    brings the entry up to date (a round that changes nothing) before it takes it. Before,
    it answered `already_registered` at every delivery until the next recovery."""
    tv = vault.threshold("th-restarted", "th-entry")
    root_key = os.urandom(32)
    tv.register(PASSWORD, root_key, ksf=FAST_KSF)
    vault.deployment.stop_process("node4", signal.SIGKILL)
    recovered = tv.recover(PASSWORD, ksf_floor=FAST_KSF)
    changed = tv.change_password(recovered, "another horse battery staple", ksf=FAST_KSF)
    assert changed.version == 2 and changed.acknowledged == (0, 1, 2, 3)
    for index in range(NODES):
        vault.deployment.stop_process(f"node{index}")
    vault.ensure_all_running()
    assert tv.status().pending == ()
    vault.deployment.stop_process("node0", signal.SIGKILL)
    vault.deployment.stop_process("node1", signal.SIGKILL)
    again = tv.recover("another horse battery staple", ksf_floor=FAST_KSF)
    assert again.root_key == root_key


class _LyingNodeClient(VaultClient):
    """The real client, except that the first node to answer an evaluation (then always
    that node) has its partial replaced by one under another key, as a compromised node
    would send it (its answer is its own to make; the seal only says which node made it)."""

    liar: int | None = None

    def call_each(
        self, op: Op, requests: list[Message], kind: type, resends: int = 0
    ) -> list[NodeOutcome]:  # type: ignore[type-arg]
        outcomes = super().call_each(op, requests, kind, resends)
        if op is not Op.EVALUATE:
            return outcomes
        if self.liar is None:
            self.liar = next(o.index for o in outcomes if isinstance(o.response, EvaluateResponse))
        changed = []
        for outcome in outcomes:
            if outcome.index == self.liar and isinstance(outcome.response, EvaluateResponse):
                forged_share = threshold.KeyShare(self.liar + 1, oprf.random_scalar())
                blinded = requests[self.liar].blinded  # type: ignore[attr-defined]
                forged = threshold.evaluate_partial(forged_share, blinded)
                outcome = replace(
                    outcome,
                    response=replace(
                        outcome.response, evaluated=forged.evaluated, proof=forged.proof
                    ),
                )
            changed.append(outcome)
        return changed


def test_a_node_with_a_wrong_partial_is_named_and_recovery_succeeds(vault: Vault) -> None:
    account, entry = "th-liar", "th-entry"
    honest = vault.client(account, entry)
    root_key = os.urandom(32)
    vault.threshold(account, entry).register(PASSWORD, root_key, ksf=FAST_KSF)
    lying = _LyingNodeClient(
        honest.relay_url,
        vault.token(account),
        account,
        honest.fleet_id,
        honest.node_keys,
        entry=entry,
        ksf_params=FAST_KSF,
        fleet_token=vault.fleet_token(account),
        device_key=vault.config.device_key,
    )
    notes: list[str] = []
    recovered = vault.threshold(account, entry, client=lying, notify=notes.append).recover(
        PASSWORD, ksf_floor=FAST_KSF
    )
    assert recovered.root_key == root_key
    liar = lying.liar
    assert liar is not None and recovered.rejected == (liar,)
    assert any(f"node {liar} sent a partial evaluation that does not verify" in n for n in notes)


def test_the_cli_backs_up_restores_changes_and_deletes_on_the_threshold_flow(
    vault: Vault, tmp_path: Path
) -> None:
    config = vault.client_config(tmp_path / "client.toml", "th-cli", "th-entry")
    source, storage = tmp_path / "source", tmp_path / "storage"
    source.mkdir()
    (source / "note.txt").write_text("threshold\n")
    made = vault.cli(
        "backup", "create", str(source), "--storage", str(storage), "--password-stdin",
        config=config, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    tv = vault.threshold("th-cli", "th-entry")
    assert tv.status().status == EntryStatus.LIVE  # registered with the threshold flow
    status = vault.cli("vault", "status", config=config)
    assert status.returncode == 0 and "10 of 10 guesses left" in status.stdout, status.stderr
    wrong = vault.cli(
        "backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "w"),
        "--password-stdin", config=config, stdin="wrong\n",
    )  # fmt: skip
    assert wrong.returncode == 3 and "9 guesses left" in wrong.stderr, wrong.stderr
    changed = vault.cli(
        "vault", "change-password", "--password-stdin", config=config,
        stdin=f"{PASSWORD}\nan even better password 42\n",
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert "1 other attempt was counted" in changed.stderr
    restored = vault.cli(
        "backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "r"),
        "--password-stdin", config=config, stdin="an even better password 42\n",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "r" / "note.txt").read_text() == "threshold\n"
    assert tv.status().version == 2
    deleted = vault.cli(
        "vault", "delete", "--yes", "--password-stdin", config=config,
        stdin="an even better password 42\n",
    )  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr
    assert tv.status().status == EntryStatus.EMPTY
