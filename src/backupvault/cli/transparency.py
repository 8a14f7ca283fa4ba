"""Transparency commands: deployment records (`fleet deploy`, `fleet measure`), the witness
(`witness keygen|serve|verify-log`), checking a deployment (`verify-deployment`), and a
local fleet rotation (`local rotate`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from backupvault.cli.main import Context, cli, pass_context
from backupvault.cli.operator import (
    LOCAL_DIR,
    fleet,
    local,
    no_deployment,
    stopped_while_starting,
)
from backupvault.errors import InvalidInput, UsageError
from backupvault.files import private_folder, write_new_file
from backupvault.protocol import fleet_size_refused

if TYPE_CHECKING:
    from backupvault.client.config import ClientConfig
    from backupvault.deploy.verify import FleetReport
    from backupvault.transparency import Verifier

# As in cli/operator.py, the commands import what they use when they run, so that
# `backupvault --help` does not load the deployment, the witness or the HTTP client.

_FLEET_FILE = click.option(
    "--fleet-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The fleet's fleet.toml (after `fleet ceremony`).",
)


# ---- fleet deploy / measure ------------------------------------------------------------------


@fleet.command("deploy")
@_FLEET_FILE
@click.option(
    "--operator-key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The operator's Ed25519 private key (PEM) that signs deployment records.",
)
@click.option("--epoch", type=int, help="The record's epoch (default: see --previous).")
@click.option(
    "--previous",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The fleet.toml of the epoch this one replaces (a rotation): epoch = its epoch + 1. "
    "Without it: 1 for a new fleet, or fleet.toml's epoch + 1 (an upgrade).",
)
@click.option(
    "--retire-below",
    type=int,
    help="Retire this fleet's epochs below this one: clients never ask them for an entry"
    " again (an entry not moved by then needs its recovery code). Kept in fleet.toml for"
    " later records; it can only grow.",
)
@click.option(
    "--witness",
    "witness_urls",
    multiple=True,
    help="Have this witness log the record first (repeat for each witness; the bundle"
    " carries the first's receipt), then write bundle.bin; if one cannot, nothing is written.",
)
@click.option(
    "--witness-key",
    "witness_keys",
    multiple=True,
    help="The vkey of each --witness, in the same order (`witness keygen` prints it): its"
    " receipt must carry its cosignature and put the record in its signed log, or nothing"
    " is written (exit 7).",
)
@click.option(
    "--resubmit",
    is_flag=True,
    help="Make no new record: submit the existing deployment.bin to each --witness (one "
    "that logged it answers with the receipt it first gave) and rewrite bundle.bin.",
)
@click.option(
    "--package-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Measure this backupvault package directory (default: the installed one).",
)
@pass_context
def fleet_deploy(
    ctx: Context,
    fleet_file: Path,
    key_path: Path,
    epoch: int | None,
    previous: Path | None,
    retire_below: int | None,
    witness_urls: tuple[str, ...],
    witness_keys: tuple[str, ...],
    resubmit: bool,
    package_dir: Path | None,
) -> None:
    """Make, measure and sign the fleet's deployment record: writes deployment.bin next to
    the fleet file and its epoch and measurement into it; with --witness, has the witness
    log it and writes bundle.bin (what the relay serves to clients)."""
    from backupvault.deploy.records import (
        deployed_record,
        next_epoch,
        retirement,
        save_bundle,
        sign_deployment,
        submit,
        write_deployment,
    )
    from backupvault.node.config import FleetDescription
    from backupvault.tokens import load_operator_private_key

    # Each witness's key, to check its receipt before bundle.bin is written: without it a
    # witness (or what answers in its place) could hand back a receipt every client refuses.
    verifiers: list[Verifier | None] = [None] * len(witness_urls)
    if witness_keys:
        if len(witness_keys) != len(witness_urls):
            raise UsageError("give one --witness-key for each --witness, in the same order")
        verifiers = [parse_witness_key(k, None, "--witness-key") for k in witness_keys]
    elif witness_urls:
        ctx.output.warn(
            "the witness's receipt is not checked: give --witness-key VKEY for each --witness"
        )

    if resubmit:
        if not witness_urls:
            raise UsageError("--resubmit needs --witness URL")
        if retire_below is not None:
            raise UsageError("--resubmit makes no new record: leave out --retire-below")
        existing = deployed_record(fleet_file)
        bundles = [
            submit(url, existing, witness=key)  # every witness logs it
            for url, key in zip(witness_urls, verifiers, strict=True)
        ]
        bundle = bundles[0]
        path = save_bundle(fleet_file, bundle)
        ctx.output.result(
            {"bundle": str(path), "leaf_index": bundle.leaf_index, "tree_size": bundle.tree_size},
            f"fresh receipt (leaf {bundle.leaf_index} of {bundle.tree_size}): {path}",
        )
        return
    description = FleetDescription.load(fleet_file)
    replaced = None if previous is None else FleetDescription.load(previous)
    if epoch is None:
        epoch = next_epoch(description, replaced)
    if epoch < 0:
        raise UsageError("the epoch is a whole number >= 0")
    signed, deployed = sign_deployment(
        fleet_file,
        load_operator_private_key(key_path),
        epoch=epoch,
        package_dir=package_dir,
        retired_below=retirement(description, replaced, retire_below, epoch),
    )
    # Every witness logs the record before any file changes: if one cannot be reached or
    # refuses, fleet.toml keeps its epoch and no deployment.bin is written.
    logged = [
        submit(url, signed, witness=key) for url, key in zip(witness_urls, verifiers, strict=True)
    ]
    write_deployment(fleet_file, signed, deployed)
    record = signed.deployment()
    data: dict[str, object] = {
        "fleet_id": record.fleet_id.hex(),
        "epoch": record.epoch,
        "measurement": record.measurement.hex(),
        "retired_below": record.retired_below,
        "record": str(fleet_file.parent / "deployment.bin"),
    }
    text = (
        f"deployment record for fleet {record.fleet_id.hex()} epoch {record.epoch},"
        f" measurement {record.measurement.hex()}: {data['record']}"
    )
    if record.retired_below:
        text += f"\nepochs below {record.retired_below} are retired: no client asks them again"
    if logged:
        data["bundle"] = str(save_bundle(fleet_file, logged[0]))
        data["leaf_index"] = logged[0].leaf_index
        text += f"\nlogged by the witness at index {logged[0].leaf_index}: {data['bundle']}"
    ctx.output.result(data, text)


@fleet.command("measure")
@click.option(
    "--fleet-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Take the configuration from this fleet.toml.",
)
@click.option(
    "--record",
    "record_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Or from this deployment record (deployment.bin, or an operator-signed record).",
)
@click.option(
    "--package-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The backupvault package directory to measure (default: the installed one).",
)
@pass_context
def fleet_measure(
    ctx: Context, fleet_file: Path | None, record_file: Path | None, package_dir: Path | None
) -> None:
    """Print the firmware measurement (and what went into it) for anyone to recompute."""
    from backupvault.node.config import FleetDescription
    from backupvault.transparency import OperatorSignedRecord
    from backupvault.transparency.measure import (
        FirmwareConfig,
        combine,
        default_package_dir,
        measure_environment,
        measure_package,
    )

    if (fleet_file is None) == (record_file is None):
        raise UsageError(
            "give --fleet-file or --record (one of them)",
            hint="--fleet-file fleet.toml measures the code installed here for that fleet;"
            " --record deployment.bin reads the measurement a deployment record names",
        )
    if fleet_file is not None:
        config = FleetDescription.load(fleet_file).firmware_config()
    else:
        assert record_file is not None
        try:
            signed = OperatorSignedRecord.from_bytes(record_file.read_bytes())
            config = FirmwareConfig.of_record(signed.deployment())
        except InvalidInput as err:
            raise InvalidInput(
                f"{record_file} is not a deployment record: {err.message}",
                hint="give the deployment.bin that `fleet deploy` wrote next to fleet.toml,"
                " or --fleet-file fleet.toml",
            ) from None
    root = default_package_dir() if package_dir is None else package_dir.resolve()
    package = measure_package(root)
    environment = measure_environment()
    measurement = combine(package, config, environment.digest)
    data = {
        "package_dir": str(root),
        "files": sum(
            1
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
        ),
        "package_digest": package.hex(),
        **environment.describe(),
        "guess_limit": config.guess_limit,
        "quorum": config.quorum,
        "node_count": config.node_count,
        "kem": config.kem.name,
        "relay_public_keys": [k.hex() for k in config.relay_public_keys],
        "account_issuer": config.account_issuer,
        "account_issuer_public_key": config.account_issuer_public_key.hex(),
        "measurement": measurement.hex(),
    }
    text = "\n".join(
        f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in data.items()
    )
    ctx.output.result(data, text)


# ---- witness --------------------------------------------------------------------------------


@cli.group(short_help="The witness: logs and co-signs deployment records")
def witness() -> None:
    """The witness: logs and co-signs deployment records (run by an independent party)."""


@witness.command("keygen")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for witness.key, witness.toml and (later) the log database.",
)
@click.option("--name", required=True, help="The witness name, e.g. witness.example/backupvault.")
@click.option(
    "--listen",
    default="127.0.0.1:8700",
    show_default=True,
    help="host:port that `witness serve` listens on (written into witness.toml).",
)
@pass_context
def witness_keygen(ctx: Context, out_dir: Path, name: str, listen: str) -> None:
    """Make the witness's signing key (OUT/witness.key) and its config (OUT/witness.toml,
    with no fleets yet: `witness add-fleet` adds them), and print its verifier key, which
    clients and auditors are configured with."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from backupvault.node.config import write_toml
    from backupvault.serving import listen_address
    from backupvault.tokens import private_key_pem
    from backupvault.transparency import Signer

    # Both checked before anything is written: `witness serve` refused a bad `listen` only
    # once the key existed, which a keygen does not overwrite. A bad one is the option's
    # slip (exit 2, as every other command's), not a failure (review s61).
    try:
        listen_address(out_dir / "witness.toml", listen, "127.0.0.1:8700")
    except InvalidInput as err:
        raise UsageError(f"--listen: {err.message}", hint=err.hint) from None
    key = Ed25519PrivateKey.generate()
    try:
        vkey = Signer(name, key).verifier.vkey()
    except InvalidInput as err:
        raise UsageError(f"--name: {err.message}", hint=err.hint) from None
    private_folder(out_dir)  # it holds a private key
    path = out_dir / "witness.key"
    config = out_dir / "witness.toml"
    for existing in (path, config):
        if existing.exists() or existing.is_symlink():
            raise InvalidInput(
                f"{existing} exists; a witness keeps its key for the life of its log"
            )
    write_new_file(path, private_key_pem(key))
    write_toml(
        config,
        {
            "name": name,
            "listen": listen,
            "key_file": "witness.key",
            "database": "witness.sqlite",
            "pin_first_seen": False,
            "fleets": [],
        },
    )
    ctx.output.result(
        {"key_file": str(path), "config": str(config), "vkey": vkey},
        f"wrote {path} and {config}\nvkey: {vkey}",
    )


