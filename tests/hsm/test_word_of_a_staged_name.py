"""Word of a live value for a name nobody committed (review s54b). The attacker may also be
a client with an account (docs/threshold.md, "Model check"): it stages a new entry on t
honest nodes, collects their acknowledgements and never commits. The live value it can
then make passes every node's check against an empty record, so a hostile node's word of
it has a node that holds nothing for the name fetch it with a round of its own
(`Replica._relayed`, `worth_fetching`). That round finds nothing to write: it now ends
there, at one Prepare a node, where it used to retry to its deadline (about 460 Prepares
and 115 promise writes on every node for one hostile message)."""

from __future__ import annotations

from collections import Counter

import pytest
from inprocess_fleet import FAST_KSF, InProcessFleet

from backupvault.client.threshold import ThresholdVault
from backupvault.codec import decode_any
from backupvault.fleet.messages import PEER_MESSAGES, Accept, AppliedOp, ReplicatedValue
from backupvault.fleet.replica import Persist
from backupvault.hsm.state import EntryId, ThresholdState
from backupvault.protocol import EntryStatus

H = 4


class _Stop(Exception):
    """Raised in place of the commit: the registration stays staged."""


def _staged_live_value(fleet: InProcessFleet, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The live value of a registration staged on the nodes and never committed."""
    seen = {}

    def instead_of_commit(self: ThresholdVault, request: object, *args: object) -> None:
        seen["request"] = request
        raise _Stop

    monkeypatch.setattr(ThresholdVault, "_commit_shares", instead_of_commit)
    with pytest.raises(_Stop):
        fleet.client(entry="staged").register("pw", bytes(32), ksf=FAST_KSF)
    monkeypatch.undo()
    request = seen["request"]
    state = ThresholdState(
        status=EntryStatus.LIVE,
        version=1,
        manifest=request.manifest,  # type: ignore[attr-defined]
        acks=request.acks,  # type: ignore[attr-defined]
    )
    return ReplicatedValue([AppliedOp(b"h" * 16, 1)], state.to_bytes()).to_bytes()


def test_word_of_a_staged_name_costs_one_round_and_writes_no_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = InProcessFleet()
    value = _staged_live_value(fleet, monkeypatch)
    key = EntryId("alice", "staged").to_bytes()
    assert all(fleet.disk[i].get(key) is None for i in range(5))
    payload = ReplicatedValue.from_bytes(value).payload
    assert fleet.firmware[1].check_value(key, payload, b"") is None  # t acknowledgements
    assert fleet.firmware[1].worth_fetching(key, payload)
    sent: Counter[str] = Counter()
    writes: Counter[int] = Counter()
    run = fleet._run

    def counted(node: int, effects: list) -> None:
        writes[node] += sum(1 for e in effects if isinstance(e, Persist) and e.record.key == key)
        run(node, effects)

    fleet._run = counted  # type: ignore[method-assign]
    word = Accept(b"w" * 16, key, 10**6, 0, value, 0, False)
    fleet.queue.append((H, 1, word.to_bytes()))
    end = fleet.now + 8.0  # past a proposal's deadline (6 s)
    while fleet.now < end:
        while fleet.queue:
            sender, to, raw = fleet.queue.popleft()
            message = decode_any(raw, PEER_MESSAGES)
            if getattr(message, "key", None) == key:
                sent[type(message).__name__] += 1
            fleet._run(to, fleet.replicas[to].receive(sender, message, fleet.now))
        fleet.now += 0.01
        for i, replica in fleet.replicas.items():
            fleet._run(i, replica.tick(fleet.now))
    assert sent["Prepare"] <= 4 and sent["Accept"] == 1, dict(sent)  # the word alone
    assert sum(writes.values()) <= 5, dict(writes)  # a promise at each node at most
    assert all(not (r := fleet.disk[i].get(key)) or not r.value for i in range(5))
