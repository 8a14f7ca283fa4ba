"""`node inspect` (node/main.py `_describe`): what an operator and the chaos soak read of an
entry on one node's disk, the share-holder flag included, and never the share."""

from __future__ import annotations

import pytest

from backupvault.fleet.messages import AcceptorRecord, ReplicatedValue
from backupvault.hsm.state import EntryId, EntryStatus, NodeShare, ThresholdState
from backupvault.node.main import _describe

KEY = EntryId.of("alice", "backup-root-key").to_bytes()
M = b"manifest of version 2"
SHARE = b"\x01" + bytes(range(100, 132))


def _record(state: ThresholdState) -> AcceptorRecord:
    value = ReplicatedValue([], state.to_bytes()).to_bytes()
    return AcceptorRecord(KEY, accepted_round=7, value=value)


DESTROYED = ThresholdState(status=EntryStatus.DESTROYED, version=2)


def _live(manifest: bytes = M) -> ThresholdState:
    return ThresholdState(status=EntryStatus.LIVE, version=2, manifest=manifest)


@pytest.mark.parametrize(
    ("state", "share", "holds"),
    [
        (_live(), NodeShare(2, SHARE, M, []), True),
        (_live(), None, False),  # never got one (down at registration, wiped)
        (_live(), NodeShare(2, b"", M, []), False),  # erased
        (_live(), NodeShare(1, SHARE, b"manifest of version 1", []), False),  # an older one
        (DESTROYED, NodeShare(2, SHARE, M, []), False),
    ],
)
def test_inspect_says_whether_the_node_holds_a_share_of_the_live_version(
    state: ThresholdState, share: NodeShare | None, holds: bool
) -> None:
    described = _describe(3, _record(state), share)
    assert described["holds_share"] is holds
    assert (described["node"], described["account"], described["version"]) == (3, "alice", 2)
    assert SHARE.hex() not in repr(described) and repr(SHARE) not in repr(described)


def test_inspect_shows_the_nodes_own_count_and_whether_it_keeps_a_share_whatever_the_status() -> (
    None
):
    """The chaos soak checks these against what its clients received: every partial
    evaluation a node gave is counted in its own row, and a node at its own count of L
    keeps no share of a destroyed entry."""
    from backupvault.hsm.shares import UNKNOWN_B
    from backupvault.hsm.state import Evaluation

    evaluated = [Evaluation(a, bytes([a]) * 32) for a in (4, 6)]
    described = _describe(1, _record(DESTROYED), NodeShare(2, SHARE, M, evaluated, reset_at=3))
    assert described["own"] == {
        "version": 2,
        "keeps_share": True,
        "reset_at": 3,
        "evaluated": [4, 6],
        "on_reports": False,
    }
    assumed = NodeShare(2, b"", M, [Evaluation(5, UNKNOWN_B)], reset_at=4)
    own = _describe(1, _record(_live()), assumed)["own"]
    assert own == {
        "version": 2,
        "keeps_share": False,
        "reset_at": 4,
        "evaluated": [5],
        "on_reports": True,
    }
    assert _describe(1, _record(_live()), None)["own"] is None
    assert SHARE.hex() not in repr(described) and bytes([4]).hex() * 32 not in repr(described)
