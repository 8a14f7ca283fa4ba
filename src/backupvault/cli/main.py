"""`backupvault`: the command line. Thin: parse, call the SDK, print, exit with a meaning.

Exit codes: 0 done; 1 anything else; 2 usage; 3 wrong password or recovery code;
4 key destroyed; 5 fleet unavailable; 6 authentication; 7 the fleet is not trusted (its
bundle failed the transparency checks) or a deployment check failed. `--json` prints one
JSON object.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from backupvault import __version__
from backupvault.backup import create_backup, list_backups, restore_backup
from backupvault.cli.output import Output
from backupvault.client.config import ClientConfig
from backupvault.client.errors import AlreadyRegistered, NotRegistered
from backupvault.client.vault import Recovery
from backupvault.crypto import recovery
from backupvault.errors import BackupVaultError, UsageError
from backupvault.protocol import EntryStatus


class Context:
    def __init__(self, output: Output, config_path: Path | None) -> None:
        self.output = output
        self.config_path = config_path

    def config(self) -> ClientConfig:
        if self.config_path is None:
            raise UsageError(
                "this needs the vault: give --config FILE",
                hint="`backupvault local up --dir DIR` writes DIR/client.toml",
            )
        return ClientConfig.load(self.config_path)

    def storage(self, url: str | None) -> str:
        if url:
            return url
        if self.config_path is not None and (configured := self.config().storage):
            return configured
        raise UsageError("give --storage URL (a folder, file://, webdav+https://, s3://...)")


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BACKUPVAULT_CONFIG",
    help="Client config (relay, pinned fleet keys, account token).",
)
@click.option("--json", "json_mode", is_flag=True, help="Print results as JSON, for scripts.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes.")
@click.version_option(__version__, prog_name="backupvault")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, json_mode: bool, quiet: bool) -> None:
    """End-to-end encrypted backups whose key only you can bring back."""
    ctx.obj = Context(Output(json_mode=json_mode, quiet=quiet), config_path)


# ---- secrets --------------------------------------------------------------------------


def _password(from_stdin: bool, confirm: bool = False, prompt: str = "Password") -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    else:
        raise UsageError("no password: use --password-stdin, or run in a terminal to be asked")
    if not password:
        raise UsageError("the password is empty")
    return password


def _recovery_code(value: str) -> bytes:
    """A code given as '-' is read from stdin, so it stays out of shell history."""
    code = sys.stdin.readline() if value == "-" else value
    return recovery.decode(code)


def _root_key_from_vault(ctx: Context, password: str, register: bool) -> tuple[bytes, bool]:
    """The root key behind `password`; registers a new one if the vault holds none and
    `register` is set. Returns (root key, whether it was just registered)."""
    session = ctx.config().session(notify=ctx.output.note)
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
        _warn_wrong_guesses(ctx, recovered)
        return recovered.root_key, False
    root_key = recovery.new_root_key()
    try:
        session.vault.register(password, root_key)
    except AlreadyRegistered:
        # Our own earlier attempt committed but its answer was lost, or another device
        # registered first: either way the key to use is the one the vault now holds.
        return session.vault.recover(password).root_key, False
    return root_key, True


def _warn_wrong_guesses(ctx: Context, recovered: Recovery) -> None:
    """Someone who is not this user may be guessing: say so after every success."""
    wrong = recovered.wrong_guesses_before
    if wrong:
        times = "1 wrong password was" if wrong == 1 else f"{wrong} wrong passwords were"
        ctx.output.note(
            f"warning: {times} tried since your last successful recovery; if that was not"
            " you, someone may be guessing (the count is now reset)"
        )


# ---- backup -----------------------------------------------------------------------------


@cli.group()
def backup() -> None:
    """Create, list and restore backups."""


@backup.command("create")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--storage", "storage_url", help="Where backups go: a folder or an fsspec URL.")
@click.option("--password-stdin", is_flag=True, help="Read the vault password from stdin.")
@click.option(
    "--recovery-code", "use_code", is_flag=True, help="Use a new key shown as a recovery code."
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
    data: dict[str, Any] = {
        "backup_id": info.backup_id,
        "url": info.url,
        "size": info.size,
        "files": info.files,
        "source_bytes": info.source_bytes,
        "skipped": list(info.skipped),
    }
    text = f"backup {info.backup_id} saved ({info.files} files, {info.size} bytes stored)"
    if registered:
        data["registered"] = True
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
    "--recovery-code", "code", metavar="CODE", help="The backup's recovery code ('-': stdin)."
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
    ctx.output.result(
        {
            "backup_id": info.backup_id,
            "dest": str(info.dest),
            "files": info.files,
            "bytes": info.bytes,
            "skipped": list(info.skipped),
        },
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
            "size": b.size,
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
@click.option("--password-stdin", is_flag=True, help="Read old and new password from stdin.")
@pass_context
def vault_change_password(ctx: Context, password_stdin: bool) -> None:
    """Change the password that protects your key (backups stay as they are)."""
    old = _password(password_stdin, prompt="Current password")
    session = ctx.config().session(notify=ctx.output.note)
    if session.vault.status().status == EntryStatus.EMPTY:
        session.migrate(old)  # a key still on an older fleet epoch moves here first
    # The old password is checked (one recovery) before the new one is asked for.
    recovered = session.vault.recover(old)
    _warn_wrong_guesses(ctx, recovered)
    new = _password(password_stdin, confirm=True, prompt="New password")
    version = session.vault.change_password_with(recovered, new)
    ctx.output.result({"changed": True, "version": version}, "password changed")


@vault.command("delete")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@pass_context
def vault_delete(ctx: Context, yes: bool, password_stdin: bool) -> None:
    """Delete your key from the vault (proving the password first). Backups made with it
    then open only with a recovery code. A key already destroyed by wrong guesses is
    cleared without a password, so that a new one can be registered."""
    session = ctx.config().session(notify=ctx.output.note)
    status = session.vault.status()
    if status.status == EntryStatus.EMPTY:
        raise NotRegistered()
    if status.status == EntryStatus.DESTROYED:
        if not yes and not click.confirm(
            "The key was destroyed by wrong guesses. Clear it so a new key can be registered?",
            default=False,
        ):
            raise click.exceptions.Abort()
        version = session.vault.delete()
        ctx.output.result(
            {"deleted": True, "version": version, "was": "destroyed"},
            "destroyed key cleared; `backupvault backup create --new-key` registers a new one",
        )
        return
    ctx.output.note(
        "warning: after this, backups made with your password can no longer be opened"
        " (backups made with --recovery-code still open with their code)"
    )
    if not yes and not click.confirm("Delete the key from the vault?", default=False):
        raise click.exceptions.Abort()
    recovered = session.vault.recover(_password(password_stdin))
    version = session.vault.delete(recovered.grant)
    ctx.output.result(
        {"deleted": True, "version": version, "was": "live"}, "key deleted from the vault"
    )


def main(argv: list[str] | None = None) -> None:
    from backupvault.cli import operator, sim, transparency  # noqa: F401 - registers commands

    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="backupvault", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(2 if isinstance(err, click.UsageError) else 1)
    except BackupVaultError as err:
        Output(json_mode="--json" in args).error(err)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # a bug: say so plainly, without a wall of traceback
        if os.environ.get("BACKUPVAULT_DEBUG"):
            raise
        Output(json_mode="--json" in args).error(
            BackupVaultError(
                f"unexpected {type(err).__name__}: {err}",
                hint="this is a bug in backupvault; rerun with BACKUPVAULT_DEBUG=1 and report it",
            )
        )
        sys.exit(1)
    sys.exit(0)
