"""The deterministic simulation over many seeds (threshold clients, every fault), its
reproducibility, hostile nodes in the same world, and proof that it catches planted
protocol bugs."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backupvault.fleet.replica import Replica
from backupvault.sim import world
from backupvault.sim.shrink import report, shrink
from backupvault.sim.world import (
    DEFAULT_CONFIG,
    Plan,
    RunResult,
    SimConfig,
    Simulation,
    Step,
    make_plan,
    run_seed,
)

sys.path.insert(0, str(Path(__file__).parent))
from injections import BUGS

SEEDS = int(os.environ.get("BACKUPVAULT_SIM_SEEDS", "50"))
CHUNK = 25


def _caught_first(caught_by: int, within: int) -> list[int]:
    """Seeds 0..within-1, the one that caught the fault last time first: a test that
    searches for a catching seed is quick while that seed still catches, and any other
    seed in the range counts just the same."""
    return [caught_by, *(seed for seed in range(within) if seed != caught_by)]


def _warn_if_moved(what: str, caught_by: int, seed: int) -> None:
    """Another seed caught it: still a pass, but the search now runs every seed before
    `seed` on each run (once 557 of them: minutes), so say which seed to name instead."""
    if seed != caught_by:
        warnings.warn(
            f"{what}: seed {caught_by} no longer catches it, seed {seed} does; name {seed}"
            " as the caught_by seed in tests/sim/test_simulation.py",
            stacklevel=2,
        )


@functools.cache
def _traced(seed: int) -> RunResult:
    """One traced run of `seed` on the default world, shared by the tests that only read it."""
    return run_seed(seed)


def _check(seeds: range, config: SimConfig = DEFAULT_CONFIG) -> None:
    for seed in seeds:
        result = run_seed(seed, config, keep_trace=False)
        if result.violation is not None:
            shrunk = shrink(run_seed(seed, config), config, max_seconds=30)
            pytest.fail(report(shrunk, f"seed {seed}: {result.violation}"), pytrace=False)


@pytest.mark.parametrize("first", range(0, SEEDS, CHUNK))
def test_seeds_keep_every_invariant(first: int, request: pytest.FixtureRequest) -> None:
    only = request.config.getoption("seed", default=None)
    if only is not None:
        if first != 0:
            return
        _check(range(only, only + 1))
        return
    _check(range(first, min(first + CHUNK, SEEDS)))


def test_a_seed_reproduces_exactly() -> None:
    one, two = _traced(7), run_seed(7)  # a fleet of 5, and ~1 s (seed 5 takes ~5)
    assert one.trace == two.trace
    assert one.stats == two.stats
    assert one.trace != _traced(6).trace


def test_the_faults_happen() -> None:
    """The fault model is exercised, not just declared."""
    missing = {
        "crash",
        "restart (disk: keep)",
        "disk wiped",
        "rolled back",
        "store refuses to open",
        "cut off",
        "relay replays a captured reset",
        "resends its",
        "→ recovered",
        "→ wrong password",
        "destroyed",
        "password changed: registered",
        "delete: deleted",
        "as leader (a false timeout)",
        "node0 crash",
    }
    for seed in range(12):  # all by seed 11: stop there
        text = "\n".join(_traced(seed).trace)
        missing = {what for what in missing if what not in text}
        if not missing:
            break
    assert not missing, missing


def test_the_leader_path_is_exercised_and_l_outputs_are_reached() -> None:
    """Changes go through the leader (forwards, one-round Accepts) and, with leader
    crashes and passed-over leaders, leaderless rounds too; each run keeps every invariant.
    The observer stops a run whose window between two owner successes has more than L
    combined outputs (checked after every partial), and the bound is tight: some runs
    reach exactly L under these faults."""
    totals = {"forwarded": 0, "one_round": 0}
    passed_over = reached = 0
    for seed in range(10):
        result = _traced(seed)
        assert result.violation is None, report(result)
        for name in totals:
            totals[name] += result.stats[name]
        passed_over += "passes over node0" in "\n".join(result.trace)
        assert result.stats["max_window"] <= result.plan.guess_limit
        reached += result.stats["max_window"] == result.plan.guess_limit
    assert totals["forwarded"] > 100 and totals["one_round"] > 400, totals
    assert passed_over > 0
    assert reached >= 3


LEADERLESS_SEEDS = max(10, SEEDS // 4)


@pytest.mark.parametrize("first", range(0, LEADERLESS_SEEDS, 10))
def test_leaderless_seeds_keep_every_invariant(first: int) -> None:
    """The fallback alone (every change a CASPaxos round), on a quarter of the seeds."""
    _check(range(first, min(first + 10, LEADERLESS_SEEDS)), SimConfig(leader=False))


@pytest.mark.parametrize("hostile", [1, 2])
def test_seeds_with_hostile_nodes_keep_every_invariant(hostile: int) -> None:
    """The same seeded world with the last c of 5 nodes run by the attacker (acceptors
    that accept anything, wrong partials to every client): honest nodes still evaluate
    only what they accepted themselves, clients recover past the liars, and the bound
    holds; only N - t - c crashes are allowed."""
    _check(range(0, 4), SimConfig(nodes=5, hostile=hostile))


@pytest.mark.parametrize("hostile", [0, 2])
def test_seeds_whose_copies_wait_early_and_long_keep_every_invariant(hostile: int) -> None:
    """Followers' copies wait for the leader's round from the first join they timed on,
    up to a second (`--eager-wait`), with leader crashes and passed-over leaders, and
    with a hostile leader among 5."""
    _check(range(0, 4), SimConfig(nodes=5, hostile=hostile, eager_wait=True))


def _never(*args: object) -> None:
    raise AssertionError("a default run drew the eager wait's settings")


def test_eager_waits_are_exercised_on_the_same_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--eager-wait` changes the nodes' timing only: the same plan, and copies wait
    many times as often as with the nodes' own settings (under which most runs wait
    little: a node learns 8 joins first)."""
    waits = 0
    begin = Replica._begin

    def counting(self: Replica, proposal: Any, now: float) -> list[Any]:
        nonlocal waits
        first = proposal.began is None
        effects = begin(self, proposal, now)
        waits += first and proposal.phase == "wait"
        return effects

    monkeypatch.setattr(Replica, "_begin", counting)
    # A default run never draws the eager settings: its seeds replay as they always did.
    with monkeypatch.context() as patched:
        patched.setattr(world, "eager_join_wait", _never)
        assert run_seed(0, keep_trace=False).violation is None
    counts = {}
    for eager in (False, True):
        waits = 0
        config = SimConfig(eager_wait=eager)
        for seed in range(5):
            assert make_plan(seed, config) == make_plan(seed, DEFAULT_CONFIG)
            result = run_seed(seed, config, keep_trace=False)
            assert result.violation is None, report(result)
        counts[eager] = waits
    assert counts[True] > 3 * counts[False] and counts[True] > 50, counts


