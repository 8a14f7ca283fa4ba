"""The operator commands given a file that is not what they take (a typo, the wrong file of
the deployment, a damaged one): an error naming the file and what to do, never "this is a
bug in backupvault" (which a malformed fleet.toml or witness.toml drew)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.cli.main import main
from backupvault.transparency.note import Signer

#: A real Ed25519 public key (the base point's encoding), as `--operator-key` takes it.
OPERATOR_KEY = "5866666666666666666666666666666666666666666666666666666666666666"

COMMANDS = {
    "fleet ceremony": ["fleet", "ceremony", "--fleet-file"],
    "fleet measure": ["fleet", "measure", "--fleet-file"],
    "fleet deploy": ["fleet", "deploy", "--operator-key", "deploy.key", "--fleet-file"],
    "fleet client-config": [
        "fleet", "client-config", "--relay-url", "http://127.0.0.1:9", "--account", "a",
        "--out", "client.toml", "--fleet-file",
    ],
    "witness add-fleet": [
        "witness", "add-fleet", "--fleet-id", "00ff", "--operator-key", OPERATOR_KEY,
        "--config",
    ],
    "node init": ["node", "init", "--config"],
    "node inspect": ["node", "inspect", "--config"],
}  # fmt: skip

CONTENTS = {
    "not TOML": b"guess_limit = \n",
    "not text": b"\x00\xff\xfe binary",
}


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, str]]:
    with pytest.raises(SystemExit) as done:
        main(["--json", *args])
    error: dict[str, str] = json.loads(capsys.readouterr().err)
    assert isinstance(done.value.code, int)
    return done.value.code, error


@pytest.mark.parametrize("content", CONTENTS.values(), ids=list(CONTENTS))
@pytest.mark.parametrize("command", COMMANDS.values(), ids=list(COMMANDS))
def test_a_file_that_is_not_toml_is_named_not_called_a_bug(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    content: bytes,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BACKUPVAULT_RELAY_TOKEN", "t")
    monkeypatch.setenv("BACKUPVAULT_FLEET_TOKEN", "t")
    monkeypatch.setenv("BACKUPVAULT_DEVICE_KEY", "00" * 32)
    (tmp_path / "deploy.key").write_text("")
    wrong = tmp_path / "wrong.toml"
    wrong.write_bytes(content)
    code, error = run([*command, str(wrong)], capsys)
    assert code == 1
    assert str(wrong) in error["error"]
    assert "bug" not in json.dumps(error) and "Error" not in error["error"]
    assert error.get("hint")
    assert wrong.read_bytes() == content


def test_a_fleet_file_without_nodes_says_what_it_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('guess_limit = 10\nfleet_id = "00ff"\n')
    code, error = run(["fleet", "measure", "--fleet-file", str(fleet)], capsys)
    assert code == 1
    assert f"fleet file {fleet} lacks 'nodes'" in error["error"]
    assert "docs/operations.md" in error["hint"]


@pytest.mark.parametrize("fleet_id", ['"not hex"', '"0ff"', "12345"])
def test_ceremony_names_a_fleet_id_that_is_not_hex(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet_id: str
) -> None:
    """A fleet id that is not hex (hand-edited, or pasted with a typo) drew "unexpected
    ValueError: non-hexadecimal number found in fromhex() arg ...; this is a bug in
    backupvault" (a number instead of a string: TypeError, the same)."""
    fleet = tmp_path / "fleet.toml"
    content = f"fleet_id = {fleet_id}\nguess_limit = 10\n"
    fleet.write_text(content)
    code, error = run(["fleet", "ceremony", "--fleet-file", str(fleet)], capsys)
    assert code == 1, error
    assert f"fleet file {fleet}: fleet_id" in error["error"]
    assert "is not hexadecimal" in error["error"] and "bug" not in json.dumps(error)
    assert fleet.read_text() == content


