"""Operator commands: a local deployment, nodes, the fleet, the relay."""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
import tomli_w
from click.core import ParameterSource

from backupvault.cli.main import Context, _plural, cli, pass_context
from backupvault.client import DEFAULT_ENTRY
from backupvault.errors import BackupVaultError, InvalidInput, UsageError
from backupvault.files import private_folder, replace_file, write_new_file
from backupvault.protocol import fleet_size_refused

if TYPE_CHECKING:
    from backupvault.node.config import FleetDescription

# The commands import what they use when they run: `backupvault --help` loads this module
# to list them, and the deployment, the node's config and the tokens take a few tenths of
# a second to import.

# ---- local ------------------------------------------------------------------------------


@cli.group()
def local() -> None:
    """A whole deployment on this machine (nodes + relay on loopback), for trying it out."""


LOCAL_DIR = click.option(
    "--dir",
    "root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path, resolve_path=True),
    help="The folder that holds the local deployment (made by `local up`).",
)


#: A node's process name in a local deployment: node<i>, or e<E>-node<i> after a rotation.
NODE_NAME = re.compile(r"(e\d+-)?node\d+")


@local.command("up", short_help="Start a local fleet, witness and relay (made the first time)")
@LOCAL_DIR
@click.option("--nodes", default=5, show_default=True, help="Vault nodes (odd).")
@pass_context
def local_up(ctx: Context, root: Path, nodes: int) -> None:
    """Start (provisioning the first time) a local fleet, witness and relay; writes
    DIR/client.toml (pinned keys) and DIR/client-ota.toml (over-the-air keys), and renews
    their account tokens when they are close to expiry. The services listen on loopback
    ports from 20000-32767, or from $BACKUPVAULT_PORTS (FIRST-LAST; two per node and
    three more)."""
    from backupvault.deploy.local import (
        LOCK_FILE,
        TOKEN_RENEW_BEFORE,
        LocalDeployment,
        local_ports,
    )

    deployment = LocalDeployment(root)
    renewed: list[str] = []
    was_provisioned = deployment.provisioned()
    if not was_provisioned:
        # Before anything is said or made, as `local rotate`.
        if refused := fleet_size_refused(nodes):
            raise UsageError(refused, hint="give --nodes an odd number, or leave it out for 5")
        if "#" in str(root) or "\n" in str(root):
            # softhsm2.conf names each token's folder, and SoftHSM2 reads a '#' as the start
            # of a comment (with no way to quote it): provisioning failed half-way with
            # "Failed to enumerate object store in <the path up to the #>" (review s61).
            raise UsageError(
                f"{root} cannot hold a local deployment: SoftHSM2, which keeps the nodes'"
                " tokens there, reads a '#' in a path as the start of a comment",
                hint="give --dir a folder whose path has no '#' (nor a line break)",
            )
        # `--dir ~` made the home folder 0700 and filled it with keys and PINs. A folder
        # an interrupted provisioning left has its logs/ folder (made first), or only the
        # lock file of the `local up` that was interrupted.
        others = root.is_dir() and any(p.name != LOCK_FILE for p in root.iterdir())
        if others and not (root / "logs").is_dir():
            raise UsageError(
                f"{root} holds other files and no local deployment: a deployment makes its"
                " folder private (mode 0700) and fills it with keys",
                hint=f"give --dir a new folder, such as {root / 'bv'}",
            )
        # A bad BACKUPVAULT_PORTS is refused before "provisioning" is said.
        needed = 2 * nodes + 3  # each node's client and peer ports, the relay, 2 witnesses
        if len(local_ports()) < needed:
            raise UsageError(
                f"BACKUPVAULT_PORTS gives {len(local_ports())} ports; a deployment of"
                f" {_plural(nodes, 'node')} needs {needed} (two per node, the relay and two"
                " witnesses)",
                hint="give a wider range, such as BACKUPVAULT_PORTS=20000-32767",
            )
        ctx.output.note(f"provisioning {_plural(nodes, 'node')}: tokens and each node's own keys …")
    else:
        renewed = deployment.renew_client_tokens()
    for name in renewed:
        ctx.output.note(
            f"renewed the account tokens in {root / name}"
            f" (they had run out or had under {TOKEN_RENEW_BEFORE // 86400} days left)"
        )
    was_running = set(deployment.running()) if deployment.provisioned() else set()
    already = deployment.provisioned() and deployment.all_running()
    deployment.up(nodes)
    status = deployment.status()
    # Those started again next to ones still running (new-user walkthrough s47: "up" said
    # nothing of the two nodes it had restarted).
    started = sorted(set(deployment.running()) - was_running) if was_running else []
    running_nodes = sum(bool(NODE_NAME.fullmatch(n)) for n in status)
    asked = click.get_current_context().get_parameter_source("nodes")
    # The current epoch's: a rotated deployment runs the older epochs' nodes too until
    # `local retire`.
    size = deployment.node_count(deployment.current_epoch()) if was_provisioned else nodes
    if asked is ParameterSource.COMMANDLINE and nodes != size:
        # Said, not passed over (new-user review s48): the size is the made fleet's.
        ctx.output.warn(
            f"--nodes {nodes} is for a new deployment; the one in {root} has"
            f" {_plural(size, 'node')} (`backupvault local rotate --nodes N` changes that)"
        )
    state = (
        "already running"
        if already
        else f"up (started again: {', '.join(started)})"
        if started
        else "up"
    )
    ctx.output.result(
        {
            "dir": str(root),
            "already_running": already,
            "started_again": started,
            "renewed_tokens": renewed,
            "client_config": str(root / "client.toml"),
            "ota_client_config": str(root / "client-ota.toml"),
            "processes": status,
        },
        f"local deployment {state}: {_plural(running_nodes, 'node')}, "
        f"{sum(name.startswith('witness') for name in status)} witnesses and the relay at "
        f"{status['relay']['url']}\nclient config: {root / 'client.toml'} (pinned fleet keys),"
        f" {root / 'client-ota.toml'} (fleet keys over the air)",
    )


