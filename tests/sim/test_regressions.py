"""Seeds on which the simulation found real bugs; each must now keep every invariant."""

from __future__ import annotations

import pytest

from backupvault.sim import SimConfig, run_seed
from backupvault.sim.shrink import report

# Each seed runs twice: leaderless, which replays exactly the run that found the bug (the
# plan and every random draw are as they were before the leader path), and with the
# leader path and its faults, the fleet as it runs now.
CONFIGS = pytest.mark.parametrize(
    "config", [SimConfig(leader=False), SimConfig()], ids=["leaderless", "leader"]
)


# Found by the simulation: a KE3 answering an attempt made against an earlier registration
# reset (and unlocked) the entry after a delete/destroy and a new registration, because
# the attempt number survived the registration. Fixed in hsm/firmware.py (register-finish
# retires outstanding attempts).
@pytest.mark.parametrize("seed", [127, 1119, 1392, 1481])
@CONFIGS
def test_regression_ke3_from_an_earlier_registration(seed: int, config: SimConfig) -> None:
    result = run_seed(seed, config)
    assert result.violation is None, report(result)


# Found by the simulation: a node cut off while an entry was destroyed raised its promise
# with its own (failing) proposal; the committed tombstone's repair Accept was then refused
# and the refusal was taken as "no longer lags", so the node kept the live record (secrets
# included) on disk after the partition healed. Fixed in fleet/replica.py (a refused
# repair rewrites the value above the promise with a no-op round).
@pytest.mark.parametrize("seed", [3459, 5452])
@CONFIGS
def test_regression_tombstone_reaches_a_node_that_promised_higher(
    seed: int, config: SimConfig
) -> None:
    result = run_seed(seed, config)
    assert result.violation is None, report(result)


# Found on fresh seeds: the observer counted an acceptance only when the persisted record's
# accepted ballot changed, so a node that had copied (b, v) while catching up and then
# accepted the same (b, v) was never counted, and an evaluation paid by a committed guess
# was reported as uncommitted. The fleet was right. Fixed in the observer (replica.Persist
# says why a record was written; only answers to an Accept count, once per node).
@pytest.mark.parametrize("seed", [777273, 900502])
@CONFIGS
def test_regression_catch_up_copy_then_identical_accept(seed: int, config: SimConfig) -> None:
    result = run_seed(seed, config)
    assert result.violation is None, report(result)


# Found on fresh seeds: a restarting node re-asked only peers that never answered, a late
# "not ready" answer could replace a newer "ready" one, and its asks backed off to 8 s,
# past the settle window; it could stay not ready with a majority of ready peers up.
# Fixed in fleet/replica.py (every ask has its own id, not-ready peers are asked again,
# retries capped at 2 s).
@pytest.mark.parametrize("seed", [777536, 901144, 901217])
@CONFIGS
def test_regression_restarting_node_asks_again_until_a_majority_is_ready(
    seed: int, config: SimConfig
) -> None:
    result = run_seed(seed, config)
    assert result.violation is None, report(result)


# Found on fresh seeds with the leader path: a wiped node copied (b, v) while catching up,
# then a duplicate of the leader's pipelined Accept(b) arrived after its promise had moved
# to b + 1; it answered "accepted" without writing, so the asking node counted a vote the
# node had not given as an acceptance of its own. Fixed in fleet/replica.py (the repeated
# answer writes the record again as this node's acceptance).
@pytest.mark.parametrize("seed", [3000947])
@CONFIGS
def test_regression_repeated_pipelined_accept_after_a_catch_up_copy(
    seed: int, config: SimConfig
) -> None:
    result = run_seed(seed, config)
    assert result.violation is None, report(result)


# Found on fresh seeds (10,000 from 5,000,000): a node forwarded a change to the leader,
# fell back to its own leaderless round when the leader's answer came late, and raised
# every promise with it; the forwarded change then committed. Its own acceptor had refused
# the committed Accept (its promise was higher), and only peers were repaired, so after
# the leader crashed it kept the live record of an entry destroyed everywhere else. Fixed
# in fleet/replica.py (the committing node repairs its own acceptor too).
@pytest.mark.parametrize("seed", [5003786])
@CONFIGS
def test_regression_the_committing_node_repairs_its_own_acceptor(
    seed: int, config: SimConfig
) -> None:
    result = run_seed(seed, config)
    assert result.violation is None, report(result)
