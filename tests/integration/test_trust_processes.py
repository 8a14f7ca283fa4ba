"""Who the nodes listen to, attacked with real processes (5 nodes and the relay on
loopback, with the relay's default rate limits): a direct caller, a relay without the
account's fleet token, a relay replaying what it saw; and guesses typed as fast as a
script can, through the `backupvault` CLI."""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backupvault.client.errors import Destroyed, WrongPassword
from backupvault.crypto.seal import seal_request
from backupvault.hop import sign_headers
from backupvault.node.config import FleetDescription, write_toml
from backupvault.protocol import AuthorizedRequest, EntryStatus, ManifestRequest, SealedCopies
from backupvault.tokens import load_operator_private_key, sign_request_proof

from .conftest import FAST_KSF, RecordingTransport, Vault

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module", autouse=True)
def default_relay_limits(vault: Vault) -> Iterator[None]:
    """This module's relay runs with the default limits (burst 20, 60 per minute); the
    deployment is shared with the other modules, so the limits are put back afterwards."""
    relay_toml = vault.root / "relay.toml"
    shared = relay_toml.read_text()
    relay = tomllib.loads(shared)
    for name in ("burst", "rate_per_minute"):
        relay["relay"].pop(name, None)
    write_toml(relay_toml, relay)
    _restart_relay(vault)
    yield
    relay_toml.write_text(shared)
    _restart_relay(vault)


def _restart_relay(vault: Vault) -> None:
    vault.deployment.stop_process("relay")
    vault.deployment.start_relay()
    vault.deployment.wait_ready(60)


@pytest.fixture(autouse=True)
def full_fleet(vault: Vault) -> Iterator[None]:
    vault.ensure_all_running()
    yield


def _nodes(vault: Vault) -> list[str]:
    return [n.url for n in FleetDescription.load(vault.root / "fleet.toml").nodes]


def _sealed_manifest(
    vault: Vault, account: str, entry: str, fleet_token: str, node: int = 0
) -> bytes:
    """A manifest request sealed to node `node`'s own key (what that node gets from the
    relay)."""
    assert vault.config.fleet_id is not None and vault.config.node_public_keys is not None
    request = ManifestRequest(account, entry).to_bytes()
    assert vault.config.device_key is not None
    proof = sign_request_proof(
        vault.config.device_key,
        fleet_id=vault.config.fleet_id,
        node_index=node,
        node_key=vault.config.node_public_keys[node].to_bytes(),
        token=fleet_token,
        request=request,
    )
    body = AuthorizedRequest(fleet_token, request, proof).to_bytes()
    key = vault.config.node_public_keys[node]
    sealed, _ = seal_request(key, vault.config.fleet_id, node, "manifest", body)
    return sealed


def test_a_node_answers_nobody_but_a_listed_relay(vault: Vault) -> None:
    """Whoever reaches a node's port, with a perfectly sealed request and the account's
    own fleet token, gets 401 unless a listed relay signed it for that node, now."""
    account, entry = "direct-user", "direct-entry"
    owner = vault.threshold(account, entry)
    owner.register(PASSWORD, os.urandom(32), ksf=FAST_KSF)
    names = {
        "X-Backupvault-Account": account,
        "X-Backupvault-Entry": entry,
        "Content-Type": "application/octet-stream",
    }
    forger = load_operator_private_key(vault.root / "operator.key")  # not a relay key
    relay_key = load_operator_private_key(vault.root / "relay-signing.key")
    with httpx.Client(timeout=10) as http:
        for index, url in enumerate(_nodes(vault)):
            sealed = _sealed_manifest(vault, account, entry, vault.fleet_token(account), index)
            for op in ("manifest", "evaluate", "delete-share"):
                unsigned = http.post(f"{url}/v1/client/{op}", content=sealed, headers=names)
                assert unsigned.status_code == 401, unsigned.text
                assert unsigned.json()["error"] == "relay_signature"
            forged = sign_headers(forger, index, "manifest", account, entry, sealed)
            answer = http.post(
                f"{url}/v1/client/manifest", content=sealed, headers={**names, **forged}
            )
            assert answer.status_code == 401
            # Signed by the relay's key, but for another node: refused too.
            other = sign_headers(relay_key, (index + 1) % 5, "manifest", account, entry, sealed)
            answer = http.post(
                f"{url}/v1/client/manifest", content=sealed, headers={**names, **other}
            )
            assert answer.status_code == 401
            # The relay's real signature, once: answered; the same request again: a replay.
            good = sign_headers(relay_key, index, "manifest", account, entry, sealed)
            target = f"{url}/v1/client/manifest"
            answer = http.post(target, content=sealed, headers={**names, **good})
            assert answer.status_code == 200, answer.text
            again = http.post(target, content=sealed, headers={**names, **good})
            assert again.status_code == 401 and "replay" in again.json()["detail"]
    status = owner.status()
    assert (status.status, status.guesses_remaining) == (EntryStatus.LIVE, 10)


