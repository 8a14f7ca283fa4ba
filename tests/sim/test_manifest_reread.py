"""The sim's recovery reads the manifests again, as the SDK's `_live` does, while fewer
than t nodes answered holding a share of the agreed M and some node gave no answer (seed
10342053 with a hostile node: a registration's commit was landing, one node had not yet
promoted its staged share and another had not yet taken M; one read later they had)."""

from __future__ import annotations

from dataclasses import replace

from backupvault.protocol import ManifestResponse, Op
from backupvault.sim import clients
from backupvault.sim.clients import Answers, Outcome
from backupvault.sim.world import ThresholdClient, threshold_world


def _recover_with_a_first_read(seen: list[str], first: dict[int, bool | None]) -> Outcome:
    """A right-password recovery whose first manifest read is answered only by the nodes
    in `first`, each saying it holds a share or not (the others silent)."""
    world = threshold_world(5, 10)
    client = ThresholdClient(world)
    client.register(b"pw", bytes(32))
    flow = clients.recover(client.ctx, b"pw")
    call = next(flow)
    try:
        while True:
            answers: Answers = world.fanout_now(call)
            if call.op is Op.MANIFEST and not seen:
                answers = {
                    slot: replace(a, holds_share=bool(first[slot]))
                    for slot, a in answers.items()
                    if slot in first and isinstance(a, ManifestResponse)
                }
            seen.append(call.op)
            call = flow.send(answers)
    except StopIteration as stop:
        outcome: Outcome = stop.value
        return outcome


def test_fewer_than_t_holders_with_a_node_silent_reads_again() -> None:
    seen: list[str] = []
    outcome = _recover_with_a_first_read(seen, {0: True, 1: False, 2: True})
    assert outcome.text == "recovered", outcome.text
    assert seen[:2] == [Op.MANIFEST, Op.MANIFEST]


def test_fewer_than_t_holders_with_every_node_answering_sends_nothing() -> None:
    # Nobody left to hear from: as the SDK, no evaluate goes out and no guess is counted.
    seen: list[str] = []
    outcome = _recover_with_a_first_read(seen, dict.fromkeys(range(5), False) | {0: True})
    assert outcome.text == "unavailable (1 share holders)", outcome.text
    assert Op.EVALUATE not in seen and seen == [Op.MANIFEST]
