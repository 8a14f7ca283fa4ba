"""The `fleet` fixture: a fresh in-process fleet (inprocess_fleet.py) per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from inprocess_fleet import InProcessFleet


@pytest.fixture
def fleet() -> Iterator[InProcessFleet]:
    yield InProcessFleet()
