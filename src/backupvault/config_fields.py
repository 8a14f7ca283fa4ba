"""Refusing a field an operator's file (node.toml, fleet.toml, witness.toml) does not take.

A misspelt field used to be ignored, and its setting silently not applied: a guess limit
or a node limit left at its default, a witness head file left beside the database it
guards. The refusal names the field, where it is, and the field it may have meant."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backupvault.errors import InvalidInput

#: A file's fields: each top-level name, with the fields of its table (or of each table
#: of its array of tables), or None for a plain value.
Fields = Mapping[str, frozenset[str] | None]


def check_fields(path: Path, kind: str, data: dict[str, Any], fields: Fields, guide: str) -> None:
    """Raise InvalidInput for the first field of `data` that `fields` does not name."""
    for name, value in data.items():
        if name not in fields:
            raise _unknown(path, kind, name, frozenset(fields), "", guide)
        known = fields[name]
        if known is None:
            continue
        tables = value if isinstance(value, list) else [value]
        for number, table in enumerate(tables, 1):
            if not isinstance(table, dict):
                continue  # the loader's own check names a malformed value
            where = f" in [{name}]" if isinstance(value, dict) else f" in [[{name}]] {number}"
            for field_name in table:
                if field_name not in known:
                    raise _unknown(path, kind, field_name, known, where, guide)


def _unknown(
    path: Path, kind: str, name: str, known: frozenset[str], where: str, guide: str
) -> InvalidInput:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"did you mean {close[0]!r}? rename it in {path}" if close else f"remove it; {guide}"
    return InvalidInput(f"{kind} {path}: unknown field {name!r}{where}", hint=hint)