@local.command(
    "upgrade", short_help="Deploy and restart on the version of backupvault installed now"
)
@LOCAL_DIR
@pass_context
def local_upgrade(ctx: Context, root: Path) -> None:
    """After installing another version of backupvault: deploy a new record for it (the
    same nodes and keys, the next epoch, logged by the witness) and restart on it."""
    from backupvault.deploy.local import LocalDeployment

    deployment = LocalDeployment(root)
    if not deployment.provisioned():
        raise UsageError(f"{root} holds no local deployment; run `local up --dir {root}` first")
    epoch, upgraded = deployment.upgrade()
    ctx.output.result(
        {"dir": str(root), "epoch": epoch, "upgraded": upgraded, "processes": deployment.status()},
        f"local deployment upgraded: epoch {epoch}, a record for the code installed now;"
        " your keys and backups are unchanged"
        if upgraded
        else f"nothing to do: epoch {epoch}'s record already names the code installed now"
        " (`local up` starts what is stopped)",
    )


@local.command("down")
@LOCAL_DIR
@pass_context
def local_down(ctx: Context, root: Path) -> None:
    """Stop the local deployment's processes (its data stays for the next `up`)."""
    from backupvault.deploy.local import LocalDeployment

    deployment = LocalDeployment(root)
    stopped = deployment.down()
    if stopped:
        text = f"local deployment stopped ({', '.join(stopped)})"
    elif deployment.provisioned():
        text = f"nothing is running in {root}: the local deployment there is already down"
    else:
        text = f"nothing is running in {root}: it holds no local deployment"
    ctx.output.result({"dir": str(root), "stopped": stopped}, text)


def no_deployment(root: Path) -> UsageError:
    """For a --dir that holds no local deployment."""
    return UsageError(
        f"there is no local deployment in {root}",
        hint=f"`backupvault local up --dir {root}` makes one there; or give --dir the"
        " folder an earlier `local up` was given",
    )


@local.command("status")
@LOCAL_DIR
@pass_context
def local_status(ctx: Context, root: Path) -> None:
    """Show each process of the local deployment."""
    from backupvault.deploy.local import LocalDeployment

    if not (root / "fleet.toml").is_file():  # made first when provisioning
        raise no_deployment(root)
    status = LocalDeployment(root).status()
    lines = [
        f"{name:8} pid {info['pid'] or '-':>7}  "
        f"{'running' if info['running'] else 'stopped':8} "
        f"{'healthy' if info['healthy'] else 'unhealthy':9}  {info['url']}"
        for name, info in status.items()
    ]
    ctx.output.result({"processes": status}, "\n".join(lines))
    down = [name for name, info in status.items() if not info["healthy"]]
    if down:  # for scripts and cron checks: exit 5, as `relay metrics` with a node down
        stopped = not any(info["running"] for info in status.values())
        raise NotRunning(
            "the local deployment is stopped"
            if stopped
            else f"the local deployment is not healthy: {', '.join(down)}",
            hint=f"`backupvault local up --dir {root}` starts "
            + ("it again, keys and all" if stopped else "what is stopped"),
        )


