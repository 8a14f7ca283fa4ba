"""Seeds on which the simulation found real bugs; each must now keep every invariant."""

from __future__ import annotations

import pytest

from backupvault.sim import run_seed
from backupvault.sim.shrink import report


# Found by the simulation: a KE3 answering an attempt made against an earlier registration
# reset (and unlocked) the entry after a delete/destroy and a new registration, because
# the attempt number survived the registration. Fixed in hsm/firmware.py (register-finish
# retires outstanding attempts).
@pytest.mark.parametrize("seed", [127, 1119, 1392, 1481])
def test_regression_ke3_from_an_earlier_registration(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found by the simulation: a node cut off while an entry was destroyed raised its promise
# with its own (failing) proposal; the committed tombstone's repair Accept was then refused
# and the refusal was taken as "no longer lags", so the node kept the live record (secrets
# included) on disk after the partition healed. Fixed in fleet/replica.py (a refused
# repair rewrites the value above the promise with a no-op round).
@pytest.mark.parametrize("seed", [3459, 5452])
def test_regression_tombstone_reaches_a_node_that_promised_higher(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)
