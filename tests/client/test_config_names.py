"""A client config's `account` and `entry` must be names the vault takes (1 to 64
characters of `A-Z a-z 0-9 . _ -`, docs/protocol.md "Encoding"). They were taken as any
string: `fleet client-config --account alice@example.com` wrote such a config (exit 0),
and every vault command run with it then failed with exit 1 and "account must be 1-64
characters ...", naming neither the file, nor the field, nor the option it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.client.test_pinned_signing_keys import _pinned_config as pinned_config
from tests.client.test_pinned_signing_keys import _real_keys as real_keys

from backupvault.client.config import ClientConfig, MalformedField


def _pinned_config(**fields: str) -> dict[str, Any]:
    return {**pinned_config(real_keys(1)), **fields}


def test_the_names_the_vault_takes_are_taken(tmp_path: Path) -> None:
    config = ClientConfig.parse(tmp_path / "client.toml", _pinned_config(entry="photos.v2_a-1"))
    assert (config.account, config.entry) == ("alice", "photos.v2_a-1")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("account", "alice@example.com"),
        ("account", "al ice"),
        ("account", ""),
        ("account", "a" * 65),
        ("account", "älice"),
        ("entry", "my photos"),
        ("entry", "../x"),
    ],
)
def test_a_name_the_vault_refuses_is_named_as_the_config_s_field(
    tmp_path: Path, field: str, value: str
) -> None:
    path = tmp_path / "client.toml"
    with pytest.raises(MalformedField) as caught:
        ClientConfig.parse(path, _pinned_config(**{field: value}))
    assert caught.value.field == field
    assert caught.value.message.startswith(f"config file {path}: field {field!r} is malformed")
    assert repr(value[:80]) in caught.value.message