@witness.command("add-fleet")
@click.option(
    "--config",
    "witness_config",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The witness's witness.toml.",
)
@click.option("--fleet-id", required=True, help="The fleet id (hex, from fleet.toml).")
@click.option(
    "--operator-key",
    required=True,
    help="The operator's deployment-signing public key: 64 hex, or a PEM file "
    "(deploy.pub from `fleet keygen`).",
)
@click.option(
    "--replace-key",
    is_flag=True,
    help="Replace the operator key of a fleet the witness already vouches for (only when"
    " its operator has really changed it).",
)
@pass_context
def witness_add_fleet(
    ctx: Context, witness_config: Path, fleet_id: str, operator_key: str, replace_key: bool
) -> None:
    """Let the witness log deployment records of FLEET_ID signed by OPERATOR_KEY (restart
    `witness serve` afterwards)."""
    from backupvault.client.trust import load_operator_key
    from backupvault.crypto.ed25519 import check_public_key
    from backupvault.node.config import load_toml, write_toml
    from backupvault.transparency.record import MAX_FLEET_ID

    try:
        fleet = bytes.fromhex(fleet_id)
        if not 1 <= len(fleet) <= MAX_FLEET_ID:  # as in a record: `witness serve` refuses it
            raise ValueError
    except ValueError:
        raise UsageError(
            f"--fleet-id takes the fleet id in hex, 1 to {MAX_FLEET_ID} bytes (fleet.toml's"
            " fleet_id)"
        ) from None
    # The witness refuses a small-order key at start; say so now, not at the next restart.
    key_hex = check_public_key(load_operator_key(operator_key, Path.cwd()), "--operator-key").hex()
    data = load_toml(witness_config, "witness config")
    listed = data.get("fleets", [])
    if not isinstance(listed, list) or not all(isinstance(f, dict) for f in listed):
        # As `witness serve` refuses it; `fleets = [1]` stopped here as a bug (review s60).
        raise InvalidInput(
            f"{witness_config}: `fleets` must be a list of [[fleets]] tables; nothing was changed",
            hint="fix the file (docs/transparency.md shows one), then run this again",
        )

    def this_fleet(table: dict[str, Any]) -> bool:
        # As `witness serve` reads it: hex in any case ("00FF" is fleet 00ff, and a table
        # of each was one fleet listed twice, which the witness refuses to start with).
        try:
            return bytes.fromhex(str(table.get("fleet_id"))) == fleet
        except ValueError:
            return False

    for known in listed:
        if not this_fleet(known) or replace_key:
            continue
        # The key decides what the witness logs for the fleet: a record another key signs
        # with a higher epoch would retire the real one for every OTA client.
        try:
            configured = load_operator_key(str(known.get("operator_key")), witness_config.parent)
        except InvalidInput:
            configured = None
        if configured is None or configured.hex() != key_hex:
            shown = known.get("operator_key") if configured is None else configured.hex()
            raise InvalidInput(
                f"{witness_config} already vouches for fleet {fleet.hex()} under operator key"
                f" {shown}, not {key_hex}; nothing was changed",
                hint="check the key with the fleet's operator; give --replace-key only if they"
                " really changed it (the witness then logs what the new key signs for it)",
            )
    fleets = [f for f in listed if not this_fleet(f)]
    fleets.append({"fleet_id": fleet.hex(), "operator_key": key_hex})
    data["fleets"] = fleets
    write_toml(witness_config, data)
    ctx.output.result(
        {"config": str(witness_config), "fleet_id": fleet.hex(), "operator_key": key_hex},
        f"{witness_config}: fleet {fleet.hex()} signed by {key_hex}; `witness serve` reads it"
        " at start (restart a running one)",
    )


