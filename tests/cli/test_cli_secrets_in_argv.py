"""Secrets stay off the command line, where any host user reads them (`ps`,
/proc/<pid>/cmdline) while the command runs: `fleet client-config` takes the tokens and
the device key from the environment, and a secret given as an argument anyway (a token,
a device key, a recovery code) draws a warning that says what to use instead."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from console import backupvault  # tests/cli/console.py
from fleet_files import write_fleet_file  # tests/cli/fleet_files.py

from backupvault.tokens import device_key_hex, generate_device_key


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    write_fleet_file(path)
    return path


SECRETS = {
    "BACKUPVAULT_RELAY_TOKEN": "relay-token-secret",
    "BACKUPVAULT_FLEET_TOKEN": "fleet-token-secret",
    "BACKUPVAULT_DEVICE_KEY": device_key_hex(generate_device_key()),
}


def test_client_config_takes_its_secrets_from_the_environment(
    tmp_path: Path, fleet_file: Path
) -> None:
    out = tmp_path / "alice" / "client.toml"
    done = backupvault(
        "--json", "fleet", "client-config", "--fleet-file", str(fleet_file),
        "--relay-url", "http://127.0.0.1:7100", "--account", "alice", "--out", str(out),
        env=SECRETS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warnings" not in json.loads(done.stdout)
    config = tomllib.loads(out.read_text())
    assert config["token"] == SECRETS["BACKUPVAULT_RELAY_TOKEN"]
    assert config["fleet_token"] == SECRETS["BACKUPVAULT_FLEET_TOKEN"]
    assert config["device_key"] == SECRETS["BACKUPVAULT_DEVICE_KEY"]


def test_client_config_warns_of_secrets_on_the_command_line(
    tmp_path: Path, fleet_file: Path
) -> None:
    done = backupvault(
        "fleet", "client-config", "--fleet-file", str(fleet_file),
        "--relay-url", "http://127.0.0.1:7100", "--account", "alice",
        "--token", "t", "--fleet-token", "f",
        "--device-key", SECRETS["BACKUPVAULT_DEVICE_KEY"], "--out", str(tmp_path / "c.toml"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for option, env in (
        ("--token", "BACKUPVAULT_RELAY_TOKEN"),
        ("--fleet-token", "BACKUPVAULT_FLEET_TOKEN"),
        ("--device-key", "BACKUPVAULT_DEVICE_KEY"),
    ):
        assert f"{option} was given on the command line" in done.stderr
        assert f"set ${env} instead" in done.stderr


def test_a_recovery_code_on_the_command_line_is_warned_of(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "notes.txt").write_text("meet at 7\n")
    storage = str(tmp_path / "storage")
    created = backupvault(
        "--json", "backup", "create", str(source), "--storage", storage, "--recovery-code"
    )
    assert created.returncode == 0, created.stderr
    code = json.loads(created.stdout)["recovery_code"]

    on_argv = backupvault("backup", "list", "--storage", storage, "--recovery-code", code)
    assert on_argv.returncode == 0, on_argv.stderr
    assert "the recovery code was given on the command line" in on_argv.stderr
    assert "`--recovery-code -` reads it from stdin" in on_argv.stderr

    restore = backupvault(
        "--json", "backup", "restore", "--storage", storage, "--to", str(tmp_path / "r"),
        "--recovery-code", code,
    )  # fmt: skip
    assert restore.returncode == 0, restore.stderr
    assert any("command line" in w for w in json.loads(restore.stdout)["warnings"])

    from_stdin = backupvault(
        "backup", "list", "--storage", storage, "--recovery-code", "-", stdin=code + "\n"
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert "command line" not in from_stdin.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_client_config_others_can_read_is_warned_of(tmp_path: Path, mode: int) -> None:
    """Its tokens and device key let whoever reads it act for the account."""
    config = tmp_path / "client.toml"
    config.write_text('relay_url = "http://127.0.0.1:9"\n')  # what it holds comes after
    config.chmod(mode)
    done = backupvault("--config", str(config), "vault", "status")
    assert f"can be read or changed by other host users (mode {mode:04o}" in done.stderr
    assert f"chmod 600 {config}" in done.stderr


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x7fELF\x02\x01\x01\x00\xff\xfe", "it is not text (not UTF-8)"),
        (b"#!/bin/sh\nexec true\n", "is not valid TOML"),
        (b'[project]\nname = "x"\n[tool.ruff]\nline-length = 100\n', "is not a client config"),
        # The operator's files beside client.toml share a field name or two with it: before,
        # fleet.toml drew "unknown field 'measurement'; did you mean 'allowed_measurements'?
        # rename it", and the chmod advice for a public file.
        (b'guess_limit = 10\nfleet_id = "00ff"\nepoch = 1\nmeasurement = "00"\n'
         b'[[nodes]]\nindex = 0\n', "it looks like the operator's fleet.toml"),
        # Review s49: "it holds node, token but none of ... (relay_url, account, token, ...)"
        (b'[node]\nindex = 0\n[token]\nlabel = "backupvault-node-0"\n',
         "is not a client config: it looks like a node's node.toml ([node], and [token] as"),
    ],
    ids=["binary", "script", "pyproject", "fleet.toml", "node.toml"],
)  # fmt: skip
def test_a_file_that_is_no_client_config_draws_no_chmod_advice(
    tmp_path: Path, content: bytes, why: str
) -> None:
    """`--config /usr/bin/python3` told the user to chmod 600 the interpreter."""
    wrong = tmp_path / "python3"
    wrong.write_bytes(content)
    wrong.chmod(0o755)
    done = backupvault("--config", str(wrong), "vault", "status")
    assert done.returncode == 2, done.stderr
    assert why in done.stderr
    assert "chmod" not in done.stderr and "other host users" not in done.stderr


def test_a_client_config_with_a_malformed_field_still_draws_the_warning(tmp_path: Path) -> None:
    """It holds the tokens whatever else is wrong with it."""
    config = tmp_path / "client.toml"
    config.write_text('relay_url = "http://127.0.0.1:9"\naccount = 5\ntoken = "t"\n')
    config.chmod(0o644)
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1
    assert f"chmod 600 {config}" in done.stderr
    assert "field 'account' is malformed" in done.stderr


def test_a_client_config_of_mode_0600_draws_no_warning(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text('relay_url = "http://127.0.0.1:9"\n')
    config.chmod(0o600)
    done = backupvault("--config", str(config), "vault", "status")
    assert "other host users" not in done.stderr


def test_a_config_the_client_cannot_read_is_not_written(tmp_path: Path, fleet_file: Path) -> None:
    """A mistyped device key replaced the user's working config with a broken one."""
    out = tmp_path / "client.toml"
    args = (
        "fleet", "client-config", "--fleet-file", str(fleet_file),
        "--relay-url", "http://127.0.0.1:7100", "--account", "alice", "--out", str(out),
    )  # fmt: skip
    assert backupvault(*args, env=SECRETS).returncode == 0
    working = out.read_bytes()
    done = backupvault(*args, "--force", env={**SECRETS, "BACKUPVAULT_DEVICE_KEY": "zz"})
    assert done.returncode == 2  # a bad option value: usage
    assert "field 'device_key' is malformed" in done.stderr
    assert out.read_bytes() == working
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    fresh = tmp_path / "new" / "client.toml"
    done = backupvault(*args[:-1], str(fresh), env={**SECRETS, "BACKUPVAULT_DEVICE_KEY": "zz"})
    assert done.returncode == 2 and not fresh.exists()


