"""A newcomer's mistakes, each answered clearly by the real console script (no vault
needed here; tests/integration/test_cli_newcomer_processes.py covers those that do)."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import tomli_w
from console import CONSOLE_SCRIPT, backupvault  # tests/cli/console.py
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.cli import main as cli_main
from backupvault.cli.passwords import MIN_LENGTH, check_password, weakness
from backupvault.client.errors import EVALUATION_UNANSWERED_HINT, FleetUnavailable
from backupvault.client.threshold import password_bytes
from backupvault.crypto import oprf, recovery
from backupvault.errors import InvalidInput, UsageError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 8)
    return root


def last_json(stream: str) -> dict[str, object]:
    lines = stream.strip().splitlines()
    assert len(lines) == 1, stream  # exactly one object
    data: dict[str, object] = json.loads(lines[0])
    return data


# ---- help ---------------------------------------------------------------------------------


def _commands(group: click.Group, path: str) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = [(path, group)]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, f"{path} {name}")
        else:
            found.append((f"{path} {name}", command))
    return found


def test_every_option_of_every_command_has_a_help_line() -> None:
    from backupvault.cli import operator, sim, transparency  # noqa: F401 - registers commands
    from backupvault.cli.main import cli

    commands = _commands(cli, "backupvault")
    assert len(commands) > 25  # the walk reached the subcommands
    missing = [
        f"{path} {'/'.join(param.opts)}"
        for path, command in commands
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert missing == []
    undocumented = [path for path, command in commands if not (command.help or "").strip()]
    assert undocumented == []


def test_storage_and_new_key_help_say_what_they_take_and_when() -> None:
    """`--storage TEXT  Where the backups are.` told neither that a URL is taken nor that
    the client config's `storage` is the default; `--new-key` named only the older
    version's backups, not the case it is for first: a key wrong guesses destroyed, whose
    refusal (exit 4) points to it."""
    from backupvault.cli import backup_repo  # noqa: F401 - registers commands
    from backupvault.cli.main import cli

    storage_options = [
        (path, param)
        for path, command in _commands(cli, "backupvault")
        for param in command.params
        if isinstance(param, click.Option) and "--storage" in param.opts
        if path.startswith(("backupvault backup", "backupvault vault"))
    ]
    assert len(storage_options) >= 9  # every backup command and vault delete
    for path, option in storage_options:
        assert option.metavar == "URL", path
        assert "Default: the client config's storage." in (option.help or ""), path
    backup = cli.commands["backup"]
    assert isinstance(backup, click.Group)
    (new_key,) = [p for p in backup.commands["create"].params if p.name == "new_key"]
    assert "destroyed" in (new_key.help or "")
    shown = " ".join(backupvault("backup", "create", "--help").stdout.split())
    assert "--storage URL" in shown and "destroyed" in shown


def test_help_shows_the_config_variable_and_the_options_after_the_command() -> None:
    top = backupvault("--help")
    assert top.returncode == 0
    assert "BACKUPVAULT_CONFIG" in top.stdout
    create = backupvault("backup", "create", "--help")
    assert "--json" in create.stdout and "--quiet" in create.stdout
    assert recovery.FORMAT in " ".join(create.stdout.split())


@pytest.mark.parametrize(
    ("args", "hinted"),
    [
        (["backup", "{tmp}"], "`backupvault backup create {tmp}` backs it up"),
        (["restore", "--to", "{tmp}/r"], "`backupvault backup restore`"),
        (["snapshots"], "`backupvault backup list`"),
        (["backup", "snapshots"], "`backupvault backup list`"),
        (["backup", "init"], "`backupvault backup create SOURCE`"),
        (["backup", "find", "x"], "`backupvault backup ls SNAPSHOT_ID [PATH]...`"),
        (["key", "passwd"], "`backupvault vault change-password`"),
        (["backup", "create", "{tmp}", "{tmp}"], "one SOURCE a backup here"),
    ],
)
def test_what_a_restic_user_types_is_answered_with_its_command_here(
    tmp_path: Path, args: list[str], hinted: str
) -> None:
    """`restic backup ~/Documents`, `restic snapshots`, `restic restore`: typed here they
    got "No such command '/home/me/Documents'" and a pointer to --help."""
    filled = [a.format(tmp=tmp_path) for a in args]
    done = backupvault("--json", *filled)
    assert done.returncode == 2, done.stderr
    error = last_json(done.stderr)
    assert hinted.format(tmp=tmp_path) in str(error["hint"]), error
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "hinted"),
    [
        (["backup", "restore", "--target", "x"], "`--to DEST`"),
        (["backup", "list", "-r", "x"], "`--storage URL`"),
        (["backup", "list", "--repo", "x"], "`--storage URL`"),
        (["backup", "list", "--password-file", "x"], "`--password-stdin < FILE`"),
        (["backup", "forget", "--keep-last", "1", "--prune"], "`backupvault backup prune`"),
        (["backup", "create", ".", "--tag", "x"], "`--path` and `--host`"),
        (["backup", "create", ".", "--exclude-file", "x"], "one `--exclude PATTERN` for each"),
        (["backup", "create", ".", "--iexclude", "x"], "case-sensitive"),
        (["backup", "create", "--files-from", "x"], "one SOURCE a backup"),
        (["backup", "create", ".", "-v"], "`--json` gives the details"),
    ],
)
def test_a_restic_option_is_answered_with_its_option_here(args: list[str], hinted: str) -> None:
    """`restore --target x` got "Did you mean '--storage'?", `--repo` "Did you mean
    '--help'?": click's nearest spelling, not the option that does it here."""
    done = backupvault("--json", *args)
    assert done.returncode == 2, done.stderr
    error = last_json(done.stderr)
    assert hinted in str(error["hint"]), error
    assert "Did you mean" not in str(error["error"]), error


@pytest.mark.parametrize(
    "args",
    [
        ["vault", "status", "--config", "client.toml"],
        ["backup", "list", "--storage", "x", "--config=client.toml"],
    ],
)
def test_config_after_the_command_is_told_to_go_before_it(args: list[str]) -> None:
    """`--json` and `-q` work after the command, so `vault status --config FILE` is what a
    newcomer types: its hint sent them to `vault status --help`, which has no --config."""
    done = backupvault("--json", *args)
    assert done.returncode == 2, done.stderr
    error = last_json(done.stderr)
    command = " ".join(args[:2])
    assert f"give it before the command (`backupvault --config FILE {command} ...`)" in str(
        error["hint"]
    ), error
    assert "$BACKUPVAULT_CONFIG" in str(error["hint"])


def test_a_command_without_its_subcommand_shows_its_help() -> None:
    done = backupvault("backup")
    assert done.returncode == 2
    assert "Usage: backupvault backup" in done.stderr and "restore" in done.stderr
    assert "error:" not in done.stderr


def test_a_command_without_its_subcommand_under_json_is_a_json_error() -> None:
    """Under --json every error is one JSON object on stderr (docs/cli.md, "Errors"): a
    group with no command printed its help there, which a script cannot parse."""
    done = backupvault("--json", "backup")
    assert done.returncode == 2 and done.stdout == ""
    error = last_json(done.stderr)
    assert error["exit_code"] == 2
    assert str(error["error"]).startswith("backupvault backup needs a command: ")
    assert "create" in str(error["error"]) and "restore" in str(error["error"])
    assert "`backupvault backup --help`" in str(error["hint"])


OPERATOR_MODULES = ["backupvault.cli.operator", "backupvault.cli.transparency"]
HEAVY_MODULES = ["httpx", "backupvault.client.vault", "backupvault.deploy.local"]


