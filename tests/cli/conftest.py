"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def ctrl_c_as_in_a_terminal() -> Iterator[None]:
    """SIGINT as a terminal's command gets it (a pytest-xdist worker ignores it, and an
    ignored SIGINT stays ignored: test_an_ignored_sigint_stays_ignored_during_the_check).
    Used by the files that send it: `pytestmark = pytest.mark.usefixtures(...)`."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
