"""`pytest tests/sim --seed N` runs one seed (and shrinks it if it fails)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--seed", type=int, default=None, help="run this one simulation seed")
