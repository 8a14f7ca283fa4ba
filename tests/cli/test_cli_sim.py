"""`backupvault sim` passes the simulation's options on, `--leaderless`, `--hostile`,
`--eager-wait` and `--calm-network` included."""

from __future__ import annotations

import ast
import subprocess
import sys


def sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupvault", "sim", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def stats(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.strip().startswith("stats:"))
    found: dict[str, int] = ast.literal_eval(line.split("stats:", 1)[1].strip())
    return found


def test_help_lists_the_simulation_options() -> None:
    done = sim("--help")
    assert done.returncode == 0
    for option in ("--seeds", "--seed", "--shrink", "--workers", "--leaderless", "--hostile"):
        assert option in done.stdout


def test_leaderless_runs_without_the_leader_path() -> None:
    with_leader = sim("--seed", "2")  # a quick seed (5 takes ~15 s for both runs)
    leaderless = sim("--seed", "2", "--leaderless")
    assert with_leader.returncode == 0 and leaderless.returncode == 0, leaderless.stderr
    assert stats(with_leader.stdout)["one_round"] > 0
    assert stats(leaderless.stdout)["one_round"] == 0
    assert stats(leaderless.stdout)["forwarded"] == 0


def test_an_unknown_option_is_a_usage_error() -> None:
    done = sim("--no-such-option")
    assert done.returncode == 2
    assert "no such option" in done.stderr.lower()


def test_hostile_nodes_run_in_the_same_world() -> None:
    done = sim("--seed", "2", "--nodes", "5", "--hostile", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert stats(done.stdout)["partials"] > 0
    refused = sim("--seed", "2", "--hostile", "2")  # 2 of a 3-node fleet is a majority
    assert refused.returncode == 2
    assert "fewer than a majority" in refused.stderr


def test_eager_waits_run_on_the_leader_path_only() -> None:
    done = sim("--seed", "2", "--eager-wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert stats(done.stdout)["one_round"] > 0
    refused = sim("--seed", "2", "--eager-wait", "--leaderless")
    assert refused.returncode == 2
    assert "--leaderless has none" in refused.stderr


def test_a_calm_network_drops_nothing_and_holds_every_operation_to_completing() -> None:
    done = sim("--seed", "2", "--calm-network")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "network drop=0.0 dup=0.0 long-delay=0.0" in done.stdout
    assert stats(done.stdout)["dropped"] == 0
    assert stats(done.stdout)["served_checked"] > 0


def test_every_option_of_the_module_is_offered_by_the_command() -> None:
    """One way to run the simulation: the command takes every option of
    `python -m backupvault.sim` (the strip options were missing until session 58; both
    are made from `backupvault.sim.options` now)."""
    module = subprocess.run(
        [sys.executable, "-m", "backupvault.sim", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    options = {word.strip("[],") for word in module.split() if word.startswith(("--", "[--"))}
    command = sim("--help").stdout
    assert options - {"--help"} <= {word.strip(",") for word in command.split()}


def test_the_command_loads_the_simulator_only_when_it_runs() -> None:
    """The CLI registers `sim` as it starts: its options come from a light module, and
    the simulator (the whole fleet stack) is not imported for every other command."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, backupvault.cli.sim; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = ast.literal_eval(done.stdout)
    assert "backupvault.sim.options" in loaded
    assert "backupvault.sim.world" not in loaded