class NotRunning(BackupVaultError):
    """Some process of a local deployment is stopped or not healthy: exit 5 (unavailable),
    for scripts and cron checks, as `relay metrics` with a node down."""

    exit_code = 5


# ---- node -------------------------------------------------------------------------------


@cli.group()
def node() -> None:
    """Run a vault node."""


_NODE_CONFIG = click.option(
    "--config",
    "node_config",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The node's TOML config.",
)


@node.command("init")
@_NODE_CONFIG
@pass_context
def node_init(ctx: Context, node_config: Path) -> None:
    """Create this node's own keys (identity, HPKE, signing, storage), sealed by its token
    (once); print the public keys to list under this node in fleet.toml."""
    from backupvault.node.config import NodeConfig
    from backupvault.node.main import init_node

    public = init_node(NodeConfig.load(node_config)).describe()
    # Text output: TOML lines to paste under this node's [[nodes]] entry in fleet.toml.
    ctx.output.result(public, "\n".join(f'{name} = "{value}"' for name, value in public.items()))


@node.command("inspect")
@_NODE_CONFIG
@click.option("--account", help="Only this account's entry (default: every entry).")
@click.option(
    "--entry", default=DEFAULT_ENTRY, show_default=True, help="With --account: the entry."
)
@pass_context
def node_inspect(ctx: Context, node_config: Path, account: str | None, entry: str) -> None:
    """Show what this node's disk holds (counters and flags, never secrets)."""
    from backupvault.hsm.state import EntryId
    from backupvault.node.config import NodeConfig
    from backupvault.node.main import inspect_store

    only = None if account is None else EntryId.of(account, entry)
    entries = inspect_store(NodeConfig.load(node_config), only)
    if only is not None:
        ctx.output.result(entries[0], "\n".join(f"{k}: {v}" for k, v in entries[0].items()))
        return
    text = "\n".join(
        f"{e['account']}/{e['entry']}: {e['flow']}, {e['status']}"
        + (
            f", {e['attempts_used']} attempts used, version {e['version']}"
            + (", holds a share" if e["holds_share"] else ", holds no share")
            if "version" in e
            else ""
        )
        for e in entries
    )
    ctx.output.result({"entries": entries}, text or "no entries")


