"""`backupvault`: the command line. Thin: parse, call the SDK, print, exit with a meaning.

Exit codes: 0 done; 1 anything else; 2 usage; 3 wrong password or recovery code;
4 key destroyed; 5 fleet (or relay) unavailable; 6 authentication; 7 the fleet is not
trusted (its bundle failed the transparency checks) or a deployment check failed.
`--json` (before or after the subcommand) prints one JSON object on stdout, or one error
object on stderr. docs/cli.md describes every command, option and object.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from backupvault import __version__
from backupvault.backup import create_backup, list_backups, restore_backup
from backupvault.cli.output import Output
from backupvault.cli.passwords import check_password, weakness
from backupvault.client.config import ClientConfig
from backupvault.client.errors import AlreadyRegistered, NotRegistered
from backupvault.crypto import recovery
from backupvault.errors import BackupVaultError, UsageError
from backupvault.protocol import EntryStatus

CONFIG_ENV = "BACKUPVAULT_CONFIG"


class Context:
    def __init__(self, output: Output, config_path: Path | None, config_from_env: bool) -> None:
        self.output = output
        self.config_path = config_path
        self.config_from_env = config_from_env

    def config(self) -> ClientConfig:
        if self.config_path is None:
            raise UsageError(
                f"this needs the vault: give --config FILE, or set ${CONFIG_ENV}",
                hint="`backupvault local up --dir DIR` writes DIR/client.toml",
            )
        if not self.config_path.is_file():
            source = f"${CONFIG_ENV}" if self.config_from_env else "--config"
            raise UsageError(
                f"config file {self.config_path} (from {source}) does not exist",
                hint=f"give --config FILE or set ${CONFIG_ENV} to an existing client.toml;"
                " `backupvault local up --dir DIR` writes DIR/client.toml",
            )
        return ClientConfig.load(self.config_path)

    def storage(self, url: str | None) -> str:
        if url:
            return url
        if self.config_path is not None and (configured := self.config().storage):
            return configured
        raise UsageError("give --storage URL (a folder, file://, webdav+https://, s3://...)")


pass_context = click.make_pass_decorator(Context)

_JSON_HELP = "Print the result as one JSON object, for scripts (docs/cli.md)."
_QUIET_HELP = "No progress bars or notes."


class Command(click.Command):
    """A command that also takes `--json` and `-q` after its name, as restic does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--json", "json_mode"], is_flag=True, help=_JSON_HELP))
        self.params.append(click.Option(["-q", "--quiet"], is_flag=True, help=_QUIET_HELP))

    def invoke(self, ctx: click.Context) -> Any:
        json_mode = bool(ctx.params.pop("json_mode", False))
        quiet = bool(ctx.params.pop("quiet", False))
        obj = ctx.find_object(Context)
        if obj is not None:
            obj.output.json_mode = obj.output.json_mode or json_mode
            obj.output.quiet = obj.output.quiet or quiet
        return super().invoke(ctx)


