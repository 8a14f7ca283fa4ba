"""The fleet's measured guess limit is enforced by the firmware: a client may ask for a
lower limit for its entry, never a higher one."""

from __future__ import annotations

import os

import pytest
from conftest import InProcessFleet

from backupvault.client.errors import VaultError
from backupvault.hsm.firmware import NodeKey, VaultFirmware

ROOT_KEY = bytes(range(32))


@pytest.fixture
def capped() -> InProcessFleet:
    fleet = InProcessFleet(3)
    fleet.firmware = {
        i: VaultFirmware(
            fleet.secrets,
            NodeKey(i, fleet.node_keys[i]),
            os.urandom,
            fleet.accounts,
            guess_limit=5,
        )
        for i in fleet.firmware
    }
    return fleet


def test_a_client_cannot_ask_for_more_guesses_than_measured(capped: InProcessFleet) -> None:
    client = capped.client()
    with pytest.raises(VaultError, match="guess limit must be between 1 and 5"):
        client.register("right", ROOT_KEY, guess_limit=6)
    client.register("right", ROOT_KEY, guess_limit=3)  # fewer is fine
    assert client.status().guesses_remaining == 3


def test_the_measured_limit_itself_is_allowed(capped: InProcessFleet) -> None:
    client = capped.client()
    client.register("right", ROOT_KEY, guess_limit=5)
    assert client.status().guesses_remaining == 5