@contextlib.contextmanager
def stopped_while_starting(service: str) -> Iterator[None]:
    """SIGTERM or Ctrl-C while `service` still starts (a node imports, measures its code,
    unseals its keys and opens its store: a second or more, minutes for a large store's
    first start on a new format) is a stop, as it is once the service serves
    (`serving.run_until_stopped` takes those signals and returns): status 0. It was the
    command line's Ctrl-C, "interrupted" with a client's hint about password checks and
    status 130, so a `systemctl stop` or `restart` of a node still starting left a failed
    unit. The start is left as by any failure: nothing it opened is used."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"{service} stopped while starting (SIGTERM or Ctrl-C)", err=True)


@node.command("serve", cls=click.Command)
@_NODE_CONFIG
def node_serve(node_config: Path) -> None:
    """Serve the node until stopped."""
    with stopped_while_starting("the node"):
        from backupvault.node.main import serve

        serve(node_config)


# ---- fleet ------------------------------------------------------------------------------


@cli.group()
def fleet() -> None:
    """Fleet-wide operations."""


@fleet.command("ceremony", short_help="Give the fleet its id and check every node's public keys")
@click.option(
    "--fleet-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="fleet.toml listing every node's URL and public keys (from `node init`).",
)
@pass_context
def fleet_ceremony(ctx: Context, fleet_file: Path) -> None:
    """Collect the fleet: give it a fleet id (once) and check every node's public keys in
    the fleet file. Every key is the node's own (`node init`); there is no fleet-wide
    secret to make or transfer."""
    from backupvault.node.config import FleetDescription, load_toml, write_toml

    data = load_toml(fleet_file, "fleet file")
    given = data.get("fleet_id")
    try:
        fleet_id = bytes.fromhex(given) if given else os.urandom(16)
    except (TypeError, ValueError):  # was "unexpected ValueError ... a bug in backupvault"
        raise InvalidInput(
            f"fleet file {fleet_file}: fleet_id {str(given)[:80]!r} is not hexadecimal;"
            " nothing was written",
            hint="give the fleet id `fleet ceremony` made (as in the fleet.toml of its other"
            " epochs), or remove the line for a new fleet: it then makes one",
        ) from None
    data.pop("opaque_server_public_key", None)  # the removed single-seed flow's key
    data["fleet_id"] = fleet_id.hex()
    write_toml(fleet_file, data)
    fleet = FleetDescription.load(fleet_file)  # every node's own public keys, valid
    ctx.output.result(
        {"fleet_id": fleet_id.hex(), "nodes": len(fleet.nodes)},
        f"fleet {fleet_id.hex()}: {len(fleet.nodes)} nodes, each with its own keys;"
        " deploy it with `backupvault fleet deploy`",
    )


@fleet.command("keygen")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for deploy.key (keep it offline) and deploy.pub.",
)
@pass_context
def fleet_keygen(ctx: Context, out_dir: Path) -> None:
    """Make the operator's deployment-signing key: OUT/deploy.key signs deployment records
    (`fleet deploy --operator-key`); its public key (deploy.pub, and the hex printed) goes
    to the witness and into over-the-air client configs."""
    from backupvault.tokens import generate_operator_key, save_operator_key

    private_folder(out_dir)  # it holds a private key
    key = generate_operator_key()
    save_operator_key(key, out_dir / "deploy.key", out_dir / "deploy.pub")
    public = key.public_key().public_bytes_raw().hex()
    ctx.output.result(
        {
            "private_key": str(out_dir / "deploy.key"),
            "public_key_file": str(out_dir / "deploy.pub"),
            "public_key": public,
        },
        f"wrote {out_dir / 'deploy.key'} (secret; keep it offline) and "
        f"{out_dir / 'deploy.pub'}\npublic key (hex): {public}",
    )


@fleet.command("client-config")
@click.option(
    "--fleet-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The fleet's fleet.toml (after `fleet ceremony`).",
)
@click.option("--relay-url", required=True, help="The relay's URL as clients reach it.")
@click.option("--account", required=True, help="The user's account name.")
@click.option(
    "--token",
    envvar="BACKUPVAULT_RELAY_TOKEN",
    show_envvar=True,
    required=True,
    help="The user's relay token (`relay mint-token --audience`).",
)
@click.option(
    "--fleet-token",
    envvar="BACKUPVAULT_FLEET_TOKEN",
    show_envvar=True,
    required=True,
    help="The user's fleet token (`relay mint-token --fleet-id`), sent only inside the seal.",
)
@click.option(
    "--device-key",
    envvar="BACKUPVAULT_DEVICE_KEY",
    show_envvar=True,
    required=True,
    help="The device key the fleet token is bound to (`relay device-key`: its private hex).",
)
@click.option(
    "--ota",
    "ota_operator_key",
    metavar="OPERATOR_KEY",
    help="Write an over-the-air config trusting this deployment-signing key (64 hex or a "
    "PEM file such as deploy.pub) instead of pinning the fleet's keys.",
)
@click.option("--witness-key", help="With --ota: the witness's vkey (`witness keygen` prints it).")
@click.option("--witness-url", help="With --ota: where that witness answers (its fleet heads).")
@click.option(
    "--also-witness",
    "other_witnesses",
    multiple=True,
    metavar="VKEY@URL",
    help="With --ota: another witness whose fleet head must name the same record (repeat"
    " for each; production runs at least two).",
)
@click.option("--storage", help="The client's default --storage URL.")
@click.option(
    "--previous",
    "previous_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The fleet.toml of an older epoch the relay still routes (after a rotation; repeat"
    " for each): a pinned client moves its key from there at its next recovery.",
)
@click.option(
    "--out",
    "out_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write client.toml (mode 0600: it holds the token). An existing file is"
    " refused unless --force.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace the --out file if there is one (its tokens and device key are lost).",
)
@pass_context
def fleet_client_config(
    ctx: Context,
    fleet_file: Path,
    relay_url: str,
    account: str,
    token: str,
    fleet_token: str,
    device_key: str,
    ota_operator_key: str | None,
    witness_key: str | None,
    witness_url: str | None,
    other_witnesses: tuple[str, ...],
    storage: str | None,
    previous_files: tuple[Path, ...],
    out_file: Path,
    force: bool,
) -> None:
    """Write a client.toml for ACCOUNT: pinned to this fleet's keys, or with --ota trusting
    the operator's and the witness's keys (docs/operations.md §5)."""
    from backupvault.client.config import ClientConfig, MalformedField
    from backupvault.client.trust import load_operator_key
    from backupvault.node.config import FleetDescription

    _warn_secrets_in_argv(ctx, ("token", "fleet_token", "device_key"))
    if os.path.lexists(out_file) and not force:
        # Another account's config there (or this one's, with the only copy of a device
        # key a token is bound to) would be lost without a word.
        raise UsageError(
            f"{out_file} already exists: nothing was written",
            hint="give another --out, or --force to replace it (the account, tokens and"
            " device key it holds are then lost; keep a copy if a device uses it)",
        )
    fleet = FleetDescription.load(fleet_file)
    data: dict[str, object] = {
        "relay_url": relay_url,
        "account": account,
        "token": token,
        "fleet_token": fleet_token,
        "device_key": device_key,
        "fleet_id": fleet.fleet_id.hex(),
    }
    if ota_operator_key is None and other_witnesses:
        raise UsageError(
            "--also-witness is for over-the-air configs (--ota): a pinned config checks no witness",
            hint="add --ota with the deployment-signing key, or leave out --also-witness",
        )
    if ota_operator_key is None:
        data["node_public_keys"] = [n.hpke_public_key.hex() for n in fleet.nodes]
        data["node_signing_keys"] = [n.signing_public_key.hex() for n in fleet.nodes]
        data["epoch"] = fleet.epoch or 0
        if previous_files:
            older = sorted(
                (_older_epoch(fleet, FleetDescription.load(p), p) for p in previous_files),
                key=lambda epoch_table: epoch_table[0],
                reverse=True,
            )
            data["previous_fleets"] = [table for _, table in older]
    else:
        if previous_files:
            raise UsageError(
                "--previous is for pinned configs: an --ota client finds the older epochs"
                " itself (the relay's /v1/fleet/epochs)",
                hint="leave out --previous, or --ota",
            )
        if witness_key is None or witness_url is None:
            raise UsageError("--ota needs --witness-key and --witness-url (the witness's)")
        data = {"trust": "ota", **data}
        data["operator_public_key"] = load_operator_key(ota_operator_key, Path.cwd()).hex()
        data["witness_public_key"] = witness_key
        data["witness_url"] = witness_url
        if other_witnesses:
            data["witnesses"] = [_other_witness(given) for given in other_witnesses]
    if storage is not None:
        data["storage"] = storage
    text = tomli_w.dumps(data)
    # Checked before it is written: a config the client cannot read (a mistyped device key)
    # must neither be left at --out nor replace the working one there.
    try:
        ClientConfig.parse(out_file, tomllib.loads(text))
    except InvalidInput as err:
        # The field is named as the option it came from: the hint to edit the file's field
        # sent the operator to a file that was never written.
        # A table's field is named as `witnesses[0].url`: by its table.
        field = err.field.split("[", 1)[0] if isinstance(err, MalformedField) else None
        source = None if field is None else _OPTION_OF.get(field)
        # A value an option gave is a usage error (exit 2), as any other bad option is.
        refusal = InvalidInput if source is None else UsageError
        raise refusal(
            f"nothing was written to {out_file}: "
            + err.message.removeprefix(f"config file {out_file}: "),
            hint=err.hint if source is None else f"it comes from {source}: give it again, fixed",
        ) from None
    out_file.parent.mkdir(parents=True, exist_ok=True)
    replace_file(out_file, text.encode())  # it holds the tokens
    ctx.output.result(
        {"config": str(out_file), "trust": "ota" if ota_operator_key else "pinned"},
        f"wrote {out_file}",
    )


def _older_epoch(
    current: FleetDescription, older: FleetDescription, path: Path
) -> tuple[int, dict[str, object]]:
    """`older`'s epoch and its pinned config's `[[previous_fleets]]` table, if it is an
    older epoch of `current`'s fleet on other nodes: a client asks the relay for an entry
    on each (`/v1/epochs/E/...`), so a file that is none of these would send it astray."""
    hint = (
        "give the fleet.toml of each epoch before a rotation that the relay still routes"
        " ([[relay.previous_fleets]]); an upgrade's earlier epoch (the same nodes) needs none"
    )
    if older.fleet_id != current.fleet_id:
        raise UsageError(f"{path} is another fleet ({older.fleet_id.hex()})", hint=hint)
    if older.epoch is None or older.epoch >= (current.epoch or 0):
        raise UsageError(
            f"{path} is not an older epoch (epoch {older.epoch}; this fleet's is {current.epoch})",
            hint=hint,
        )
    if older.epoch < current.retired_below:
        raise UsageError(
            f"{path} is epoch {older.epoch}, which this fleet retired (its fleet.toml retires"
            f" the epochs below {current.retired_below}): its nodes may be anyone's by now",
            hint="leave it out; an entry still there needs its recovery code",
        )
    keys = [n.hpke_public_key for n in older.nodes]
    if keys == [n.hpke_public_key for n in current.nodes]:
        raise UsageError(
            f"{path} is an earlier epoch of the same nodes (an upgrade): the key is on them",
            hint=hint,
        )
    return older.epoch, {
        "epoch": older.epoch,
        "node_public_keys": [k.hex() for k in keys],
        "node_signing_keys": [n.signing_public_key.hex() for n in older.nodes],
    }


def _other_witness(given: str) -> dict[str, str]:
    """`--also-witness VKEY@URL` as a `[[witnesses]]` table (its vkey and URL are checked
    with the rest of the config, before anything is written)."""
    from backupvault.client.trust import split_vkey_at_url

    split = split_vkey_at_url(given)
    if split is None:
        raise UsageError(
            f"--also-witness takes VKEY@URL, not {given[:80]!r}",
            hint="the witness's vkey (`witness keygen` printed it), @, and where it answers",
        )
    return {"public_key": split[0], "url": split[1]}


#: The `fleet client-config` option each field of the config it writes comes from.
_OPTION_OF = {
    "relay_url": "--relay-url",
    "account": "--account",
    "token": "--token or $BACKUPVAULT_RELAY_TOKEN",
    "fleet_token": "--fleet-token or $BACKUPVAULT_FLEET_TOKEN",
    "device_key": "--device-key or $BACKUPVAULT_DEVICE_KEY",
    "operator_public_key": "--ota",
    "witness_public_key": "--witness-key",
    "witness_url": "--witness-url",
    "witnesses": "--also-witness",
    "storage": "--storage",
}


def _warn_secrets_in_argv(ctx: Context, names: tuple[str, ...]) -> None:
    """A warning for each secret option given on the command line: any host user can read
    a process's arguments (`ps`) while it runs, and shell history keeps them. Each has an
    environment variable, which only this user's processes can read."""
    click_ctx = click.get_current_context()
    for name in names:
        if click_ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            option = "--" + name.replace("_", "-")
            env = next(p.envvar for p in click_ctx.command.params if p.name == name)
            ctx.output.warn(
                f"{option} was given on the command line, where other host users can see it"
                f" (ps) while this runs: set ${env} instead"
            )


