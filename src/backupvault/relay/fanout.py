"""Fan-out: send copy i of a request to node i, all nodes at once, and hand back every answer.

When the relay stops waiting (docs/relay.md, "Fan-out"):

- every node has answered or failed; or
- each node's own deadline passed (`connect_timeout` + `request_timeout` for the whole
  exchange; connecting alone: `connect_timeout`); or
- a majority t = N//2+1 of the nodes has answered (any status) and a grace period has
  passed since: as long again as it took to reach t, at least `MIN_GRACE_SECONDS`. A
  client needs t answers at least; the grace lets the others (a registration wants all N
  acknowledgements, a recovery an extra partial in case one is bad) come in under the same
  load, without one slow or dead node stalling every answer.

Nodes still pending then are cut off and reported as `NO_ANSWER` with `node_slow`; they
may still act on the request, which is harmless: each node counts the attempt it accepted
by consensus whether or not its answer reaches the client. The relay learns nothing from
the answers (they are sealed to the client); which nodes answer is all it sees.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence

from backupvault.fanout import NO_ANSWER, FanoutReply
from backupvault.relay.forward import Forwarder, NodeAnswer, _BadAnswer, _Skip, _Unknown

MIN_GRACE_SECONDS = 0.5


def majority(nodes: int) -> int:
    return nodes // 2 + 1


def _no_answer(index: int, code: str, detail: str) -> FanoutReply:
    return FanoutReply(index, NO_ANSWER, json.dumps({"error": code, "detail": detail}).encode())


async def _ask(
    forwarder: Forwarder, index: int, op: str, account: str, entry: str, body: bytes
) -> FanoutReply:
    node = forwarder.node_urls[index]
    try:
        answer: NodeAnswer = await forwarder._one(node, op, account, entry, body)
    except _Skip:
        return _no_answer(index, "node_unreachable", f"vault node {index} could not be reached")
    except _Unknown:
        return _no_answer(
            index, "node_timeout", f"vault node {index} did not answer in time; it may have acted"
        )
    except _BadAnswer as err:
        return _no_answer(index, "bad_node_answer", f"vault node {index} answered wrongly: {err}")
    return FanoutReply(index, answer.status, answer.body)


async def fan_out(
    forwarder: Forwarder,
    op: str,
    account: str,
    entry: str,
    copies: Sequence[bytes],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> list[FanoutReply]:
    """One reply per node, by index (see the module docstring for when it stops waiting)."""
    nodes = len(forwarder.node_urls)
    if len(copies) != nodes:
        raise ValueError("one sealed copy per node")
    tasks = {
        asyncio.ensure_future(_ask(forwarder, index, op, account, entry, copies[index])): index
        for index in range(nodes)
    }
    replies: dict[int, FanoutReply] = {}
    started = clock()
    cutoff: float | None = None
    pending = set(tasks)
    try:
        while pending:
            timeout = None if cutoff is None else max(0.0, cutoff - clock())
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break
            for task in done:
                replies[tasks[task]] = task.result()
            answered = sum(1 for reply in replies.values() if reply.answered)
            if cutoff is None and answered >= majority(nodes):
                now = clock()
                cutoff = now + max(MIN_GRACE_SECONDS, now - started)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    for task in pending:
        index = tasks[task]
        replies[index] = _no_answer(
            index,
            "node_slow",
            f"vault node {index} had not answered when a majority had; the relay stopped waiting",
        )
    return [replies[index] for index in range(nodes)]