@pytest.mark.parametrize(
    ("args", "not_loaded"),
    [
        (["backup", "create", "--help"], OPERATOR_MODULES + HEAVY_MODULES),
        (["backup", "check", "--help"], OPERATOR_MODULES + HEAVY_MODULES),
        (["backup", "--help"], OPERATOR_MODULES + HEAVY_MODULES),
        (["--help"], HEAVY_MODULES),
    ],
    ids=["backup create --help", "backup check --help", "backup --help", "--help"],
)
def test_help_and_backup_commands_load_only_what_they_use(
    args: list[str], not_loaded: list[str]
) -> None:
    """A backup command starts without importing the operator's commands, and the help
    lists every command without importing what they run (the HTTP client, the vault
    client, the deployment): those took longer to import than a small backup takes."""
    probe = (
        "import sys\n"
        "from backupvault.cli.main import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted(name for name in {not_loaded!r} if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "Usage: backupvault" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]"


# ---- config -------------------------------------------------------------------------------


def test_no_config_and_a_missing_config_exit_alike_and_name_the_variable(tmp_path: Path) -> None:
    none = backupvault("vault", "status")
    flag = backupvault("--config", str(tmp_path / "nope.toml"), "vault", "status")
    env = backupvault("vault", "status", env={"BACKUPVAULT_CONFIG": str(tmp_path / "gone.toml")})
    assert none.returncode == flag.returncode == env.returncode == 2
    assert "BACKUPVAULT_CONFIG" in none.stderr
    assert "nope.toml (from --config) does not exist" in flag.stderr
    assert "gone.toml (from $BACKUPVAULT_CONFIG) does not exist" in env.stderr
    assert "Traceback" not in none.stderr + flag.stderr + env.stderr
    change = backupvault("vault", "change-password")  # the config comes before the password
    assert change.returncode == 2
    assert "BACKUPVAULT_CONFIG" in change.stderr and "no password" not in change.stderr


def test_a_bad_port_range_stops_local_up_before_it_provisions(tmp_path: Path) -> None:
    deployment = tmp_path / "bv"
    up = backupvault("local", "up", "--dir", str(deployment), env={"BACKUPVAULT_PORTS": "80-90"})
    assert up.returncode == 1
    assert "BACKUPVAULT_PORTS='80-90'" in up.stderr and "FIRST-LAST" in up.stderr
    assert "Traceback" not in up.stderr
    assert "provisioning" not in up.stderr  # it was said first, then refused (review s39-C)
    assert not deployment.exists() or list(deployment.iterdir()) == []


def test_a_config_that_is_a_folder_names_where_it_came_from(tmp_path: Path) -> None:
    flag = backupvault("--config", str(tmp_path), "vault", "status")
    env = backupvault("vault", "status", env={"BACKUPVAULT_CONFIG": str(tmp_path)})
    assert flag.returncode == env.returncode == 2
    assert f"config file {tmp_path} (from --config) is a folder, not a file" in flag.stderr
    assert f"config file {tmp_path} (from $BACKUPVAULT_CONFIG) is a folder" in env.stderr
    assert "env var" not in flag.stderr  # click's message named the variable for --config
    # No client.toml inside: none is suggested (review s40-R2 was sent to a missing one).
    assert "hint: give --config the client.toml file itself (`backupvault local up" in (flag.stderr)
    assert "such as" not in flag.stderr
    (tmp_path / "client.toml").write_text("")
    inside = backupvault("--config", str(tmp_path), "vault", "status")
    assert f"the client.toml file itself, such as {tmp_path}/client.toml" in inside.stderr


def test_a_port_range_too_narrow_for_the_deployment_stops_local_up_before_it_provisions(
    tmp_path: Path,
) -> None:
    deployment = tmp_path / "bv"
    up = backupvault(
        "local", "up", "--dir", str(deployment), env={"BACKUPVAULT_PORTS": "27000-27001"}
    )
    assert up.returncode == 2
    assert "gives 2 ports; a deployment of 5 nodes needs 13" in up.stderr
    assert "provisioning" not in up.stderr
    assert not deployment.exists() or list(deployment.iterdir()) == []
    one = backupvault(
        "local", "up", "--dir", str(deployment), "--nodes", "1",
        env={"BACKUPVAULT_PORTS": "27000-27001"},
    )  # fmt: skip
    assert "a deployment of 1 node needs 5" in one.stderr  # review s49: not "1 nodes"


@pytest.mark.parametrize(
    ("content", "said", "hint"),
    [
        (bytes(range(128, 256)) * 2, "is not a client config: it is not text (not UTF-8)",
         "a client config is a small TOML text file"),
        (b'relay_url = "http://x"\naccount = \n', "is not valid TOML: Invalid value (at line 2",
         "fix line 2 of "),
    ],
)  # fmt: skip
def test_a_config_that_is_not_toml_is_a_config_error_with_a_hint(
    tmp_path: Path, content: bytes, said: str, hint: str
) -> None:
    config = tmp_path / "client.toml"
    config.write_bytes(content)
    done = backupvault("--json", "--config", str(config), "vault", "status")
    assert done.returncode == 2
    error = last_json(done.stderr)
    assert said in str(error["error"]) and str(config) in str(error["error"])
    assert hint in str(error["hint"]) and "local up --dir DIR" in str(error["hint"])
    assert "bug" not in done.stderr


# Real Ed25519 public keys: a client refuses a pinned signing key outside the prime-order
# subgroup, as most 32-byte strings are.
_SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key().public_bytes_raw().hex()
_OLD_SIGNING_KEY = (
    Ed25519PrivateKey.from_private_bytes(bytes([1] * 32)).public_key().public_bytes_raw().hex()
)


def _client_toml(path: Path, **fields: object) -> Path:
    data = {
        "relay_url": "http://127.0.0.1:9",
        "account": "alice",
        "token": "t",
        "fleet_token": "t",
        "device_key": "44" * 32,
        "fleet_id": "00" * 16,
        "node_public_keys": ["0020" + "11" * 32],
        "node_signing_keys": [_SIGNING_KEY],
        **fields,
    }
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("007a" + "00" * 32, "unknown node key type 0x007a"),
        ("zz" * 34, "not hexadecimal"),
        ("0020" + "00" * 31, "an X25519 node key is 32 bytes"),
        # Sealing to it raised OpenSSL's bare ValueError at every request (review s61).
        ("0020" + "00" * 32, "small-order X25519 point"),
    ],
)
def test_a_corrupted_node_key_names_the_file_and_the_field(
    tmp_path: Path, value: str, why: str
) -> None:
    config = _client_toml(
        tmp_path / "client.toml",
        node_public_keys=["0020" + "11" * 32, value],
        node_signing_keys=[_SIGNING_KEY] * 2,
    )
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1
    assert f"config file {config}: field 'node_public_keys' is malformed" in done.stderr
    assert why in done.stderr


def test_a_config_pinning_one_fleet_key_says_it_is_from_an_older_version(
    tmp_path: Path,
) -> None:
    config = tmp_path / "client.toml"
    data = tomllib.loads(_client_toml(config).read_text())
    del data["node_public_keys"]
    data["fleet_public_key"] = "0020" + "11" * 32
    config.write_text(tomli_w.dumps(data))
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1
    assert "one key for the whole fleet (an older version)" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_config_without_node_signing_keys_says_it_is_from_an_older_version(
    tmp_path: Path,
) -> None:
    """The threshold flow checks every node's signed acknowledgement with its key."""
    config = tmp_path / "client.toml"
    data = tomllib.loads(_client_toml(config).read_text())
    del data["node_signing_keys"]
    config.write_text(tomli_w.dumps(data))
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1
    assert "field 'node_signing_keys' is malformed" in done.stderr
    assert "lists no node signing keys (it comes from an older version)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        (["33" * 32, "33" * 32], "one per node, as many as node_public_keys"),
        (["33" * 31], "each is 32 bytes"),
        (["zz" * 32], "not hexadecimal"),
    ],
)
def test_malformed_node_signing_keys_are_named(tmp_path: Path, keys: list[str], why: str) -> None:
    config = _client_toml(tmp_path / "client.toml", node_signing_keys=keys)
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1
    assert "field 'node_signing_keys' is malformed" in done.stderr and why in done.stderr


@pytest.mark.parametrize(
    ("epoch", "why"),
    [
        (float("inf"), "not an epoch number"),  # was "unexpected OverflowError ... a bug"
        (1.5, "not an epoch number"),  # was cut to 1
        (True, "not an epoch number"),  # was 1
        (-3, "out of range"),
    ],
)
def test_a_malformed_epoch_is_named(tmp_path: Path, epoch: object, why: str) -> None:
    config = _client_toml(tmp_path / "client.toml", epoch=epoch)
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1
    assert "field 'epoch' is malformed" in done.stderr and why in done.stderr
    assert "bug" not in done.stderr


_OLD_FLEET = {"node_public_keys": ["0020" + "22" * 32], "node_signing_keys": [_OLD_SIGNING_KEY]}


@pytest.mark.parametrize(
    ("previous", "why"),
    [
        ([{**_OLD_FLEET, "epoch": 3}], "epoch 3 is not older than the config's epoch 3"),
        ([_OLD_FLEET], "each table needs its epoch"),
        ([{**_OLD_FLEET, "epoch": 1}, {**_OLD_FLEET, "epoch": 1}], "an epoch is listed twice"),
        (
            [{"epoch": 1, "node_public_keys": ["zz"], "node_signing_keys": [_OLD_SIGNING_KEY]}],
            "hex",
        ),
        ("epoch 1", "a list of tables"),
    ],
)
def test_malformed_previous_fleets_are_named(tmp_path: Path, previous: object, why: str) -> None:
    config = _client_toml(tmp_path / "client.toml", epoch=3, previous_fleets=previous)
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1
    assert "field 'previous_fleets' is malformed" in done.stderr and why in done.stderr