# ---- relay ------------------------------------------------------------------------------


@cli.group(short_help="Run the relay; mint account tokens")
def relay() -> None:
    """Run the relay; mint account tokens."""


@relay.command("serve", cls=click.Command)
@click.option(
    "--config",
    "relay_config",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="relay.toml (docs/relay.md).",
)
@click.option("--listen", help="host:port (default: the config's `listen`, else 127.0.0.1:8600)")
def relay_serve(relay_config: Path, listen: str | None) -> None:
    """Serve the relay until stopped."""
    with stopped_while_starting("the relay"):
        from backupvault.relay.app import serve
        from backupvault.relay.config import load_config
        from backupvault.serving import listen_address

        host, port = listen_address(relay_config, listen, "127.0.0.1:8600")
        serve(load_config(relay_config), host, port)


@relay.command("metrics")
@click.option(
    "--config",
    "relay_config",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="relay.toml: the nodes to ask, and the relay's signing key, which they require.",
)
@pass_context
def relay_metrics(ctx: Context, relay_config: Path) -> None:
    """Each node's counters (GET /v1/metrics), asked with the relay's key as the nodes
    require: the current fleet's and every previous fleet's the relay routes. Exit 5 if a
    node did not give them (each such node is named, with why)."""
    from backupvault.deploy.metrics import MetricsUnavailable, node_metrics
    from backupvault.relay.config import load_config

    config = load_config(relay_config)
    key = config.node_signing_key
    fleets: list[tuple[int | None, tuple[str, ...]]] = [(None, config.node_urls)]
    fleets += [(p.epoch, p.node_urls) for p in config.previous_fleets]
    report: list[dict[str, object]] = []
    lines: list[str] = []
    troubled: list[str] = []  # nodes that gave no counters, or serve nothing
    any_stopped = False
    for epoch, urls in fleets:
        lines.append("current fleet:" if epoch is None else f"previous fleet, epoch {epoch}:")
        nodes: list[dict[str, object]] = []
        for index, url in enumerate(urls):
            try:
                counters = node_metrics(key, url, index)
            except MetricsUnavailable as err:
                troubled.append(f"node {index} {url} gave no counters")
                nodes.append({"index": index, "url": url, "error": err.message})
                lines.append(f"  node {index} {url}: {err.message}")
                continue
            if _stopped_because(counters) is not None:
                any_stopped = True
                troubled.append(f"node {index} {url} stopped serving")
            nodes.append({"index": index, "url": url, "metrics": counters})
            lines.append(f"  node {index} {url}: {_counters_line(counters)}")
        report.append({"epoch": epoch, "nodes": nodes})
    ctx.output.result({"fleets": report}, "\n".join(lines))
    if troubled:
        # As an unavailable fleet: a monitor that checks the exit code sees a node that
        # answers its metrics but serves no client (fail-stop) as well as a silent one.
        hint = "each node's line above says why"
        if any_stopped:
            hint += (
                "; a stopped node serves nothing until its operator restarts it"
                ' (docs/operations.md, "Backing up node state")'
            )
        raise MetricsUnavailable("; ".join(troubled), hint=hint)


