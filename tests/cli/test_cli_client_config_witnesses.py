"""`fleet client-config --ota ... --also-witness VKEY@URL`: an over-the-air config that
needs every named witness's fleet head to agree, as docs/operations.md asks of production
("run at least two independent witnesses ... and configure clients with both"). Before,
the command took one witness, and the operator wrote the `[[witnesses]]` tables by hand."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_files import client_config, write_fleet_file  # tests/cli/fleet_files.py

from backupvault.client.config import ClientConfig
from backupvault.transparency.note import Signer

OPERATOR = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()


def vkey(name: str) -> str:
    return Signer(name, Ed25519PrivateKey.generate()).verifier.vkey()


def ota_config(tmp_path: Path, *extra: str) -> tuple[int, dict[str, str]]:
    fleet = tmp_path / "fleet.toml"
    write_fleet_file(fleet, epoch=1)
    return client_config(tmp_path, fleet, *extra)


def test_every_other_witness_is_written_for_the_client_to_check(tmp_path: Path) -> None:
    first, second, third = vkey("w1.test/log"), vkey("w2.test/log"), vkey("w3.test/log")
    code, answer = ota_config(
        tmp_path, "--ota", OPERATOR, "--witness-key", first, "--witness-url", "http://w1.test",
        "--also-witness", f"{second}@http://w2.test",
        "--also-witness", f"{third}@https://w3.test:8700",
    )  # fmt: skip
    assert code == 0, answer
    config = ClientConfig.load(tmp_path / "client.toml")
    assert config.ota is not None
    others = [(w.verifier.vkey(), w.url) for w in config.ota.others]
    assert others == [(second, "http://w2.test"), (third, "https://w3.test:8700")]


def test_a_malformed_or_misplaced_other_witness_is_refused_and_nothing_written(
    tmp_path: Path,
) -> None:
    ota = ["--ota", OPERATOR, "--witness-key", vkey("w1.test/log"), "--witness-url", "http://w1"]
    for extra, exit_code, says in [
        ([*ota, "--also-witness", vkey("w2.test/log")], 2, "VKEY@URL"),
        ([*ota, "--also-witness", "not-a-vkey@http://w2.test"], 2, "it comes from --also-witness"),
        (["--also-witness", f"{vkey('w2.test/log')}@http://w2.test"], 2, "--ota"),
    ]:
        code, error = ota_config(tmp_path, *extra)
        assert code == exit_code, error
        assert says in error["error"] + error.get("hint", "")
        assert not (tmp_path / "client.toml").exists()


def test_a_witness_whose_name_holds_an_at_sign_can_be_another_witness(tmp_path: Path) -> None:
    """`witness keygen --name ops@example.org/witness` makes a vkey that starts with that
    name. Split at its first `@`, `--also-witness VKEY@URL` took `ops` for the vkey and the
    rest for a URL, and refused the witness it takes as the first one (exit 2)."""
    first, second = vkey("w1.test/log"), vkey("ops@example.org/witness")
    code, answer = ota_config(
        tmp_path, "--ota", OPERATOR, "--witness-key", first, "--witness-url", "http://w1.test",
        "--also-witness", f"{second}@https://backup:pass@w2.test",
    )  # fmt: skip
    assert code == 0, answer
    config = ClientConfig.load(tmp_path / "client.toml")
    assert config.ota is not None
    others = [(w.verifier.vkey(), w.url) for w in config.ota.others]
    assert others == [(second, "https://backup:pass@w2.test")]


def test_verify_deployment_splits_another_witness_the_same_way() -> None:
    from backupvault.client.trust import split_vkey_at_url

    named = vkey("ops@example.org/witness")
    assert split_vkey_at_url(f"{named}@http://w2.test") == (named, "http://w2.test")
    assert split_vkey_at_url(f"{named}@HTTPS://u@w2.test") == (named, "HTTPS://u@w2.test")
    plain = vkey("w2.test/log")
    assert split_vkey_at_url(f"{plain}@ftp://w2.test") == (plain, "ftp://w2.test")
    assert split_vkey_at_url(plain) is None
    assert split_vkey_at_url("@http://w2.test") is None