def test_hostile_runs_exercise_the_owners_operations() -> None:
    """With hostile nodes the observer tracks no committed value (consensus no longer
    holds), and the ghost took the entry for empty: every "right" password was a wrong
    guess, so no recovery, password change or delete by the owner ever ran, and the probe
    asked no recovery. The ghost now reads what t − c honest nodes hold."""
    missing = {"recover_right → recovered", "password changed: registered", "delete: deleted"}
    for seed in range(20):
        result = run_seed(seed, SimConfig(nodes=5, hostile=1))
        assert result.violation is None, report(result)
        text = "\n".join(result.trace)
        missing = {what for what in missing if what not in text}
        if not missing:
            break
    assert not missing, missing


def test_hostile_runs_clear_the_owners_reset_and_honest_holders_refuse_it() -> None:
    """The `strip` steps (session 56, review s55) reach honest nodes that hold the owner's
    reset, which refuse the value with it cleared; the run stays clean. With the acceptor
    rule removed they take it and this fails (the simulator's repairs then resend the reset
    before the stripped value, so the run itself stays clean: the rule's attack test is
    tests/hsm/test_catching_up.py)."""
    refused = 0
    for seed in range(12):
        result = run_seed(seed, SimConfig(nodes=5, hostile=1))
        assert result.violation is None, report(result)
        refused += "\n".join(result.trace).count("refuses it: the owner's reset was dropped")
        if refused >= 3:
            break
    assert refused >= 3, refused


def test_operations_during_the_faults_are_held_to_completing() -> None:
    """On a calm network every operation that t honest nodes could serve throughout,
    crashes, partitions, rollbacks and wipes around it, is held to completing within its
    deadline (`available-during-faults`), not only those after the heal: here many were
    begun before the heal with a node down, behind or cut off, and all completed."""
    checked = through_faults = 0
    for seed in range(8):
        result = run_seed(seed, SimConfig(network_faults=False), keep_trace=False)
        assert result.violation is None, report(run_seed(seed, SimConfig(network_faults=False)))
        checked += result.stats["served_checked"]
        through_faults += result.stats["served_through_faults"]
    assert checked > 80 and through_faults > 10, (checked, through_faults)


def test_majority_down_is_unavailable_but_safe() -> None:
    """With faults allowed on a majority (no disk faults), the fleet refuses (clients see
    fleet_unavailable) and still breaks no safety invariant; it recovers after the heal."""
    config = SimConfig(nodes=3, max_faulty=3, disk_faults=False)
    unavailable = 0
    for seed in range(30):
        result = run_seed(seed, config, keep_trace=False)
        assert result.violation is None, report(run_seed(seed, config))
        unavailable += result.stats["unavailable"]
    assert unavailable > 0