def _stopped_because(counters: dict[str, object]) -> str | None:
    """Why the node stopped serving (its health's `stopped`), or None if it did not."""
    health = counters.get("health")
    stopped = health.get("stopped") if isinstance(health, dict) else None
    return None if stopped is None else str(stopped)


#: What each `store_start` that lost something means, for the text (docs/operations.md).
_STORE_STARTS = {
    "rollback_detected": "store behind its token (restored from a copy, wiped, or a crash):"
    " find out why if it was not a crash",
    "catch_up_unfinished": "an earlier catch-up did not finish",
    "uncounted_history": "store has writes its token never counted (a new token, an upgrade)",
}


def _counters_line(counters: dict[str, object]) -> str:
    """A node's health (serving, and what its start found the store to be if it lost
    anything), then its counters, on one line."""
    health = counters.get("health")
    state = []
    if isinstance(health, dict):
        stopped = _stopped_because(counters)
        if stopped is not None:
            state.append(f"stopped: {stopped}")
        else:
            state.append("ready" if health.get("ready") else "not ready (catching up)")
        start = health.get("store_start")
        if isinstance(start, str) and start not in ("first_start", "intact"):
            meaning = _STORE_STARTS.get(start)
            said = f"{start.replace('_', ' ')} at start"
            state.append(said if meaning is None else f"{said} ({meaning})")
    numbers = [f"{k.replace('_', ' ')} {v}" for k, v in counters.items() if type(v) is int]
    return "; ".join([*state, ", ".join(n for n in numbers if not n.startswith("node "))])