def test_a_public_key_given_for_the_private_one_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--key deploy.pub` said "not a readable PEM private key", naming neither the file nor
    the file that was meant."""
    public = tmp_path / "deploy.pub"
    public.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, error = run(["relay", "mint-token", "--key", str(public), "--account", "a",
                       "--issuer", "i", "--audience", "x"], capsys)  # fmt: skip
    assert code == 1, error
    assert f"{public} is not a readable PEM private key" in error["error"]
    assert "not the .pub" in error["hint"]


def test_a_token_lifetime_that_is_not_positive_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "operator.key"
    key.write_text("")
    code, error = run(["relay", "mint-token", "--key", str(key), "--account", "a", "--issuer",
                       "i", "--audience", "x", "--ttl", "-5"], capsys)  # fmt: skip
    assert code == 2
    assert "--ttl" in error["error"] and "ttl_seconds" not in error["error"]


@pytest.mark.parametrize("content", [b"", b'fleet_id = "00ff"\n', b"T\x00\x01"])
def test_a_record_that_is_not_one_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    """ "malformed OperatorSignedRecord: expected a OperatorSignedRecord message (tag 82),
    got tag 102" named neither the file nor the one meant."""
    record = tmp_path / "fleet.toml"
    record.write_bytes(content)
    code, error = run(["fleet", "measure", "--record", str(record)], capsys)
    assert code == 1
    assert f"{record} is not a deployment record" in error["error"]
    assert "deployment.bin" in error["hint"]


def test_a_bundle_that_does_not_parse_is_named_in_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error said "epoch None: the bundle and record parse"."""
    bundle = tmp_path / "deployment.bin"  # the record, given where the bundle belongs
    bundle.write_bytes(b"junk")
    vkey = Signer("witness.example/backupvault", Ed25519PrivateKey.generate()).verifier.vkey()
    code, error = run(["verify-deployment", "--bundle", str(bundle), "--operator-key",
                       OPERATOR_KEY, "--witness-key", vkey, "--witness-url",
                       "http://127.0.0.1:9"], capsys)  # fmt: skip
    assert code == 7
    assert f"{bundle}: the bundle and record parse" in error["error"]
    assert "None" not in error["error"]


@pytest.mark.parametrize(
    ("name", "listen", "said"),
    [
        ("witness.example/backupvault", "nonsense", "--listen: the listen address 'nonsense'"),
        ("witness.example/backupvault", "127.0.0.1:99999", "--listen: the listen address"),
        ("a name with spaces", "127.0.0.1:8700", "--name: a key name must be"),
    ],
)
def test_witness_keygen_refuses_a_bad_setting_before_it_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, listen: str, said: str
) -> None:
    """`--listen nonsense` was written into witness.toml and refused only by `witness serve`,
    with the key already made (and a keygen cannot be run again over it). Refused, it is
    the option's slip: exit 2 naming the option, as every command's (review s61: exit 1)."""
    out = tmp_path / "witness"
    code, error = run(["witness", "keygen", "--out", str(out), "--name", name,
                       "--listen", listen], capsys)  # fmt: skip
    assert code == 2
    assert said in error["error"]
    assert not out.exists()


def test_add_fleet_says_a_running_witness_takes_it_at_its_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/operations.md runs `witness add-fleet` before the witness ever started; it said
    # "restart the witness" as if one ran.
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "witness.toml"
    config.write_text('key_file = "witness.key"\n')
    with pytest.raises(SystemExit) as done:
        main(["witness", "add-fleet", "--fleet-id", "00ff", "--operator-key", OPERATOR_KEY,
              "--config", str(config)])  # fmt: skip
    assert done.value.code == 0
    said = capsys.readouterr().out
    assert "restart the witness" not in said
    assert "`witness serve` reads it at start (restart a running one)" in said
    assert 'operator_key = "' + OPERATOR_KEY in config.read_text()


@pytest.mark.parametrize("fleets", ["[1]", '"00ff"', '[{fleet_id = "00ff"}, "x"]'])
def test_add_fleet_names_a_config_whose_fleets_are_not_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleets: str
) -> None:
    """`fleets = [1]` stopped as "unexpected AttributeError ... a bug" (review s60); it is
    the file's fault, said as `witness serve` says it, and nothing is written."""
    config = tmp_path / "witness.toml"
    config.write_text(f'key_file = "witness.key"\nfleets = {fleets}\n')
    before = config.read_text()
    with pytest.raises(SystemExit) as done:
        main(["witness", "add-fleet", "--fleet-id", "00ff", "--operator-key", OPERATOR_KEY,
              "--config", str(config)])  # fmt: skip
    err = capsys.readouterr().err
    assert done.value.code == 1 and "bug" not in err, err
    assert "`fleets` must be a list of [[fleets]] tables" in err
    assert config.read_text() == before


def test_add_fleet_does_not_replace_a_fleets_operator_key_without_being_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`witness add-fleet` for a fleet the witness already vouches for, with another key,
    replaced the key without a word: from its next start the witness logged whatever that
    key signs for the fleet (a mistyped or planted key, say), and a record it logs with a
    higher epoch retires the fleet's real one for every OTA client (their heads name it).
    Now refused, the config unchanged, unless --replace-key says it is meant."""
    config = tmp_path / "witness.toml"
    config.write_text('key_file = "witness.key"\n')
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    add = ["witness", "add-fleet", "--fleet-id", "00ff", "--config", str(config)]
    with pytest.raises(SystemExit) as done:
        main([*add, "--operator-key", OPERATOR_KEY])
    assert done.value.code == 0
    before = config.read_text()
    with pytest.raises(SystemExit) as done:  # the same key again: nothing changes
        main([*add, "--operator-key", OPERATOR_KEY])
    assert done.value.code == 0 and config.read_text() == before
    capsys.readouterr()
    code, error = run([*add, "--operator-key", other], capsys)
    assert code == 1
    assert f"already vouches for fleet 00ff under operator key {OPERATOR_KEY}" in error["error"]
    assert "--replace-key" in error["hint"]
    assert config.read_text() == before
    with pytest.raises(SystemExit) as done:
        main([*add, "--operator-key", other, "--replace-key"])
    assert done.value.code == 0
    assert f'operator_key = "{other}"' in config.read_text()
    assert OPERATOR_KEY not in config.read_text()


def test_add_fleet_reads_a_fleet_id_in_capitals_as_the_witness_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A witness.toml written by hand with the fleet id in capitals ("00FF"): `witness
    serve` reads it as fleet 00ff, but add-fleet compared the text, so another key for the
    fleet went in without --replace-key, and the same key again added a second table, a
    fleet listed twice with which the witness refused to start."""
    config = tmp_path / "witness.toml"
    config.write_text(
        'key_file = "witness.key"\n'
        f'[[fleets]]\nfleet_id = "00FF"\noperator_key = "{OPERATOR_KEY}"\n'
    )
    before = config.read_text()
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    add = ["witness", "add-fleet", "--fleet-id", "00ff", "--config", str(config)]
    code, error = run([*add, "--operator-key", other], capsys)
    assert code == 1 and "already vouches for fleet 00ff" in error["error"]
    assert config.read_text() == before
    with pytest.raises(SystemExit) as done:  # the same key again: still one table
        main([*add, "--operator-key", OPERATOR_KEY])
    assert done.value.code == 0
    assert len(tomllib.loads(config.read_text())["fleets"]) == 1
    with pytest.raises(SystemExit) as done:
        main([*add, "--operator-key", other, "--replace-key"])
    assert done.value.code == 0
    assert tomllib.loads(config.read_text())["fleets"] == [
        {"fleet_id": "00ff", "operator_key": other}
    ]


@pytest.mark.parametrize("fleet_id", ["", "ab" * 65, "xyz"])
def test_add_fleet_refuses_a_fleet_id_no_record_can_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet_id: str
) -> None:
    config = tmp_path / "witness.toml"
    config.write_text('key_file = "witness.key"\n')
    code, error = run(["witness", "add-fleet", "--fleet-id", fleet_id, "--operator-key",
                       OPERATOR_KEY, "--config", str(config)], capsys)  # fmt: skip
    assert code == 2
    assert "1 to 64 bytes" in error["error"]
    assert config.read_text() == 'key_file = "witness.key"\n'
