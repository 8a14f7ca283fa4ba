"""A newcomer's first day against a real local deployment (1 node, the witness and the
relay, started by the console script itself): each common mistake gets a clear answer."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backupvault.node.config import write_toml

CONSOLE_SCRIPT = Path(sys.executable).parent / "backupvault"


def bv(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BACKUPVAULT_CONFIG"}
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def in_terminal(args: list[str], answers: list[tuple[str, str]]) -> tuple[int, str]:
    """Run the console script on a pseudo-terminal, typing each answer when its prompt
    shows; returns the exit code and everything the terminal showed."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), *args], stdin=secondary, stdout=secondary, stderr=secondary
    )
    os.close(secondary)
    shown, cursor, pending = b"", 0, list(answers)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            if pending and pending[0][0].encode() in shown[cursor:]:
                cursor = len(shown)
                os.write(primary, pending.pop(0)[1].encode() + b"\n")
            if not ready and process.poll() is not None:
                break
        return process.wait(timeout=30), shown.decode(errors="replace")
    finally:
        os.close(primary)
        if process.poll() is None:
            process.kill()
            process.wait()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("newcomer") / "bv"
    try:
        first = bv("local", "up", "--dir", str(root), "--nodes", "1")
        assert first.returncode == 0, first.stderr
        assert "local deployment up" in first.stdout
        yield root
    finally:
        bv("local", "down", "--dir", str(root))