@relay.command("keygen")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the key files (created if missing; existing files are never overwritten).",
)
@pass_context
def relay_keygen(ctx: Context, out_dir: Path) -> None:
    """Make the account issuer's token-signing key (OUT/operator.key: keep it off the
    relay; OUT/operator.pub: the relay's config names it) and the relay's own key for
    signing what it forwards (OUT/relay-signing.key: the relay's config names it).
    Prints the raw public keys in hex for fleet.toml (account_issuer_public_key,
    relay_public_keys)."""
    from backupvault.tokens import generate_operator_key, private_key_pem, save_operator_key

    private_folder(out_dir)  # it holds a private key
    issuer = generate_operator_key()
    relay_key = generate_operator_key()
    save_operator_key(issuer, out_dir / "operator.key", out_dir / "operator.pub")
    write_new_file(out_dir / "relay-signing.key", private_key_pem(relay_key))
    issuer_hex = issuer.public_key().public_bytes_raw().hex()
    relay_hex = relay_key.public_key().public_bytes_raw().hex()
    ctx.output.result(
        {
            "private_key": str(out_dir / "operator.key"),
            "public_key": str(out_dir / "operator.pub"),
            "relay_signing_key": str(out_dir / "relay-signing.key"),
            "account_issuer_public_key": issuer_hex,
            "relay_public_key": relay_hex,
        },
        f"wrote {out_dir / 'operator.key'} (secret), {out_dir / 'operator.pub'} and"
        f" {out_dir / 'relay-signing.key'} (secret, for the relay)\n"
        f'fleet.toml: account_issuer_public_key = "{issuer_hex}"\n'
        f'fleet.toml: relay_public_keys = ["{relay_hex}"]',
    )