@witness.command("serve", cls=click.Command)
@click.option(
    "--config",
    "witness_config",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="witness.toml (see docs/transparency.md).",
)
@click.option("--listen", help="host:port (default: the config's `listen`, else 127.0.0.1:8700)")
def witness_serve(witness_config: Path, listen: str | None) -> None:
    """Serve the witness until stopped."""
    with stopped_while_starting("the witness"):
        import logging

        from backupvault.transparency.witness import WitnessConfig
        from backupvault.transparency.witness_http import serve

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        from backupvault.serving import listen_address

        host, port = listen_address(witness_config, listen, "127.0.0.1:8700")
        serve(WitnessConfig.load(witness_config), host, port)


#: verify-deployment without the keys it checks with.
_TRUST_HINT = (
    "an OTA client config (`local up` writes DIR/client-ota.toml) holds the operator and"
    " witness keys; without one give --operator-key deploy.pub --witness-key witness.vkey"
)
_OTA_HINT = (
    "this config pins the fleet's keys and holds no operator or witness key: give the OTA"
    " one (`local up` writes DIR/client-ota.toml beside client.toml), or --operator-key"
    " and --witness-key"
)


def _client_ota(ctx: Context) -> ClientConfig | None:
    if ctx.config_path is None:
        return None
    config = ctx.config()
    return config if config.ota is not None else None


