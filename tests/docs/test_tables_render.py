"""Every table in the user's and operator's pages renders as the table it is written as
(GitHub-flavoured Markdown): a row has as many cells as its header, and a row never
follows a line of text, where it would be read as more of that paragraph.

Two of docs/format.md's did not: the single-blob header's `key_check` row wrote its HMAC
input with `||` inside a code span, which GFM splits into cells all the same (the row
showed `HMAC(check key, magic` and dropped the rest), and the pending-deliveries record
table had a paragraph in its middle, so its `nodes`, `shares` and `sealing` rows showed
as one paragraph of pipes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "SECURITY.md"])
PAGES += sorted((ROOT / "docs").glob("*.md"))


def cells(row: str) -> int:
    """The cells GFM makes of a table row: it splits at every `|` not escaped as `\\|`,
    inside code spans too."""
    return len(re.split(r"(?<!\\)\|", row.strip().strip("|")))


def table_problems(page: Path) -> list[str]:
    problems = []
    in_code = False
    previous = ""
    header_cells = 0
    lines = page.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            in_code = not in_code
        if in_code or line.startswith("```"):
            previous = line
            continue
        is_row = line.startswith("|")
        if is_row and not previous.startswith("|"):
            if previous.strip():
                problems.append(f"{page.name}:{number}: a table row right after text")
            header_cells = cells(line)
        elif is_row and cells(line) != header_cells:
            problems.append(
                f"{page.name}:{number}: {cells(line)} cells, its header has {header_cells}"
            )
        previous = line
    return problems


def test_every_table_row_renders_as_written() -> None:
    assert [p for page in PAGES for p in table_problems(page)] == []


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "| a | b |\n| --- | --- |\n| 1 | `x || y` |\n| 2 | `x \\|\\| y` |\n"
        "\ntext\n| 3 | 4 |\n\n```\n| in | code | block |\n```\n"
    )
    assert table_problems(page) == [
        "page.md:3: 4 cells, its header has 2",
        "page.md:7: a table row right after text",
    ]