@pytest.mark.parametrize(
    ("option", "value", "source"),
    [
        ("--relay-url", "127.0.0.1:7100", "--relay-url"),
        ("--device-key", "zz", "--device-key or $BACKUPVAULT_DEVICE_KEY"),
        # no name the vault takes: the config was written, and every vault command failed
        ("--account", "alice@example.com", "--account"),
    ],
)
def test_a_bad_option_of_client_config_is_named_as_the_option(
    tmp_path: Path, fleet_file: Path, option: str, value: str, source: str
) -> None:
    """ "config file client.toml: field 'relay_url' is malformed ... write the relay's URL,
    such as relay_url = ..." told the operator to edit a file that was never written."""
    out = tmp_path / "client.toml"
    args = {"--relay-url": "http://127.0.0.1:7100", "--account": "alice", option: value}
    env = {k: v for k, v in SECRETS.items() if option != "--device-key" or "DEVICE" not in k}
    given = [x for pair in args.items() for x in pair]
    done = backupvault("--json", "fleet", "client-config", "--fleet-file", str(fleet_file),
                       "--out", str(out), *given, env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr
    error = json.loads(done.stderr.strip().splitlines()[-1])
    assert f"nothing was written to {out}" in error["error"]
    assert f"it comes from {source}" in error["hint"]
    assert not out.exists()


def test_a_failed_json_command_keeps_its_warnings(tmp_path: Path) -> None:
    """The warning came before the failure (a wrong code: exit 3); under --json the error
    object is all a script gets, and it lost the warning."""
    from backupvault.crypto import recovery

    source = tmp_path / "source"
    source.mkdir()
    (source / "notes.txt").write_text("meet at 7\n")
    storage = str(tmp_path / "storage")
    created = backupvault("backup", "create", str(source), "--storage", storage, "--recovery-code")
    assert created.returncode == 0, created.stderr
    wrong = recovery.encode(os.urandom(32))
    done = backupvault("--json", "backup", "list", "--storage", storage, "--recovery-code", wrong)
    assert done.returncode == 3, done.stderr
    error = json.loads(done.stderr)
    assert any("given on the command line" in w for w in error["warnings"])


def test_a_loaded_client_config_shows_no_secret_in_its_repr(
    tmp_path: Path, fleet_file: Path
) -> None:
    """A config in a log line, or in a traceback's locals, must not carry the tokens or
    the device key that let whoever reads it act for the account."""
    from backupvault.client.config import ClientConfig

    out = tmp_path / "client.toml"
    done = backupvault(
        "fleet", "client-config", "--fleet-file", str(fleet_file),
        "--relay-url", "http://127.0.0.1:7100", "--account", "alice", "--out", str(out),
        env=SECRETS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = ClientConfig.load(out)
    assert config.token == SECRETS["BACKUPVAULT_RELAY_TOKEN"]
    shown = repr(config)
    assert "alice" in shown
    for secret in (*SECRETS.values(), "Ed25519PrivateKey"):
        assert secret not in shown
