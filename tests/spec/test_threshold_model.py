"""The Promela model of the threshold vault's per-node counter rules (spec/threshold.pml),
checked by spin.

The correct rules must verify over the whole state space for every configuration; the
bound must be reached (asserting one output less finds a counterexample, so the check is
not vacuous); each mutant must yield a counterexample. See docs/threshold.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import spin_runner
from spin_runner import PanResult


def run_pan(tmp_path: Path, *defines: str) -> PanResult:
    # The state spaces are small (thousands of states): an unoptimized build is quicker.
    return spin_runner.run_pan(
        "threshold.pml", tmp_path, *defines, optimize="-O0", memlim_mb=1000, hash_bits=20
    )


@pytest.mark.parametrize(
    "defines",
    [("N=3", "C=0"), ("N=3", "C=1"), ("N=5", "C=0")],
    ids=["n3-honest", "n3-one-hostile", "n5-honest"],
)
def test_rules_keep_the_bound_exhaustively(tmp_path: Path, defines: tuple[str, ...]) -> None:
    result = run_pan(tmp_path, *defines)
    assert result.errors == 0, result.output
    assert not result.trail
    assert "Full statespace search" in result.output, result.output
    assert "Search not completed" not in result.output, result.output
    assert "max search depth too small" not in result.output, result.output
    assert "bit-state" not in result.output.lower(), result.output
    assert result.states > 500, result.output  # the search explored something real


@pytest.mark.parametrize(
    "defines",
    [("N=3", "C=0", "TIGHT"), ("N=3", "C=1", "TIGHT"), ("N=5", "C=0", "TIGHT")],
    ids=["n3-honest-L", "n3-one-hostile-4", "n5-honest-L"],
)
def test_the_bound_is_reached(tmp_path: Path, defines: tuple[str, ...]) -> None:
    # L outputs with every node honest, floor((N-c)L/(t-c)) = 4 with one hostile of 3.
    result = run_pan(tmp_path, *defines)
    assert result.errors >= 1, result.output
    assert result.trail, result.output
    assert "assertion violated" in result.output, result.output


@pytest.mark.parametrize(
    "defines",
    [
        ("N=3", "C=0", "BUG_NO_OWN_CHECK"),
        ("N=5", "C=0", "BUG_NO_OWN_CHECK"),
        ("N=3", "C=1", "BUG_TWO_B"),
        ("N=3", "C=1", "BUG_PEER_RESET"),
    ],
    ids=["no-own-check-n3", "no-own-check-n5", "two-b-per-attempt", "reset-on-peer-word"],
)
def test_mutant_has_a_counterexample(tmp_path: Path, defines: tuple[str, ...]) -> None:
    result = run_pan(tmp_path, *defines)
    assert result.errors >= 1, result.output
    assert result.trail, result.output
    assert "assertion violated (outputs<=" in result.output, result.output


# With the owner's success (OWNER): two windows, the signed reset delivered to any node
# any number of times. L = 1 keeps the state space within seconds.
@pytest.mark.parametrize(
    "defines",
    [("N=3", "C=0", "OWNER", "L=1"), ("N=3", "C=1", "OWNER", "L=1")],
    ids=["owner-n3-honest", "owner-n3-one-hostile"],
)
def test_with_the_owners_success_the_bound_holds_per_window(
    tmp_path: Path, defines: tuple[str, ...]
) -> None:
    result = run_pan(tmp_path, *defines)
    assert result.errors == 0, result.output
    assert "Full statespace search" in result.output, result.output
    assert result.states > 400, result.output


@pytest.mark.parametrize(
    "defines",
    [("N=3", "C=0", "OWNER", "L=1", "TIGHT"), ("N=3", "C=1", "OWNER", "L=1", "TIGHT")],
    ids=["owner-n3-honest-2L", "owner-n3-one-hostile-2bound"],
)
def test_with_the_owners_success_both_windows_reach_the_bound(
    tmp_path: Path, defines: tuple[str, ...]
) -> None:
    result = run_pan(tmp_path, *defines)
    assert result.errors >= 1 and result.trail, result.output
    assert "assertion violated" in result.output, result.output


def test_a_replayed_reset_that_forgets_everything_is_caught(tmp_path: Path) -> None:
    """The mutant applies the owner's (public) reset again on every delivery: the count
    never holds, and two hostile-assisted windows' worth of outputs is exceeded."""
    result = run_pan(tmp_path, "N=3", "C=1", "OWNER", "L=1", "BUG_RESET_REPLAY")
    assert result.errors >= 1 and result.trail, result.output
    assert "assertion violated (outputs<=" in result.output, result.output