def _config_for(deployment: Path, tmp_path: Path, entry: str) -> str:
    """The deployment's client config, for another entry of the same account."""
    data = tomllib.loads((deployment / "client.toml").read_text())
    data["entry"] = entry
    path = tmp_path / f"{entry}.toml"
    write_toml(path, data)
    return str(path)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    folder.mkdir()
    (folder / "chat.txt").write_text("see you at 7\n")
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_second_local_up_says_already_running(deployment: Path) -> None:
    again = bv("local", "up", "--dir", str(deployment), "--nodes", "1")
    assert again.returncode == 0
    assert "local deployment already running" in again.stdout
    assert "--nodes" not in again.stderr  # the size it has
    # Another size is said to be for a new deployment, not passed over (review s48).
    other = bv("local", "up", "--dir", str(deployment), "--nodes", "3")
    assert other.returncode == 0 and "local deployment already running: 1 node," in other.stdout
    assert "--nodes 3 is for a new deployment" in other.stderr
    assert "has 1 node (" in other.stderr
    as_json = json.loads(bv("local", "up", "--dir", str(deployment), "--json").stdout)
    assert as_json["already_running"] is True and as_json["started_again"] == []
    # One process gone: `up` starts it again and names it (it said only "up").
    relay = as_json["processes"]["relay"]["pid"]
    os.kill(relay, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(relay) and time.monotonic() < deadline:
        time.sleep(0.05)
    again = bv("local", "up", "--dir", str(deployment))
    assert again.returncode == 0, again.stderr
    assert "local deployment up (started again: relay)" in again.stdout


def test_node_serve_logs_when_it_is_ready(deployment: Path) -> None:
    log = (deployment / "logs" / "node0.log").read_text()
    assert "node 0 listening on 127.0.0.1:" in log
    assert "node 0 ready: caught up with its peers, serving requests" in log


def test_a_weak_password_is_warned_about_and_a_trailing_cr_is_not_part_of_it(
    deployment: Path, source: Path, tmp_path: Path
) -> None:
    config = str(deployment / "client.toml")
    storage = str(tmp_path / "storage")
    created = bv(
        "--config", config, "backup", "create", str(source), "--storage", storage,
        "--password-stdin", stdin="hunter2\r\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "warning: this password is weak (shorter than 10 characters)" in created.stderr
    assert "a new key was registered" in created.stderr
    restored = bv(
        "--config", config, "backup", "restore", "--storage", storage, "--to",
        str(tmp_path / "r"), "--password-stdin", stdin="hunter2\n",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "r" / "chat.txt").read_text() == "see you at 7\n"

    # change-password in a terminal: a wrong current password fails before the new one
    # is asked for
    code, shown = in_terminal(
        ["--config", config, "vault", "change-password"], [("Current password", "hunter3")]
    )
    assert code == 3, shown
    assert "wrong password" in shown and "New password" not in shown

    # A weak new password is said so before it is confirmed, and another can be given
    # instead (said after the change, it left no choice: user review s42).
    code, shown = in_terminal(
        ["--config", config, "vault", "change-password"],
        [
            ("Current password", "hunter2"),
            ("New password", "abc"),
            ("Use it anyway?", "n"),
            ("New password", "password123"),
            ("Use it anyway?", "y"),
            # A slip in the repetition asks for both again (it threw the whole command
            # away, the current password typed again: new-user walkthrough s47).
            ("Repeat the new password", "password124"),
            ("New password", "password123"),
            ("Use it anyway?", "y"),
            ("Repeat the new password", "password123"),
        ],
    )
    assert code == 0, shown
    assert "the two passwords differ: type the new password again" in shown
    assert "shorter than 10 characters" in shown
    assert "one of the most common passwords" in shown and "password changed" in shown
    assert shown.index("one of the most common passwords") < shown.index("password changed")

    changed = bv(
        "--config", config, "vault", "change-password", "--password-stdin",
        stdin="password123\nviolet kettle marching uphill\n",
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert "weak" not in changed.stderr
    status = json.loads(bv("--config", config, "--json", "vault", "status").stdout)
    assert status["guesses_remaining"] == status["guess_limit"]  # the right one reset it
    again = bv(
        "--config", config, "backup", "restore", "--storage", storage, "--to",
        str(tmp_path / "r2"), "--password-stdin", stdin="violet kettle marching uphill\n",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr

    # A wrong guess is reported at the next success, under -q (stderr) and --json (the
    # object) too: a cron job or a script still learns someone may be guessing.
    def restore(*flags: str, to: str, password: str) -> subprocess.CompletedProcess[str]:
        return bv(
            *flags, "--config", config, "backup", "restore", "--storage", storage, "--to",
            str(tmp_path / to), "--password-stdin", stdin=password + "\n",
        )  # fmt: skip

    warning = "1 other attempt was counted since your last successful recovery"
    for flags, to in ((("-q",), "r3"), (("--json", "-q"), "r4")):
        assert restore(*flags, to=f"{to}-wrong", password="violet kettle marching").returncode == 3
        done = restore(*flags, to=to, password="violet kettle marching uphill")
        assert done.returncode == 0, done.stderr
        if "--json" in flags:
            assert done.stderr == ""
            assert [w for w in json.loads(done.stdout)["warnings"] if warning in w]
        else:
            assert done.stdout == "" and f"warning: {warning}" in done.stderr


def test_an_entry_without_a_key_does_not_send_a_restore_to_make_a_new_one(
    deployment: Path, source: Path, tmp_path: Path
) -> None:
    """Restoring through a config whose entry holds no key said "make a backup with
    --password-stdin first, which registers one": a new key that never opens the backups
    there (over a repository, `backup create` even refuses to make one)."""

    storage = str(tmp_path / "storage")
    phrase = "a long pass phrase\n"
    made_them = _config_for(deployment, tmp_path, "made-them")
    created = bv("--config", made_them, "backup", "create", str(source),
                 "--storage", storage, "--password-stdin", stdin=phrase)  # fmt: skip
    assert created.returncode == 0, created.stderr
    other = _config_for(deployment, tmp_path, "not-this-one")
    account = tomllib.loads((deployment / "client.toml").read_text())["account"]
    for command in (["restore", "--to", str(tmp_path / "r")], ["list"]):
        done = bv("--json", "--config", other, "backup", *command, "--storage", storage,
                  "--password-stdin", stdin=phrase)  # fmt: skip
        assert done.returncode == 1, done.stderr
        error = json.loads(done.stderr.strip().splitlines()[-1])
        assert error["error"].startswith(
            f"the vault holds no key for account {account!r}, entry 'not-this-one'"
        )
        assert "which registers one" not in error["hint"]
        assert "check that --config is the client config of the account" in error["hint"]
        assert "would not open these" in error["hint"]
        # Password backups open with the code `vault recovery-code` printed too: the hint
        # named only the code of a --recovery-code backup.
        assert "the code `backupvault vault recovery-code` printed" in error["hint"]
    assert not (tmp_path / "r").exists()
    # Nor does deleting a key that is not there send anyone to make one.
    deleted = bv("--json", "--config", other, "vault", "delete", "--yes", "--password-stdin",
                 stdin=phrase)  # fmt: skip
    assert deleted.returncode == 1, deleted.stderr
    error = json.loads(deleted.stderr.strip().splitlines()[-1])
    assert error["error"].endswith("entry 'not-this-one': there is nothing to delete")
    assert "registers one" not in error["hint"] and "check --config" in error["hint"]


def test_the_password_is_asked_twice_only_for_a_new_key(
    deployment: Path, source: Path, tmp_path: Path
) -> None:
    """Every `backup create` asked for the password twice, also when the vault held a key
    (which checks the password itself); the docs said "twice when it is new"."""

    config = _config_for(deployment, tmp_path, "asked-twice")
    create = ["--config", config, "backup", "create", str(source), "--storage", str(tmp_path / "s")]
    phrase = "a long enough pass phrase"
    code, shown = in_terminal(create, [("Password", phrase), ("Repeat the password", phrase)])
    assert code == 0 and "a new key was registered" in shown, shown
    code, shown = in_terminal(create, [("Password", phrase)])
    assert code == 0 and "Repeat" not in shown, shown

    mistyped_config = _config_for(deployment, tmp_path, "mistyped")
    mistyped = ["--config", mistyped_config, "backup", "create", str(source),
                "--storage", str(tmp_path / "m")]  # fmt: skip
    slips = [("Repeat the password", phrase + "x"), ("Password", phrase)] * 2
    code, shown = in_terminal(
        mistyped, [("Password", phrase), *slips, ("Repeat the password", phrase + "x")]
    )
    assert code == 2 and "differed 3 times: nothing was sent with the new password" in shown
    status = json.loads(bv("--config", mistyped_config, "--json", "vault", "status").stdout)
    assert status["status"] == "empty"
    # A weak one is said so before it is registered, and can be given up (user review s42).
    code, shown = in_terminal(mistyped, [("Password", "hunter2"), ("Use it anyway?", "n")])
    assert code == 2 and "nothing was registered: the password was weak" in shown, shown
    assert "Repeat" not in shown
    status = json.loads(bv("--config", mistyped_config, "--json", "vault", "status").stdout)
    assert status["status"] == "empty"
    # One slip, then the same twice: the key is registered behind the password typed last.
    other = "another long pass phrase"
    code, shown = in_terminal(
        mistyped,
        [("Password", phrase), ("Repeat the password", phrase + "x"), ("Password", other),
         ("Repeat the password", other)],
    )  # fmt: skip
    assert code == 0 and "a new key was registered" in shown, shown
    listed = bv("--config", mistyped_config, "backup", "list", "--storage", str(tmp_path / "m"),
                "--password-stdin", stdin=other + "\n")  # fmt: skip
    assert listed.returncode == 0, listed.stderr


def test_a_confirmation_without_a_terminal_says_pass_yes(
    deployment: Path, source: Path, tmp_path: Path
) -> None:
    config = _config_for(deployment, tmp_path, "confirm-me")
    made = bv("--config", config, "backup", "create", str(source), "--storage",
              str(tmp_path / "s"), "--password-stdin", stdin="a long pass phrase\n")  # fmt: skip
    assert made.returncode == 0, made.stderr
    done = bv("--config", config, "--json", "vault", "delete", stdin="y\n")
    assert done.returncode == 2
    error = json.loads(done.stderr.strip().splitlines()[-1])
    assert "stdin is not a terminal" in error["error"]
    assert "pass --yes" in error["hint"]
    assert "aborted" not in done.stderr
    status = json.loads(bv("--config", config, "--json", "vault", "status").stdout)
    assert status["status"] == "live"  # nothing was deleted


@pytest.mark.parametrize("name", ["client.toml", "client-ota.toml"])
def test_relay_down_names_the_relay_and_its_url(
    deployment: Path, tmp_path: Path, name: str
) -> None:
    data = tomllib.loads((deployment / name).read_text())
    url = f"http://127.0.0.1:{closed_port()}"
    data["relay_url"] = url
    write_toml(tmp_path / name, data)
    done = bv("--config", str(tmp_path / name), "vault", "status")
    assert done.returncode == 5, done.stderr
    assert f"cannot reach the relay at {url}" in done.stderr
    assert "check that the relay runs and that relay_url in your config is right" in done.stderr
    assert "majority" not in done.stderr


def test_fleet_deploy_with_the_witness_unreachable_changes_nothing(
    deployment: Path, tmp_path: Path
) -> None:
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_bytes((deployment / "fleet.toml").read_bytes())
    before = fleet_file.read_bytes()
    args = ["fleet", "deploy", "--fleet-file", str(fleet_file)]
    args += ["--operator-key", str(deployment / "operator.key")]
    done = bv(*args, "--witness", f"http://127.0.0.1:{closed_port()}")
    assert done.returncode == 1
    assert "cannot reach the witness" in done.stderr
    # No deployment.bin; the signed record waits to be sent again by the next deploy.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deployment.pending.bin", "fleet.toml"]
    assert fleet_file.read_bytes() == before  # the epoch was not bumped
    assert tomllib.loads(before.decode())["epoch"] == 1


def test_local_down_twice(deployment: Path) -> None:
    # Runs last in this module: stops the deployment (the fixture's own `down` then finds
    # nothing to stop).
    first = bv("local", "down", "--dir", str(deployment))
    assert first.returncode == 0
    assert first.stdout.startswith("local deployment stopped (")
    assert "relay" in first.stdout and "node0" in first.stdout
    second = bv("local", "down", "--dir", str(deployment))
    assert second.returncode == 0
    assert "nothing is running in" in second.stdout and "already down" in second.stdout


def test_a_local_up_of_another_versions_record_stops_what_it_started_and_upgrade_fixes_it(
    deployment: Path, source: Path, tmp_path: Path
) -> None:
    # After test_local_down_twice: the deployment is down. Its record now names another
    # measurement, as after an upgrade of backupvault: the node refuses to start, and the
    # witnesses and the relay this `up` started are stopped again. `local upgrade`
    # deploys a record for the code installed now; the key and the backups stay.
    def entry_config(name: str) -> str:
        data = tomllib.loads((deployment / "client.toml").read_text())
        data["entry"] = "upgrade"
        write_toml(tmp_path / name, data)
        return str(tmp_path / name)

    assert bv("local", "up", "--dir", str(deployment)).returncode == 0
    before = entry_config("before.toml")
    storage = str(tmp_path / "storage")
    made = bv("--config", before, "backup", "create", str(source), "--storage", storage,
              "--password-stdin", stdin="a pass phrase to keep\n")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert bv("local", "down", "--dir", str(deployment)).returncode == 0

    fleet_file = deployment / "fleet.toml"
    deployed = tomllib.loads(fleet_file.read_text())
    fleet_file.write_text(fleet_file.read_text().replace(deployed["measurement"], "ab" * 32))
    failed = bv("local", "up", "--dir", str(deployment))
    assert failed.returncode == 1
    assert "node 0 refuses to join fleet" in failed.stderr
    assert "made by another version of backupvault" in failed.stderr
    assert "local upgrade --dir" in failed.stderr
    assert "Traceback" not in failed.stderr
    status = json.loads(bv("local", "status", "--dir", str(deployment), "--json").stdout)
    processes = status["processes"]
    assert {"node0", "witness", "relay"} <= set(processes)
    running = {name for name, info in processes.items() if info["running"]}
    assert running == set(), running

    upgraded = bv("local", "upgrade", "--dir", str(deployment), "--json")
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout)["epoch"] == deployed["epoch"] + 1
    assert json.loads(upgraded.stdout)["upgraded"] is True
    again = bv("local", "upgrade", "--dir", str(deployment))
    assert again.returncode == 0, again.stderr
    assert "nothing to do: epoch" in again.stdout
    assert tomllib.loads(fleet_file.read_text())["epoch"] == deployed["epoch"] + 1
    now = tomllib.loads(fleet_file.read_text())
    assert (now["epoch"], now["measurement"]) == (deployed["epoch"] + 1, deployed["measurement"])
    after = entry_config("after.toml")
    for config, to in ((before, "r1"), (after, "r2")):  # the old pinned config still recovers
        restored = bv("--config", config, "backup", "restore", "--storage", storage,
                      "--to", str(tmp_path / to), "--password-stdin",
                      stdin="a pass phrase to keep\n")  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        assert (tmp_path / to / "chat.txt").read_text() == "see you at 7\n"
    changed = bv("--config", after, "vault", "change-password", "--password-stdin",
                 stdin="a pass phrase to keep\nthe next pass phrase\n")  # fmt: skip
    assert changed.returncode == 0, changed.stderr  # a new version, dealt for the new epoch
    ota = bv("--config", str(deployment / "client-ota.toml"), "--json", "vault", "status")
    assert ota.returncode == 0, ota.stderr  # the relay's bundle of the new epoch verifies

    # A rotation after the upgrade names the epochs the relay routes (the records'), not
    # the node sets' folder numbers: it said "the relay still routes epochs 1" here, and
    # `local status` gave node0 epoch 1, while its record (and the route) is epoch 2.
    rotated = bv("local", "rotate", "--dir", str(deployment), "--json")
    assert rotated.returncode == 0, rotated.stderr
    upgraded_epoch = deployed["epoch"] + 1
    assert json.loads(rotated.stdout)["previous_epochs"] == [upgraded_epoch]
    relay = tomllib.loads((deployment / "client.toml").read_text())["relay_url"]
    assert httpx.get(f"{relay}/v1/fleet/epochs").json()["previous"] == [upgraded_epoch]
    status = json.loads(bv("local", "status", "--dir", str(deployment), "--json").stdout)
    epochs = {name: info.get("epoch") for name, info in status["processes"].items()}
    assert epochs["node0"] == upgraded_epoch
    assert epochs[f"e{upgraded_epoch + 1}-node0"] == upgraded_epoch + 1


def test_a_rotated_deployment_under_another_version_is_not_sent_to_an_upgrade_that_refuses(
    deployment: Path,
) -> None:
    # After a rotation, another version of backupvault cannot start the older node set
    # (its record names the code that made it). `local up` said to run `local upgrade`,
    # which refuses a rotated deployment and said to make a new one: a dead end, with no
    # word that the keys stay behind. Both now say what reaches the keys and what does not.
    from backupvault.deploy.local import LocalDeployment

    assert bv("local", "up", "--dir", str(deployment)).returncode == 0
    if len(LocalDeployment(deployment).epochs()) == 1:  # run alone: rotate here
        assert bv("local", "rotate", "--dir", str(deployment)).returncode == 0
    assert bv("local", "down", "--dir", str(deployment)).returncode == 0
    fleet_file = deployment / "fleet.toml"  # the oldest node set's
    deployed = fleet_file.read_text()
    measurement = tomllib.loads(deployed)["measurement"]
    fleet_file.write_text(deployed.replace(measurement, "cd" * 32))
    failed = bv("local", "up", "--dir", str(deployment))
    assert failed.returncode == 1
    assert "refuses to join fleet" in failed.stderr
    assert "local upgrade --dir" not in failed.stderr
    assert "was rotated" in failed.stderr and "reinstall the version" in failed.stderr
    refused = bv("local", "upgrade", "--dir", str(deployment))
    assert refused.returncode == 1
    assert "reinstall the version" in refused.stderr
    assert "holds none of this one's keys" in refused.stderr
    assert "vault recovery-code" in refused.stderr
    assert "Traceback" not in failed.stderr + refused.stderr
    # As the hint says: the version that made the records starts it again.
    fleet_file.write_text(deployed)
    assert bv("local", "up", "--dir", str(deployment)).returncode == 0


@pytest.mark.parametrize("code_option", [["--recovery-code", "-"], ["--recovery-code"]])
def test_a_recovery_code_is_asked_for_on_a_terminal(
    code_option: list[str], source: Path, tmp_path: Path
) -> None:
    # README's `backup restore ... --recovery-code -`, typed in a terminal, waited on stdin
    # without a word (it looked hung), and `--recovery-code` alone, as `backup create`
    # takes it, was "requires an argument". Both now ask, as a password is asked.
    storage = str(tmp_path / "offline")
    made = bv("--json", "backup", "create", str(source), "--storage", storage,
              "--recovery-code")  # fmt: skip
    assert made.returncode == 0, made.stderr
    code = json.loads(made.stdout)["recovery_code"]
    to = tmp_path / "restored"
    args = ["backup", "restore", "--storage", storage, "--to", str(to), *code_option]
    status, shown = in_terminal(args, [("Recovery code", code)])
    assert status == 0, shown
    assert "Recovery code" in shown and code not in shown  # asked, and not echoed
    assert (to / "chat.txt").read_text() == "see you at 7\n"