def parse_witness_key(value: str, name: str | None, option: str) -> Verifier:
    """The witness key given as `option`; a usage error naming the option (the loader's
    own message names the client config's fields, witness_public_key and witness_name)."""
    from backupvault.client.trust import load_witness_verifier

    try:
        return load_witness_verifier(value, name)
    except InvalidInput as err:
        detail = err.message.replace("witness_public_key", option)
        raise UsageError(
            f"{option}: {detail.replace('witness_name', '--witness-name')}",
            hint="a witness key is name+id+base64, as `backupvault witness keygen` and the"
            " witness's GET /v1/witness show it",
        ) from None


def _verifier(ctx: Context, vkey: str | None, name: str | None, option: str) -> Verifier | None:
    if vkey is not None:
        return parse_witness_key(vkey, name, option)
    config = _client_ota(ctx)
    return None if config is None or config.ota is None else config.ota.witness


def http_url(value: str, option: str) -> str:
    """`value` if it is an http(s) URL with a host; else a usage error naming `option` (a
    URL without a scheme was tried, failed, and reported as a server that did not answer:
    exit 5, "run it again", for a typo)."""
    try:
        parts = urlsplit(value)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # an unclosed "[" of an IPv6 host, a bad port
        usable = False
    if not usable:
        raise UsageError(
            f"{option} must be an http:// or https:// URL with a host, not {value!r}",
            hint=f"for example {option} https://witness.example",
        )
    return value


