"""A hostile node walking honest acceptors' rounds up (review s49).

An acceptor takes no ballot more than `MAX_ROUND_STEP` above the highest round it has
promised (for any entry, or for the entry's own record), nor at or above `ROUND_CEILING`:
a hostile proposer must walk rounds up a step per message. With a step of 2^32 the walk
to the ceiling took 2^30 Prepares, about nine hours of what the channel admits from one
peer, and then one Prepare at the ceiling per entry took it out of reach for good. Walked
part of the way, two honest acceptors left the others a step per refused round behind,
and changes to the entry failed for minutes; and one copied record at the ceiling, handed
to a node catching up, switched the check off at that node for good.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from peer_shell import Clock, frame, node_service, open_store

from backupvault.fleet.channel import MAX_SEEN_PER_PEER, WINDOW
from backupvault.fleet.messages import AcceptorRecord, Prepare
from backupvault.fleet.replica import MAX_ROUND_STEP, ROUND_CEILING
from backupvault.hsm.state import EntryId
from backupvault.node.peers import MAX_FRAME_MESSAGES

MADE_UP = EntryId.of("nobody", "walk").to_bytes()
YEAR = 365 * 86400


def test_walking_an_acceptor_to_the_ceiling_takes_longer_than_any_attacker_has(
    tmp_path: Path,
) -> None:
    """On the real node shell (sealed frames in, real SQLite store): each frame of 1,024
    Prepares from node 1, for one made-up entry, each a step above the last, lifts node 0's
    highest promised round by 1,024 steps, and no more. The channel admits
    MAX_SEEN_PER_PEER / WINDOW (33,333) messages a second from one peer: the walk to the
    ceiling must take more than a year of that (it took about nine hours with 2^32)."""

    async def scenario() -> tuple[int, float]:
        clock = Clock()
        service, _ = node_service(tmp_path, clock)
        start = service.replica._max_round
        started = time.perf_counter()
        for f in range(4):
            base = service.replica._max_round
            prepares = [
                Prepare(
                    b"w%07d" % (f * MAX_FRAME_MESSAGES + i),
                    MADE_UP,
                    base + (i + 1) * MAX_ROUND_STEP,
                    1,
                )
                for i in range(MAX_FRAME_MESSAGES)
            ]
            assert service.peer_frame(1, frame(1, prepares)) == 0
            for _ in range(20):
                await asyncio.sleep(0)
        took = time.perf_counter() - started
        walked = service.replica._max_round - start
        assert service._fatal is None
        await service.stop()
        return walked, took

    walked, took = asyncio.run(scenario())
    assert walked == 4 * MAX_FRAME_MESSAGES * MAX_ROUND_STEP  # every Prepare took a full step
    steps_to_ceiling = ROUND_CEILING // MAX_ROUND_STEP
    per_second_admitted = MAX_SEEN_PER_PEER / WINDOW
    hours_at_channel_rate = steps_to_ceiling / per_second_admitted / 3600
    measured_rate = 4 * MAX_FRAME_MESSAGES / took
    print(
        f"steps to ceiling {steps_to_ceiling:,}; channel admits {per_second_admitted:,.0f}/s"
        f" -> {hours_at_channel_rate:.1f} h; this shell took {measured_rate:,.0f} Prepares/s"
        f" -> {steps_to_ceiling / measured_rate / 3600:.1f} h"
    )
    assert steps_to_ceiling > per_second_admitted * YEAR, (
        f"one hostile peer walks an honest acceptor to ROUND_CEILING in"
        f" {hours_at_channel_rate:.1f} h at the channel's admitted rate"
    )


def test_a_store_keeps_its_floor_a_step_above_at_most_across_a_restart(tmp_path: Path) -> None:
    """The floor is on disk too (the meta row): a copy at the ceiling written by the group
    commit lifted it there, and a restart brought the void check back."""
    store = open_store(tmp_path)
    store.save([AcceptorRecord(b"mine", 7, 0)])
    store.save([AcceptorRecord(b"made-up", ROUND_CEILING - 1, 4)])
    store.close()
    reopened = open_store(tmp_path)
    assert 7 < reopened.max_round() <= 7 + MAX_ROUND_STEP
    assert reopened.get(b"made-up") == AcceptorRecord(b"made-up", ROUND_CEILING - 1, 4)
    reopened.close()
