"""What the CLI says in situations that need a vault or a failing fleet to reach for
real: its messages, checked on the functions that word them."""

from __future__ import annotations

from backupvault.cli.main import Context, _node_without, _warn_degraded
from backupvault.cli.output import Output


def _context() -> Context:
    return Context(Output(json_mode=True), None, False)  # --json: warnings are collected


def test_a_degraded_registration_says_each_share_is_sealed_to_its_node() -> None:
    ctx = _context()
    _warn_degraded(ctx, ("node 4: vault node 4 could not be reached",))
    (warning,) = ctx.output.warnings
    assert "1 vault node(s) did not take their share (node 4: vault node 4 could not" in warning
    assert "sealed to its own node" in warning
    assert "next contact with the fleet, no password asked" in warning
    assert "`backupvault vault finish` does it now" in warning
    # A share is no longer kept under the password's key, nor held until a recovery.
    assert "password's key" not in warning and "next recovery" not in warning


def test_vault_status_does_not_say_an_unreachable_node_holds_no_share() -> None:
    down = _node_without("node 4: vault node 4 could not be reached")
    assert down == "could not get this key's status from node 4: vault node 4 could not be reached"
    assert "not holding" not in down
    assert (
        _node_without("node 2: holds another manifest")
        == "not holding this key's share: node 2: holds another manifest"
    )
