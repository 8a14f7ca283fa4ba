"""Every relay setting the docs name as one of relay.toml's ("`burst` in relay.toml") is a
setting the relay takes: docs/operations.md sent an operator whose relay answered 429s
to `rate_per_second` in relay.toml, which the relay refuses as an unknown setting (its
rate is `rate_per_minute`)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from backupvault.relay.config import RelayConfig

ROOT = Path(__file__).resolve().parent.parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
#: One name or a list of them ("`a`, `b` and `c`") right before "in relay.toml".
NAMED = re.compile(r"((?:`[a-z_]+`(?:, | and | or )?)+) in relay\.toml")


def test_every_relay_setting_the_docs_name_is_one_the_relay_takes() -> None:
    settings = {f.name for f in dataclasses.fields(RelayConfig) if f.init}
    settings |= {"nodes", "listen"}  # `nodes` stands for node_urls; `listen` is top-level
    named = {
        (page.name, name)
        for page in PAGES
        for names in NAMED.findall(page.read_text(encoding="utf-8"))
        for name in re.findall(r"`([a-z_]+)`", names)
    }
    assert named, "the pattern finds the docs' mentions"
    assert sorted((page, name) for page, name in named if name not in settings) == []
