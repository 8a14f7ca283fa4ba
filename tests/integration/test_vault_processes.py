"""The vault as it runs: 5 node processes and the relay on loopback (see conftest.py), reached
through the client SDK, raw HTTP and the `backupvault` CLI in a subprocess.

Each test uses its own account and entry, so the tests share one deployment and do not see
each other's counters. Nodes a test stops are started again before the next test.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from backupvault.backup import restore_backup
from backupvault.client import vault as vault_module
from backupvault.client.errors import (
    Destroyed,
    FleetUnavailable,
    NotRegistered,
    Unauthorized,
    VaultError,
    WrongPassword,
)
from backupvault.crypto import opaque, recovery
from backupvault.crypto.seal import ResponseKey
from backupvault.fleet.replica import Timing
from backupvault.hop import sign_headers
from backupvault.node.config import FleetDescription
from backupvault.protocol import (
    NODE_HEADER,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    Op,
    SealedCopies,
    decode_response,
)
from backupvault.tokens import generate_operator_key, load_operator_private_key, mint_token

from .conftest import NODES, RELAY_BURST, RecordingTransport, Vault, wait_for

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def full_fleet(vault: Vault) -> Iterator[None]:
    """Every test starts (and leaves the next test) with all nodes and the relay up."""
    vault.ensure_all_running()
    yield
    vault.ensure_all_running()


def make_tree(root: Path, marker: str = "") -> Path:
    (root / "chats" / "media").mkdir(parents=True)
    (root / "chats" / "history.db").write_bytes(os.urandom(70_000) + marker.encode())
    (root / "chats" / "notes.txt").write_text(f"meet at noon {marker}\n" * 200)
    (root / "chats" / "media" / "photo.jpg").write_bytes(os.urandom(5_000))
    (root / "chats" / "empty").write_bytes(b"")
    return root / "chats"


def tree(path: Path) -> dict[str, bytes | None]:
    """Relative path -> contents (None for a folder)."""
    return {
        p.relative_to(path).as_posix(): (None if p.is_dir() else p.read_bytes())
        for p in sorted(path.rglob("*"))
    }


class Evaluations:
    """Sums OPRF evaluations over the fleet across node restarts: call `checkpoint` before
    stopping a node, and `restarted` once it runs again (its counter starts at 0)."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.total = 0
        self._base = vault.evaluations()

    def checkpoint(self) -> int:
        now = self.vault.evaluations()
        self.total += sum(count - self._base[node] for node, count in now.items())
        self._base.update(now)
        return self.total

    def restarted(self, node: int) -> None:
        self._base[node] = 0


# ---- 1. round trips, node failures ------------------------------------------------------


def test_round_trip_through_relay_is_byte_identical(
    vault: Vault, tmp_path: Path, single_blob: ModuleType
) -> None:
    source = make_tree(tmp_path / "phone")
    storage = str(tmp_path / "cloud")
    root_key = recovery.new_root_key()
    assert vault.client("rt-user", "rt-entry").register(PASSWORD, root_key) >= 1
    single_blob.create_backup(source, storage, root_key)

    # A new device: a fresh client with nothing but the password.
    recovered = vault.client("rt-user", "rt-entry").recover(PASSWORD)
    assert recovered.root_key == root_key
    assert recovered.grant
    restore_backup(storage, recovered.root_key, tmp_path / "new-phone")
    assert tree(tmp_path / "new-phone") == tree(source)
    status = vault.client("rt-user", "rt-entry").status()
    assert (status.status, status.guesses_remaining) == (EntryStatus.LIVE, status.guess_limit)