class Group(click.Group):
    command_class = Command
    group_class = type  # subgroups are Groups too


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV,
    show_envvar=True,
    help="Client config (relay, fleet keys, account token): client.toml.",
)
@click.option("--json", "json_mode", is_flag=True, help=_JSON_HELP)
@click.option("-q", "--quiet", is_flag=True, help=_QUIET_HELP)
@click.version_option(__version__, prog_name="backupvault", help="Show the version and exit.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, json_mode: bool, quiet: bool) -> None:
    """End-to-end encrypted backups whose key only you can bring back.

    The client config comes from --config or $BACKUPVAULT_CONFIG."""
    from_env = ctx.get_parameter_source("config_path") == click.core.ParameterSource.ENVIRONMENT
    ctx.obj = Context(Output(json_mode=json_mode, quiet=quiet), config_path, from_env)


# ---- secrets --------------------------------------------------------------------------


def _password(from_stdin: bool, confirm: bool = False, prompt: str = "Password") -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise UsageError("--password-stdin: stdin ended before a password line")
        password = line
    elif sys.stdin.isatty():
        password = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    else:
        raise UsageError("no password: use --password-stdin, or run in a terminal to be asked")
    return check_password(password)


def _warn_if_weak(ctx: Context, password: str) -> None:
    """At registration only: a weak password is the vault's one way in for a thief who
    takes the storage, limited only by the guess count."""
    reason = weakness(password)
    if reason is not None:
        ctx.output.note(
            f"warning: this password is weak ({reason}); anyone holding your account's "
            "token gets the vault's guesses at it. Prefer a long passphrase."
        )


def _confirm(question: str, yes: bool) -> None:
    """Ask a person; without a terminal, refuse instead of reading an answer from a pipe."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} needs a yes: pass --yes (stdin is not a terminal)")
    if not click.confirm(question, default=False):
        raise click.exceptions.Abort()


def _recovery_code(value: str) -> bytes:
    """A code given as '-' is read from stdin, so it stays out of shell history."""
    code = sys.stdin.readline() if value == "-" else value
    return recovery.decode(code)


def _root_key_from_vault(ctx: Context, password: str, register: bool) -> tuple[bytes, bool]:
    """The root key behind `password`; registers a new one if the vault holds none and
    `register` is set. Returns (root key, whether it was just registered)."""
    session = ctx.config().session()
    try:
        recovered = session.recover_or_migrate(password)
    except NotRegistered:
        if not register:
            raise
    else:
        if recovered.migrated_from is not None:
            ctx.output.note(
                f"your key moved from fleet epoch {recovered.migrated_from} to epoch "
                f"{session.epoch} (recovered there, registered here, deleted there)"
            )
        return recovered.root_key, False
    _warn_if_weak(ctx, password)
    root_key = recovery.new_root_key()
    try:
        session.vault.register(password, root_key)
    except AlreadyRegistered:
        # Our own earlier attempt committed but its answer was lost, or another device
        # registered first: either way the key to use is the one the vault now holds.
        return session.vault.recover(password)[0], False
    return root_key, True


# ---- backup -----------------------------------------------------------------------------


def _backup_json(
    backup_id: str,
    created_at: datetime,
    name: str | None,
    storage: str,
    files: int,
    content_bytes: int,
    skipped: list[tuple[str, str]],
    stored_bytes: int | None = None,
) -> dict[str, Any]:
    """The backup object that create, restore and list share (docs/cli.md)."""
    data: dict[str, Any] = {
        "backup_id": backup_id,
        "created_at": created_at.isoformat(),
        "storage": storage,
        "files": files,
        "bytes": content_bytes,
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
    }
    if name is not None:
        data["name"] = name
    if stored_bytes is not None:
        data["stored_bytes"] = stored_bytes
    return data


@cli.group()
def backup() -> None:
    """Create, list and restore backups."""


@backup.command("create")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--storage", "storage_url", help="Where backups go: a folder or an fsspec URL.")
@click.option("--password-stdin", is_flag=True, help="Read the vault password from stdin.")
@click.option(
    "--recovery-code",
    "use_code",
    is_flag=True,
    help=f"No vault: use a new key, printed once as a recovery code ({recovery.FORMAT}).",
)
@pass_context
def backup_create(
    ctx: Context, source: Path, storage_url: str | None, password_stdin: bool, use_code: bool
) -> None:
    """Back up SOURCE (a file or folder), encrypted on this device."""
    if password_stdin and use_code:
        raise UsageError("choose one of --password-stdin and --recovery-code")
    url = ctx.storage(storage_url)
    registered = False
    if use_code:
        root_key = recovery.new_root_key()
    else:
        password = _password(password_stdin, confirm=True)
        root_key, registered = _root_key_from_vault(ctx, password, register=True)
    with ctx.output.progress() as bar:
        info = create_backup(source, url, root_key, bar)
    data = _backup_json(
        info.backup_id,
        info.created_at,
        info.name,
        url,
        info.files,
        info.source_bytes,
        info.skipped,
        stored_bytes=info.size,
    )
    data.update(source=str(source), registered=registered)
    text = f"backup {info.backup_id} saved ({info.files} files, {info.size} bytes stored)"
    if registered:
        ctx.output.note("a new key was registered in the vault behind your password")
    if use_code:
        code = recovery.encode(root_key)
        data["recovery_code"] = code
        text += (
            f"\nrecovery code (write it down; without it this backup cannot be opened):\n  {code}"
        )
    for skipped in info.skipped:
        ctx.output.note(f"skipped: {skipped}")
    ctx.output.result(data, text)


@backup.command("restore")
@click.argument("backup_id", required=False)
@click.option("--storage", "storage_url", help="Where the backups are.")
@click.option("--to", "dest", required=True, type=click.Path(path_type=Path), help="New folder.")
@click.option("--password-stdin", is_flag=True, help="Read the vault password from stdin.")
@click.option(
    "--recovery-code",
    "code",
    metavar="CODE",
    help=f"The backup's recovery code ({recovery.FORMAT}); '-' reads it from stdin.",
)
@pass_context
def backup_restore(
    ctx: Context,
    backup_id: str | None,
    storage_url: str | None,
    dest: Path,
    password_stdin: bool,
    code: str | None,
) -> None:
    """Restore BACKUP_ID (default: the latest) into a new folder DEST."""
    if password_stdin and code is not None:
        raise UsageError("choose one of --password-stdin and --recovery-code")
    url = ctx.storage(storage_url)
    if code is not None:
        root_key = _recovery_code(code)
    else:
        root_key, _ = _root_key_from_vault(ctx, _password(password_stdin), register=False)
    with ctx.output.progress() as bar:
        info = restore_backup(url, root_key, dest, backup_id, bar)
    for skipped in info.skipped:
        ctx.output.note(f"skipped: {skipped}")
    data = _backup_json(
        info.backup_id, info.created_at, None, url, info.files, info.bytes, info.skipped
    )
    data["dest"] = str(info.dest)
    ctx.output.result(
        data,
        f"restored backup {info.backup_id} into {info.dest} ({info.files} files, "
        f"{info.bytes} bytes)",
    )


@backup.command("list")
@click.option("--storage", "storage_url", help="Where the backups are.")
@pass_context
def backup_list(ctx: Context, storage_url: str | None) -> None:
    """List the backups in storage, oldest first."""
    backups = list_backups(ctx.storage(storage_url))
    rows = [
        {
            "backup_id": b.backup_id,
            "created_at": b.created_at.isoformat(),
            "stored_bytes": b.size,
            "name": b.name,
        }
        for b in backups
    ]
    text = "\n".join(f"{b.backup_id}  {b.created_at}  {b.size:>12}  {b.name}" for b in backups)
    ctx.output.result({"backups": rows}, text or "no backups")


# ---- vault ------------------------------------------------------------------------------


@cli.group()
def vault() -> None:
    """The key vault: status, password change, deletion."""


@vault.command("status")
@pass_context
def vault_status(ctx: Context) -> None:
    """Whether the vault holds your key, and how many guesses are left."""
    status = ctx.config().vault().status()
    data = {**asdict(status), "status": status.status.name.lower()}
    text = f"key: {status.status.name.lower()}"
    if status.status == EntryStatus.LIVE:
        text += f", {status.guesses_remaining} of {status.guess_limit} guesses left"
    ctx.output.result(data, text)


@vault.command("change-password")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read two lines from stdin: the current password, then the new one.",
)
@pass_context
def vault_change_password(ctx: Context, password_stdin: bool) -> None:
    """Change the password that protects your key (backups stay as they are).

    The current password is checked first; only then is the new one asked for (twice)."""
    if password_stdin:
        lines = [sys.stdin.readline(), sys.stdin.readline()]
        if not lines[1]:
            raise UsageError(
                "--password-stdin expects two lines: the current password, then the new one",
                hint='printf \'%s\\n%s\\n\' "$OLD" "$NEW" | backupvault vault '
                "change-password --password-stdin",
            )
        old, new = check_password(lines[0]), check_password(lines[1])
    else:
        old = _password(False, prompt="Current password")
    session = ctx.config().session()
    recovered = session.recover_or_migrate(old)  # a wrong one fails here, costing a guess
    if recovered.migrated_from is not None:
        ctx.output.note(f"your key moved from fleet epoch {recovered.migrated_from} first")
    root_key, grant = recovered.root_key, recovered.grant
    if not grant:  # just migrated: the grant must come from the current fleet
        root_key, grant = session.vault.recover(old)
    if not password_stdin:
        new = _password(False, confirm=True, prompt="New password")
    _warn_if_weak(ctx, new)
    guess_limit = session.vault.status().guess_limit
    version = session.vault.register(new, root_key, guess_limit, grant=grant)
    ctx.output.result({"changed": True, "version": version}, "password changed")


@vault.command("delete")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def vault_delete(ctx: Context, yes: bool) -> None:
    """Delete your key from the vault. Backups then open only with a recovery code."""
    _confirm("Delete the key from the vault?", yes)
    version = ctx.config().vault().delete()
    ctx.output.result({"deleted": True, "version": version}, "key deleted from the vault")


def _json_requested(args: list[str]) -> bool:
    """Whether --json was given anywhere (before a `--`): errors then come as JSON too."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _fail(json_mode: bool, err: BackupVaultError) -> None:
    Output(json_mode=json_mode).error(err)
    sys.exit(err.exit_code)


def main(argv: list[str] | None = None) -> None:
    from backupvault.cli import operator, sim, transparency  # noqa: F401 - registers commands

    args = sys.argv[1:] if argv is None else argv
    json_mode = _json_requested(args)
    try:
        cli.main(args=args, prog_name="backupvault", standalone_mode=False)
    except click.exceptions.Abort:
        _fail(json_mode, Interrupted("aborted"))
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `backupvault` alone: the help
            err.show()
            sys.exit(err.exit_code)
        hint = None
        if err.ctx is not None:
            hint = f"`{err.ctx.command_path} --help` lists its commands and options"
        _fail(json_mode, UsageError(err.format_message(), hint=hint))
    except click.ClickException as err:
        _fail(json_mode, BackupVaultError(err.format_message()))
    except BackupVaultError as err:
        _fail(json_mode, err)
    except KeyboardInterrupt:
        _fail(json_mode, Interrupted("interrupted"))
    except Exception as err:  # a bug: say so plainly, without a wall of traceback
        if os.environ.get("BACKUPVAULT_DEBUG"):
            raise
        _fail(
            json_mode,
            BackupVaultError(
                f"unexpected {type(err).__name__}: {err}",
                hint="this is a bug in backupvault; rerun with BACKUPVAULT_DEBUG=1 and report it",
            ),
        )
    sys.exit(0)


class Interrupted(BackupVaultError):
    """Ctrl-C, or a prompt answered with end of input."""

    exit_code = 130
