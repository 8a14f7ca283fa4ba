"""Shrinking a failing run to a short trace: delta debugging (Zeller's ddmin) over the
plan's steps, after first trying a calm network. A candidate is kept when it still
violates the same invariant; every candidate run is itself deterministic."""

from __future__ import annotations

import time
from dataclasses import replace

from backupvault.sim.world import DEFAULT_CONFIG, Plan, RunResult, SimConfig, Simulation


def _fails_same(plan: Plan, config: SimConfig, invariant: str) -> RunResult | None:
    result = Simulation(plan, config).run()
    if result.violation is not None and result.violation.invariant == invariant:
        return result
    return None


def shrink(
    failing: RunResult,
    config: SimConfig = DEFAULT_CONFIG,
    max_runs: int = 400,
    max_seconds: float = 60.0,
) -> RunResult:
    """The smallest failing variant of `failing` found within the budget."""
    assert failing.violation is not None
    invariant = failing.violation.invariant
    best = failing
    runs = 0
    started = time.monotonic()

    def budget() -> bool:
        return runs < max_runs and time.monotonic() - started < max_seconds

    # Steps after the violation never ran: drop them first.
    plan = replace(best.plan, steps=tuple(s for s in best.plan.steps if s.t <= best.at))
    for candidate in (plan, plan.calm(), replace(plan, drop=0.0), replace(plan, dup=0.0)):
        if candidate == best.plan or not budget():
            continue
        runs += 1
        found = _fails_same(candidate, config, invariant)
        if found is not None:
            best = found
            plan = candidate
    plan = best.plan
    steps = list(plan.steps)
    chunks = 2
    while len(steps) >= 2 and budget():
        size = max(1, len(steps) // chunks)
        reduced = False
        for start in range(0, len(steps), size):
            if not budget():
                break
            candidate_steps = steps[:start] + steps[start + size :]
            runs += 1
            found = _fails_same(replace(plan, steps=tuple(candidate_steps)), config, invariant)
            if found is not None:
                best = found
                steps = [s for s in candidate_steps if s.t <= found.at]
                chunks = max(chunks - 1, 2)
                reduced = True
                break
        if not reduced:
            if size == 1:
                break
            chunks = min(chunks * 2, len(steps))
    return best


def report(result: RunResult, title: str = "") -> str:
    """A failing run as readable lines."""
    plan = result.plan
    lines = [
        title or f"seed {plan.seed}: {result.violation}",
        f"  fleet of {plan.nodes}, {plan.clients} clients on {plan.entries} entries, "
        f"guess limit {plan.guess_limit}, network drop={plan.drop} dup={plan.dup} "
        f"long-delay={plan.long_delay}, {len(plan.steps)} planned steps",
    ]
    lines += [f"  {line}" for line in result.trace]
    return "\n".join(lines)