def test_a_compromised_relay_cannot_spend_guesses(vault: Vault) -> None:
    """A relay with its own signing key and every relay token, but not the fleet token
    (sealed by the client): a request it makes up is refused; the sealed requests it saw,
    replayed to any node, are refused (each request proof is taken once) and cost the user
    nothing."""
    account, entry = "relayed-user", "relayed-entry"
    recording = RecordingTransport()
    client = vault.client(account, entry, http=httpx.Client(transport=recording, timeout=30))
    owner = vault.threshold(account, entry, client=client)
    owner.register(PASSWORD, os.urandom(32), ksf=FAST_KSF)
    with pytest.raises(WrongPassword):
        owner.recover("wrong password", ksf_floor=FAST_KSF)
    owner.recover(PASSWORD, ksf_floor=FAST_KSF)
    assert owner.status().guesses_remaining == 10

    relay_key = load_operator_private_key(vault.root / "relay-signing.key")
    names = {"X-Backupvault-Account": account, "X-Backupvault-Entry": entry}
    with httpx.Client(timeout=10) as http:
        # Made up: sealed to the (public) fleet key, with the relay token inside.
        made_up = _sealed_manifest(vault, account, entry, vault.token(account))
        headers = {**names, **sign_headers(relay_key, 0, "manifest", account, entry, made_up)}
        url = f"{_nodes(vault)[0]}/v1/client/manifest"
        answer = http.post(url, content=made_up, headers=headers)
        assert answer.status_code == 403 and answer.json()["error"] == "unauthorized"
        # Replayed: every sealed evaluate and reset it forwarded, to every node.
        for op in ("evaluate", "reset"):
            for copies in recording.bodies(op):
                for index, url in enumerate(_nodes(vault)):
                    body = SealedCopies.from_bytes(copies).copies[index]
                    signed = sign_headers(relay_key, index, op, account, entry, body)
                    answer = http.post(
                        f"{url}/v1/client/{op}", content=body, headers={**names, **signed}
                    )
                    # Each proof is taken once: refused before anything counts.
                    assert answer.status_code == 403, answer.text
                    assert "used before" in answer.json()["detail"]
    status = owner.status()
    assert (status.status, status.guesses_remaining) == (EntryStatus.LIVE, 10)
    assert owner.recover(PASSWORD, ksf_floor=FAST_KSF).wrong_guesses_before == 0


def _cli_guess(
    vault: Vault, config: Path, storage: Path, to: Path, password: str
) -> tuple[int, str]:
    done = vault.cli(
        "backup",
        "restore",
        "--storage",
        str(storage),
        "--to",
        str(to),
        "--password-stdin",
        config=config,
        stdin=password + "\n",
    )
    return done.returncode, done.stderr


def test_ten_wrong_guesses_in_a_tight_loop_each_say_what_is_left(
    vault: Vault, tmp_path: Path
) -> None:
    """With the relay's default limits, a script typing wrong passwords as fast as it can
    is told the exact count after every guess and never loses one to a rate limit. The
    10th, the last, is not sent without a terminal to confirm it on (a wrong password in a
    script never destroys the key on its own); sent through the SDK it destroys the key."""
    config = vault.client_config(tmp_path / "client.toml", "script-user", "script-entry")
    source = tmp_path / "source"
    source.mkdir()
    (source / "note.txt").write_text("hello\n")
    storage = tmp_path / "storage"
    made = vault.cli(
        "backup",
        "create",
        str(source),
        "--storage",
        str(storage),
        "--password-stdin",
        config=config,
        stdin=PASSWORD + "\n",
    )
    assert made.returncode == 0, made.stderr
    for guess in range(1, 10):
        code, stderr = _cli_guess(vault, config, storage, tmp_path / f"to{guess}", f"wrong {guess}")
        assert code == 3, stderr
        left = 10 - guess
        expected = "1 guess left" if left == 1 else f"{left} guesses left"
        assert expected in stderr, stderr
        assert re.search(r"\b(429|rate|too many requests)\b", stderr) is None, stderr
        assert not (tmp_path / f"to{guess}").exists()
    client = vault.threshold("script-user", "script-entry")
    for password in ("wrong 10", PASSWORD):
        code, stderr = _cli_guess(vault, config, storage, tmp_path / "to10", password)
        assert code == 2, stderr
        assert "one guess left" in stderr and "no guess was used" in stderr, stderr
        status = client.status()
        assert (status.status, status.guesses_remaining) == (EntryStatus.LIVE, 1)
    assert not (tmp_path / "to10").exists()
    with pytest.raises(Destroyed):
        client.recover("wrong 10", ksf_floor=FAST_KSF)
    code, stderr = _cli_guess(vault, config, storage, tmp_path / "right", PASSWORD)
    assert code == 4, stderr
    assert not (tmp_path / "right").exists()


