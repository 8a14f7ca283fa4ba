"""`backupvault witness verify-log --state FILE` with a state file it cannot use: a clear
error naming the file, before the witness is asked (the state's vkey is read first)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.cli.main import main
from backupvault.client.trust import load_witness_verifier
from backupvault.deploy import verify
from backupvault.transparency.note import Signer

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


def witness_vkey() -> str:
    return Signer("witness.example/backupvault", Ed25519PrivateKey.generate()).verifier.vkey()


def test_a_witness_that_does_not_answer_is_an_outage_not_a_fork(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a witness that was down exited 7, the code of a forked or rolled-back log,
    so a monitor paged for tampering when the witness was only unreachable."""
    state = tmp_path / "log.json"
    with pytest.raises(SystemExit) as done:
        main(["--json", "witness", "verify-log", "--url", NOWHERE, "--vkey", witness_vkey(),
              "--state", str(state)])  # fmt: skip
    error = json.loads(capsys.readouterr().err)
    assert done.value.code == 5
    assert "did not answer" in error["error"] and "nothing was checked" in error["hint"]
    assert not state.exists()


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_witness_behind_a_proxy_that_is_down_is_an_outage(status: int) -> None:
    verifier = load_witness_verifier(witness_vkey(), None)
    http = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(status)))
    with pytest.raises(verify.DeploymentUnreachable):
        verify.verify_log("http://witness.example", verifier, None, http=http)


def test_a_witness_url_that_serves_no_log_is_still_refused() -> None:
    verifier = load_witness_verifier(witness_vkey(), None)
    http = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(404)))
    with pytest.raises(verify.LogCheckFailed, match="cannot fetch the checkpoint"):
        verify.verify_log("http://witness.example", verifier, None, http=http)


def _usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main(["--json", *args])
    error = json.loads(capsys.readouterr().err)
    assert done.value.code == 2, error
    return str(error["error"])


@pytest.mark.parametrize(
    "url", ["witness.example", "ftp://witness.example", "http://", "", "http://[::1"]
)
def test_a_url_that_is_not_http_is_a_usage_error_not_an_outage(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--url witness.example` (no scheme) said "the witness ... did not answer ... run it
    again when the witness answers" with exit 5, an outage, for a typo; likewise
    verify-deployment's --relay, --witness-url and --also-witness. Exit 2, naming the
    option, before anything is asked."""
    vkey = witness_vkey()
    message = _usage_error(["witness", "verify-log", "--url", url, "--vkey", vkey], capsys)
    assert "--url" in message and "http://" in message
    key = "ab" * 32
    base = ["verify-deployment", "--operator-key", key, "--witness-key", vkey, "--skip-nodes"]
    message = _usage_error([*base, "--relay", url, "--witness-url", NOWHERE], capsys)
    assert "--relay" in message
    message = _usage_error([*base, "--relay", NOWHERE, "--witness-url", url], capsys)
    assert "--witness-url" in message
    message = _usage_error(
        [*base, "--relay", NOWHERE, "--witness-url", NOWHERE, "--also-witness", f"{vkey}@{url}"],
        capsys,
    )
    assert "--also-witness" in message


@pytest.mark.parametrize("key", ["garbage", "ab" * 32, "w+zz+AAAA"])
def test_a_witness_key_that_is_not_one_names_the_option(
    key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--vkey garbage` said "a raw witness_public_key needs witness_name" (exit 1): names
    of the client config's fields, which the command line does not have. Exit 2, naming
    the option, with what a witness key looks like."""
    for option, args in [
        ("--vkey", ["witness", "verify-log", "--url", NOWHERE, "--vkey", key]),
        (
            "--witness-key",
            ["verify-deployment", "--relay", NOWHERE, "--operator-key", "ab" * 32,
             "--witness-url", NOWHERE, "--witness-key", key],
        ),
    ]:  # fmt: skip
        message = _usage_error(args, capsys)
        assert message.startswith(f"{option}: ") and "witness_public_key" not in message


@pytest.mark.parametrize("content", ["[]", "{", '{"checkpoint": "not a checkpoint"}'])
def test_a_state_file_it_cannot_use_is_said_before_the_witness_is_asked_with_vkey_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    """With --vkey given, the state file was read only after the witness answered: with
    the witness down, a state file that can never be used was exit 5 ("run it again when
    the witness answers"), and named only once it answered."""
    state = tmp_path / "log.json"
    state.write_text(content)
    vkey = Signer("w.test/log", Ed25519PrivateKey.generate()).verifier.vkey()
    args = ["--json", "witness", "verify-log", "--url", NOWHERE, "--state", str(state)]
    with pytest.raises(SystemExit) as done:
        main([*args, "--vkey", vkey])
    error = json.loads(capsys.readouterr().err)
    assert done.value.code == 1, error
    assert f"the state file {state}" in error["error"]
    assert state.read_text() == content