@relay.command("device-key")
@pass_context
def relay_device_key(ctx: Context) -> None:
    """Make a device key for a client: its private hex goes into that client's client.toml
    (`device_key`, `fleet client-config --device-key`), its public hex to `relay mint-token
    --device-key`, which binds the fleet token to it (docs/relay.md)."""
    from backupvault.tokens import device_key_hex, generate_device_key, raw

    key = generate_device_key()
    private, public = device_key_hex(key), raw(key.public_key()).hex()
    ctx.output.result(
        {"device_key": private, "device_public_key": public},
        f'client.toml: device_key = "{private}"  (secret: keep it on the device)\n'
        f"relay mint-token --device-key {public}",
    )


@relay.command("mint-token")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="The account issuer's private key (operator.key).",
)
@click.option("--account", required=True, help="The account the token speaks for (its sub).")
@click.option("--issuer", required=True, help="The token's iss (the relay and fleet expect it).")
@click.option("--audience", help="The relay's audience (a relay token).")
@click.option(
    "--fleet-id",
    help="Instead of --audience: a fleet token for this fleet id (hex), sent only inside the seal.",
)
@click.option(
    "--device-key",
    "device_public_key",
    help="With --fleet-id: the device's public key (hex, `relay device-key`) the token is"
    " bound to; nodes refuse a fleet token bound to none.",
)
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=30 * 24 * 3600,
    show_default=True,
    help="Lifetime in seconds.",
)
@pass_context
def relay_mint_token(
    ctx: Context,
    key_path: Path,
    account: str,
    issuer: str,
    audience: str | None,
    fleet_id: str | None,
    device_public_key: str | None,
    ttl: int,
) -> None:
    """Sign an account token with the account issuer's key: a relay token (--audience)
    or a fleet token (--fleet-id)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from backupvault.crypto.ed25519 import check_public_key
    from backupvault.protocol import is_valid_name
    from backupvault.tokens import fleet_audience, load_operator_private_key, mint_token
    from backupvault.transparency.record import MAX_FLEET_ID

    # Each is refused here, not by the relay or the nodes once a user has the token.
    if not is_valid_name(account):
        raise UsageError(
            f"--account {account[:80]!r} is no name the vault takes: 1 to 64 characters of"
            " letters, digits, '.', '_' or '-'"
        )
    if (audience is None) == (fleet_id is None):
        raise UsageError("give --audience (a relay token) or --fleet-id (a fleet token)")
    if fleet_id is not None:
        try:
            fleet_id_bytes = bytes.fromhex(fleet_id)
        except ValueError:
            fleet_id_bytes = b""
        if not 1 <= len(fleet_id_bytes) <= MAX_FLEET_ID:
            raise UsageError(
                f"--fleet-id is the fleet id in hex (fleet_id in fleet.toml): 1 to {MAX_FLEET_ID}"
                " bytes"
            )
        audience = fleet_audience(fleet_id_bytes)
    device = None
    if fleet_id is not None:
        if device_public_key is None:
            raise UsageError("a fleet token is bound to a device: give --device-key")
        try:
            device = Ed25519PublicKey.from_public_bytes(
                check_public_key(bytes.fromhex(device_public_key), "--device-key")
            )
        except (ValueError, InvalidInput):
            # Nodes refuse a token bound to a small-order key ("the token's 'cnf' key").
            raise UsageError(
                "--device-key is the device's public key, 64 hex digits (`relay device-key`)"
            ) from None
    elif device_public_key is not None:
        raise UsageError("--device-key goes with --fleet-id (relay tokens are not bound)")
    assert audience is not None
    token = mint_token(
        load_operator_private_key(key_path),
        account,
        issuer=issuer,
        audience=audience,
        ttl_seconds=ttl,
        device_key=device,
    )
    ctx.output.result({"token": token, "account": account, "audience": audience}, token)