def test_vault_delete_needs_the_password(vault: Vault, tmp_path: Path) -> None:
    config = vault.client_config(tmp_path / "client.toml", "deleting-user", "deleting-entry")
    client = vault.threshold("deleting-user", "deleting-entry")  # the CLI registers this way
    source, storage = tmp_path / "source", tmp_path / "storage"
    source.mkdir()
    (source / "a.txt").write_text("a\n")
    made = vault.cli(
        "backup",
        "create",
        str(source),
        "--storage",
        str(storage),
        "--password-stdin",
        config=config,
        stdin=PASSWORD + "\n",
    )
    assert made.returncode == 0, made.stderr
    wrong = vault.cli(
        "vault",
        "delete",
        "--yes",
        "--password-stdin",
        "--storage",
        str(storage),
        config=config,
        stdin="nope\n",
    )
    assert wrong.returncode == 3, wrong.stderr
    # The warning comes first, with what would be lost.
    # (no "0 password backups": only what is there)
    assert "can no longer be opened: in " in wrong.stderr, wrong.stderr
    assert ", the repository with every snapshot in it would be lost" in wrong.stderr
    assert "0 password backups" not in wrong.stderr
    assert client.status().status == EntryStatus.LIVE
    right = vault.cli(
        "vault", "delete", "--yes", "--password-stdin", config=config, stdin=PASSWORD + "\n"
    )
    assert right.returncode == 0, right.stderr
    assert client.status().status == EntryStatus.EMPTY


def test_vault_delete_clears_a_destroyed_key_so_a_new_one_can_be_made(
    vault: Vault, tmp_path: Path
) -> None:
    config = vault.client_config(tmp_path / "client.toml", "burnt-user", "burnt-entry")
    client = vault.threshold("burnt-user", "burnt-entry")
    source = tmp_path / "source"
    source.mkdir()
    (source / "notes.txt").write_text("a fresh start")
    new_key = ("--password-stdin", "--new-key")
    old = str(tmp_path / "old")
    made = vault.cli("backup", "create", str(source), "--storage", old, "--password-stdin",
                     config=config, stdin=PASSWORD + "\n")  # fmt: skip
    assert made.returncode == 0, made.stderr  # registers the key (default stretching)
    kept = vault.cli("--json", "vault", "recovery-code", "--password-stdin", config=config,
                     stdin=PASSWORD + "\n")  # fmt: skip
    assert kept.returncode == 0, kept.stderr
    code = json.loads(kept.stdout)["recovery_code"]
    for _ in range(10):
        with pytest.raises((WrongPassword, Destroyed)):
            client.recover("wrong", ksf_floor=FAST_KSF)
    # No guess left: `vault status` says destroyed already (no recovery can succeed)...
    assert client.status().status == EntryStatus.DESTROYED
    with pytest.raises(Destroyed):  # ...and at this request each node erases its share
        client.recover(PASSWORD, ksf_floor=FAST_KSF)
    assert client.status().status == EntryStatus.DESTROYED
    cleared = vault.cli("vault", "delete", "--yes", config=config)
    assert cleared.returncode == 0, cleared.stderr
    assert "--new-key" in cleared.stdout
    # Not over the old repository: only the destroyed key opens it. It used to register a
    # new key and then fail with "wrong key" (exit 3), on every later backup too.
    refused = vault.cli("backup", "create", str(source), "--storage", old, *new_key,
                        config=config, stdin="a new password\n")  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "holds a repository made with the key wrong guesses destroyed" in refused.stderr
    # The hint named only codes of --recovery-code backups ("if it was made with one"), so
    # whoever kept the code `vault recovery-code` printed thought this repository lost.
    assert "the code `backupvault vault recovery-code` printed" in refused.stderr
    opened = vault.cli("backup", "restore", "--storage", old, "--to", str(tmp_path / "code"),
                       "--recovery-code", "-", config=config, stdin=code + "\n")  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "code" / "notes.txt").read_text() == "a fresh start"
    assert client.status().status == EntryStatus.DESTROYED  # nothing was registered
    # As the hint says: a new key, through the CLI. It used to refuse with "destroyed"
    # however often `vault delete` was run, and the user could never start over.
    made = vault.cli("backup", "create", str(source), "--storage", str(tmp_path / "new"),
                     *new_key, config=config, stdin="a new password\n")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert client.status().status == EntryStatus.LIVE
    restored = vault.cli("backup", "restore", "--storage", str(tmp_path / "new"),
                         "--to", str(tmp_path / "r"), "--password-stdin", config=config,
                         stdin="a new password\n")  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "r" / "notes.txt").read_text() == "a fresh start"