def _url_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else http_url(value, param.opts[0])


@witness.command("verify-log")
@click.option("--url", required=True, callback=_url_option, help="The witness's base URL.")
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Remembers the last checkpoint (JSON; an OTA client's state file works too).",
)
@click.option("--vkey", help="The witness's verifier key (default: the client config's).")
@pass_context
def witness_verify_log(ctx: Context, url: str, state_file: Path | None, vkey: str | None) -> None:
    """Fetch the witness's checkpoint and check that it extends the last one seen (a
    consistency proof); refuses a forked or rolled-back log."""
    from backupvault.deploy.verify import load_checkpoint_state, verify_log
    from backupvault.transparency import TransparencyError, Verifier

    verifier = _verifier(ctx, vkey, None, "--vkey")
    if verifier is None and state_file is not None:
        # Through the checked loader: a file that is not a JSON object is a clear error
        # naming it (it was an AttributeError reported as a bug).
        remembered = load_checkpoint_state(state_file)[0].get("vkey")
        try:
            verifier = None if remembered is None else Verifier.from_vkey(str(remembered))
        except TransparencyError as err:
            raise InvalidInput(
                f"the state file {state_file} keeps a vkey that is not a witness key:"
                f" {err.message}",
                hint="give the witness's key with --vkey (the file then keeps that one)",
            ) from None
    if verifier is None:
        raise UsageError(
            "which witness key? give --vkey (GET /v1/witness shows it; get it from the "
            "witness out of band), or --config with an OTA client config"
        )
    check = verify_log(url, verifier, state_file)
    previous = check.previous
    growth = (
        "no earlier checkpoint remembered"
        if previous is None
        else f"consistent with the one of size {previous.size}"
    )
    ctx.output.result(
        {
            "origin": check.checkpoint.origin,
            "size": check.checkpoint.size,
            "root_hash": check.checkpoint.root_hash.hex(),
            "previous_size": None if previous is None else previous.size,
            "consistent": True,
        },
        f"witness log {check.checkpoint.origin}: {check.checkpoint.size} entries, root"
        f" {check.checkpoint.root_hash.hex()}; {growth}",
    )


# ---- verify-deployment ----------------------------------------------------------------------


