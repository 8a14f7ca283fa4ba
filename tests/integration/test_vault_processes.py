"""The vault as it runs: 5 node processes and the relay on loopback (see conftest.py), reached
through the client SDK, raw HTTP and the `backupvault` CLI in a subprocess.

Each test uses its own account and entry, so the tests share one deployment and do not see
each other's counters. Nodes a test stops are started again before the next test.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from backupvault.backup import restore_backup
from backupvault.client.errors import NotRegistered, Unauthorized, WrongPassword
from backupvault.crypto import manifest, recovery
from backupvault.fanout import FanoutAnswers
from backupvault.protocol import EntryStatus
from backupvault.tokens import generate_operator_key, mint_token

from .conftest import FAST_KSF, NODES, RELAY_BURST, RecordingTransport, Vault

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


# ---- round trips (the threshold flow's own: test_threshold_processes.py) ----------------


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
    shares: list[bytes] = []
    data_keys: list[bytes] = []

    real_register = manifest.register
    real_open_entry = manifest.open_entry
    real_seal_header = single_blob.seal_header

    def register(*args: Any, **kwargs: Any) -> Any:
        made = real_register(*args, **kwargs)
        export_keys.append(made.export_key)
        shares.extend(share.scalar for share in made.shares)
        return made

    def open_entry(*args: Any, **kwargs: Any) -> Any:
        export_key, root = real_open_entry(*args, **kwargs)
        export_keys.append(export_key)
        return export_key, root

    def seal_header(*args: Any, **kwargs: Any) -> Any:
        header, data_key = real_seal_header(*args, **kwargs)
        data_keys.append(data_key)
        return header, data_key

    monkeypatch.setattr(manifest, "register", register)
    monkeypatch.setattr(manifest, "open_entry", open_entry)
    monkeypatch.setattr(single_blob, "seal_header", seal_header)

    wire = RecordingTransport()
    http = httpx.Client(transport=wire)
    source = make_tree(tmp_path / "phone", marker)
    storage = tmp_path / "cloud"
    root_key = recovery.new_root_key()
    vault.threshold(account, entry, client=vault.client(account, entry, http=http)).register(
        password, root_key, ksf=FAST_KSF
    )
    single_blob.create_backup(source, str(storage), root_key)
    with pytest.raises(WrongPassword):
        vault.threshold(account, entry, client=vault.client(account, entry, http=http)).recover(
            wrong_password, ksf_floor=FAST_KSF
        )
    recovered = (
        vault.threshold(account, entry, client=vault.client(account, entry, http=http))
        .recover(password, ksf_floor=FAST_KSF)
        .root_key
    )
    assert recovered == root_key
    restore_backup(str(storage), recovered, tmp_path / "new-phone")
    assert tree(tmp_path / "new-phone") == tree(source)

    assert len(export_keys) == 2 and export_keys[0] == export_keys[1]
    assert len(shares) == NODES and len(data_keys) == 1
    assert {e.path.rsplit("/", 1)[1] for e in wire.exchanges} >= {
        "register-share", "manifest", "evaluate", "reset",
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
        **{f"key share {i}": _forms(share) for i, share in enumerate(shares)},
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


# ---- authentication, authorization, rate limits --------------------------------------


def test_bad_or_missing_token_is_refused(vault: Vault, tmp_path: Path) -> None:
    url = f"{vault.relay_url}/v1/vault/auth-entry/manifest"
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
            client = vault.client("auth-user", "auth-entry", token=token)
            vault.threshold("auth-user", "auth-entry", client=client).status()
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
    bob = vault.threshold("bob", entry)
    bob_key = os.urandom(32)
    bob.register(PASSWORD, bob_key, ksf=FAST_KSF)

    # Alice's token with a sealed request that names Bob: every node refuses the mismatch.
    wire = RecordingTransport()
    client = vault.client(
        "bob", entry, token=vault.token("alice"), http=httpx.Client(transport=wire)
    )
    with pytest.raises(Unauthorized) as refused:
        vault.threshold("bob", entry, client=client).recover(PASSWORD, ksf_floor=FAST_KSF)
    assert "mismatch" in refused.value.message or "differ" in refused.value.message
    replies = [
        reply
        for exchange in wire.exchanges
        for reply in FanoutAnswers.from_bytes(exchange.response).replies
    ]
    assert replies and {(r.status, r.error()[0]) for r in replies} == {(403, "mismatch")}

    # Alice under her own name, with Bob's entry name and even Bob's password, reaches only
    # her own (empty) entry.
    alice = vault.threshold("alice", entry)
    with pytest.raises(NotRegistered):
        alice.recover(PASSWORD, ksf_floor=FAST_KSF)
    assert alice.status().status == EntryStatus.EMPTY

    status = bob.status()
    assert (status.status, status.guesses_remaining) == (EntryStatus.LIVE, status.guess_limit)
    assert bob.recover(PASSWORD, ksf_floor=FAST_KSF).root_key == bob_key


def test_rate_limit_answers_429(vault: Vault) -> None:
    account, entry = "flood-user", "flood-entry"
    notes: list[str] = []
    client = vault.threshold(account, entry, notify=notes.append)
    client.vault._notify = notes.append
    assert client.status().status == EntryStatus.EMPTY
    url = f"{vault.relay_url}/v1/vault/{entry}/manifest"
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
    # The SDK waits out the 429 (Retry-After) by itself, and says so. The bucket refills
    # one request in 0.5 s, so on a loaded machine the status may come after a refill:
    # drain it again and ask again (each try is a real 429 the SDK must wait out).
    for _ in range(5):
        assert client.status().status == EntryStatus.EMPTY
        if notes:
            break
        with httpx.Client() as http:
            drained = (http.post(url, content=b"", headers=headers) for _ in range(RELAY_BURST))
            assert any(answer.status_code == 429 for answer in drained)
    assert notes and "waiting" in notes[0]
    # Other accounts are not held back.
    assert vault.threshold("calm-user", entry).status().status == EntryStatus.EMPTY