def test_cli_round_trip_with_production_ksf(vault: Vault, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "phone")
    storage = str(tmp_path / "cloud")
    created = vault.cli(
        "--json", "backup", "create", str(source), "--storage", storage, "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert info["registered"] is True
    assert info["files"] == 4

    dest = tmp_path / "new-phone"
    restored = vault.cli(
        "--json", "backup", "restore", "--storage", storage, "--to", str(dest),
        "--password-stdin", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["backup_id"] == info["backup_id"]
    assert tree(dest) == tree(source)


def test_two_nodes_down_still_works_three_down_fails_closed(vault: Vault, tmp_path: Path) -> None:
    deployment = vault.deployment
    client = vault.client("outage-user", "outage-entry")
    root_key = os.urandom(32)
    client.register(PASSWORD, root_key)

    deployment.stop_process("node3", signal.SIGKILL)
    deployment.stop_process("node4", signal.SIGKILL)
    assert client.recover(PASSWORD).root_key == root_key
    with pytest.raises(WrongPassword) as wrong:
        client.recover("not the password")
    assert wrong.value.guesses_remaining == 9
    before = client.status()
    assert before.guesses_remaining == 9

    deployment.stop_process("node2", signal.SIGKILL)
    # Once the majority has been gone longer than the leader's lease, a wrong guess must
    # be neither evaluated nor counted: the fleet refuses before writing anything
    # (docs/fleet.md, "Fail closed"). Within the lease a change may be accepted on a
    # minority and carried forward later: counted, never evaluated.
    time.sleep(2 * Timing().leader_lease)
    with pytest.raises(FleetUnavailable):
        client.recover("another wrong password")
    config = vault.client_config(tmp_path / "client.toml", "outage-user", "outage-entry")
    cli = vault.cli(
        "backup", "restore", "--storage", str(tmp_path / "cloud"), "--to", str(tmp_path / "out"),
        "--password-stdin", config=config, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert cli.returncode == 5, cli.stderr
    assert "fleet is unavailable" in cli.stderr
    assert not (tmp_path / "out").exists()

    for index in (2, 3, 4):
        deployment.start_node(index)
    deployment.wait_ready(60)
    assert client.status() == before
    assert client.recover(PASSWORD).root_key == root_key


# ---- 2. concurrent guessing --------------------------------------------------------------


def test_concurrent_wrong_guesses_stop_at_the_limit_and_destroy(
    vault: Vault, tmp_path: Path
) -> None:
    account, entry = "crowd-user", "crowd-entry"
    owner = vault.client(account, entry)
    owner.register(PASSWORD, os.urandom(32), guess_limit=10)
    before = vault.evaluations()

    attackers = 30
    clients = [vault.client(account, entry) for _ in range(attackers)]
    start = threading.Barrier(attackers)

    def attack(index: int) -> str:
        start.wait()
        try:
            clients[index].recover(f"guess-{index}")
        except WrongPassword:
            return "wrong_password"
        except Destroyed:
            return "destroyed"
        except FleetUnavailable:
            # Under this much contention a proposal may miss its 4 s deadline (duelling
            # proposers on one entry): refused, nothing released.
            return "unavailable"
        except VaultError as err:
            return f"refused: {err.message}"
        return "recovered"

    with ThreadPoolExecutor(attackers) as pool:
        outcomes = list(pool.map(attack, range(attackers)))

    # A recover-start older (by its client's clock) than an attempt already made is
    # refused at no cost: the racing attackers' slowest copies.
    late = sum("a later attempt was already made" in o for o in outcomes)
    # Whatever the race left, more wrong guesses, one at a time, end at the tombstone.
    for _ in range(11):
        try:
            clients[0].recover("one more guess")
        except Destroyed:
            break
        except WrongPassword:
            continue
    else:
        pytest.fail("the entry was never destroyed")

    after = vault.evaluations()
    evaluations = sum(after[node] - before[node] for node in after)
    assert len(after) == NODES
    assert "recovered" not in outcomes
    assert 1 <= evaluations <= 10, outcomes
    assert outcomes.count("wrong_password") <= evaluations
    assert outcomes.count("destroyed") >= attackers - 10 - outcomes.count("unavailable") - late
    # Any other refusal is a KE3 overtaken by a newer attempt (stale_attempt).
    assert all(
        o in ("wrong_password", "destroyed", "unavailable")
        or "no longer the latest" in o
        or "a later attempt was already made" in o
        for o in outcomes
    ), outcomes

    def destroyed_everywhere() -> bool:
        views = vault.inspect_all(account, entry)
        return all(
            v["status"] == "destroyed" and not v["holds_record"] and not v["holds_wrapped_root_key"]
            for v in views
        )

    wait_for(destroyed_everywhere, 15, "the entry to be destroyed on every node", every=0.5)
    with pytest.raises(Destroyed):
        owner.recover(PASSWORD)
    config = vault.client_config(tmp_path / "client.toml", account, entry)
    cli = vault.cli(
        "backup", "restore", "--storage", str(tmp_path / "cloud"), "--to", str(tmp_path / "out"),
        "--password-stdin", config=config, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert cli.returncode == 4, cli.stderr
    assert "destroyed" in cli.stderr
    final = vault.evaluations()
    assert sum(final[node] - before[node] for node in final) == evaluations


# ---- 3. replayed KE3 ---------------------------------------------------------------------


def test_replayed_ke3_does_not_reset_the_counter(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    account, entry = "replay-user", "replay-entry"
    response_keys: list[tuple[str, ResponseKey]] = []
    real_seal = vault_module.seal_request

    def recording_seal(*args: Any) -> tuple[bytes, ResponseKey]:
        sealed, key = real_seal(*args)
        response_keys.append((args[3], key))  # (node key, fleet id, node, kind, body)
        return sealed, key

    monkeypatch.setattr(vault_module, "seal_request", recording_seal)
    wire = RecordingTransport()
    client = vault.client(account, entry, http=httpx.Client(transport=wire))
    root_key = os.urandom(32)
    client.register(PASSWORD, root_key)
    assert client.recover(PASSWORD).root_key == root_key
    captured = wire.bodies("recover-finish")[-1]
    # One copy per node, each with its own response key.
    captured_keys = {k.node: k for op, k in response_keys if op == "recover-finish"}

    for remaining in (9, 8, 7):
        with pytest.raises(WrongPassword) as wrong:
            client.recover("wrong password")
        assert wrong.value.guesses_remaining == remaining

    replay = httpx.post(
        f"{vault.relay_url}/v1/vault/{entry}/recover-finish",
        content=captured,
        headers={
            "Authorization": f"Bearer {vault.token(account)}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert replay.status_code == 200
    captured_key = captured_keys[int(replay.headers[NODE_HEADER])]
    answer = decode_response(Op.RECOVER_FINISH, captured_key.open(replay.content))
    assert isinstance(answer, ErrorResponse)
    assert answer.code == ErrorCode.STALE_ATTEMPT
    status = client.status()
    assert status.guesses_remaining == status.guess_limit - 3


# ---- 4. secrecy --------------------------------------------------------------------------


def _forms(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def test_no_secret_reaches_relay_logs_or_node_disks(
    vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_blob: ModuleType
) -> None:
    account, entry = "secrecy-user", "secrecy-entry"
    password = "Secrecy-Password-" + os.urandom(6).hex()
    wrong_password = "Wrong-Guess-" + os.urandom(6).hex()
    marker = "PLAINTEXT-MARKER-" + os.urandom(8).hex()
    export_keys: list[bytes] = []
    data_keys: list[bytes] = []

    real_reg_finish = opaque.client_registration_finish
    real_login_finish = opaque.client_login_finish
    real_seal_header = single_blob.seal_header

    def reg_finish(*args: Any, **kwargs: Any) -> Any:
        result = real_reg_finish(*args, **kwargs)
        export_keys.append(result.export_key)
        return result

    def login_finish(*args: Any, **kwargs: Any) -> Any:
        result = real_login_finish(*args, **kwargs)
        export_keys.append(result.export_key)
        return result

    def seal_header(*args: Any, **kwargs: Any) -> Any:
        header, data_key = real_seal_header(*args, **kwargs)
        data_keys.append(data_key)
        return header, data_key

    monkeypatch.setattr(opaque, "client_registration_finish", reg_finish)
    monkeypatch.setattr(opaque, "client_login_finish", login_finish)
    monkeypatch.setattr(single_blob, "seal_header", seal_header)

    wire = RecordingTransport()
    http = httpx.Client(transport=wire)
    source = make_tree(tmp_path / "phone", marker)
    storage = tmp_path / "cloud"
    root_key = recovery.new_root_key()
    vault.client(account, entry, http=http).register(password, root_key)
    single_blob.create_backup(source, str(storage), root_key)
    with pytest.raises(WrongPassword):
        vault.client(account, entry, http=http).recover(wrong_password)
    recovered = vault.client(account, entry, http=http).recover(password).root_key
    assert recovered == root_key
    restore_backup(str(storage), recovered, tmp_path / "new-phone")
    assert tree(tmp_path / "new-phone") == tree(source)

    assert len(export_keys) == 2 and export_keys[0] == export_keys[1]
    assert len(data_keys) == 1
    assert {e.path.rsplit("/", 1)[1] for e in wire.exchanges} >= {
        "register-start", "register-finish", "recover-start", "recover-finish",
    }  # fmt: skip

    seen: dict[str, bytes] = {}
    for i, exchange in enumerate(wire.exchanges):
        seen[f"request {i} {exchange.path}"] = exchange.request
        seen[f"response {i} {exchange.path}"] = exchange.response
    logs = vault.root / "logs"
    seen["relay.log"] = (logs / "relay.log").read_bytes()
    for index in range(NODES):
        seen[f"node{index}.log"] = (logs / f"node{index}.log").read_bytes()
        for path in sorted((vault.root / f"node{index}").rglob("*")):
            if path.is_file():
                seen[str(path.relative_to(vault.root))] = path.read_bytes()
    node_files = [name for name in seen if name.startswith("node") and "/" in name]
    assert any(name.endswith("store.sqlite") for name in node_files)
    assert any(name.endswith(".sealed") for name in node_files)
    for path in sorted(storage.rglob("*")):
        if path.is_file():
            seen[f"storage {path.name}"] = path.read_bytes()
    # The search does find what is meant to be there: the relay logs the account name.
    assert account.encode() in seen["relay.log"]

    secrets = {
        "password": _forms(password.encode()),
        "wrong password": _forms(wrong_password.encode()),
        "export_key": _forms(export_keys[0]),
        "root key": _forms(root_key),
        "data key": _forms(data_keys[0]),
        "plaintext": _forms(marker.encode()),
    }
    leaks = [
        f"{what} in {where}"
        for where, blob in seen.items()
        for what, forms in secrets.items()
        if any(form in blob for form in forms)
    ]
    assert leaks == []


# ---- 5. authentication, authorization, rate limits --------------------------------------


def test_bad_or_missing_token_is_refused(vault: Vault, tmp_path: Path) -> None:
    url = f"{vault.relay_url}/v1/vault/auth-entry/status"
    missing = httpx.post(
        url, content=b"sealed", headers={"Content-Type": "application/octet-stream"}
    )
    assert missing.status_code == 401
    forged = mint_token(
        generate_operator_key(),
        "auth-user",
        issuer="backupvault-local",
        audience="backupvault-relay",
        ttl_seconds=3600,
    )
    for token in (forged, vault.token("auth-user")[:-6] + "AAAAAA", "not-a-jwt"):
        with pytest.raises(Unauthorized):
            vault.client("auth-user", "auth-entry", token=token).status()
        raw = httpx.post(
            url,
            content=b"sealed",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert raw.status_code == 401
        assert raw.json()["error"]

    config = vault.client_config(tmp_path / "client.toml", "auth-user", "auth-entry", forged)
    cli = vault.cli("vault", "status", config=config)
    assert cli.returncode == 6, cli.stderr
    assert "refused the account token" in cli.stderr


def test_one_account_cannot_reach_another_accounts_entry(vault: Vault) -> None:
    entry = "shared-name"
    bob = vault.client("bob", entry)
    bob_key = os.urandom(32)
    bob.register(PASSWORD, bob_key)

    # Alice's token with a sealed request that names Bob: the node refuses the mismatch.
    wire = RecordingTransport()
    posing = vault.client(
        "bob", entry, token=vault.token("alice"), http=httpx.Client(transport=wire)
    )
    with pytest.raises(Unauthorized) as refused:
        posing.recover(PASSWORD)
    assert "mismatch" in refused.value.message or "differ" in refused.value.message
    assert [e.status for e in wire.exchanges] == [403]
    assert json.loads(wire.exchanges[0].response)["error"] == "mismatch"

    # Alice under her own name, with Bob's entry name and even Bob's password, reaches only
    # her own (empty) entry.
    alice = vault.client("alice", entry)
    with pytest.raises(NotRegistered):
        alice.recover(PASSWORD)
    assert alice.status().status == EntryStatus.EMPTY

    status = bob.status()
    assert (status.status, status.guesses_remaining) == (EntryStatus.LIVE, status.guess_limit)
    assert bob.recover(PASSWORD).root_key == bob_key


def test_rate_limit_answers_429(vault: Vault) -> None:
    account, entry = "flood-user", "flood-entry"
    client = vault.client(account, entry)
    assert client.status().status == EntryStatus.EMPTY
    url = f"{vault.relay_url}/v1/vault/{entry}/status"
    headers = {
        "Authorization": f"Bearer {vault.token(account)}",
        "Content-Type": "application/octet-stream",
    }
    # Empty bodies are refused (400) after the rate limit is charged, so the flood costs the
    # fleet nothing; every authenticated request counts against the account.
    answers: list[httpx.Response] = []
    with httpx.Client() as http:
        while len(answers) < 2 * RELAY_BURST:
            answers.append(http.post(url, content=b"", headers=headers))
            if answers[-1].status_code == 429:
                break
    assert answers[-1].status_code == 429, [a.status_code for a in answers]
    assert answers[-1].json()["error"] == "rate_limited"
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert {a.status_code for a in answers[:-1]} == {400}
    assert RELAY_BURST - 2 <= len(answers) - 1 <= RELAY_BURST + 10
    # The SDK waits out the 429 (Retry-After) by itself, and says so.
    notes: list[str] = []
    client._notify = notes.append
    assert client.status().status == EntryStatus.EMPTY
    assert notes and "waiting" in notes[0]
    # Other accounts are not held back.
    assert vault.client("calm-user", entry).status().status == EntryStatus.EMPTY


# ---- 7. a node whose disk is rolled back -------------------------------------------------


class ToNode(httpx.BaseTransport):
    """A relay that sends everything to one node (as a hostile relay could): it signs with
    the relay's key, as the relay process would."""

    def __init__(self, node_url: str, account: str, relay_key: Path, index: int = 0) -> None:
        self.node_url = node_url
        self.account = account
        self.key = load_operator_private_key(relay_key)
        self.index = index
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _, _, _, entry, op = request.url.path.split("/")
        body = SealedCopies.from_bytes(request.read()).copies[self.index]  # its own copy
        forwarded = httpx.Request(
            "POST",
            f"{self.node_url}/v1/client/{op}",
            content=body,
            headers={
                "X-Backupvault-Account": self.account,
                "X-Backupvault-Entry": entry,
                "Content-Type": "application/octet-stream",
                **sign_headers(self.key, self.index, op, self.account, entry, body),
            },
        )
        answer = self.inner.handle_request(forwarded)
        answer.headers[NODE_HEADER] = str(self.index)
        return answer


def test_node_with_rolled_back_disk_does_not_restore_guesses(vault: Vault, tmp_path: Path) -> None:
    deployment = vault.deployment
    account, entry = "rollback-user", "rollback-entry"
    vault.client(account, entry).register(PASSWORD, os.urandom(32))
    wait_for(
        lambda: deployment.inspect(0, account, entry)["status"] == "live",
        10,
        "node0 to store the new entry",
    )
    evaluations = Evaluations(vault)

    # An old copy of node0's disk, taken while it is stopped (a consistent copy).
    node0 = vault.root / "node0"
    old_copy = tmp_path / "node0-old"
    evaluations.checkpoint()
    deployment.stop_process("node0")
    shutil.copytree(node0, old_copy)
    deployment.start_node(0)
    deployment.wait_ready(60, nodes=[0])
    evaluations.restarted(0)

    node0_url = FleetDescription.load(vault.root / "fleet.toml").nodes[0].url
    via_node0 = vault.client(
        account,
        entry,
        http=httpx.Client(transport=ToNode(node0_url, account, vault.root / "relay-signing.key")),
    )
    for remaining in (9, 8, 7):
        with pytest.raises(WrongPassword) as wrong:
            via_node0.recover("wrong password")
        assert wrong.value.guesses_remaining == remaining

    # Roll node0's disk back to the copy from before those guesses.
    evaluations.checkpoint()
    deployment.stop_process("node0")
    shutil.rmtree(node0)
    shutil.copytree(old_copy, node0)
    rolled_back = deployment.inspect(0, account, entry)
    assert (rolled_back["status"], rolled_back["attempts_used"]) == ("live", 0)
    deployment.start_node(0)
    deployment.wait_ready(60, nodes=[0])
    evaluations.restarted(0)

    assert via_node0.status().guesses_remaining == 7
    remaining_seen = []
    for _ in range(10):
        try:
            via_node0.recover("wrong password")
        except WrongPassword as err:
            remaining_seen.append(err.guesses_remaining)
        except Destroyed:
            break
    else:
        pytest.fail(f"the entry was never destroyed: {remaining_seen}")
    # 3 guesses before the rollback + 6 more + the 10th, whose failure destroyed the entry.
    assert remaining_seen == [6, 5, 4, 3, 2, 1]
    with pytest.raises(Destroyed):
        via_node0.recover(PASSWORD)
    assert evaluations.checkpoint() == 10
    views = vault.inspect_all(account, entry)
    assert sum(v["status"] == "destroyed" for v in views) >= NODES // 2 + 1, views