@cli.command("verify-deployment")
@click.option(
    "--relay",
    "relay_url",
    callback=_url_option,
    help="The relay's URL (default: the client config's).",
)
@click.option(
    "--bundle",
    "bundle_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Check this bundle file instead of the relay's.",
)
@click.option("--operator-key", help="The operator's Ed25519 public key: 64 hex, or a PEM file.")
@click.option("--witness-key", help="The witness's verifier key (name+id+base64), or 64 hex.")
@click.option("--witness-name", help="The witness's name (with a 64-hex --witness-key).")
@click.option(
    "--witness-url",
    callback=_url_option,
    help="The witness's base URL, asked for the fleet's head (required without an OTA"
    " --config: without it a retired epoch passes); with --bundle, its consistency proofs.",
)
@click.option(
    "--also-witness",
    "others",
    multiple=True,
    help="Another witness that must name the same record: VKEY@URL (repeatable).",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The last checkpoint and fleet epochs seen (JSON, as `witness verify-log` or an OTA"
    " client keeps it); a smaller log or an older epoch is refused. Default with an OTA"
    " --config (and no --witness-key): that client's own state file.",
)
@click.option(
    "--expect-measurement",
    "expected",
    multiple=True,
    help="Allowed firmware measurement (hex); repeat for several.",
)
@click.option("--skip-nodes", is_flag=True, help="Do not ask the nodes for their measurement.")
@pass_context
def verify_deployment_command(
    ctx: Context,
    relay_url: str | None,
    bundle_file: Path | None,
    operator_key: str | None,
    witness_key: str | None,
    witness_name: str | None,
    witness_url: str | None,
    others: tuple[str, ...],
    state_file: Path | None,
    expected: tuple[str, ...],
    skip_nodes: bool,
) -> None:
    """Check each fleet the relay serves (or one bundle) against the operator and witness
    keys and the log, and each running node's measurement against the record. Exit 7 on a
    mismatch; 5 when nothing failed but a node or witness could not be reached."""
    from backupvault.client.trust import load_operator_key, split_vkey_at_url
    from backupvault.deploy.verify import (
        DeploymentCheckFailed,
        DeploymentUnreachable,
        TrustInputs,
        local_measurement,
        verify_deployment,
    )
    from backupvault.http_answers import untrusted_client
    from backupvault.transparency.head import DEFAULT_MAX_AGE
    from backupvault.transparency.record import MEASUREMENT_LEN

    config = _client_ota(ctx)
    ota = None if config is None else config.ota
    if operator_key is not None:
        operator = load_operator_key(operator_key, Path.cwd())
    elif ota is not None:
        operator = ota.operator_key
    else:
        raise UsageError(
            "give --operator-key, or --config with an OTA client config",
            hint=_OTA_HINT if ctx.config_path is not None else _TRUST_HINT,
        )
    verifier = _verifier(ctx, witness_key, witness_name, "--witness-key")
    if verifier is None:
        raise UsageError(
            "give --witness-key, or --config with an OTA client config",
            hint=_OTA_HINT if ctx.config_path is not None else _TRUST_HINT,
        )
    if relay_url is None and bundle_file is None:
        if config is None:
            raise UsageError("give --relay URL or --bundle FILE")
        relay_url = config.relay_url
    try:
        allowed = frozenset(bytes.fromhex(m) for m in expected) if expected else None
        if allowed is not None and any(len(m) != MEASUREMENT_LEN for m in allowed):
            raise ValueError  # one cut short matches no fleet: REFUSED, blaming it
    except ValueError:
        raise UsageError("--expect-measurement takes 64 hex characters") from None
    witnesses: list[tuple[Verifier, str]] = []
    if witness_url is not None:
        witnesses.append((verifier, witness_url))
    elif ota is not None and witness_key is None:
        witnesses.append((ota.witness, ota.witness_url))
    if ota is not None and not others:
        witnesses.extend((w.verifier, w.url) for w in ota.others)
    for other in others:
        split = split_vkey_at_url(other)
        if split is None:
            raise UsageError("--also-witness takes VKEY@URL")
        vkey, url = split
        verifier_of = parse_witness_key(vkey, None, "--also-witness")
        witnesses.append((verifier_of, http_url(url, "--also-witness")))
    if not witnesses:
        raise UsageError(
            "give --witness-url URL (or --config with an OTA client config): only a witness's"
            " head for the fleet shows that the record the relay serves is still its latest, so"
            " without one a retired epoch would pass for the current one"
        )
    if state_file is None and ota is not None and witness_key is None:
        # The client's own state: the check goes on from what that client has seen, and
        # what passes is kept there as the client keeps it (under its lock). Without it
        # every run was a "first use", with the client's checkpoint beside it (s40-R2).
        state_file = ota.state_file
    trust = TrustInputs(
        operator,
        verifier,
        allowed,
        None if ota is None else ota.fleet_id,
        tuple(witnesses),
        DEFAULT_MAX_AGE if ota is None else ota.max_age,
    )
    with untrusted_client(10.0, trust_env=False) as http:
        reports = verify_deployment(
            trust,
            relay_url=relay_url if bundle_file is None else None,
            bundle_file=bundle_file,
            state_file=state_file,
            witness_url=witness_url,
            check_node_measurements=not skip_nodes,
            http=http,
        )
    texts = []
    for report in reports:
        text = report.text()
        if report.record is not None:
            mine = local_measurement(report.record)
            same = "the same" if mine == report.record.measurement else "another release"
            text += f"\n  (this installation measures {mine.hex()} for that fleet: {same})"
        texts.append(text)
    ok = bool(reports) and all(r.ok for r in reports)
    incomplete = not ok and bool(reports) and all(r.verdict != "REFUSED" for r in reports)
    verdict = "trusted" if ok else "incomplete" if incomplete else "refused"
    summary = {
        "trusted": "every check passed",
        "incomplete": "INCOMPLETE: not every node or witness answered (not verified);"
        " every check that could be made passed",
        "refused": "FAILED",
    }[verdict]
    ctx.output.result(
        {"ok": ok, "verdict": verdict, "fleets": [r.as_dict() for r in reports]},
        "\n\n".join(texts) + f"\n\nverdict: {summary}",
    )
    if incomplete:
        missing = [f"{_which(r)}: {c.name}" for r in reports for c in r.checks if c.unreachable]
        raise DeploymentUnreachable(
            "could not check every node or witness, unreachable: " + "; ".join(missing),
            hint="an outage, not a mismatch: nothing that answered failed a check; run it again"
            " when they answer (until then the deployment is not verified)",
        )
    if not ok:
        failed = [
            f"{_which(r)}: {c.name}" for r in reports for c in r.checks if c.status == "failed"
        ]
        raise DeploymentCheckFailed(
            "the deployment does not match its public record: " + "; ".join(failed),
            hint="do not trust this fleet; keep the output and the state file as evidence",
        )


def _which(report: FleetReport) -> str:
    """The fleet epoch a report is of, or where it came from when nothing parsed."""
    return f"epoch {report.epoch}" if report.epoch is not None else report.source


# ---- local rotate ---------------------------------------------------------------------------


@local.command("rotate")
@LOCAL_DIR
@click.option("--nodes", type=int, help="Nodes of the new epoch (default: as many as now).")
@pass_context
def local_rotate(ctx: Context, root: Path, nodes: int | None) -> None:
    """Rotate the local fleet to a new epoch: new nodes and keys, a new record logged by the
    witness; the relay serves it and keeps routing the old epoch for migration."""
    from backupvault.deploy.local import LocalDeployment

    deployment = LocalDeployment(root)
    if not deployment.provisioned():
        raise no_deployment(root)
    if nodes is not None and (refused := fleet_size_refused(nodes)):
        raise UsageError(refused)
    ctx.output.note("provisioning the new epoch: tokens and each node's own keys …")
    deployment.up(deployment.node_count())
    epoch = deployment.rotate(nodes)
    # The epochs of the older records, as the relay routes them (/v1/epochs/<E>/...); not
    # the node sets' folder numbers, which an upgrade (a new record for the same nodes)
    # leaves behind.
    previous = sorted(
        e for e in (deployment.fleet(d).epoch for d in deployment.epochs()[:-1]) if e is not None
    )
    ctx.output.result(
        {"dir": str(root), "epoch": epoch, "previous_epochs": previous},
        f"fleet rotated to epoch {epoch}; {still_routed(previous)}",
    )


@local.command("retire")
@LOCAL_DIR
@click.option(
    "--force",
    is_flag=True,
    help="Retire even while an older node set holds live keys (they then open only with"
    " their recovery codes).",
)
@pass_context
def local_retire(ctx: Context, root: Path, force: bool) -> None:
    """Retire the node sets older than the current one (after `local rotate`, once entries
    have moved): a record that retires their epochs, so no client asks them again; their
    nodes stop, their tokens and stores are deleted, and the relay no longer routes them.
    Refused while one of their nodes still holds a live key, unless --force."""
    from backupvault.deploy.local import LocalDeployment

    deployment = LocalDeployment(root)
    if not deployment.provisioned():
        raise no_deployment(root)
    epoch, retired_below = deployment.retire(force=force)
    ctx.output.result(
        {"dir": str(root), "epoch": epoch, "retired_below": retired_below},
        f"epochs below {retired_below} retired: the record of epoch {epoch} says so, their"
        " nodes are stopped and wiped (tokens, PINs, stores) and the relay no longer routes"
        " them; a key still there needs its recovery code",
    )


def still_routed(previous: list[int]) -> str:
    """The older epochs a rotation leaves routed, named as a sentence."""
    epochs = "epoch" if len(previous) == 1 else "epochs"
    return f"the relay still routes {epochs} {', '.join(map(str, previous))} for clients to migrate"
