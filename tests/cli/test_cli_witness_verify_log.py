"""`backupvault witness verify-log --state FILE` with a state file it cannot use: a clear
error naming the file, before the witness is asked (the state's vkey is read first)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backupvault.cli.main import main

#: Nothing listens there: the command must stop before it asks the witness anything.
NOWHERE = "http://127.0.0.1:9"


def verify_log(state: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    with pytest.raises(SystemExit) as done:
        main(["--json", "witness", "verify-log", "--url", NOWHERE, "--state", str(state)])
    error: dict[str, object] = json.loads(capsys.readouterr().err)
    assert isinstance(done.value.code, int)
    return done.value.code, error


@pytest.mark.parametrize(
    "content",
    ["[]", "7", '"a string"', "null", "[" * 100_000 + "]" * 100_000, "{", "\x00"],
    ids=["a list", "a number", "a string", "null", "deep", "cut", "NUL"],
)
def test_a_state_file_that_is_not_an_object_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    """Before: `json.loads(...).get("vkey")` on a file that is JSON but not an object was
    an AttributeError, reported as "unexpected AttributeError ... this is a bug"."""
    state = tmp_path / "log.json"
    state.write_text(content)
    code, error = verify_log(state, capsys)
    assert code == 1
    assert f"the state file {state}" in str(error["error"])
    assert "bug" not in json.dumps(error) and "AttributeError" not in json.dumps(error)
    assert state.read_text() == content


def test_a_state_file_keeping_a_vkey_that_is_not_a_key_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "log.json"
    state.write_text(json.dumps({"version": 1, "vkey": "not a key"}))
    code, error = verify_log(state, capsys)
    assert code == 1
    assert "keeps a vkey that is not a witness key" in str(error["error"])
    assert "--vkey" in str(error["hint"])
