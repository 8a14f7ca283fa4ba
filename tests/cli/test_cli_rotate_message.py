"""What `local rotate` says about the epochs the relay still routes for migration."""

from __future__ import annotations

from backupvault.cli.transparency import still_routed


def test_one_older_epoch_is_named_in_the_singular() -> None:
    # It said "the relay still routes epochs 1 for clients to migrate".
    assert still_routed([1]) == "the relay still routes epoch 1 for clients to migrate"


def test_several_older_epochs_are_listed() -> None:
    assert still_routed([2, 4]) == "the relay still routes epochs 2, 4 for clients to migrate"
