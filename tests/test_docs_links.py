"""Every relative link in the README and the docs leads to a file that exists, and every
`#anchor` to a heading of it (GitHub's slugs): a link whose heading was renamed landed at
the top of the page (review s47, the new-user walkthrough: README's link to the
repository format)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _outside_code(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and
    underscores kept), spaces made hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: Counter[str] = Counter()
    found = set()
    for line in _outside_code(page.read_text()):
        heading = re.match(r"#{1,6} (.+)", line)
        if heading is None:
            continue
        base = slug(heading.group(1))
        found.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def test_slugs_are_github_s() -> None:
    assert (
        slug("Repository format (version 3): incremental, deduplicated backups")
        == "repository-format-version-3-incremental-deduplicated-backups"
    )
    assert slug("## `backupvault backup create SOURCE`".lstrip("# ")) == (
        "backupvault-backup-create-source"
    )
    assert slug("config (117 bytes)") == "config-117-bytes"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_exists(page: Path) -> None:
    broken = []
    for line in _outside_code(page.read_text()):
        # Inline code may show link syntax without being a link.
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not followed here
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{target}: no heading with that anchor in {linked.name}")
    assert not broken, broken