def test_previous_fleets_are_reached_at_their_epochs_route(tmp_path: Path) -> None:
    """A pinned config's older epochs (a rotation's: `local rotate` writes them) are where
    a recovery that finds the vault empty looks for the entry, newest first."""
    from backupvault.client.config import ClientConfig

    previous = [{**_OLD_FLEET, "epoch": 1}, {**_OLD_FLEET, "epoch": 2}]
    config = ClientConfig.load(
        _client_toml(tmp_path / "client.toml", epoch=3, previous_fleets=previous)
    )
    session = config.session()
    assert session.epoch == 3 and session.threshold.vault.epoch is None  # the current route
    older = list(session.older())
    assert [epoch for epoch, _ in older] == [2, 1]
    for epoch, old in older:
        assert old.epoch == epoch and old.threshold.vault.epoch == epoch
        assert old.threshold.vault.node_keys[0].to_bytes().hex() == "0020" + "22" * 32


def test_vault_status_passes_over_older_epochs_it_cannot_check() -> None:
    """`vault status` looks for the key on a rotation's older epochs only to say where it
    is: an epoch that does not answer is passed over, and a bundle that does not verify
    ends the search (a recovery stops on it), rather than failing the status."""
    from backupvault.cli.main import _key_on_older_epoch
    from backupvault.client.errors import FleetNotTrusted, FleetUnavailable

    class Down:
        def status(self) -> None:
            raise FleetUnavailable("no node answered")

    class Session:
        def older(self) -> Iterator[tuple[int, Down]]:
            yield 4, Down()
            raise FleetNotTrusted("refused the relay's fleet bundle: bad signature")

    assert _key_on_older_epoch(Session()) is None  # type: ignore[arg-type]


def _ota_toml(path: Path, **fields: object) -> Path:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from backupvault.transparency import Signer

    vkey = Signer("w.test/x", Ed25519PrivateKey.generate()).verifier.vkey()
    data = {
        "trust": "ota",
        "relay_url": "http://127.0.0.1:9",
        "account": "alice",
        "token": "t",
        "fleet_token": "t",
        "device_key": "44" * 32,
        "operator_public_key": Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex(),
        "witness_public_key": vkey,
        "witness_url": "http://127.0.0.1:9",
        **fields,
    }
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.mark.parametrize("age", [float("inf"), 0.5, 0, -60, True, "3600"])
def test_a_malformed_max_bundle_age_is_named(tmp_path: Path, age: object) -> None:
    """inf was "unexpected OverflowError ... a bug"; 0.5 became 0, and 0 or less refused
    every bundle as stale, blaming the witness."""
    config = _ota_toml(tmp_path / "client.toml", max_bundle_age=age)
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1
    assert "field 'max_bundle_age' is malformed" in done.stderr
    assert "a whole number of seconds, at least 1" in done.stderr


def test_a_max_bundle_age_in_whole_seconds_is_taken(tmp_path: Path) -> None:
    from backupvault.client.config import ClientConfig

    config = ClientConfig.load(_ota_toml(tmp_path / "client.toml", max_bundle_age=600))
    assert config.ota is not None and config.ota.max_age == 600


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        # Each was taken through str(): a folder named "['", ./5, a relay "at 42" that
        # "did not answer" (exit 5, hint: too few vault nodes), an account "['a']".
        ("storage", ["/tmp/a", "/tmp/b"], "a string in quotes, not a list ['/tmp/a', '/tmp/b']"),
        ("storage", 5, "a string in quotes, not a number 5"),
        ("relay_url", 42, "a string in quotes, not a number 42"),
        ("relay_url", "htp://127.0.0.1:9", "an http:// or https:// URL with a host"),
        ("relay_url", "127.0.0.1:9", "an http:// or https:// URL with a host"),
        ("relay_url", "http://", "an http:// or https:// URL with a host"),
        ("account", ["a"], "a string in quotes, not a list ['a']"),
        ("entry", True, "a string in quotes, not a boolean True"),
        ("fleet_id", 12, "a string in quotes, not a number 12"),
        ("node_public_keys", [20], "a list of hex keys in quotes"),
    ],
)
def test_a_config_field_of_the_wrong_type_is_named(
    tmp_path: Path, field: str, value: object, why: str
) -> None:
    config = _client_toml(tmp_path / "client.toml", **{field: value})
    done = backupvault("--config", str(config), "backup", "list")
    assert done.returncode == 1, done.stderr
    assert f"config file {config}: field {field!r} is malformed" in done.stderr
    assert why in done.stderr
    assert "hint: " in done.stderr
    assert "vault nodes" not in done.stderr and "did not answer" not in done.stderr


def test_a_secret_of_the_wrong_type_is_named_but_not_shown(tmp_path: Path) -> None:
    config = _client_toml(tmp_path / "client.toml", token=987654321)
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1
    assert "field 'token' is malformed: a string in quotes, not a number" in done.stderr
    assert "987654321" not in done.stderr


@pytest.mark.parametrize(
    ("fields", "why", "hint"),
    [
        ({"storge": "/tmp/b"}, "unknown field 'storge'", "did you mean 'storage'?"),
        ({"relay": "http://x"}, "unknown field 'relay'", "did you mean 'relay_url'?"),
        ({"colour": "blue"}, "unknown field 'colour'", "remove it from"),
        (
            {"epoch": 3, "previous_fleets": [{**_OLD_FLEET, "epoch": 1, "storage": "/b"}]},
            "unknown field 'storage' in [[previous_fleets]] table 1",
            "move storage above the first [[previous_fleets]] line",
        ),
    ],
)
def test_an_unknown_config_field_is_refused(
    tmp_path: Path, fields: dict[str, object], why: str, hint: str
) -> None:
    """`storge = "..."` was ignored, and the later error said to set `storage`."""
    config = _client_toml(tmp_path / "client.toml", **fields)
    done = backupvault("--config", str(config), "backup", "list")
    assert done.returncode == 1, done.stderr
    assert f"config file {config}: {why}" in done.stderr
    assert hint in done.stderr and str(config) in done.stderr.split("hint:")[1]
    assert "give --storage" not in done.stderr


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"witness_url": "witness.example"}, "field 'witness_url' is malformed: an http://"),
        ({"witnesses": [{"public_key": "k", "url": 5}]}, "field 'witnesses[0].url' is malformed"),
        ({"witnesses": "w"}, "field 'witnesses' is malformed: [[witnesses]] tables"),
        ({"allowed_measurements": [1]}, "field 'allowed_measurements' is malformed: a list"),
        ({"allowed_measurements": ["zz"]}, "field 'allowed_measurements' is malformed"),
        ({"state_file": 3}, "field 'state_file' is malformed: a string in quotes"),
        (
            {"witnesses": [{"public_key": "k", "url": "http://w", "fleet_id": "00"}]},
            "unknown field 'fleet_id' in [[witnesses]] table 1",
        ),
    ],
)
def test_a_malformed_ota_field_is_named(
    tmp_path: Path, fields: dict[str, object], why: str
) -> None:
    config = _ota_toml(tmp_path / "client.toml", **fields)
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1, done.stderr
    assert f"config file {config}: {why}" in done.stderr


_BROKEN_PINNED: list[dict[str, object]] = [
    {"trust": "pinned-ish"},
    {"trust": 1},
    {"relay_url": 0},
    {"relay_url": "ftp://relay.example"},
    {"account": 3.5},
    {"storage": {"path": "/b"}},
    {"device_key": "zz"},
    {"fleet_id": "zz"},
    {"node_public_keys": []},
    {"node_signing_keys": [1]},
    {"epoch": "1"},
    {"previous_fleets": [{"epoch": 0}]},
    {"stroage": "/b"},
]
_BROKEN_OTA: list[dict[str, object]] = [
    {"operator_public_key": "no-such-file.pem"},
    {"witness_public_key": "not a vkey"},
    {"witnesses": [{"public_key": "not a vkey", "url": "http://w.example"}]},
    {"witnesses": [{"url": "http://w.example"}]},
    {"fleet_id": 7},
    {"allowed_measurements": "ab"},
    {"max_bundle_age": "1h"},
    {"witness_url": "https//w.example"},
]


@pytest.mark.parametrize(
    ("make", "fields"),
    [("pinned", f) for f in _BROKEN_PINNED] + [("ota", f) for f in _BROKEN_OTA],
)
def test_every_config_error_names_the_file_and_says_what_to_do(
    tmp_path: Path, make: str, fields: dict[str, object]
) -> None:
    """docs/cli.md: every error says, on a second line, what to do."""
    from backupvault.client.config import ClientConfig
    from backupvault.errors import BackupVaultError

    path = (_client_toml if make == "pinned" else _ota_toml)(tmp_path / "client.toml", **fields)
    with pytest.raises(BackupVaultError) as err:
        ClientConfig.load(path)
    assert f"config file {path}" in err.value.message
    assert err.value.hint, err.value.message


def test_a_relative_storage_in_the_config_is_taken_as_given(tmp_path: Path) -> None:
    """As --storage is (docs/cli.md): relative to the current folder, not the config's."""
    from backupvault.client.config import ClientConfig

    config = ClientConfig.load(_client_toml(tmp_path / "client.toml", storage="backups"))
    assert config.storage == "backups"


