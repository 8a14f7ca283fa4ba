"""The Promela model of replication and guess counting (spec/fleet.pml), checked by spin.

The correct model must verify with no error over its whole (bounded) state space; each
mutant must yield a counterexample. See docs/fleet-model.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import spin_runner
from spin_runner import PanResult


def run_pan(tmp_path: Path, *defines: str, optimize: str = "-O2") -> PanResult:
    return spin_runner.run_pan("fleet.pml", tmp_path, *defines, optimize=optimize)


def test_model_verifies_exhaustively(tmp_path: Path) -> None:
    result = run_pan(tmp_path)
    assert result.errors == 0, result.output
    assert not result.trail
    # A complete search: not cut by the depth bound, memory, or bit-state hashing.
    assert "max search depth too small" not in result.output, result.output
    assert "Search not completed" not in result.output, result.output
    assert "out of memory" not in result.output, result.output
    assert "Full statespace search" in result.output, result.output
    assert "bit-state" not in result.output.lower(), result.output
    assert result.states > 100_000, result.output  # the bound is not trivially small


def test_leader_model_verifies_exhaustively(tmp_path: Path) -> None:
    """The one-round-trip path: pipelined promises, a proposer that holds one sends its next
    change as an Accept at once, both proposers may lead at once; crashes and rollbacks."""
    result = run_pan(tmp_path, "LEADER")
    assert result.errors == 0, result.output
    assert not result.trail
    assert "max search depth too small" not in result.output, result.output
    assert "Full statespace search" in result.output, result.output
    assert "bit-state" not in result.output.lower(), result.output
    assert result.states > 100_000, result.output


@pytest.mark.parametrize(
    "defines",
    [
        ("LEADER", "BUG_LEADER_NO_PROMISE"),  # the leader's promise check skipped
        # an Accept leaves before the write that reserved its ballot is durable
        ("BUG_ACCEPT_UNRESERVED",),
        ("LEADER", "BUG_ACCEPT_UNRESERVED"),
        ("BUG_EVAL_BEFORE_COMMIT",),
        ("BUG_EVAL_BEFORE_COMMIT", "NO_DUP_CHECK"),  # the counter itself goes above L
        ("BUG_NO_CATCHUP",),
        ("BUG_FREE_EVALUATE",),  # a new B answered as if it were a resend: uncharged
        ("BUG_FREE_EVALUATE", "NO_DUP_CHECK"),  # ... then more than L evaluations
        # a reset for an earlier attempt also forgets the attempts made after it
        ("BUG_RESET_FORGETS_LATER", "NO_USED_CHECK"),
        # an acceptor that climbed toward a ballot answers as if it had promised it
        ("BUG_CLIMB_ANSWERS",),
        ("LEADER", "BUG_CLIMB_ANSWERS"),
    ],
    ids=[
        "leader-without-promise",
        "accept-unreserved",
        "leader-accept-unreserved",
        "eval-before-commit",
        "eval-before-commit-counter",
        "no-catch-up",
        "free-evaluate",
        "free-evaluate-counter",
        "reset-forgets-later",
        "climb-answers",
        "leader-climb-answers",
    ],
)
def test_mutant_has_a_counterexample(tmp_path: Path, defines: tuple[str, ...]) -> None:
    # A counterexample turns up within ~500,000 states: an unoptimized build compiles in a
    # quarter of the time of -O2 and the shorter search does not make up for it.
    result = run_pan(tmp_path, *defines, optimize="-O0")
    assert result.errors >= 1, result.output
    assert result.trail, result.output
    assert "assertion violated" in result.output, result.output
