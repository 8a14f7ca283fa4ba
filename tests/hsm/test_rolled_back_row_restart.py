"""Audit (rollback lead 2, `suspect through`): a share row found behind a rollback stays
suspect across clean restarts (node/store.py `share_suspect`: its version is at or below
`suspect through`), but any row written since is trusted at the next start, also one the
node wrote while it still distrusted the row's count (`ShareKeeper._write(...,
trusted=False)`). The owner's old reset, replayed in a value (a hostile copy, as in
`test_rolled_back_node_old_reset.py`), did not make the row whole, yet the node wrote the
reset row; after a clean restart that row, count 0, was trusted, and the node answered
more attempts in the window it had spent. The store's rule is reproduced here as the
node's service applies it (`distrust_stored_counts(store.share_suspect)`): a row is
suspect unless written since the rollback.

Now a row the node does not trust is not rewritten with its share: a reset that does not
make it whole is applied in memory only, and a share is staged over it only once it is
trusted again (docs/threshold.md, the findings table)."""

from __future__ import annotations

from rollback_attack import (
    RK,
    L,
    new_guesses_at_node_0,
    success_then_spent_window_then_rollback,
)

from backupvault.sim.world import (
    ThresholdClient,
    threshold_world,
)


def test_a_clean_restart_does_not_trust_a_row_written_while_distrusted() -> None:
    world = threshold_world(5, L, 2, seed=22, leader=False, attacker=lambda *_: None)
    world.observer.collect = True
    client = ThresholdClient(world)
    _, acks = client.register(b"right", RK)
    assert acks == 3
    old_rows = world.snapshot(0)
    success = success_then_spent_window_then_rollback(world, client)
    world.settle(5.0)
    # One attempt on the attacker's line: refused, and the old reset it carries is
    # verified, but does not make the row whole.
    assert new_guesses_at_node_0(world, client, success, guesses=1) == 0
    rows = world.honest[0].rows
    written_since = {k for k, row in rows.items() if row is not old_rows.get(k)}
    # A clean restart: the store matches the token's counter; the service distrusts the
    # rows found behind the rollback, and only those (`share_suspect`).
    world.crash(0)
    world.restart(0)
    keeper = world.honest[0].keeper
    assert keeper is not None
    keeper.distrust_stored_counts(lambda key: key not in written_since)
    held = world.replicated(0, client.key)
    extra = new_guesses_at_node_0(world, client, held, guesses=L - 1)
    assert extra == 0, (
        f"node 0 answered {L + extra} attempts between two owner successes (L = {L}):"
        " a row it wrote while distrusting it was trusted after a clean restart"
    )
    assert not world.observer.violations, world.observer.violations