def test_every_client_config_the_docs_show_has_only_known_fields() -> None:
    """The examples in docs/operations.md and docs/transparency.md: a field the loader
    does not know is refused, so an example must hold none (nor put a top-level field
    after a [[table]] header, where TOML puts it into the table)."""
    from backupvault.client.config import _check_fields

    examples = [
        block
        for doc in ("docs/operations.md", "docs/transparency.md")
        for block in re.findall(r"```toml\n(.*?)```", (ROOT / doc).read_text(), re.S)
        if re.search(r"^relay_url = ", block, re.M)
    ]
    assert len(examples) >= 2
    for block in examples:
        _check_fields(Path("example.toml"), tomllib.loads(block))


# ---- --json -------------------------------------------------------------------------------


def test_json_and_quiet_work_after_the_subcommand(tmp_path: Path, source: Path) -> None:
    done = backupvault(
        "backup", "create", str(source), "--storage", str(tmp_path / "s"), "--recovery-code",
        "--json", "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert last_json(done.stdout)["files"] == 2
    assert done.stderr == ""


def test_json_and_quiet_work_between_the_group_and_its_command(
    tmp_path: Path, source: Path
) -> None:
    """docs/cli.md says `--json` works anywhere on the command line: `backup --json list`
    was refused ("No such option"), in JSON."""
    done = backupvault(
        "backup", "--json", "-q", "create", str(source), "--storage", str(tmp_path / "s"),
        "--recovery-code",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert last_json(done.stdout)["files"] == 2
    assert done.stderr == ""
    missing = backupvault("--config", str(tmp_path / "none.toml"), "vault", "--json", "status")
    assert missing.returncode == 2
    assert "none.toml" in json.loads(missing.stderr.strip().splitlines()[-1])["error"]


def test_create_restore_and_list_share_one_json_schema(tmp_path: Path, source: Path) -> None:
    storage = str(tmp_path / "s")
    created = last_json(
        backupvault("--json", "backup", "create", str(source), "--storage", storage,
                    "--recovery-code").stdout
    )  # fmt: skip
    restored_run = backupvault(
        "backup", "restore", "--storage", storage, "--to", str(tmp_path / "r"),
        "--recovery-code", "-", "--json", stdin=str(created["recovery_code"]) + "\n",
    )  # fmt: skip
    restored = last_json(restored_run.stdout)
    listed = last_json(
        backupvault(
            "backup", "list", "--storage", storage, "--recovery-code", "-", "--json",
            stdin=str(created["recovery_code"]) + "\n",
        ).stdout
    )  # fmt: skip

    shared = {"backup_id", "created_at", "storage", "files", "bytes", "skipped"}
    assert shared <= created.keys() and shared <= restored.keys()
    for key in shared:
        assert created[key] == restored[key], key
    assert created["bytes"] == 6 + 2048  # the content, on both sides
    assert created["source"] == str(source) and restored["dest"] == str(tmp_path / "r")
    assert created["registered"] is False
    assert isinstance(created["stored_bytes"], int) and created["stored_bytes"] > 0
    assert not {"size", "source_bytes", "url"} & created.keys()
    # as for every command: `warnings` only when the run had any (docs/cli.md)
    assert "warnings" not in created and "warnings" not in restored
    snapshots = listed["snapshots"]
    assert isinstance(snapshots, list)
    row = snapshots[0]
    # (create's stored_bytes counts the index and snapshot objects it wrote too)
    assert {k: row[k] for k in ("backup_id", "created_at", "bytes")} == {
        k: created[k] for k in ("backup_id", "created_at", "bytes")
    }


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--json", "backup", "frobnicate"], 2),  # click: no such command
        (["backup", "restore", "--storage", "{tmp}/s", "--json"], 2),  # click: missing --to
        (["backup", "create", "{tmp}/missing", "--json"], 2),  # click: bad argument
        (["--json", "vault", "status"], 2),  # ours: no config
        (["backup", "restore", "--storage", "{tmp}/s", "--to", "{tmp}/d", "--recovery-code",
          "12", "--json"], 3),  # ours: mistyped code
    ],
)  # fmt: skip
def test_json_errors_are_one_object_on_stderr(
    tmp_path: Path, source: Path, args: list[str], code: int
) -> None:
    if "--recovery-code" in args:  # a storage with a backup: the code is what is wrong
        made = backupvault("backup", "create", str(source), "--storage", str(tmp_path / "s"),
                           "--recovery-code")  # fmt: skip
        assert made.returncode == 0, made.stderr
    done = backupvault(*[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == code
    assert done.stdout == ""
    error = last_json(done.stderr)
    assert error["exit_code"] == code and error["error"]
    # a code on the command line also draws a warning, which the error object carries
    assert set(error) - {"warnings"} == {"error", "hint", "exit_code"}
    assert ("warnings" in error) == ("--recovery-code" in args)


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_an_error_keeps_its_exit_code_when_stderr_is_gone(json_flag: list[str]) -> None:
    """`backupvault ... 2>&1 | head -1`: once the reader has gone, writing the message
    fails (EPIPE), and that turned every exit code into 1 (rich exits 1 on a broken pipe;
    under --json a BrokenPipeError escaped)."""
    from console import CONSOLE_SCRIPT

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader exited before the message was written
    try:
        done = subprocess.run(
            [str(CONSOLE_SCRIPT), *json_flag, "vault", "status"],  # no config: exit 2
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=write_end,
            env={k: v for k, v in os.environ.items() if k != "BACKUPVAULT_CONFIG"},
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 2


def test_create_recovery_code_dash_says_the_flag_takes_no_value(
    tmp_path: Path, source: Path
) -> None:
    # restore's --recovery-code takes a value ('-' for stdin); create's is a flag.
    storage = tmp_path / "storage"
    done = backupvault(
        "--json", "backup", "create", str(source), "--storage", str(storage),
        "--recovery-code", "-", stdin="0" * 64 + "\n",
    )  # fmt: skip
    assert done.returncode == 2
    error = last_json(done.stderr)
    assert "unexpected extra argument (-)" in str(error["error"])
    assert "takes no value" in str(error["hint"]) and "stdin" in str(error["hint"])
    assert not storage.exists()
    # an extra argument elsewhere: a second source, which has a hint of its own
    other = backupvault("--json", "backup", "create", str(source), "extra", "--storage", "s")
    assert other.returncode == 2
    assert "one SOURCE a backup" in str(last_json(other.stderr)["hint"])


def test_a_recovery_code_backup_into_an_existing_repository_asks_for_its_code(
    tmp_path: Path, source: Path
) -> None:
    """The README's `backup create ... --storage ~/backups --recovery-code`, run where the
    lines before it had made a repository: "no recovery code: stdin was empty", and a hint
    to give `--recovery-code -`, which `create` refuses. The error now says that the
    storage already holds a repository, whose code is wanted, and what else to do."""
    storage = tmp_path / "storage"
    first = backupvault("--json", "backup", "create", str(source), "--storage", str(storage),
                        "--recovery-code")  # fmt: skip
    assert first.returncode == 0, first.stderr
    code = str(json.loads(first.stdout)["recovery_code"])
    again = backupvault("--json", "backup", "create", str(source), "--storage", str(storage),
                        "--recovery-code")  # fmt: skip
    assert again.returncode == 2
    error = last_json(again.stderr)
    assert f"{storage} already holds a repository" in str(error["error"])
    assert "its recovery code on stdin" in str(error["error"])
    hint = str(error["hint"])
    assert f"--storage {storage} --recovery-code" in hint and "--recovery-code -" not in hint
    assert "leave --recovery-code out" in hint and "another --storage" in hint
    given = backupvault("backup", "create", str(source), "--storage", str(storage),
                        "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert given.returncode == 0, given.stderr


def test_a_password_prompt_without_a_terminal_says_what_to_pass(tmp_path: Path) -> None:
    # (`vault delete`'s confirmation without a terminal: tests/integration, it needs a vault)
    config = _client_toml(tmp_path / "client.toml")
    no_password = backupvault(
        "--json", "--config", str(config), "backup", "create", str(tmp_path), "--storage", "x"
    )
    assert no_password.returncode == 2
    assert "--password-stdin" in str(last_json(no_password.stderr)["error"])
    assert "first line of stdin is the password" in str(last_json(no_password.stderr)["hint"])
    empty = backupvault(
        "--json", "--config", str(config), "backup", "create", str(tmp_path), "--storage", "x",
        "--password-stdin", stdin="\n",
    )  # fmt: skip
    assert empty.returncode == 2
    error = last_json(empty.stderr)
    assert error["error"] == "the password is empty"
    assert "nothing was sent to the vault" in str(error["hint"])


def test_a_closed_stdin_is_read_as_an_empty_one_not_called_a_bug(
    tmp_path: Path, source: Path
) -> None:
    """Started with stdin closed (`<&-`, a daemon), every command that asks for a password
    or a code said "unexpected AttributeError: 'NoneType' object has no attribute
    'isatty'" and "this is a bug" (exit 1), not what docs/cli.md says (exit 2)."""
    storage = tmp_path / "storage"
    made = backupvault(
        "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    assert made.returncode == 0, made.stderr
    config = _client_toml(tmp_path / "client.toml")
    for args, said in (
        (["backup", "list", "--recovery-code", "-"], "no recovery code: stdin was empty"),
        (["--config", str(config), "backup", "list", "--password-stdin"],
         "--password-stdin: stdin ended before a password line"),
        (["--config", str(config), "backup", "list"],
         "no password: use --password-stdin, or run in a terminal to be asked"),
    ):  # fmt: skip
        done = subprocess.run(
            [str(CONSOLE_SCRIPT), "--json", *args, "--storage", str(storage)],
            capture_output=True, text=True, timeout=120, check=False,
            env={k: v for k, v in os.environ.items() if k != "BACKUPVAULT_CONFIG"},
            preexec_fn=lambda: os.close(0),
        )  # fmt: skip
        assert done.returncode == 2, (args, done.stderr)
        assert last_json(done.stderr)["error"] == said


def test_no_storage_says_where_a_default_can_be_set(tmp_path: Path) -> None:
    done = backupvault("--json", "backup", "list")
    assert done.returncode == 2
    error = last_json(done.stderr)
    assert str(error["error"]).startswith("give --storage URL")
    assert 'storage = "URL"' in str(error["hint"]) and "client config" in str(error["hint"])


def test_an_empty_storage_is_refused_not_taken_for_the_configs(
    tmp_path: Path, source: Path
) -> None:
    """`--storage "$OLD"` with OLD unset fell back to the config's `storage`: a `backup
    forget --keep-last 1` meant for another repository removed snapshots of the default
    one (review s61), as `--include ""` once restored everything."""
    default = tmp_path / "default"
    made = backupvault(
        "--json", "backup", "create", str(source), "--storage", str(default), "--recovery-code"
    )
    assert made.returncode == 0, made.stderr
    code = json.loads(made.stdout)["recovery_code"]
    again = backupvault("backup", "create", str(source), "--storage", str(default),
                        "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert again.returncode == 0, again.stderr
    config = _client_toml(tmp_path / "client.toml", storage=str(default))
    config.chmod(0o600)
    env = {"BACKUPVAULT_CONFIG": str(config)}
    for args in (
        ["backup", "forget", "--keep-last", "1", "--recovery-code", "-"],
        ["backup", "list", "--recovery-code", "-"],
        ["backup", "restore", "--to", str(tmp_path / "r"), "--recovery-code", "-"],
        ["backup", "create", str(source), "--recovery-code"],
    ):
        for empty in ("", " "):
            done = backupvault("--json", *args, "--storage", empty, stdin=code + "\n", env=env)
            assert done.returncode == 2, (args, done.stderr)
            error = last_json(done.stderr)
            assert error["error"] == "--storage is empty", error
            assert "leave --storage out to use the client config's `storage`" in str(error["hint"])
    listed = backupvault(
        "--json", "backup", "list", "--recovery-code", "-", stdin=code + "\n", env=env
    )
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["snapshots"]) == 2  # none forgotten


def test_unreachable_storage_says_what_to_check() -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"webdav+https://127.0.0.1:{port}/backups"
    done = backupvault("--json", "backup", "list", "--storage", url)
    assert done.returncode == 5  # unavailable: run it again later
    error = last_json(done.stderr)
    assert str(error["error"]).startswith(f"cannot list backups at {url}: ConnectError")
    assert "the storage did not answer: check the URL (host and port)" in str(error["hint"])


def test_a_restore_destination_that_cannot_be_made_says_why(tmp_path: Path) -> None:
    """Before any key is asked for; each with a hint that works."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")

    def refused(dest: Path) -> dict[str, object]:
        done = backupvault(
            "--json", "backup", "restore", "--storage", str(tmp_path / "none"),
            "--to", str(dest), "--recovery-code", "-", stdin="",
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        return last_json(done.stderr)

    error = refused(afile)
    assert error["error"] == f"restore destination {afile} exists and is not a folder"
    assert "give --to a new folder, or an empty one" in str(error["hint"])
    for dest in (afile / "sub", afile / "sub" / "deeper"):
        error = refused(dest)
        assert str(error["error"]).startswith(f"{afile} is not a folder, so the restore")
        assert "mkdir" not in str(error["hint"])  # it would fail: a file is in the way
    if Path("/proc/self").is_dir():  # Linux: /proc takes no new folder (it had "0 B free")
        error = refused(Path("/proc/backupvault-restore"))
        assert str(error["error"]).startswith(
            "the restore destination /proc/backupvault-restore cannot be written"
        )
        assert "no space" not in str(error["error"])
        assert "a disk this user can write to" in str(error["hint"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no probe left behind


def test_an_empty_destination_in_a_folder_that_takes_no_new_one_is_refused_before_the_key(
    tmp_path: Path,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An empty --to is replaced by the copy built beside it, so its parent must take a
    new folder, as a new --to's must: one in a folder this user cannot write to (an
    admin's /srv holding the user's own empty folder) passed the checks, the key was
    asked for, and the restore then failed with Python's "[Errno 13] Permission denied:
    '.../.empty.<random>.restoring'" (review s61). Faked under root, whom modes do not
    stop; for real otherwise."""
    import tempfile

    storage = tmp_path / "storage"
    made = backupvault(
        "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    assert made.returncode == 0, made.stderr
    locked = tmp_path / "admins"
    dest = locked / "empty"
    dest.mkdir(parents=True)
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args: object, **kwargs: object) -> str:
        if kwargs.get("dir") == locked:
            raise PermissionError(13, "Permission denied")
        return real_mkdtemp(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    if os.geteuid() == 0:
        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    locked.chmod(0o555)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # a code read would be "empty"
    try:
        with pytest.raises(SystemExit) as exited:
            cli_main.main(["--json", "backup", "restore", "--storage", str(storage),
                           "--to", str(dest), "--recovery-code", "-"])  # fmt: skip
    finally:
        locked.chmod(0o755)
    assert exited.value.code == 2
    error = last_json(capsys.readouterr().err)
    assert error["error"] == (
        f"the restore destination {dest} cannot be written: making a folder in {locked} (a"
        " restore builds its copy there, beside --to) failed (Permission denied)"
    )
    assert error["hint"] == "give --to a new folder on a disk this user can write to"
    assert [p.name for p in locked.iterdir()] == ["empty"]


def _restore_past_a_vault_that_is_down(
    tmp_path: Path, source: Path, dest: Path
) -> subprocess.CompletedProcess[str]:
    """A restore into `dest` of a recovery-code backup of `source`, asked with a password
    through a config whose relay does not exist: one that reaches the vault exits 5."""
    storage = tmp_path / "storage"
    made = backupvault(
        "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    assert made.returncode == 0, made.stderr
    config = _client_toml(tmp_path / "client.toml")
    return backupvault(
        "--json", "--config", str(config), "backup", "restore", "--storage", str(storage),
        "--to", str(dest), "--password-stdin", stdin="a mistyped password\n",
    )  # fmt: skip


def test_a_restore_into_a_folder_that_is_not_empty_asks_no_vault(
    tmp_path: Path, source: Path
) -> None:
    """The folder was checked only after the password had gone to the vault: a mistyped
    one cost a guess for a restore that could never write, and a right one a recovery."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    done = _restore_past_a_vault_that_is_down(tmp_path, source, dest)
    assert done.returncode == 2, done.stderr
    error = last_json(done.stderr)
    assert error["error"] == f"restore destination {dest} is not empty"
    assert str(error["hint"]).startswith("restore into a new or empty folder; to bring a few")
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]


def test_a_restore_into_the_folder_it_runs_in_is_refused_before_the_key(
    tmp_path: Path, source: Path
) -> None:
    """`cd restored && backupvault backup restore --to .`: the copy was built beside the
    folder and moved onto it, so the shell stayed in the old, empty folder, and `ls`
    showed nothing of a restore that said it had worked (new-user review s61)."""
    storage = tmp_path / "storage"
    made = backupvault(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    assert made.returncode == 0, made.stderr
    code = json.loads(made.stdout)["recovery_code"]
    here = tmp_path / "restored"
    here.mkdir()
    kept = os.stat(here)
    for to in (".", str(here)):
        done = backupvault(
            "--json", "backup", "restore", "--storage", str(storage), "--to", to,
            "--recovery-code", "-", stdin="", cwd=here,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        error = last_json(done.stderr)
        assert "is the folder this command runs in" in str(error["error"])  # no code read
        assert "(cd ..) with --to restored" in str(error["hint"])
    assert list(here.iterdir()) == [] and os.stat(here).st_ino == kept.st_ino
    done = backupvault(
        "backup", "restore", "--storage", str(storage), "--to", "restored",
        "--recovery-code", "-", stdin=code + "\n", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (here / "a.txt").read_text() == "alpha\n"


def test_a_restore_whose_parent_folder_is_missing_asks_no_vault(
    tmp_path: Path, source: Path
) -> None:
    """A typo in --to's path was found only once the key was recovered: with a mistyped
    password too, it cost a guess (user review s42). The hint's `mkdir -p` is quoted."""
    dest = tmp_path / "no such" / "deeper" / "restored"
    done = _restore_past_a_vault_that_is_down(tmp_path, source, dest)
    assert done.returncode == 2, done.stderr
    error = last_json(done.stderr)
    assert error["error"] == f"the folder {dest.parent} to restore into does not exist"
    assert f"mkdir -p '{dest.parent}'" in str(error["hint"])
    assert not (tmp_path / "no such").exists()


def test_a_restore_to_a_tilde_path_goes_under_home(tmp_path: Path, source: Path) -> None:
    """`--to=~/x` reaches the command unexpanded (the shell expands `~` only at a word's
    start); it went to a folder named `~` in the working folder."""
    storage = tmp_path / "storage"
    made = backupvault(
        "--json", "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    assert made.returncode == 0, made.stderr
    code = json.loads(made.stdout)["recovery_code"]
    home = tmp_path / "home"
    home.mkdir()
    done = backupvault(
        "backup", "restore", "--storage", str(storage), "--to=~/restored", "--recovery-code", "-",
        stdin=code + "\n", env={"HOME": str(home)}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (home / "restored").is_dir() and not (tmp_path / "~").exists()


@pytest.mark.parametrize("target", ["empty", "full"])
def test_a_restore_into_a_symbolic_link_asks_no_vault_and_says_what_to_give(
    tmp_path: Path, source: Path, target: str
) -> None:
    """A --to that is a link (a restore never goes through one) was refused only once the
    password had gone to the vault, a mistyped one spending a guess, and with no hint."""
    folder = tmp_path / target
    folder.mkdir()
    if target == "full":
        (folder / "mine.txt").write_text("keep me")
    dest = tmp_path / "link"
    dest.symlink_to(folder)
    done = _restore_past_a_vault_that_is_down(tmp_path, source, dest)
    assert done.returncode == 2, done.stderr
    error = last_json(done.stderr)
    assert error["error"] == f"restore destination {dest} is a symbolic link (to {folder})"
    assert "relay" not in done.stderr
    hint = str(error["hint"])
    if target == "empty":
        assert f"--to {folder}" in hint, hint  # the folder itself is a good --to
    else:
        assert "new folder" in hint and f"--to {folder}" not in hint, hint
    assert dest.is_symlink() and sorted(p.name for p in folder.iterdir()) == (
        [] if target == "empty" else ["mine.txt"]
    )


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_source_that_cannot_be_backed_up_is_named_before_the_vault_is_asked(
    tmp_path: Path, source: Path, kind: str
) -> None:
    """SOURCE a link or a fifo was refused only once the password had gone to the vault:
    a mistyped one spent a guess, and a first backup's right one registered a key for a
    backup that could never start."""
    given = tmp_path / "given"
    if kind == "link":
        given.symlink_to(source)
        said = f"backup source {given} is a symbolic link (to {source})"
    else:
        os.mkfifo(given)
        said = f"backup source {given} is not a file or folder"
    config = _client_toml(tmp_path / "client.toml")  # its relay does not exist
    done = backupvault(
        "--json", "--config", str(config), "backup", "create", str(given),
        "--storage", str(tmp_path / "s"), "--password-stdin", stdin="a mistyped password\n",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    error = last_json(done.stderr)
    assert str(error["error"]).startswith(said), error
    assert error["hint"] and "relay" not in done.stderr, error
    assert not (tmp_path / "s").exists()


_STORAGE_COMMANDS = [
    ["restore", "--to", "{tmp}/r"],
    ["list"],
    ["check"],
    ["diff", "ab", "cd"],
    ["forget", "--keep-last", "1"],
    ["prune"],
    ["repair"],
]


@pytest.mark.parametrize("command", _STORAGE_COMMANDS, ids=lambda c: c[0])
def test_a_mistyped_storage_is_named_before_the_vault_is_asked(
    tmp_path: Path, command: list[str]
) -> None:
    """A --storage that does not exist, or holds no backup, was found only once the vault
    had answered: a mistyped password spent a guess on it (and the commands that need a
    repository said "config is missing from URL")."""
    config = _client_toml(tmp_path / "client.toml")  # its relay does not exist
    args = [a.format(tmp=tmp_path) for a in command]
    (tmp_path / "empty").mkdir()
    for storage, said in (
        (tmp_path / "typo", f"storage not found: {tmp_path / 'typo'} does not exist"),
        (tmp_path / "empty", f"no {'backups' if args[0] == 'restore' else 'repository'} at"),
    ):
        done = backupvault(
            "--json", "--config", str(config), "backup", *args, "--storage", str(storage),
            "--password-stdin", stdin="a mistyped password\n",
        )  # fmt: skip
        if args[0] == "list" and storage.exists():
            assert done.returncode == 0 and "relay" not in done.stderr  # nothing to list
            continue
        assert done.returncode == (2 if storage.name == "typo" else 1), done.stderr
        error = last_json(done.stderr)
        assert str(error["error"]).startswith(said), error
        assert "--storage URL" in str(error["hint"]), error
    assert not (tmp_path / "r").exists() and not (tmp_path / "typo").exists()


def test_a_mistyped_snapshot_id_is_named_before_the_vault_is_asked(
    tmp_path: Path, source: Path
) -> None:
    """Snapshot objects are named by their ids: one that no name starts with was found
    only once the password had gone to the vault (a guess, if mistyped too)."""
    storage = tmp_path / "storage"
    made = backupvault(
        "backup", "create", str(source), "--storage", str(storage), "--recovery-code"
    )
    assert made.returncode == 0, made.stderr
    (snapshot,) = os.listdir(storage / "snapshots")
    config = _client_toml(tmp_path / "client.toml")  # its relay does not exist
    for args in (
        ["restore", "0bad", "--to", str(tmp_path / "r")],
        ["diff", snapshot[:6], "0bad"],
    ):
        done = backupvault(
            "--json", "--config", str(config), "backup", *args, "--storage", str(storage),
            "--password-stdin", stdin="a mistyped password\n",
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        error = last_json(done.stderr)
        assert error["error"] == f"no snapshot with id 0bad at {storage}", error
        assert "backup list` shows the snapshots" in str(error["hint"])
    assert not (tmp_path / "r").exists()


# ---- passwords ----------------------------------------------------------------------------


@pytest.mark.parametrize("typed", ["   \n", "\t\r\n", " "])
def test_a_whitespace_password_is_refused_before_anything_is_sent(
    tmp_path: Path, source: Path, typed: str
) -> None:
    config = _client_toml(tmp_path / "client.toml")  # its relay does not exist: never reached
    done = backupvault(
        "--config", str(config), "backup", "create", str(source), "--storage",
        str(tmp_path / "s"), "--password-stdin", stdin=typed,
    )  # fmt: skip
    assert done.returncode == 2
    assert "only whitespace" in done.stderr
    assert "relay" not in done.stderr


@pytest.mark.parametrize(
    ("json_errors", "stdin_errors"),
    [(False, "surrogateescape"), (True, "surrogateescape"), (False, "strict"), (True, "strict")],
)
def test_a_password_that_is_no_utf8_is_refused_without_a_trace_of_it(
    tmp_path: Path, source: Path, json_errors: bool, stdin_errors: str
) -> None:
    """A Latin-1 "huntér2" piped in: the codec's own message named the byte (e9) and its
    place in the password, on stderr and in --json, with a hint to report it as a bug.
    Read with surrogateescape (a C or UTF-8 locale) it failed at encoding; read strictly,
    at decoding."""
    config = _client_toml(tmp_path / "client.toml")  # its relay does not exist: never reached
    args = ["--config", str(config), "backup", "create", str(source), "--storage"]
    args += [str(tmp_path / "s"), "--password-stdin"]
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), *(["--json"] if json_errors else []), *args],
        input=b"hunt\xe9r2\n",
        env={**os.environ, "PYTHONIOENCODING": f"utf-8:{stdin_errors}"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    said = (done.stdout + done.stderr).decode(errors="replace").lower()
    assert "password" in said and "is not utf-8 text" in said, said
    for trace in ("e9", "\\udce9", "position", "hunt", "bug"):
        assert trace not in said, (trace, said)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("stdin_errors", ["surrogateescape", "strict"])
def test_a_recovery_code_that_is_no_utf8_is_refused_without_a_trace_of_it(
    tmp_path: Path, source: Path, stdin_errors: str
) -> None:
    """Review s39-E: read with surrogateescape (this machine's C.UTF-8 locale), the byte
    reached the code's parser, whose message quoted it: "'\\udce9' in group 17"."""
    storage = tmp_path / "s"
    made = backupvault("backup", "create", str(source), "--storage", str(storage),
                       "--recovery-code")  # fmt: skip
    assert made.returncode == 0, made.stderr
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "backup", "restore", "--storage", str(storage), "--to",
         str(tmp_path / "out"), "--recovery-code", "-"],
        input=b"9ef1-92\xe9\n",
        env={**os.environ, "PYTHONIOENCODING": f"utf-8:{stdin_errors}"},
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    said = (done.stdout + done.stderr).decode(errors="replace").lower()
    assert done.returncode == 2, said
    assert "the recovery code on stdin is not utf-8 text" in said
    for trace in ("e9", "udce9", "group", "9ef1"):
        assert trace not in said, (trace, said)
    assert not (tmp_path / "out").exists()


def test_a_lone_surrogate_is_no_password_and_is_not_shown() -> None:
    with pytest.raises(UsageError, match="not UTF-8 text") as raised:
        check_password("s3cr\udce9t\n")
    assert "udce9" not in raised.value.message and "4" not in raised.value.message
    with pytest.raises(InvalidInput) as refused:  # what an SDK caller gets
        password_bytes("s3cr\udce9t")
    assert "udce9" not in str(refused.value) and refused.value.__suppress_context__


def test_check_password_strips_only_the_line_ending() -> None:
    assert check_password("correct horse\r\n") == "correct horse"
    assert check_password("correct horse\r") == "correct horse"
    assert check_password(" spaced out \n") == " spaced out "
    for empty in ("", "\n", "\r\n"):
        with pytest.raises(UsageError, match="empty"):
            check_password(empty)


def test_a_password_longer_than_the_vault_takes_is_refused_without_its_length() -> None:
    longest = "é" * (oprf.MAX_INPUT_LEN // 2)  # two bytes each in UTF-8
    assert check_password(longest) == longest
    with pytest.raises(UsageError, match="nothing was sent") as raised:
        check_password(longest + "é")
    assert str(len(longest) + 1) not in raised.value.message
    assert str(2 * len(longest) + 2) not in raised.value.message
    # Measured in the form the vault takes (NFC), which U+0958 doubles: 3 bytes typed,
    # 6 taken. It was let through here and refused only by the OPRF.
    growing = "\u0958" * (oprf.MAX_INPUT_LEN // 3)
    with pytest.raises(UsageError, match="nothing was sent"):
        check_password(growing)


def test_weak_passwords_are_named() -> None:
    assert weakness("a" * (MIN_LENGTH - 1)) == f"shorter than {MIN_LENGTH} characters"
    assert weakness("Password123") == "one of the most common passwords"
    assert weakness("1234567890") == "one of the most common passwords"
    # Every reason: "password" was only "shorter than 10 characters" (walkthrough s47).
    assert weakness("password") == (
        f"shorter than {MIN_LENGTH} characters and one of the most common passwords"
    )
    assert weakness("violet kettle marching uphill") is None


def test_change_password_with_stdin_says_two_lines_are_expected(tmp_path: Path) -> None:
    config = _client_toml(tmp_path / "client.toml")
    done = backupvault(
        "--config", str(config), "vault", "change-password", "--password-stdin",
        stdin="only the old one\n",
    )  # fmt: skip
    assert done.returncode == 2
    assert "expects two lines: the current password, then the new one" in done.stderr
    assert "relay" not in done.stderr  # refused before any guess


# ---- local --------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", ["4", "0"])
def test_local_up_with_an_even_node_count_is_a_usage_error_that_makes_nothing(
    tmp_path: Path, nodes: str
) -> None:
    """It said "provisioning 4 nodes", made DIR, and only then failed (exit 1)."""
    root = tmp_path / "bv"
    done = backupvault("--json", "local", "up", "--dir", str(root), "--nodes", nodes)
    assert done.returncode == 2, done.stderr
    error = last_json(done.stderr)
    assert error["error"] == "a fleet has an odd number of nodes (1, 3, 5, ...)"
    assert "--nodes" in str(error["hint"])
    assert not root.exists()


def test_local_up_in_a_folder_whose_path_has_a_hash_is_a_usage_error_that_makes_nothing(
    tmp_path: Path,
) -> None:
    """SoftHSM2 reads a '#' in softhsm2.conf as the start of a comment, so the token
    folder of `--dir "backups #1"` was cut short: provisioning stopped half-way (exit 1)
    with "Failed to enumerate object store in .../backups", the keys made so far left."""
    root = tmp_path / "backups #1"
    done = backupvault("--json", "local", "up", "--dir", str(root), "--nodes", "1")
    assert done.returncode == 2, done.stderr
    error = last_json(done.stderr)
    assert str(error["error"]).startswith(f"{root} cannot hold a local deployment: SoftHSM2")
    assert "a folder whose path has no '#'" in str(error["hint"])
    assert not root.exists()


def test_a_local_deployment_that_is_down_is_named_with_the_command_that_starts_it(
    tmp_path: Path,
) -> None:
    """After `local down` or a restart, every command said "cannot reach the relay ...
    check that the relay runs": the config `local up` wrote now says how to start it."""
    deployment = tmp_path / "bv"
    deployment.mkdir()
    for name in ("relay.toml", "fleet.toml"):  # what `local up` keeps beside client.toml
        (deployment / name).write_text("")
    config = _client_toml(deployment / "client.toml")  # its relay does not answer
    done = backupvault("--json", "--config", str(config), "vault", "status")
    assert done.returncode == 5, done.stderr
    error = last_json(done.stderr)
    assert str(error["error"]).startswith("cannot reach the relay at http://127.0.0.1:9")
    assert f"`backupvault local up --dir {deployment}` starts it again" in str(error["hint"])
    assert "no guess was used" in str(error["hint"])
    # A config elsewhere (a copy on another device) keeps the general hint.
    copy = _client_toml(tmp_path / "client.toml")
    elsewhere = last_json(backupvault("--json", "--config", str(copy), "vault", "status").stderr)
    assert "check that the relay runs" in str(elsewhere["hint"])


def test_a_relay_that_asks_to_wait_long_is_unavailable_exit_5(tmp_path: Path) -> None:
    """A 429 whose Retry-After is longer than the client waits ended with exit 1, "any
    other error", and "retry later": a script that retries on 5 (the relay unavailable)
    gave up on what is a relay asking to come back later."""
    import http.server
    import threading

    class Busy(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.send_response(429)
            self.send_header("Retry-After", "3600")
            self.send_header("Content-Type", "application/json")
            body = b'{"error": "rate_limited"}'
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = _client_toml(
            tmp_path / "client.toml", relay_url=f"http://127.0.0.1:{server.server_port}"
        )
        done = backupvault("--json", "--config", str(config), "vault", "status")
    finally:
        server.shutdown()
    assert done.returncode == 5, done.stderr
    error = last_json(done.stderr)
    assert "3600 s" in str(error["error"]), error
    assert "run the command again" in str(error["hint"]), error


@pytest.mark.parametrize("hint", [None, EVALUATION_UNANSWERED_HINT])
def test_local_nodes_that_are_down_are_named_with_the_command_that_starts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hint: str | None
) -> None:
    """Two of a local deployment's three nodes killed: "too few vault nodes answered; try
    again later", which never helps there. The hint keeps what it said about guesses."""
    deployment = tmp_path / "bv"
    deployment.mkdir()
    for name in ("relay.toml", "fleet.toml"):
        (deployment / name).write_text("")
    monkeypatch.setattr(cli_main, "_run_config", deployment / "client.toml")
    err = cli_main._with_local_hint(FleetUnavailable("need 2 of 3 nodes, 1 answered", hint=hint))
    assert err.exit_code == 5 and err.hint is not None
    assert err.hint.startswith(hint or "too few vault nodes answered")
    assert f"`backupvault local status --dir {deployment}` shows which nodes" in err.hint
    assert f"`backupvault local up --dir {deployment}` starts them again" in err.hint
    # A config elsewhere keeps the hint it had.
    monkeypatch.setattr(cli_main, "_run_config", tmp_path / "client.toml")
    other = cli_main._with_local_hint(FleetUnavailable("need 2 of 3 nodes", hint=hint))
    assert other.hint == (hint or "too few vault nodes answered; try again later")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "goes_on"), [("n\n", False), ("y\n", True)])
def test_a_question_is_asked_on_stderr_not_into_the_result(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], answer: str, goes_on: bool
) -> None:
    """`backupvault --json vault delete > out.json` on a terminal wrote "Delete the key
    from the vault? [y/N]:" into out.json: the user saw nothing and the command waited."""
    monkeypatch.setattr(sys, "stdin", _Terminal(answer))
    if goes_on:
        cli_main._confirm("Delete the key from the vault?", yes=False)
    else:
        with pytest.raises(click.exceptions.Abort):
            cli_main._confirm("Delete the key from the vault?", yes=False)
    out, err = capsys.readouterr()
    assert out == ""
    assert "Delete the key from the vault? [y/N]" in err


def test_local_up_into_a_folder_of_other_files_changes_nothing(tmp_path: Path) -> None:
    """`local up --dir ~` (or ~/Documents) made the folder mode 0700 and provisioned a
    deployment among the user's files."""
    folder = tmp_path / "Documents"
    folder.mkdir(mode=0o755)
    (folder / "report.odt").write_text("mine\n")
    folder.chmod(0o755)
    done = backupvault("--json", "local", "up", "--dir", str(folder), "--nodes", "1")
    assert done.returncode == 2, done.stderr
    error = last_json(done.stderr)
    assert f"{folder} holds other files and no local deployment" in str(error["error"])
    assert "a new folder" in str(error["hint"])
    assert [p.name for p in folder.iterdir()] == ["report.odt"]
    assert folder.stat().st_mode & 0o777 == 0o755


def test_local_down_where_nothing_runs_says_so(tmp_path: Path) -> None:
    done = backupvault("local", "down", "--dir", str(tmp_path))
    assert done.returncode == 0
    assert f"nothing is running in {tmp_path}" in done.stdout
    assert "stopped" not in done.stdout
    assert (
        last_json(backupvault("--json", "local", "down", "--dir", str(tmp_path)).stdout)["stopped"]
        == []
    )


def test_local_status_where_there_is_no_deployment_says_so(tmp_path: Path) -> None:
    for command in ("status", "rotate"):
        done = backupvault("--json", "local", command, "--dir", str(tmp_path / "none"))
        assert done.returncode == 2
        error = last_json(done.stderr)
        assert error["error"] == f"there is no local deployment in {tmp_path / 'none'}"
        assert f"`backupvault local up --dir {tmp_path / 'none'}`" in str(error["hint"])


# ---- wording ------------------------------------------------------------------------------

_DIGIT_COUNT = re.compile(r"\b\d+[- ](?:hex(?:adecimal)? )?(?:digit|character|hex)", re.I)


def test_the_recovery_code_is_described_the_same_way_everywhere() -> None:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts += sorted((ROOT / "src" / "backupvault").rglob("*.py"))
    described = 0
    for path in texts:
        text = " ".join(path.read_text().split())
        for match in _DIGIT_COUNT.finditer(text):
            before = text[max(0, match.start() - 160) : match.start()].lower()
            if "recovery code" in before or "root key" in before:
                where = f"{path}: ...{text[match.start() - 60 : match.end() + 40]}..."
                assert text.startswith(recovery.FORMAT, match.start()), where
                described += 1
    assert described >= 4  # README, crypto.md, recovery.py, cli.md
    with pytest.raises(recovery.RecoveryCodeError, match=re.escape(recovery.FORMAT)):
        recovery.decode("1234")


@pytest.mark.parametrize(
    ("make", "fields", "why", "hint"),
    [
        (
            "ota",
            {"node_public_keys": ["0020" + "11" * 32], "node_signing_keys": [_SIGNING_KEY]},
            "field 'node_public_keys' pins the fleet's keys, but this config has trust = \"ota\"",
            "an ota client takes the fleet's keys from the witness-logged bundle",
        ),
        ("ota", {"epoch": 2}, "field 'epoch' pins the fleet's keys", "remove epoch"),
        (
            "pinned",
            {"operator_public_key": "55" * 32, "witness_url": "http://127.0.0.1:9"},
            "field 'operator_public_key' is for over-the-air fleet keys, but this config"
            ' has trust = "pinned"',
            'add trust = "ota"',
        ),
        ("pinned", {"max_bundle_age": 600}, "field 'max_bundle_age' is for over-the-air", ""),
    ],
    ids=["ota with node keys", "ota with an epoch", "pinned with an operator key", "pinned age"],
)
def test_a_config_mixing_pinned_and_ota_fields_is_refused(
    tmp_path: Path, make: str, fields: dict[str, object], why: str, hint: str
) -> None:
    """A config with trust = "ota" and node keys was taken as OTA, its pinned keys
    ignored: whoever wrote them thought the client talked only to those nodes. A pinned
    config (no `trust`) with the operator's and witness's keys ignored those."""
    write = _ota_toml if make == "ota" else _client_toml
    config = write(tmp_path / "client.toml", **fields)
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1, done.stderr
    assert f"config file {config}: {why}" in done.stderr
    assert hint in done.stderr.split("hint:")[1]


@pytest.mark.parametrize("make", ["pinned", "ota"])
@pytest.mark.parametrize("fleet_id", ["", "ab" * 65])
def test_a_fleet_id_no_record_can_have_is_named(tmp_path: Path, make: str, fleet_id: str) -> None:
    """A fleet id is 1 to 64 bytes (docs/transparency.md): an empty one was taken, and an
    OTA client then refused every bundle as "for fleet X, expected " (nothing), blaming the
    relay; a pinned one sealed requests to a fleet no node is in."""
    write = _ota_toml if make == "ota" else _client_toml
    config = write(tmp_path / "client.toml", fleet_id=fleet_id)
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1, done.stderr
    assert f"config file {config}: field 'fleet_id' is malformed: 1 to 64 bytes" in done.stderr


@pytest.mark.parametrize("measurement", ["", "ab" * 31, "ab" * 33])
def test_an_allowed_measurement_of_the_wrong_length_is_named(
    tmp_path: Path, measurement: str
) -> None:
    """A measurement is 32 bytes: one digit pair short (a copy cut off) matched no fleet,
    and every bundle was refused as "not an allowed one" (exit 7), blaming the fleet."""
    config = _ota_toml(tmp_path / "client.toml", allowed_measurements=[measurement])
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1, done.stderr
    assert "field 'allowed_measurements' is malformed" in done.stderr
    assert "32 bytes (64 hex digits)" in done.stderr


def test_a_small_order_operator_key_in_an_ota_config_is_named(tmp_path: Path) -> None:
    """No record can carry a small-order operator key (the record parser refuses it), so a
    config naming one refused every bundle as signed by "another operator key" (exit 7),
    blaming the relay. It is the config's error (exit 1), naming the field."""
    config = _ota_toml(tmp_path / "client.toml", operator_public_key="01" + "00" * 31)
    done = backupvault("--config", str(config), "vault", "status")
    assert done.returncode == 1, done.stderr
    assert "field 'operator_public_key' is malformed" in done.stderr
    assert "prime-order" in done.stderr


def test_a_source_that_does_not_exist_is_told_to_check_the_path(tmp_path: Path) -> None:
    """Review s40-R2: a mistyped source got click's message and a hint to read the
    options, which do not help."""
    made = backupvault("backup", "create", str(tmp_path / "nonexist"), "--storage", str(tmp_path))
    assert made.returncode == 2
    assert "does not exist" in made.stderr
    assert "hint: check the path" in made.stderr and "--help" not in made.stderr


def test_an_unquoted_exclude_pattern_is_said_to_want_quotes(tmp_path: Path) -> None:
    """`--exclude *.tmp` unquoted: the shell gives the second match as an extra argument,
    which "one SOURCE a backup" alone would misread (review s43)."""
    done = backupvault("--json", "backup", "create", str(tmp_path), "--exclude", "a.tmp", "b.tmp")
    assert done.returncode == 2
    assert "quote an --exclude pattern" in str(last_json(done.stderr)["hint"])


def test_local_up_weighs_nodes_against_the_current_fleet_not_every_epoch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A deployment rotated from 3 nodes to 5 runs both sets until `local retire`: `local
    up --nodes 5` was told the deployment "has 8 nodes" (review of session 48's diff)."""
    import backupvault.deploy.local as local
    from backupvault.cli import main as cli_main

    names = [f"node{i}" for i in range(3)] + [f"e2-node{i}" for i in range(5)]
    names += ["witness", "witness2", "relay"]
    status = {n: {"pid": 1, "running": True, "url": "http://x", "healthy": True} for n in names}

    class Rotated:
        def __init__(self, root: Path) -> None:
            self.root = root

        def provisioned(self) -> bool:
            return True

        def renew_client_tokens(self) -> list[str]:
            return []

        def running(self) -> list[str]:
            return list(status)

        def all_running(self) -> bool:
            return True

        def up(self, nodes: int) -> None:
            pass

        def status(self) -> dict[str, dict[str, object]]:
            return status

        def current_epoch(self) -> int:
            return 2

        def node_count(self, epoch: int | None = None) -> int:
            return 3 if epoch == 1 else 5

    monkeypatch.setattr(local, "LocalDeployment", Rotated)
    for nodes, warned in (("5", False), ("3", True)):
        with pytest.raises(SystemExit) as done:
            cli_main.main(["local", "up", "--dir", str(tmp_path), "--nodes", nodes])
        assert not done.value.code
        err = capsys.readouterr().err
        assert ("is for a new deployment" in err) is warned, err
        assert "has 8 nodes" not in err