def _recovery_beside_crashes(down: tuple[int, ...]) -> Plan:
    """Three nodes, calm: a registration, then `down` crash for 19 s, and a recovery
    begun a second into it."""
    steps = [Step(0.1, "op", client=0, arg="register")]
    steps += [Step(3.0, "crash", node=n) for n in down]
    steps.append(Step(4.0, "op", client=0, arg="recover_right"))
    steps += [Step(22.0, "restart", node=n, arg="keep") for n in down]
    return Plan(1, 3, 1, 1, 3, drop=0.0, dup=0.0, long_delay=0.0, steps=tuple(steps))


CALM_MAJORITY_DOWN = SimConfig(nodes=3, max_faulty=3, disk_faults=False, network_faults=False)


def test_a_recovery_beside_a_crashed_minority_is_held_to_completing() -> None:
    result = Simulation(_recovery_beside_crashes((1,)), CALM_MAJORITY_DOWN).run()
    assert result.violation is None, report(result)
    assert "client c0 recover_right → recovered" in "\n".join(result.trace)
    assert result.stats["served_through_faults"] == 1


def test_a_recovery_fewer_than_t_nodes_could_serve_may_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`available-during-faults` asks the fleet to serve only while t honest nodes can:
    with two of three down the recovery gives up and the run passes; the same run, had
    the check counted those nodes as serving, fails it."""
    plan = _recovery_beside_crashes((1, 2))
    result = Simulation(plan, CALM_MAJORITY_DOWN).run()
    assert result.violation is None, report(result)
    assert "client c0 recover_right → unavailable" in "\n".join(result.trace)
    monkeypatch.setattr(Simulation, "_serving", lambda self, c: self.plan.nodes)
    result = Simulation(plan, CALM_MAJORITY_DOWN).run()
    assert result.violation is not None
    assert result.violation.invariant == "available-during-faults"


def test_majority_rolled_back_is_caught() -> None:
    """Outside the fault model (a majority's disks rolled back), the checks notice the loss
    of committed state: they are sharp enough to see what the fault model excludes."""
    config = SimConfig(nodes=3, max_faulty=3)
    # Seeds 0-599 caught it only while a rolled-back node that crashed mid catch-up came
    # back as intact (seed 594; fixed). Later changes moved the catching seeds: on
    # 2026-12-03, 557 and 718 of 500-999 (607 no longer), so 607 first cost a scan of
    # 557 seeds (217 s on a slow machine); any seed in the range counts the same. Since
    # acceptors take a ballot only from its own node (session 54), 123 is the first.
    caught = next(
        (s for s in _caught_first(123, 1000) if run_seed(s, config, keep_trace=False).failed),
        None,
    )
    assert caught is not None, "a majority rolled back went unnoticed in seeds 0-999"
    _warn_if_moved("majority rolled back", 123, caught)


#: Copies that wait early and long, on a calm network: the world in which a wait that
#: outlasts a crashed leader shows (`available-during-faults`).
WAITS_CALM = SimConfig(eager_wait=True, network_faults=False)


@pytest.mark.parametrize(
    ("bug", "within", "caught_by", "config"),
    [
        ("evaluate-before-commit", 20, 0, DEFAULT_CONFIG),
        ("replayed-evaluate-charged", 20, 9, DEFAULT_CONFIG),
        ("skip-catch-up", 200, 17, DEFAULT_CONFIG),
        ("accept-lower-ballot", 20, 0, DEFAULT_CONFIG),
        ("leader-skips-base-check", 40, 3, DEFAULT_CONFIG),
        ("wait-outlasts-the-leader", 40, 9, WAITS_CALM),
    ],
)
def test_planted_bug_is_caught(
    bug: str,
    within: int,
    caught_by: int,
    config: SimConfig,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plant: Callable[[pytest.MonkeyPatch], None] = BUGS[bug]
    plant(monkeypatch)
    for seed in _caught_first(caught_by, within):
        result = run_seed(seed, config, keep_trace=False)
        if result.violation is not None:
            shrunk = shrink(run_seed(seed, config), config, max_seconds=20)
            text = report(shrunk, f"planted bug {bug}: seed {seed} → {result.violation}")
            with capsys.disabled():
                print("\n" + text)
            assert shrunk.violation is not None, text
            assert shrunk.violation.invariant == result.violation.invariant, text
            assert "VIOLATION" in text
            assert len(shrunk.plan.steps) <= len(result.plan.steps)
            _warn_if_moved(f"planted bug {bug}", caught_by, seed)
            return
    pytest.fail(f"planted bug {bug} not caught within {within} seeds")
