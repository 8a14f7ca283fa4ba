"""`backupvault`: the command line. Thin: parse, call the SDK, print, exit with a meaning.

Exit codes: 0 done; 1 anything else; 2 usage; 3 wrong password or recovery code;
4 key destroyed; 5 fleet, relay or storage unavailable (retry later); 6 authentication;
7 the fleet is not trusted (its bundle failed the transparency checks) or a deployment
check failed; 8 a backup saved without some files; 9 backup data damaged.
`--json` (before or after the subcommand) prints one JSON object on stdout, or one error
object on stderr. docs/cli.md describes every command, option and object.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from backupvault import __version__
from backupvault.cli.output import Output, ResultNotWritten, one_line_name, printable
from backupvault.cli.passwords import check_password, read_secret_line, weakness
from backupvault.crypto import recovery
from backupvault.errors import BackupVaultError, UsageError

if TYPE_CHECKING:
    from backupvault.backup import Skipped
    from backupvault.backup.repo.repository import SnapshotFilter
    from backupvault.client.config import ClientConfig
    from backupvault.client.trust import FleetSession
    from backupvault.client.vault import Recovery, VaultStatus

# Modules that add commands to a group defined here, by group. A group imports its own
# only when asked for a command not defined here (or for its --help), so `backupvault
# backup create` loads none of them, and `backup check` only backup_repo: the operator's
# modules (the HTTP client, the deployment) take longer to import than a small backup.
TOP_PLUGINS = ("operator", "sim", "transparency")
BACKUP_PLUGINS = ("backup_repo",)

CONFIG_ENV = "BACKUPVAULT_CONFIG"
#: `backup create` saved its snapshot, but could not read some of the source (restic's 3)
EXIT_INCOMPLETE = 8


class Context:
    def __init__(self, output: Output, config_path: Path | None, config_from_env: bool) -> None:
        self.output = output
        self.config_path = config_path
        self.config_from_env = config_from_env
        self._config: ClientConfig | None = None

    def config(self) -> ClientConfig:
        """The client config, read once per command (asked for by several steps)."""
        from backupvault.client.config import ClientConfig, others_can_read, read_client_toml

        if self._config is not None:
            return self._config
        if self.config_path is None:
            raise UsageError(
                f"this needs the vault: give --config FILE, or set ${CONFIG_ENV}",
                hint="`backupvault local up --dir DIR` writes DIR/client.toml",
            )
        source = f"${CONFIG_ENV}" if self.config_from_env else "--config"
        if self.config_path.is_dir():
            inside = self.config_path / "client.toml"
            raise UsageError(
                f"config file {self.config_path} (from {source}) is a folder, not a file",
                hint=f"{'set' if self.config_from_env else 'give'} {source}"
                f" {'to ' if self.config_from_env else ''}the client.toml file itself"
                + (f", such as {inside}" if inside.is_file() else "")
                + " (`backupvault local up --dir DIR` writes DIR/client.toml)",
            )
        if not self.config_path.exists():
            raise UsageError(
                f"config file {self.config_path} (from {source}) does not exist",
                hint=f"give --config FILE or set ${CONFIG_ENV} to an existing client.toml;"
                " `backupvault local up --dir DIR` writes DIR/client.toml",
            )
        data = read_client_toml(self.config_path)  # not a client config's TOML: exit 2
        if (exposed := others_can_read(self.config_path)) is not None:
            self.output.warn(exposed)  # before its fields are checked: one may be malformed
        self._config = ClientConfig.parse(self.config_path, data)
        return self._config

    def session(self) -> FleetSession:
        """The vault client for this command; its messages reach the user through the
        output (warnings also under -q and in --json)."""
        session = self.config().session(notify=self.output.client_notice)
        session.before_last_guess = _confirm_last_guess
        return session

    def storage(self, url: str | None) -> str:
        if url is not None and not url.strip():
            # `--storage "$OLD"` with OLD unset: it fell back to the config's storage, so a
            # `backup forget --keep-last 1` meant for another repository thinned the
            # default one (review s61), as `--include ""` once restored everything.
            raise UsageError(
                "--storage is empty",
                hint="give the storage URL (a folder, file://, s3://...); leave --storage out"
                " to use the client config's `storage`",
            )
        if url:
            return url
        if self.config_path is not None and (configured := self.config().storage):
            return configured
        raise UsageError(
            "give --storage URL (a folder, file://, webdav+https://, s3://...)",
            hint='or set `storage = "URL"` in the client config (--config FILE or'
            f" ${CONFIG_ENV}) to make it the default",
        )


pass_context = click.make_pass_decorator(Context)

STORAGE_DEFAULT = "Default: the client config's storage."
STORAGE_HELP = f"Where the backups are: a folder or a storage URL. {STORAGE_DEFAULT}"
_JSON_HELP = "Print the result as one JSON object, for scripts (docs/cli.md)."
_QUIET_HELP = "Only warnings, errors and the answer asked for (for cron): no progress or notes."


def _take_output_options(command: click.Command) -> None:
    """Give `command` its own `--json` and `-q`, unless it declares them itself (the
    top-level group): so they work anywhere on the command line, as docs/cli.md says."""
    if not any(param.name == "json_mode" for param in command.params):
        command.params.append(click.Option(["--json", "json_mode"], is_flag=True, help=_JSON_HELP))
        command.params.append(click.Option(["-q", "--quiet"], is_flag=True, help=_QUIET_HELP))


def _apply_output_options(ctx: click.Context) -> None:
    """`--json`/`-q` given after a (sub)command's name: they apply to the whole run."""
    json_mode = bool(ctx.params.pop("json_mode", False))
    quiet = bool(ctx.params.pop("quiet", False))
    obj = ctx.find_object(Context)
    if obj is not None:
        obj.output.json_mode = obj.output.json_mode or json_mode
        obj.output.quiet = obj.output.quiet or quiet


class Command(click.Command):
    """A command that also takes `--json` and `-q` after its name, as restic does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _take_output_options(self)

    def invoke(self, ctx: click.Context) -> Any:
        _apply_output_options(ctx)
        return super().invoke(ctx)


def load_plugins(names: tuple[str, ...] = TOP_PLUGINS + BACKUP_PLUGINS) -> None:
    import importlib

    for name in names:
        importlib.import_module(f"backupvault.cli.{name}")


class Group(click.Group):
    """Its commands take `--json`/`-q` after their name too; subgroups are Groups.
    `plugins`: the modules that add commands to this group, loaded only when a command
    not defined yet is asked for (or for --help)."""

    command_class = Command
    group_class = type

    def __init__(self, *args: Any, plugins: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plugins = plugins
        _take_output_options(self)

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is not None:  # a subgroup (`backup --json list`); the top reads its own
            _apply_output_options(ctx)
        return super().invoke(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and self.plugins:
            load_plugins(self.plugins)
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_plugins(self.plugins)
        return super().list_commands(ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with its summary, whole (click cut the first sentence off
        mid-phrase at the terminal's width: user review s42); the operator's commands in
        a section of their own."""
        listed = [
            (name, command)
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        ]
        for title, operator in (("Commands", False), ("Operator commands", True)):
            rows = [
                (name, summary(command))
                for name, command in listed
                if (name in OPERATOR_COMMANDS and ctx.parent is None) == operator
            ]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


#: Top-level commands for whoever runs the fleet, not for a user backing up.
OPERATOR_COMMANDS = frozenset({"fleet", "node", "relay", "sim", "witness"})


def summary(command: click.Command) -> str:
    """A command's line in its group's list: its `short_help`, else the first sentence of
    its help up to its first parenthesis, semicolon or colon."""
    if command.short_help:
        return command.short_help
    text = " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())
    first = re.split(r"(?<=\.) ", text, maxsplit=1)[0].rstrip(".")
    cut = re.search(r" \(|; |: ", first)
    return first[: cut.start()] if cut else first


#: The codes a script acts on, in short (docs/cli.md, "Exit codes", says when each comes).
_EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 error; 2 usage; 3 wrong password or recovery code; 4 key"
    " destroyed; 5 unavailable (the fleet, the relay or the storage did not answer: try again"
    " later); 6 token refused; 7 fleet not trusted; 8 backup saved without some unreadable"
    " files; 9 backup data damaged (`backup check`); 130 interrupted."
)


@click.group(
    cls=Group,
    plugins=TOP_PLUGINS,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=_EXIT_CODES_HELP,
)
@click.option(
    "--config",
    "config_path",
    # A folder is refused by Context.config, naming --config or the variable: click's
    # own message named the variable even when --config was given.
    type=click.Path(path_type=Path),
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
    global _run_output, _run_config
    _run_output = Output(json_mode=json_mode, quiet=quiet)
    _run_config = config_path
    ctx.obj = Context(_run_output, config_path, from_env)
    library = logging.getLogger("backupvault.backup")
    for handler in [h for h in library.handlers if isinstance(h, _LibraryWarnings)]:
        library.removeHandler(handler)  # an earlier command's, in this process
    library.addHandler(_LibraryWarnings(_run_output))


class _LibraryWarnings(logging.Handler):
    """What the backup library logs as a warning (names in a repository folder that are no
    object of it, a lock left behind) as the command's own warning: `warning: ...` on
    stderr, or under --json in the result's `warnings`; each once. With no handler they
    reached stderr through logging's last resort: bare, also under --json, and once per
    storage handle the command made (twice in most commands)."""

    def __init__(self, output: Output) -> None:
        super().__init__(logging.WARNING)
        self.output = output
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text not in self.seen:
            self.seen.add(text)
            self.output.warn(text)


#: The output of the command running in this process: a failure reports the warnings it
#: gathered under --json (they were printed as they came without it).
_run_output: Output | None = None
#: Its client config, for the hint of a relay that does not answer.
_run_config: Path | None = None


# ---- secrets --------------------------------------------------------------------------


def _password(from_stdin: bool, confirm: bool = False, prompt: str = "Password") -> str:
    # --password-stdin on a terminal (no pipe given) is asked as a prompt: read as a line,
    # it showed no prompt and echoed the password (user review s42).
    if from_stdin and not sys.stdin.isatty():
        line = read_secret_line("the password")
        if not line:
            raise UsageError(
                "--password-stdin: stdin ended before a password line",
                hint="give the password as the first line of stdin, e.g."
                " printf '%s\\n' \"$PASSWORD\" | backupvault ... --password-stdin",
            )
        password = line
    elif sys.stdin.isatty():
        password = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    else:
        raise UsageError(
            "no password: use --password-stdin, or run in a terminal to be asked",
            hint="with --password-stdin the first line of stdin is the password, e.g."
            " printf '%s\\n' \"$PASSWORD\" | backupvault ... --password-stdin",
        )
    return check_password(password)


def _vault_before_password(ctx: Context, without_config: str, hint: str) -> None:
    """A password is of use only through the vault: without its config, say so (and what
    works instead) before asking for one; a missing or unreadable config is named too."""
    if ctx.config_path is None:
        raise UsageError(without_config, hint=hint)
    ctx.config()


# Password backups open with the code `vault recovery-code` printed (it is the key that made
# them), as --recovery-code ones do with theirs: a hint naming only the latter sent users
# who kept the former to think their backups lost.
OPENS_WITH_A_CODE = (
    "backups still open with --recovery-code -, given the code `backupvault vault"
    " recovery-code` printed (if you kept it) or, for a --recovery-code backup, its own"
)


def _root_key_by_password(ctx: Context, password_stdin: bool, *, for_code: bool = False) -> bytes:
    """RK of existing backups, recovered from the vault by password (`for_code`: to show
    its recovery code, which a vault without a key has none of)."""
    _vault_before_password(
        ctx,
        "this needs the backups' key: give the vault's client config (--config FILE or"
        f" ${CONFIG_ENV}) to use your password, or --recovery-code - to type the recovery"
        " code",
        hint="backups made with a password open with it through the vault, or with the code"
        " `backupvault vault recovery-code` printed; a backup made with `backup create"
        " --recovery-code` opens with that code",
    )
    from backupvault.client.errors import NotRegistered

    try:
        return _root_key_from_vault(ctx, _password(password_stdin), register=False)[0]
    except NotRegistered:
        # Its own hint ("make a backup, which registers one") is for a first backup: a new
        # key never opens backups that exist (a repository even refuses to take one).
        config = ctx.config()
        if for_code:
            raise NotRegistered(
                f"the vault holds no key for account {config.account!r} yet, so it has no"
                " recovery code to show",
                hint="the first backup with a password registers the key; run this command"
                " after it (check that --config is the client config of your account:"
                " `backupvault vault status` shows what the vault holds)",
            ) from None
        raise NotRegistered(
            f"the vault holds no key for account {config.account!r}, entry {config.entry!r},"
            " so no backup can be opened with a password through it",
            hint="check that --config is the client config of the account that made the"
            " backups (`backupvault vault status` shows what the vault holds);"
            f" {OPENS_WITH_A_CODE}. A new key, made by a backup into new storage, would not"
            " open these",
        ) from None


_WRITE_IT_DOWN = "write it down now; without it these backups cannot be opened"


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (a service manager, `kill`, `timeout`), for the whole command: as Ctrl-C.
    Installed by `main`; before, only the data phase of a backup or a restore had it, and
    SIGTERM anywhere else ended the process at once (143), saying nothing."""
    raise KeyboardInterrupt


def _interrupted(error: BaseException) -> bool:
    """Whether `error` is an interrupt, or what one turned into: a signal that lands while
    a thread pool's result is awaited can break a lock's re-acquire, and the lock's
    release on the way out then raises RuntimeError ("cannot release un-acquired lock"),
    with the KeyboardInterrupt as its context."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False


@contextlib.contextmanager
def _on_interrupt(
    what: str, hint: str, finished: Callable[[], Interrupted | None] = lambda: None
) -> Iterator[None]:
    """Ctrl-C, or SIGTERM, during a backup or a restore: clean up as for Ctrl-C and say
    what it left, not only "aborted" (a restore's hidden staging folder is removed), or
    what `finished` says when the work was done before the signal came."""
    try:
        yield
    except (KeyboardInterrupt, RuntimeError) as error:
        if not _interrupted(error):
            raise
        raise (finished() or Interrupted(what, hint=hint)) from None


def _committed() -> None:
    """The backup's snapshot is saved, or the restore done: from here a late Ctrl-C or
    SIGTERM is ignored, so that it cannot turn the success into an interruption (or into
    a death by the signal)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: nothing installed
            signal.signal(signum, signal.SIG_IGN)


@dataclass(frozen=True)
class _Deferral:
    """What the user hears when a signal comes during a step with the vault that is let
    finish (`_deferring`): at the first signal (on stderr), at a second one (it stopped
    at once), when the step then failed, and when it then worked."""

    notice: str
    cut: str
    cut_hint: str
    failed: str
    done: str
    done_hint: str


_CHECK = _Deferral(
    notice="finishing the password check with the vault, so it does not count as a wrong"
    " guess; press Ctrl-C again to stop now (the check may then count as a guess)\n",
    cut="interrupted during the password check with the vault",
    cut_hint="the check may have counted as a guess, even with the right password;"
    " `backupvault vault status` shows the guesses left, and the next successful"
    " recovery (run the command again) resets the count",
    failed="interrupted; the password check with the vault ended first",
    done="interrupted after the password check with the vault: it was let finish, so it"
    " did not count as a wrong guess; nothing was changed beyond the check",
    done_hint="run the command again",
)


def _change(what: str, new: str, old: str, done_hint: str) -> _Deferral:
    """For a registration, a password change or a delete: the first signal lets it
    finish, so that the user learns which of `new` and `old` is in effect (stopped
    between its fan-outs, it may land unseen). Nothing is lost by a second signal: t
    nodes stage the new shares before the commit goes out, and the device keeps the
    shares the others are owed (docs/threshold.md, "Registration")."""
    return _Deferral(
        notice=f"finishing {what} with the vault, so that you know whether it took effect;"
        f" press Ctrl-C again to stop now (then {new} or {old}, and `backupvault vault"
        " status` tells which)\n",
        cut=f"interrupted during {what} with the vault: it may or may not have taken effect",
        cut_hint=f"{new} or {old}: `backupvault vault status` shows the version in effect"
        " (a commit still on its way may land in the next seconds); what some nodes"
        " missed is kept on this device and sent at its next contact",
        failed=f"interrupted; {what} with the vault ended first",
        done=f"interrupted after {what} with the vault: it was let finish, and took effect",
        done_hint=done_hint,
    )


class _Cut(KeyboardInterrupt):
    """The second signal during a step that is let finish: stop at once."""


@contextlib.contextmanager
def _deferring(output: Output, deferral: _Deferral) -> Iterator[None]:
    """Around a step with the vault that must not stop half-way: Ctrl-C or SIGTERM waits
    for it to end. The first signal is deferred, said on stderr, and ends the command
    once the step is over (Interrupted, exit 130); a second stops at once, and says what
    that may have left. The SDK does no signal handling of its own: this stays in the
    CLI."""
    received: list[int] = []

    def deferred(signum: int, frame: object) -> None:
        if received:
            raise _Cut
        received.append(signum)
        if not output.json_mode:
            with contextlib.suppress(OSError):
                os.write(2, deferral.notice.encode())  # no buffered stream from a handler

    previous: dict[signal.Signals, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread (an embedding): no signals
        for signum in (signal.SIGINT, signal.SIGTERM):
            # An ignored signal stays ignored, as it is for the rest of the command (a job
            # a script starts with `&` inherits SIGINT ignored): it stopped only this step.
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, deferred)
    try:
        yield
    except _Cut:
        raise Interrupted(deferral.cut, hint=deferral.cut_hint) from None
    except BackupVaultError as err:
        if received:  # it ended with an error (a wrong password, say): it ends the command
            raise Interrupted(
                f"{deferral.failed}: {err.message}",
                hint=err.hint or "nothing else was done; run the command again",
            ) from None
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise Interrupted(deferral.done, hint=deferral.done_hint)


_REGISTRATION = _change(
    "the registration of a new key",
    "the new key is registered",
    "none is",
    "the new key is registered behind your password; run the command again to use it",
)


def _password_change(version: int) -> _Deferral:
    """For a password change of the key at `version`: the two outcomes named by the
    version `vault status` then shows. Without them a change cut off by a second signal
    sent the user to `vault status`, which said "key: live" for either, and a retry with
    the old password after the change had landed cost a guess (review s61)."""
    return _change(
        "the password change",
        f"the new password opens your key (`vault status` shows version {version + 1})",
        f"the old one still does (version {version})",
        "the new password opens your key; `backupvault vault status` shows whether every"
        " node confirmed it",
    )


_DELETE = _change(
    "the deletion of your key",
    "the key is deleted",
    "it is still there",
    "the key is deleted; `backupvault vault status` shows whether every node confirmed"
    " erasing its share",
)


def _password_check(output: Output) -> contextlib.AbstractContextManager[None]:
    """Around a recovery (the vault's password check): the nodes count the attempt once
    they evaluate, and only the reset a success sends takes it back: stopped in between,
    even the right password used up a guess (a cron job under `timeout`, interrupted ten
    times, destroyed its key)."""
    return _deferring(output, _CHECK)


def _weak_warning(reason: str) -> str:
    return (
        f"this password is weak ({reason}): someone who gets into your account may guess"
        " it within the vault's tries; prefer a long passphrase"
    )


def _warn_if_weak(ctx: Context, password: str) -> None:
    """At registration only: a weak password is the vault's one way in for a thief who
    takes the storage, limited only by the guess count."""
    reason = weakness(password)
    if reason is not None:
        ctx.output.warn(_weak_warning(reason))


def _weak_password_kept(password: str) -> bool:
    """On a terminal, before a new password is confirmed and registered: whether the user
    keeps it, told why it is weak (said after it took effect, the warning left no choice
    but another change: user review s42). True for a password that is not weak."""
    reason = weakness(password)
    if reason is None:
        return True
    click.echo(f"warning: {_weak_warning(reason)}", err=True)
    return click.confirm("Use it anyway?", default=False, err=True)


#: How many times a new password and its repetition may differ before the command stops.
TYPED_TWICE_TRIES = 3


def _typed_twice(password: str, prompt: str, repeat: str) -> str:
    """A new password once it is typed again the same (`repeat`); while the two differ,
    both are asked again, up to TYPED_TWICE_TRIES times: a slip of the finger no longer
    threw the command away, the current password already checked by the vault with it
    (new-user walkthrough s47). Nothing has been sent with the new password yet."""
    for tries in range(TYPED_TWICE_TRIES):
        if tries:
            # On the terminal the prompts are on, --json or not.
            click.echo("the two passwords differ: type the new password again", err=True)
            password = _password(False, prompt=prompt)
            while not _weak_password_kept(password):
                password = _password(False, prompt=prompt)
        again = click.prompt(repeat, hide_input=True, err=True)
        if hmac.compare_digest(again.encode(), password.encode()):
            return password
    raise UsageError(
        f"the two passwords differed {TYPED_TWICE_TRIES} times: nothing was sent with the"
        " new password",
        hint="run the command again, and type the new password the same both times",
    )


def _confirm(question: str, yes: bool) -> None:
    """Ask a person; without a terminal, refuse instead of reading an answer from a pipe."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            f"no terminal to ask {question!r} on: stdin is not a terminal",
            hint="pass --yes to confirm without the question (as a script must)",
        )
    # On stderr, as every prompt: stdout may be the --json result, redirected to a file.
    if not click.confirm(question, default=False, err=True):
        raise click.exceptions.Abort()


def _confirm_last_guess(after_a_try: bool) -> None:
    """Before a recovery sends the password the key's last guess rests on: a person says
    yes on the terminal; a script (no terminal) is refused, so a wrong password kept in a
    script or a pipe never destroys the key on its own. `after_a_try`: an earlier try of
    this recovery, overtaken by another, was sent and may have counted."""
    if not sys.stdin.isatty():
        used = (
            "not sent again (its earlier try, overtaken by another device's, may have"
            " counted as a guess)"
            if after_a_try
            else "not sent (no guess was used)"
        )
        raise UsageError(
            "the vault may have one guess left for this key: a wrong password could destroy"
            f" it, so the password was {used}",
            hint="check the password, then run the command in a terminal, which asks you"
            " to confirm; or open the backups with the recovery code (--recovery-code -)",
        )

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # click's question turns it into "Aborted" (exit 130)

    # The command defers Ctrl-C and SIGTERM around its password check; while asking (no
    # password sent yet) either stops at once.
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with contextlib.suppress(ValueError):  # not the main thread (an embedding)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
    try:
        sure = click.confirm(
            "The vault may have one guess left for this key: a wrong password now could"
            " destroy it for good. Send this password?",
            default=False,
            err=True,
        )
    finally:
        with contextlib.suppress(ValueError):
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    if not sure:
        raise click.exceptions.Abort()


def both_keys_given() -> UsageError:
    """--password-stdin and --recovery-code given together, to open existing backups."""
    return UsageError(
        "choose one of --password-stdin and --recovery-code",
        hint="backups open with the key their first backup made: --password-stdin for the"
        " vault password, or --recovery-code - for its recovery code (the one `backupvault"
        " vault recovery-code` printed, or a `backup create --recovery-code` backup's own)",
    )


def recovery_code_option(what: str) -> Callable[[Any], Any]:
    """`--recovery-code CODE` of a command that opens existing backups. '-', or the option
    alone (as `backup create --recovery-code` is given), asks on a terminal and reads stdin
    otherwise: the code stays out of shell history and the process list."""
    return click.option(
        "--recovery-code",
        "code",
        metavar="CODE",
        is_flag=False,
        flag_value="-",
        help=f"{what}; '-' or none: asked on a terminal, else read from stdin.",
    )


def snapshot_filter_options(function: Any) -> Any:
    """`--host NAME` and `--path PATH`, as restic's: which snapshots "latest" (and a
    listing) are taken from, when several folders or hosts back up into one repository."""
    function = click.option(
        "--path",
        "source_paths",
        metavar="PATH",
        multiple=True,
        help="Only snapshots of this backed-up folder or file (SOURCE in `backup list`);"
        " repeat for more.",
    )(function)
    return click.option(
        "--host",
        "hosts",
        metavar="NAME",
        multiple=True,
        help="Only snapshots made on this host (HOST in `backup list`, `-` for a machine with"
        " no name); repeat for more.",
    )(function)


def snapshot_filter(
    hosts: tuple[str, ...], paths: tuple[str, ...], snapshot_id: str | None = None
) -> SnapshotFilter:
    """The filter --host and --path give; refused beside a snapshot id (checked before
    the password), which names one snapshot already."""
    from backupvault.backup.repo.repository import SnapshotFilter, is_latest

    if "" in paths:
        raise UsageError("--path is empty", hint="give the folder (or file) that was backed up")
    # `-` is how `backup list` shows a machine with no name (no host name starts with "-").
    only = SnapshotFilter(tuple("" if host == "-" else host for host in hosts), paths)
    if only and snapshot_id is not None and not is_latest(snapshot_id):
        raise UsageError(
            "--host and --path choose which snapshot is the latest; they do not go with a"
            " snapshot id",
            hint=f"leave them out to use snapshot {snapshot_id}, or give `latest` (or no id)"
            " instead of it",
        )
    return only


def _recovery_code(value: str, from_argv: Output | None = None) -> bytes:
    """A code given as '-' is read from stdin, so it stays out of shell history and out of
    the process list; one given on the command line (`from_argv`: the output to warn on)
    is used, with a warning that others could see it."""
    if from_argv is not None and value != "-":
        from_argv.warn(
            "the recovery code was given on the command line, where other host users can see"
            " it (ps) while this runs, and shell history keeps it: `--recovery-code -` reads"
            " it from stdin"
        )
    if value != "-":
        code = value
    elif sys.stdin.isatty():
        # A terminal's stdin is the user: ask, as for a password, rather than wait unseen.
        code = click.prompt("Recovery code", hide_input=True, err=True)
    else:
        code = read_secret_line("the recovery code")
    if not code.strip():
        # Nothing given is a usage error (exit 2), not a mistyped code (exit 3).
        raise UsageError(
            "no recovery code: stdin was empty" if value == "-" else "the recovery code is empty",
            hint="give the code, e.g. `echo $CODE | backupvault ... --recovery-code -`",
        )
    return recovery.decode(code)


def _root_key_from_vault(
    ctx: Context,
    password: str,
    register: bool,
    storage_url: str | None = None,
    new_key: bool = False,
    confirm: bool = False,
) -> tuple[bytes, bool]:
    """The root key behind `password`; registers a new one if the vault holds none and
    `register` is set, but only with `new_key` when `storage_url` already holds password
    backups (a new key would leave them unopenable by password). `confirm`: before a new
    key is registered, the password is asked again on the terminal (only then: a key
    that exists already checks the password itself). Returns (root key, whether it was
    just registered)."""
    from backupvault.client.errors import (
        AlreadyRegistered,
        Destroyed,
        NotRegistered,
        WrongPassword,
    )

    session = ctx.session()
    try:
        with _password_check(ctx.output):
            recovered = session.recover_or_migrate(password)
    except NotRegistered:
        if not register:
            raise
        if storage_url is not None:
            _refuse_to_orphan_password_backups(storage_url, new_key)
    except Destroyed:
        # Wrong guesses destroyed the key (the nodes erased their shares): --new-key is
        # the owner's choice to start over, with a new key at the next version, but never
        # over a repository, which only the destroyed key opens.
        if not (register and new_key):
            raise
        if storage_url is not None:
            _refuse_to_orphan_password_backups(storage_url, new_key, destroyed=True)
    else:
        if new_key:
            raise UsageError(
                "--new-key: the vault already holds a key behind this password",
                hint="--new-key only applies when the vault holds none; drop it to use "
                "the existing key",
            )
        if recovered.migrated_from is not None:
            ctx.output.note(
                f"your key moved from fleet epoch {recovered.migrated_from} to epoch "
                f"{session.epoch} (recovered there, registered here, deleted there)"
            )
        _warn_wrong_guesses(ctx, recovered)
        _note_pending(ctx, recovered.threshold.pending)
        return recovered.root_key, False
    if not confirm:
        _warn_if_weak(ctx, password)
    elif not _weak_password_kept(password):
        raise UsageError(
            "nothing was registered: the password was weak",
            hint="run it again with a longer passphrase (a few words)",
        )
    if confirm:
        password = _typed_twice(
            password, "Password", "Repeat the password (a new key is registered behind it)"
        )
    root_key = recovery.new_root_key()
    try:
        with _deferring(ctx.output, _REGISTRATION):
            registered = session.register(password, root_key)
    except AlreadyRegistered:
        # Our own earlier attempt committed but its answer was lost, or another device
        # registered first: either way the key to use is the one the vault now holds.
        try:
            with _password_check(ctx.output):
                return session.recover(password).root_key, False
        except WrongPassword as wrong:
            # Another device's key, behind another password: told only "wrong password,
            # check it", the user typed this one again, and each try used a guess of the
            # other device's key (review s61).
            wrong.hint = (
                "another device (or another run of this one) registered a key for this entry"
                " a moment before this one could, behind another password: this password was"
                " tried against it, which used a guess, and nothing was registered: back up"
                " with that device's password, and do not try this one again"
            )
            raise
    _warn_degraded(ctx, registered.missing)
    return root_key, True


def _warn_degraded(ctx: Context, missing: tuple[str, ...]) -> None:
    """A registration that not every node acknowledged still works (t of N hold shares),
    but fewer node failures are tolerated: say which nodes lack their share."""
    if missing:
        ctx.output.warn(
            f"{_plural(len(missing), 'vault node')} did not take"
            f" {'its' if len(missing) == 1 else 'their'} share ("
            + "; ".join(missing)
            + "); the key works, but fewer nodes may fail before it cannot be recovered."
            " This device keeps each missing share sealed to its own node and delivers it"
            " at its next contact with the fleet, no password asked; `backupvault vault"
            " finish` does it now"
        )


def _note_pending(ctx: Context, pending: tuple[str, ...]) -> None:
    """Deliveries this device still owes the fleet after finishing what it could."""
    if pending:
        ctx.output.note(
            "still pending (sent again at this device's next contact with the fleet, or now"
            " by `backupvault vault finish`): " + "; ".join(pending)
        )


def _warn_wrong_guesses(ctx: Context, recovered: Recovery) -> None:
    """Someone who is not this user may be guessing: say so after every success."""
    wrong = recovered.wrong_guesses_before
    reset = recovered.threshold.reset_confirmed
    if wrong:
        # The count cannot tell a wrong password from another device's recovery that has
        # not reset it yet: name both, rather than call a user's own device a guesser.
        attempts = "1 other attempt was" if wrong == 1 else f"{wrong} other attempts were"
        at_least = recovered.threshold.wrong_guesses_at_least
        if at_least is not None:
            # Too few nodes answered to outvote a hostile one's figure (review s62).
            attempts = (
                f"{at_least} to {wrong} other attempts were (the vault nodes that answered"
                " count differently)"
            )
        ctx.output.warn(
            f"{attempts} counted since your last successful recovery (wrong passwords, or"
            " another of your devices recovering at the same moment); if that was not you,"
            " someone may be guessing" + (" (the count is now reset)" if reset else "")
        )
    if not reset:
        # A relay that drops resets would otherwise let correct recoveries use up the
        # guesses unseen, until the key is destroyed.
        ctx.output.warn(
            "too few vault nodes confirmed resetting the guess count ("
            + "; ".join(recovered.threshold.reset_missing)
            + "): this recovery and the guesses before it may still count against the limit;"
            " the next successful recovery resets them (`backupvault vault status` shows"
            " how many are left)"
        )


def _may_be_password(key: str | None) -> bool:
    """Whether a listed backup may open only with the vault key: version-1 headers do not
    say which key they were made with ("unknown")."""
    return key in ("password", "unknown")


def _refuse_to_orphan_password_backups(
    storage_url: str, new_key: bool, *, destroyed: bool = False
) -> None:
    """Before a new key is registered: a repository at `storage_url` could never be opened
    with it (even with --new-key: that needs another storage); single-blob password
    backups would stay unopenable by password unless --new-key says so."""
    from backupvault.backup import list_backups, redact_url
    from backupvault.cli.backup_repo import repository_exists

    if repository_exists(storage_url):
        if destroyed:
            raise BackupVaultError(
                f"{redact_url(storage_url)} holds a repository made with the key wrong "
                "guesses destroyed: a new key could not open it, so none was made",
                hint="back up to another --storage with --new-key (a new repository); "
                f"{OPENS_WITH_A_CODE}",
            )
        raise BackupVaultError(
            f"the vault holds no key for this account, but {redact_url(storage_url)} holds a "
            "repository: a new key could not open it, so none was made",
            hint=f"check --config (account and entry) first; {OPENS_WITH_A_CODE}; a new key "
            "needs another --storage",
        )
    if new_key:
        return
    password_backups = [
        b for b in list_backups(storage_url, missing_ok=True) if _may_be_password(b.key)
    ]
    if password_backups:
        count = _plural(len(password_backups), "password backup")
        raise BackupVaultError(
            f"the vault holds no key for this account, but {redact_url(storage_url)} holds "
            f"{count}: "
            "a new key would leave them unopenable by password, so none was made",
            hint="check --config (account and entry) first; if the old key is gone for "
            "good, run again with --new-key to make a new one",
        )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _note_skipped(ctx: Context, skipped: list[Skipped]) -> None:
    if ctx.output.json_mode:
        return  # the object's `skipped` lists them
    for item in skipped:
        ctx.output.warn(f"skipped {one_line_name(item.name)}: {item.reason}")


# ---- backup -----------------------------------------------------------------------------


def _backup_json(
    backup_id: str,
    created_at: datetime,
    name: str | None,
    storage: str,
    key: str | None,
    files: int,
    content_bytes: int,
    skipped: list[Skipped],
    stored_bytes: int | None = None,
) -> dict[str, Any]:
    """The backup object that create, restore and list share (docs/cli.md)."""
    from backupvault.backup import redact_url

    data: dict[str, Any] = {
        "backup_id": backup_id,
        "created_at": created_at.isoformat(),
        "storage": redact_url(storage),
        "key": key,
        "files": files,
        "bytes": content_bytes,
        "skipped": [
            {"path": item.name, "reason": item.reason, "unread": item.unread} for item in skipped
        ],
    }
    if name is not None:
        data["name"] = name
    if stored_bytes is not None:
        data["stored_bytes"] = stored_bytes
    return data


@cli.group(plugins=BACKUP_PLUGINS)
def backup() -> None:
    """Create, list and restore backups; check, repair, forget and prune them."""


@backup.command("create")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--storage",
    "storage_url",
    metavar="URL",
    help="Where backups go: a folder or a storage URL (file://, webdav+https://, s3://,"
    f" sftp://, gs://, az://). {STORAGE_DEFAULT}",
)
@click.option("--password-stdin", is_flag=True, help="Read the vault password from stdin.")
@click.option(
    "--recovery-code",
    "use_code",
    is_flag=True,
    help=f"No vault: the first backup makes a key, printed once as a recovery code "
    f"({recovery.FORMAT}); later backups ask for it (stdin).",
)
@click.option(
    "--new-key",
    is_flag=True,
    help="Register a new vault key in place of one wrong guesses destroyed (into new"
    " storage: a repository opens only with its own key), or over single-blob password"
    " backups of an earlier version (they stay unopenable by password).",
)
@click.option("--force-read", is_flag=True, help="Read every file, even those unchanged.")
@click.option(
    "--exclude",
    metavar="PATTERN",
    multiple=True,
    help="Leave out paths matching PATTERN (shell wildcards; with a / against the path"
    " inside SOURCE, without against the name); repeat for more.",
)
@click.option(
    "--one-file-system",
    "-x",
    is_flag=True,
    help="Do not go into folders on another file system (mount points are backed up empty).",
)
@pass_context
def backup_create(
    ctx: Context,
    source: Path,
    storage_url: str | None,
    password_stdin: bool,
    use_code: bool,
    new_key: bool,
    force_read: bool,
    exclude: tuple[str, ...],
    one_file_system: bool,
) -> None:
    """Back up SOURCE (a file or folder), encrypted on this device; only what changed since
    the last backup of SOURCE is read and stored."""
    from backupvault.backup import human_size
    from backupvault.backup.keykinds import KEY_PASSWORD, KEY_RECOVERY_CODE
    from backupvault.backup.repo import create_snapshot
    from backupvault.backup.repo.create import source_stat
    from backupvault.backup.repo.state import default_dir
    from backupvault.cli.backup_repo import (
        code_for_existing_repository,
        repository_exists,
        repository_opens_with,
    )

    if password_stdin and use_code:
        raise UsageError(
            "choose one of --password-stdin and --recovery-code",
            hint="--recovery-code backs up with no vault (its code opens the repository);"
            " to use your vault password, leave --recovery-code out",
        )
    if new_key and use_code:
        raise UsageError(
            "--new-key is for the vault key; --recovery-code always makes a new key",
            hint="leave --new-key out: a --recovery-code backup into new storage makes a"
            " key of its own",
        )
    # Before the key is asked for: a SOURCE no backup takes (a link, a fifo) was refused
    # only once the password had gone to the vault, a mistyped one spending a guess.
    source_stat(source)
    exclude = tuple(_exclude_pattern(pattern, source) for pattern in exclude)
    url = ctx.storage(storage_url)
    inside = _storage_inside(source, url)
    if inside is not None:
        # Backed up, the repository would go into itself, growing at every backup.
        ctx.output.note(f"leaving the storage folder {inside} out: it is inside {source}")
        exclude = (*exclude, _only(inside))
    registered = new_code = False
    if use_code:
        if repository_exists(url):
            root_key = code_for_existing_repository(url, source)
        else:
            root_key, new_code = recovery.new_root_key(), True
    else:
        _vault_before_password(
            ctx,
            "a backup with a password needs the vault's client config (--config FILE or"
            f" ${CONFIG_ENV}); or give --recovery-code to back up with no vault",
            hint="`backupvault local up --dir DIR` writes DIR/client.toml; with"
            " --recovery-code the first backup prints the code that opens it",
        )
        password = _password(password_stdin)
        root_key, registered = _root_key_from_vault(
            ctx,
            password,
            register=True,
            storage_url=url,
            new_key=new_key,
            confirm=not password_stdin,
        )
    code = recovery.encode(root_key) if new_code else None
    made: list[bool] = []  # this device's repository config is the one stored

    def show_code() -> None:
        # As soon as the repository exists, before the backup writes anything: one that
        # fails or is interrupted later would otherwise leave a repository whose code
        # nobody ever saw.
        made.append(True)
        # A typo in --storage starts a new repository: said, so it is not taken for the
        # one of yesterday's backups (user review s42).
        from backupvault.backup.storage import redact_url

        ctx.output.note(f"no repository was at {redact_url(url)}: a new one is made there")
        if code is not None and not ctx.output.json_mode:
            ctx.output.say_code(
                f"recovery code of the new repository ({_WRITE_IT_DOWN}):\n  {code}"
            )

    try:
        with (
            _on_interrupt(
                "backup interrupted: no snapshot was saved",
                hint="run it again: it reuses the data this one already stored",
            ),
            ctx.output.progress() as bar,
        ):
            info = create_snapshot(
                source,
                url,
                root_key,
                bar,
                force_read=force_read,
                state_dir=default_dir(),
                key_kind=KEY_RECOVERY_CODE if use_code else KEY_PASSWORD,
                exclude=exclude,
                on_new_repository=show_code,
                one_file_system=one_file_system,
            )
            _committed()
    except BackupVaultError as err:
        # Only if this device made the repository: a first backup that lost the race to
        # create it (another device's config is stored) made nothing its code opens. An
        # interruption can come between the config stored and `show_code`: then the
        # config tells (a fresh key opens no other device's).
        if code is not None and (
            (made and repository_exists(url)) or repository_opens_with(url, root_key)
        ):
            where = "in `recovery_code`" if ctx.output.json_mode else "printed above"
            if isinstance(err, ResultNotWritten) and not ctx.output.json_mode:
                where = f"{code} (here: stdout took nothing)"
            err.hint = (
                f"the new repository was made, with the recovery code {where}: run the "
                "backup again with --recovery-code and give that code when asked "
                "(it reuses the data already stored)"
            )
            err.details["recovery_code"] = code
        raise
    data = _backup_json(
        info.snapshot_id,
        info.created_at,
        None,
        url,
        "recovery code" if use_code else "password",
        info.files,
        info.size,
        info.skipped,
        stored_bytes=info.stored,
    )
    data.update(
        source=str(source),
        registered=registered,
        parent_id=info.parent_id,
        new_repository=bool(made),
        files_read=info.files_read,
        added_bytes=info.added,
    )
    for warning in info.warnings:
        ctx.output.warn(warning)  # under --json: the result's `warnings`, only if any
    text = (
        f"snapshot {info.snapshot_id} saved: {_plural(info.files, 'file')}, "
        f"{human_size(info.size)} ({_plural(info.files_read, 'file')} read, "
        f"{human_size(info.added)} new, {human_size(info.stored)} stored)"
    )
    if registered:
        # Wrong guesses destroy it (a thief's too), and then the password backups with it:
        # say now how to keep a copy that does not depend on the vault.
        ctx.output.note(
            "a new key was registered in the vault behind your password; `backupvault vault"
            " recovery-code` prints it as a code to keep offline, which opens these backups"
            " even if wrong guesses destroy the key"
        )
    if code is not None:
        data["recovery_code"] = code  # for people, printed before the backup began
    _note_skipped(ctx, info.skipped)
    unread = sum(item.unread for item in info.skipped)
    if unread:
        ctx.output.warn(
            ("1 file or folder" if unread == 1 else f"{unread} files or folders")
            + " could not be read, so this snapshot lacks what is in them (exit code 8);"
            " give the backup the right to read them, or --exclude them"
        )
    ctx.output.done(data, text)  # under -q a new code was printed, and only the code
    if unread:
        raise click.exceptions.Exit(EXIT_INCOMPLETE)


def _storage_inside(source: Path, url: str) -> str | None:
    """The path inside SOURCE (a folder) of a local storage folder that is in it, such as
    ".bk" for `backup create SRC --storage SRC/.bk`; None for one elsewhere or remote."""
    from backupvault.backup.storage import Storage, check_url

    try:
        if check_url(url)[0] not in ("", "file") or not source.is_dir():
            return None
        root = Storage(url).root  # a local one is only named, not opened
    except BackupVaultError:
        return None  # the backup reports it
    # As the backup walks SOURCE: through the links in SOURCE's own path, never through
    # one inside it (a storage reached by such a link is not read: the link is kept).
    storage, folder = Path(os.path.realpath(root)), Path(os.path.realpath(source))
    if storage == folder:
        raise UsageError(
            f"the storage {url} is the backup source {source} itself",
            hint="give --storage a folder outside SOURCE (one inside it is left out of the backup)",
        )
    if not storage.is_relative_to(folder):
        return None
    return storage.relative_to(folder).as_posix()


def _only(path: str) -> str:
    """An --exclude pattern that matches `path` inside SOURCE and nothing else: wildcards
    in it are escaped ("[*]"), and "./" makes it a path inside SOURCE, not a name at any
    depth (backup/repo/create.py, `excluded`)."""
    return "./" + "".join(f"[{c}]" if c in "*?[" else c for c in path)


def _exclude_pattern(pattern: str, source: Path) -> str:
    """An --exclude pattern as `excluded` takes it: an absolute path inside SOURCE as the
    path inside it ("./docs"), as --include takes one (review s49: it matched nothing);
    one outside SOURCE is refused."""
    from backupvault.backup.repo.restore import inside_source

    if pattern.startswith("~") and "/" in pattern:
        # `--exclude=~/.cache` (or one quoted in a cron line) reaches us unexpanded, as
        # `--to=~/x` does: it matched no path, and left out nothing (review s62). A `~`
        # that names no home folder (`~$*`, Word's lock files) stays as it is.
        pattern = os.path.expanduser(pattern)
    if not pattern.startswith("/"):
        return pattern
    relative = inside_source(pattern, os.path.abspath(source))
    if relative is None:
        raise UsageError(
            f"--exclude {pattern} is not inside {source}: a pattern starting with / is an"
            " absolute path, and nothing outside SOURCE is backed up",
            hint=f"for {pattern.strip('/')} inside SOURCE give --exclude ./{pattern.lstrip('/')}"
            " (a path inside SOURCE), or a name without a / to leave out at any depth",
        )
    return "./" + relative


@backup.command(
    "restore", short_help="Restore a snapshot (the latest by default) into a new folder"
)
@click.argument("backup_id", required=False)
@click.option("--storage", "storage_url", metavar="URL", help=STORAGE_HELP)
@click.option(
    "--to", "dest", required=True, type=click.Path(path_type=Path), help="A new or empty folder."
)
@click.option(
    "--include",
    metavar="PATH",
    multiple=True,
    help="Restore only this file or folder (repeat for more).",
)
@snapshot_filter_options
@click.option("--password-stdin", is_flag=True, help="Read the vault password from stdin.")
@recovery_code_option(f"The backup's recovery code ({recovery.FORMAT})")
@pass_context
def backup_restore(
    ctx: Context,
    backup_id: str | None,
    storage_url: str | None,
    dest: Path,
    include: tuple[str, ...],
    hosts: tuple[str, ...],
    source_paths: tuple[str, ...],
    password_stdin: bool,
    code: str | None,
) -> None:
    """Restore BACKUP_ID (a snapshot or a single-blob backup; default, or "latest": the
    latest snapshot, of --path and --host if given, or the latest single-blob backup
    where there is no repository) into --to, a new or empty folder."""
    from backupvault.backup import human_size, list_backups, restore_backup
    from backupvault.backup.repo import restore_snapshot
    from backupvault.backup.repo.repository import is_latest
    from backupvault.backup.repo.state import default_dir
    from backupvault.cli.backup_repo import repository_exists, require_snapshots, snapshot_names

    if password_stdin and code is not None:
        raise both_keys_given()
    if "" in include:  # `--include "$DIR"` with DIR unset restored everything, silently
        raise UsageError(
            "--include is empty",
            hint="give a file or folder as `backupvault backup ls latest` shows it; leave"
            " --include out to restore everything",
        )
    if backup_id is not None and is_latest(backup_id):
        backup_id = None  # restic's name for the default
    if backup_id is not None and recovery.looks_like_code(backup_id):
        # Not named in the message: "no snapshot with id <the code>" put the key on stderr.
        raise UsageError(
            "BACKUP_ID looks like a recovery code, not a snapshot id",
            hint="give the code with --recovery-code - (read from stdin); BACKUP_ID is a"
            " snapshot id from `backupvault backup list`, or left out for the latest",
        )
    only = snapshot_filter(hosts, source_paths, backup_id)
    dest = dest.expanduser()  # `--to=~/x` reaches us unexpanded, as --storage's `~` does
    try:
        _check_restore_to(dest)
    except OSError as exc:
        # Not one of the answers it gives: the disk under --to does not answer (a dead
        # sshfs or NFS mount), which was "unexpected OSError ... a bug" (review s62).
        from backupvault.backup.errors import DestinationError

        raise DestinationError(
            f"cannot use the restore destination {dest}: {exc.strerror}",
            hint="nothing was asked for or written; a network or FUSE mount whose server or"
            " program has gone says so (Transport endpoint is not connected): mount it"
            " again, or give --to a folder on another disk",
        ) from None
    url = ctx.storage(storage_url)
    use_repository = repository_exists(url)
    if use_repository and backup_id is not None:
        wanted = backup_id.strip().lower()
        if any(b.backup_id.startswith(wanted) for b in list_backups(url, missing_ok=True)):
            if any(name.startswith(wanted) for name in snapshot_names(url)):
                # Storage chooses which of the two a short id names (review s60): an old
                # single-blob backup put beside the repository was restored in its place.
                raise UsageError(
                    f"{wanted} matches both a snapshot's id and a single-blob backup's",
                    hint="give more of the id: `backupvault backup list` shows both",
                )
            use_repository = False
    if not use_repository:
        # First: no storage, or nothing in it, is said as such, not as an option refused.
        _require_single_blob(url, backup_id)
        if backup_id is None:
            _require_no_repository_hidden(url)
    if include and not use_repository:
        raise UsageError(
            "--include works on snapshots, not on single-blob backups",
            hint="leave --include out to restore the whole backup (a single-blob backup of"
            " an earlier version restores only whole), then take what you need from it",
        )
    if only and not use_repository:
        raise UsageError(
            "--host and --path choose among snapshots, and there are none here, only"
            " single-blob backups",
            hint="leave them out to restore the latest single-blob backup, or give its id"
            " (`backup list` shows them)",
        )
    if use_repository and backup_id is not None:
        require_snapshots(url, backup_id)
    root_key = (
        _recovery_code(code, ctx.output)
        if code is not None
        else _root_key_by_password(ctx, password_stdin)
    )
    with (
        _on_interrupt(
            f"restore interrupted: nothing was written into {dest}",
            hint="run it again",
            finished=lambda: _restored_before_the_signal(dest),
        ),
        ctx.output.progress() as bar,
    ):
        if use_repository:
            key = "password" if code is None else "recovery code"
            info = restore_snapshot(
                url, root_key, dest, backup_id, bar, include=include, key=key,
                state_dir=default_dir(), only=only,
            )  # fmt: skip
        else:
            info = restore_backup(url, root_key, dest, backup_id, bar)
        _committed()
    for name, why in info.passed_over.items():
        ctx.output.warn(f"passed over {name}: it cannot be read ({why})")
    for warning in info.warnings:
        ctx.output.warn(warning)
    _note_skipped(ctx, info.skipped)
    data = _backup_json(
        info.backup_id,
        info.created_at,
        None,
        url,
        info.key,
        info.files,
        info.bytes,
        info.skipped,
    )
    data["dest"] = str(info.dest)
    # The source said: with several folders in one storage, the latest is of whichever
    # was backed up last (user review s42).
    of = f" of {printable(info.source)}" if info.source else ""
    if info.source:
        data["source"] = info.source
    if use_repository:
        data["other_folders"], data["other_hosts"] = info.other_folders, info.other_hosts
    others = [
        f"of {_plural(info.other_folders, 'other folder')}" if info.other_folders else "",
        f"from {_plural(info.other_hosts, 'other host')}" if info.other_hosts else "",
    ]
    if any(others):
        ctx.output.note(
            f"the repository also holds snapshots {' and '.join(o for o in others if o)}:"
            " this restored the latest of them all; --path and --host choose (`backup list`"
            " shows each snapshot's HOST and SOURCE)"
        )
    ctx.output.done(
        data,
        f"restored backup {info.backup_id}{of} made {info.created_at:%Y-%m-%d %H:%M:%S} UTC"
        f" into {info.dest} ({_plural(info.files, 'file')}"
        # Links counted too: a restore of only a link said "0 files" (user review s42).
        + (f", {_plural(info.links, 'link')}" if info.links else "")
        + f", {human_size(info.bytes)})",
    )


def _require_single_blob(url: str, backup_id: str | None) -> None:
    """Before the key is asked for, where there is no repository: the storage exists and
    holds a backup to restore (`backup_id`'s, if given). A mistyped --storage was found only
    once the vault had answered, so a mistyped password spent a guess on it."""
    from backupvault.backup.errors import BackupNotFound
    from backupvault.backup.storage import Storage

    storage = Storage(url)
    if backup_id is not None:
        storage.find(backup_id)
    elif not storage.list(missing_ok=False):
        raise BackupNotFound(
            f"no backups at {storage.display_url}",
            hint="check the --storage URL (`backup list --storage URL` shows what is there)",
        )


def _restored_before_the_signal(dest: Path) -> Interrupted | None:
    """A stop signal after the restore moved its copy onto `dest` (new or empty before):
    the restore is whole there, and is said so (review s60: "nothing was written")."""
    if not (dest.is_dir() and any(dest.iterdir())):
        return None
    return Interrupted(
        f"restore interrupted after it had finished: {dest} holds the whole restore",
        hint="nothing more to do",
    )


def _require_no_repository_hidden(url: str) -> None:
    """The latest single-blob backup is not restored as the latest where this device
    backed up to a repository that storage no longer shows (review s60: storage hid the
    repository, and a years-old single-blob backup came back with exit 0 and no word)."""
    from backupvault.backup.errors import RollbackSuspected
    from backupvault.backup.repo.state import default_dir, place_of, repository_held
    from backupvault.backup.storage import Storage

    storage = Storage(url)
    held = repository_held(default_dir(), place_of(storage))
    if held is not None:
        raise RollbackSuspected(
            f"this device backed up to a repository at {storage.display_url} (id"
            f" {held[:8]}), and storage no longer shows it: its latest single-blob backup is"
            " not your latest backup",
            hint="if you removed that repository yourself, give the single-blob backup's id"
            " (`backupvault backup list` shows them); otherwise storage hid or lost it:"
            " restore from another copy",
        )


def _check_restore_to(dest: Path) -> None:
    """Before the key is asked for (a wrong password costs a guess): the --to a restore
    would refuse anyway (a folder that is not empty, or a symbolic link, included: they
    were checked only once the vault had been asked), with what to do; and the two it
    named wrongly (a file in the path was a folder "that does not exist"; a folder that
    cannot be written to, such as /proc, had "no space left")."""
    import shlex
    import tempfile

    from backupvault.backup.errors import DestinationError
    from backupvault.backup.safe import (
        NOT_EMPTY_HINT,
        link_destination,
        missing_parent,
        mounted_destination,
    )

    if dest.is_symlink():
        raise link_destination(dest)
    parent = dest.absolute().parent
    exists = dest.exists()
    if exists:
        if not dest.is_dir():
            raise DestinationError(
                f"restore destination {dest} exists and is not a folder",
                hint="give --to a new folder, or an empty one: a restore never writes over a file",
            )
        try:
            with os.scandir(dest) as entries:
                empty = next(entries, None) is None
        except OSError:
            return  # one this user cannot list: the restore names what is wrong
        if not empty:
            raise DestinationError(
                f"restore destination {dest} is not empty",
                hint=NOT_EMPTY_HINT,
            )
        if os.path.ismount(dest):
            raise mounted_destination(dest)
        if _is_current_folder(dest):
            # `cd restored && backupvault backup restore --to .`: the copy built beside it
            # was moved onto it, and the shell went on in the old folder, which `ls` showed
            # empty after a restore that said it had worked (new-user review s61).
            name = dest.absolute().name
            raise DestinationError(
                f"restore destination {dest} is the folder this command runs in: a restore"
                " builds its copy beside it and moves that into its place, so your shell"
                " would stay in the old, empty folder and show nothing of the restore",
                hint=f"run it from the folder above (cd ..) with --to {shlex.quote(name)},"
                " or give --to a new folder",
            )
        # Its parent takes the copy built beside it, as a new --to's does: an empty
        # folder in one this user cannot write to passed here, and the restore failed
        # only once the key had been asked for, with Python's errno (review s61).
    else:
        existing = parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise DestinationError(
                f"{existing} is not a folder, so the restore destination {dest} cannot be made"
                " in it",
                hint="give --to a new folder whose path goes through folders, not a file",
            )
        if existing != parent:
            raise missing_parent(dest)  # before the password: a typo costs no guess
    try:
        probe = tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        beside = " (a restore builds its copy there, beside --to)" if exists else ""
        raise DestinationError(
            f"the restore destination {dest} cannot be written: making a folder in {parent}"
            f"{beside} failed ({exc.strerror})",
            hint="give --to a new folder on a disk this user can write to",
        ) from None
    os.rmdir(probe)


def _is_current_folder(dest: Path) -> bool:
    """Whether `dest` is the folder this command runs in (the shell's, which keeps it)."""
    try:
        return os.path.samefile(dest, os.curdir)
    except OSError:
        return False


@backup.command("list")
@click.option("--storage", "storage_url", metavar="URL", help=STORAGE_HELP)
@snapshot_filter_options
@click.option("--password-stdin", is_flag=True, help="Read the vault password from stdin.")
@recovery_code_option("Recovery code")
@pass_context
def backup_list(
    ctx: Context,
    storage_url: str | None,
    hosts: tuple[str, ...],
    source_paths: tuple[str, ...],
    password_stdin: bool,
    code: str | None,
) -> None:
    """List snapshots (with sizes added and stored, the host that made each and the folder
    it is of: this needs the key; --host and --path list only some) and single-blob backups
    (with the kind of key that opens each), oldest first."""
    from backupvault.backup import human_size, list_backups, list_partials, redact_url
    from backupvault.backup.repo import maintenance
    from backupvault.cli.backup_repo import (
        existing_key,
        repository_exists,
        summary_row,
        warn_damaged,
    )

    only = snapshot_filter(hosts, source_paths)
    url = ctx.storage(storage_url)
    backups = list_backups(url)
    partials = list_partials(url)
    rows = [
        {
            "backup_id": b.backup_id,
            "created_at": b.created_at.isoformat(),
            "stored_bytes": b.size,
            "name": b.name,
            "key": b.key,
        }
        for b in backups
    ]
    lines = [f"{'ID':<32}  {'CREATED (UTC)':<19}  {'SIZE':>10}  KEY"] if backups else []
    lines += [
        f"{b.backup_id}  {b.created_at:%Y-%m-%d %H:%M:%S}  "
        f"{'?' if b.size is None else human_size(b.size):>10}  {b.key or 'unreadable header'}"
        for b in backups
    ]
    shown = redact_url(url)
    has_repository = repository_exists(url)
    if backups:
        lines.append(f"{_plural(len(backups), 'backup')} at {shown}")
    elif not has_repository:
        lines.append(f"no backups at {shown}")
    for partial in partials:
        started = "?" if partial.started_at is None else f"{partial.started_at:%Y-%m-%d %H:%M}"
        lines.append(
            f"unfinished backup started {started} UTC: {partial.name} (backup prune "
            "removes it once a day old)"
        )
    snapshot_rows: list[dict[str, Any]] = []
    if has_repository:
        repo = maintenance.open_repository(url, existing_key(ctx, password_stdin, code))
        found = maintenance.list_snapshots(repo, only)
        warn_damaged(ctx, repo.damaged, "not listed; `backup check` shows the damage")
        for warning in repo.leftover_warnings():
            ctx.output.warn(warning)
        snapshot_rows = [summary_row(s) for s in found]
        host_width = max([len("HOST"), *(len(s.host) for s in found)])
        # A machine with no name records "": shown as "-", so the columns stay columns.
        lines.append(
            f"{'SNAPSHOT':<32}  {'CREATED (UTC)':<19}  {'SIZE':>10}  {'ADDED':>10}  "
            f"{'STORED':>10}  {'KEY':<13}  {'HOST':<{host_width}}  SOURCE"
        )
        lines += [
            f"{s.snapshot_id}  {s.created_at:%Y-%m-%d %H:%M:%S}  {human_size(s.size):>10}  "
            f"{human_size(s.added):>10}  {human_size(s.stored):>10}  {s.key:<13}  "
            f"{s.host or '-':<{host_width}}  {s.source}"
            for s in found
        ]
        of_all = f" of {len(repo.listed)}" if only else ""
        lines.append(
            f"{len(found)}{of_all} snapshot{'' if len(found) == 1 and not only else 's'}"
            f"{only.described()} in the repository at {redact_url(url)}"
        )
    data = {
        "backups": rows,
        "snapshots": snapshot_rows,
        "partials": [
            {
                "name": p.name,
                "started_at": None if p.started_at is None else p.started_at.isoformat(),
                "stored_bytes": p.size,
            }
            for p in partials
        ],
    }
    ctx.output.result(data, "\n".join(lines))


# ---- vault ------------------------------------------------------------------------------


@cli.group(short_help="Your key in the vault: status, recovery code, password")
def vault() -> None:
    """The key vault: status, recovery code, password change, deletion, finishing deliveries."""


@vault.command("status")
@pass_context
def vault_status(ctx: Context) -> None:
    """Whether the vault holds your key, and how many guesses are left."""
    from backupvault.protocol import EntryStatus

    session = ctx.session()
    status = session.status()
    data = {**asdict(status), "status": status.status.name.lower()}
    if status.status == EntryStatus.EMPTY:
        data["guesses_remaining"] = None  # no key, so no guesses: not "none left"
    text = f"key: {status.status.name.lower()}"
    if status.status == EntryStatus.EMPTY and (older := _key_on_older_epoch(session)):
        epoch, _, old = older
        data["older_epoch"] = {
            "epoch": epoch,
            "status": old.status.name.lower(),
            "guesses_remaining": old.guesses_remaining,
        }
        left = f", {old.guesses_remaining} of {old.guess_limit} guesses left"
        text += (
            f" on fleet epoch {session.epoch}; your key is still on epoch {epoch} (a rotation's"
            f" older fleet: {old.status.name.lower()}"
            + (left if old.status == EntryStatus.LIVE else "")
            + "): your next recovery (`backup create`, `backup restore`, `vault"
            " change-password`) moves it here"
        )
    elif status.status == EntryStatus.EMPTY:
        text += (
            " (no key behind a password here: the first `backupvault backup create` with a"
            " password registers one)"
        )
    if status.status == EntryStatus.DESTROYED:
        text += (
            " (wrong guesses used up the limit): backups made with the password open only"
            " with the code `backupvault vault recovery-code` printed, if you kept it;"
            " `backupvault backup create --new-key` registers a new key, for new storage"
        )
    if status.status == EntryStatus.LIVE:
        # The version tells which password opens the key after a change that was cut off
        # (its message names the version of each).
        text += (
            f" (version {status.version}), {status.guesses_remaining} of"
            f" {status.guess_limit} guesses left"
        )
        if status.guesses_remaining_up_to is not None:
            text += (
                f" (or up to {status.guesses_remaining_up_to}: the vault nodes that answered"
                " count differently)"
            )
        for node in status.nodes_without:
            text += f"\n{_node_without(node)}"
    for item in status.pending:
        text += f"\npending on this device: {item}"
    if status.pending:
        text += "\n(`backupvault vault finish` delivers them; so does your next recovery)"
    ctx.output.result(data, text)


def _key_on_older_epoch(
    session: FleetSession,
) -> tuple[int, FleetSession, VaultStatus] | None:
    """After a rotation the entry stays on the older epoch until a recovery moves it: the
    newest older epoch where it is not empty (its session and status), so that `vault
    status` does not call a key that is there "empty", nor `vault delete` say there is
    nothing to delete. An older epoch that cannot be asked is passed over, and one
    whose bundle does not verify ends the search: the status of the current epoch stands
    (a recovery, which would use it, stops on it)."""
    from backupvault.client.errors import VaultError
    from backupvault.protocol import EntryStatus

    older = session.older()
    while True:
        try:
            epoch, old = next(older)
        except (StopIteration, VaultError):
            return None
        try:
            status = old.status()
        except VaultError:
            continue
        if status.status != EntryStatus.EMPTY:
            return epoch, old, status


def _node_without(node: str) -> str:
    """A status line for a node that did not answer with the key's manifest and a share
    of it: one that holds another manifest, or the key's without a share (a delivery
    missed), does not hold this key's share; one that could not be asked (down,
    unreachable, an error) may well hold it, and is not said to hold none."""
    if node.endswith((": holds another manifest", ": holds the key's manifest but no share of it")):
        return f"not holding this key's share: {node}"
    return f"could not get this key's status from {node}"


@vault.command("finish")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@pass_context
def vault_finish(ctx: Context, password_stdin: bool) -> None:
    """Deliver what this device still owes the vault nodes: the shares of a registration
    or password change that some nodes missed (each kept sealed to its own node), and
    erasures they did not confirm. Only shares kept by an earlier build need the
    password (they are kept under its key).

    Exits 0 when nothing is left pending, 5 when some nodes still do not answer."""
    from backupvault.client.errors import FleetUnavailable

    session = ctx.session()
    confirmed_before = len(session.threshold.confirmed)
    left = session.status().pending  # sent again on the way
    if session.needs_password_to_finish():
        password = _password(password_stdin)
        with _password_check(ctx.output):
            recovered = session.recover(password)
        _warn_wrong_guesses(ctx, recovered)
        left = recovered.threshold.pending
    if left:
        answered = " (in brackets: what a node answered)" if any("(" in p for p in left) else ""
        raise FleetUnavailable(
            "still pending: " + "; ".join(left),
            hint=(
                f"the named nodes did not confirm{answered}; one that could not be reached"
                " gets its share once it is back: run `backupvault vault finish` again then"
            ),
        )
    # What the nodes confirmed now: a record the entry moved past is dropped, not sent.
    delivered = session.threshold.confirmed[confirmed_before:]
    if delivered:
        text = "delivered and confirmed: " + "; ".join(delivered) + "; nothing pending"
    else:
        text = "nothing pending: every node confirmed"
    ctx.output.done({"finished": True, "pending": [], "delivered": delivered}, text)


@vault.command("recovery-code")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@pass_context
def vault_recovery_code(ctx: Context, password_stdin: bool) -> None:
    """Print your key as a recovery code, once the vault has checked the password. Kept
    offline, it opens every backup made with your password (--recovery-code), even if the
    vault destroys the key or is gone; anyone who has it opens them too."""
    root_key = _root_key_by_password(ctx, password_stdin, for_code=True)
    code = recovery.encode(root_key)
    ctx.output.result(
        {"recovery_code": code},
        "recovery code of your key: it opens every backup made with your password"
        " (--recovery-code -), without the vault and without a guess limit, so keep it"
        f" offline, where only you can reach it:\n  {code}",
    )


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
    session = ctx.session()  # no password asked without it
    if password_stdin and not sys.stdin.isatty():  # on a terminal: asked, as without it
        # Named together: a strict decoder reads ahead, so a byte of the second line
        # can fail the first read.
        lines = [read_secret_line("the current or new password") for _ in range(2)]
        if not lines[1]:
            raise UsageError(
                "--password-stdin expects two lines: the current password, then the new one",
                hint='printf \'%s\\n%s\\n\' "$OLD" "$NEW" | backupvault vault '
                "change-password --password-stdin",
            )
        old, new = check_password(lines[0]), check_password(lines[1])
    else:
        old = _password(False, prompt="Current password")
    # The old password is checked (one recovery; a key still on an older fleet epoch moves
    # to the current one first) before the new one is asked for.
    with _password_check(ctx.output):
        recovered = session.recover_or_migrate(old)
    _warn_wrong_guesses(ctx, recovered)
    if password_stdin:
        _warn_if_weak(ctx, new)
    else:
        new = _password(False, prompt="New password")
        while not _weak_password_kept(new):
            new = _password(False, prompt="New password")
        new = _typed_twice(new, "New password", "Repeat the new password")
    with _deferring(ctx.output, _password_change(recovered.threshold.manifest.version)):
        changed = session.change_password(recovered, new)
    _warn_degraded(ctx, changed.missing)
    ctx.output.result(
        {"changed": True, "version": changed.version, "nodes_pending": list(changed.missing)},
        "password changed",
    )


@vault.command("delete")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option(
    "--storage",
    "storage_url",
    metavar="URL",
    help="Count the password backups there that deleting the key makes unopenable."
    f" {STORAGE_DEFAULT}",
)
@pass_context
def vault_delete(ctx: Context, yes: bool, password_stdin: bool, storage_url: str | None) -> None:
    """Delete your key from the vault (proving the password first). Backups made with the
    password then cannot be opened (those made with --recovery-code still open). For a key
    wrong guesses destroyed there is nothing left to delete: `backup create --new-key`
    registers a new one."""
    from backupvault.backup import list_backups, redact_url
    from backupvault.client.errors import NotRegistered
    from backupvault.protocol import EntryStatus

    session = ctx.session()
    status = session.status()
    older = _key_on_older_epoch(session) if status.status == EntryStatus.EMPTY else None
    if older is not None:
        # A rotation left the key on an older epoch, where it still opens with the password
        # and counts guesses until a recovery moves it: it is deleted there. Said to be
        # "nothing to delete", the key stayed, when the user meant to remove it (review s61).
        _, session, status = older
        session.before_last_guess = _confirm_last_guess
    if status.status == EntryStatus.EMPTY:
        config = ctx.config()
        raise NotRegistered(
            f"the vault holds no key for account {config.account!r}, entry {config.entry!r}:"
            " there is nothing to delete",
            hint="check --config (its account and entry) if you expected a key there;"
            " `backupvault vault status` shows what the vault holds",
        )
    if status.status == EntryStatus.DESTROYED:
        _confirm(
            "The key was destroyed by wrong guesses. Clear it so a new key can be registered?",
            yes,
        )
        # No node will evaluate it again: each has erased its share, or erases it at its
        # next request (whatever that request is), so there is nothing to prove or
        # delete; a new key is registered over the destroyed one, at the next version.
        ctx.output.result(
            {"deleted": True, "version": status.version, "was": "destroyed", "nodes_pending": []},
            "the destroyed key can never be recovered (each node erases its share, if it has"
            " not yet, at its next request); `backupvault backup create --new-key` registers"
            " a new one",
        )
        return
    lost = ""
    if storage_url is not None or (ctx.config().storage is not None):
        from backupvault.cli.backup_repo import repository_exists

        url = ctx.storage(storage_url)
        count = sum(1 for b in list_backups(url, missing_ok=True) if _may_be_password(b.key))
        lost_there = [_plural(count, "password backup")] if count else []
        if repository_exists(url):
            lost_there.append("the repository with every snapshot in it")
        if lost_there:
            lost = f": in {redact_url(url)}, {' and '.join(lost_there)} would be lost"
    ctx.output.warn(
        "after this, backups made with your password can no longer be opened"
        f"{lost} (backups made with --recovery-code still open with their code, and the"
        " password backups with the code `vault recovery-code` prints: print it first if"
        " you may want them again)"
    )
    _confirm("Delete the key from the vault?", yes)
    password = _password(password_stdin)
    with _password_check(ctx.output):
        recovered = session.recover(password)
    with _deferring(ctx.output, _DELETE):
        version, pending = session.delete(recovered)
    text = "key deleted from the vault"
    if older is not None:
        text += f" (on fleet epoch {older[0]}, where a rotation had left it)"
    if pending:
        text += (
            "; not yet confirmed erased by: "
            + "; ".join(pending)
            + " (sent again at the next `backupvault vault status` or `vault finish`)"
        )
    ctx.output.result(
        {"deleted": True, "version": version, "was": "live", "nodes_pending": list(pending)},
        text,
    )


def _json_requested(args: list[str]) -> bool:
    """Whether --json was given anywhere (before a `--`): errors then come as JSON too."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


_CODE_HIDDEN = "<a recovery code, not shown>"
_ID_LENGTH = 32  # of a snapshot or backup id, in hex
_CODE_GROUPS = 17  # a code typed as its groups of four, each one argument


def _our_style(message: str) -> str:
    """click's message as this program's own are written (lower case, no full stop at the
    end, "; did you mean" inside the sentence): "Missing option '--to'." read as another
    program's beside "error: the two passwords differ" (new-user walkthrough s47). A
    first word in capitals (SOURCE) keeps them."""
    message = message.strip()
    message = re.sub(
        r"\.\s*\(?(Did you mean|Possible options)([^)]*)\)?",
        lambda m: f"; {m.group(1).lower()}{m.group(2)}",
        message,
    )
    if message.endswith(".") and not message.endswith(".."):
        message = message[:-1]

    # Each sentence's first word: the message's, and one after ": " (click's "Invalid value
    # for 'SOURCE': Path '...' does not exist"); not inside quotes, which hold the user's
    # own text (a path "Notes: Work").
    def lowered(match: re.Match[str]) -> str:
        if message[: match.start()].count("'") % 2:
            return match.group()
        return match.group(1) + match.group(2).lower()

    return re.sub(r"(^|: )([A-Z])(?=[a-z])", lowered, message)


def _may_be_code(text: str) -> bool:
    # Extra snapshot ids (16 bytes each, as `backup diff` takes) are shown as they are.
    ids = all(len(part) == _ID_LENGTH for part in text.split())
    return recovery.looks_like_code(text) and not ids


def _codes_given(args: list[str]) -> list[str]:
    """The arguments, alone or several in a row joined by spaces as click joins extra
    arguments, that may be a recovery code, a mistyped one included; longest first. A
    typo (an o for a 0) ends a run of hex digits, so a message's mistyped code is two
    runs each too short to look like one; the arguments show it whole."""
    found = set()
    for start in range(len(args)):
        for end in range(start + 1, min(len(args), start + _CODE_GROUPS) + 1):
            joined = " ".join(args[start:end])
            if _may_be_code(joined):
                found.add(joined)
    return sorted(found, key=len, reverse=True)


def _without_codes(message: str, args: list[str]) -> str:
    """A usage error's `message` with anything that may be a recovery code left out.
    click names an argument it did not expect (`backup create`'s --recovery-code is a
    flag, so a code after it is an extra argument): the code, which is the key itself,
    went to stderr, and from there into cron mail, CI and journal logs."""
    for code in _codes_given(args):
        message = message.replace(code, _CODE_HIDDEN)

    def hidden(run: re.Match[str]) -> str:
        text = run.group()
        return _CODE_HIDDEN if _may_be_code(text) else text

    # Digits, possibly in groups: a code as typed, dashes or spaces between its groups
    # (click joins several extra arguments with spaces).
    return recovery.CODE_RUN.sub(hidden, message)


def _usage_hint(err: click.UsageError, args: list[str]) -> str | None:
    if err.ctx is None:
        return None
    if isinstance(err, click.NoSuchOption) and err.option_name == "--config":
        # `--json` and `-q` work after the command, so `vault status --config FILE` was
        # tried, and sent to `vault status --help`, which has no --config (review s61).
        command = err.ctx.command_path.removeprefix("backupvault").strip()
        return (
            f"--config is an option of backupvault itself: give it before the command"
            f" (`backupvault --config FILE {command} ...`), or set ${CONFIG_ENV}"
        )
    message = err.format_message()
    code_given = _without_codes(message, args) != message
    extra_dash = "--recovery-code" in args and ("(-)" in message or code_given)
    if err.ctx.command_path.endswith("backup create") and extra_dash:
        # `restore --recovery-code -` takes a value; create's --recovery-code is a flag.
        return (
            "backup create's --recovery-code takes no value: after the first backup it reads"
            " the code from stdin by itself (echo $CODE | backupvault backup create SOURCE"
            " --storage S --recovery-code)"
        )
    if code_given:
        return (
            "give a recovery code as --recovery-code - and the code on stdin (kept out of"
            f" shell history and the process list); `{err.ctx.command_path} --help` lists"
            " its options"
        )
    if err.ctx.command_path.endswith("backup create") and message.startswith(
        "Got unexpected extra argument"
    ):
        if "--exclude" in args:  # `--exclude *.tmp` unquoted: the shell gave several names
            return (
                "quote an --exclude pattern (`--exclude '*.tmp'`), or the shell turns it into"
                " file names; and one SOURCE a backup here: `backup create` each folder"
            )
        # restic backs up several paths into one snapshot (user review s43).
        return (
            "one SOURCE a backup here: run `backup create` for each folder (each has its own"
            " snapshots; `--path` chooses among them in `backup list` and `backup restore`)"
        )
    unknown = re.fullmatch(r"No such command '(.*)'\.", message, re.S)
    if unknown is not None and (here := _as_named_here(err.ctx, unknown.group(1))):
        return here
    if "does not exist" in message and isinstance(err, click.BadParameter):
        # A path typed wrong: the options are not what would help (review s40-R2).
        return "check the path (a relative one is taken from the folder you run this in)"
    what = "commands and options" if isinstance(err.ctx.command, click.Group) else "options"
    return f"`{err.ctx.command_path} --help` lists its {what}"


#: restic's commands that have another name here.
_RESTIC_NAMES = {
    "snapshots": "`backupvault backup list` lists the snapshots",
    "stats": "`backupvault backup list` gives each snapshot's sizes",
    "init": "`backupvault backup create SOURCE` makes the repository with the first backup",
    "find": "`backupvault backup ls SNAPSHOT_ID [PATH]...` shows what a snapshot holds",
    "key": "`backupvault vault change-password` changes the password, and `backupvault"
    " vault recovery-code` prints the key as a code",
}


#: restic's options that have another name here, or none (none of them is an option here).
_RESTIC_OPTIONS = {
    "--tag": "no tags here: a snapshot is known by its folder and host (`--path` and"
    " `--host` on `backup list`, `ls`, `restore` and `forget`)",
    "--exclude-file": "one `--exclude PATTERN` for each pattern here, on the command line",
    "--iexclude": "patterns are case-sensitive here: one `--exclude` for each spelling",
    "--files-from": "one SOURCE a backup here: `backup create` each folder (each has its"
    " own snapshots; `--path` chooses among them)",
    "--verbose": "progress shows on a terminal here, and `--json` gives the details",
    "-v": "progress shows on a terminal here, and `--json` gives the details",
    "--target": "`--to DEST` here, a new or empty folder",
    "-t": "`--to DEST` here, a new or empty folder",
    "--repo": "`--storage URL` here (or `storage` in the client config)",
    "-r": "`--storage URL` here (or `storage` in the client config)",
    "--password-file": "`--password-stdin < FILE` here (its first line)",
    "-p": "`--password-stdin < FILE` here (its first line)",
    "--prune": "run `backupvault backup prune` after `backupvault backup forget` here",
}


def _as_named_here(ctx: click.Context, name: str) -> str | None:
    """For a command restic users type (`backup ~/Documents`, `snapshots`, `restore`
    without `backup`): the command that does it here, or None."""
    if name in _RESTIC_NAMES:
        return f"as restic's `{name}`: {_RESTIC_NAMES[name]}"
    group = ctx.command
    if ctx.parent is None and isinstance(group, click.Group):
        backup_group = group.get_command(ctx, "backup")
        if isinstance(backup_group, click.Group) and backup_group.get_command(ctx, name):
            return f"`backupvault backup {name}`: the backup commands are under `backup`"
    if ctx.command_path.endswith(" backup") and (os.path.exists(name) or os.sep in name):
        return (
            f"`backupvault backup create {name}` backs it up (restic's `backup SOURCE`);"
            " `backupvault backup --help` lists the backup commands"
        )
    return None


def _with_storage_hint(err: BackupVaultError) -> BackupVaultError:
    """A storage error says what failed (`cannot list backups at URL: ConnectError: ...`)
    and, for most causes, nothing of what to do: add it."""
    from backupvault.backup.errors import StorageError, StorageUnavailable

    if type(err) not in (StorageError, StorageUnavailable):
        return err
    # A hint that is only the note of the lock the command left behind (repository.py,
    # `_release_beside`) still needs what to do first (review s49).
    lock_only = err.hint is not None and err.hint.startswith(
        f"its lock {err.details.get('lock_left')} "
    )
    if err.hint is not None and not lock_only:
        return err
    if isinstance(err, StorageUnavailable):
        hint = (
            "the storage did not answer: check the URL (host and port), that its server"
            " runs, and this device's network; then run the command again"
        )
    else:
        hint = (
            "check the storage URL and this device's access to it (credentials,"
            " permissions, free space); then run the command again"
        )
    err.hint = f"{hint}; {err.hint}" if lock_only else hint
    return err


def _with_local_hint(err: BackupVaultError) -> BackupVaultError:
    """A relay (or too many nodes) that does not answer, through a config `local up` wrote
    (its folder holds the deployment): the deployment is down (`local down`, a restart of
    the machine), and `local up` starts it again. "Check that the relay runs" left a
    newcomer to find out what the relay is and how to start it."""
    from backupvault.client.errors import FleetUnavailable, RelayUnreachable

    if not isinstance(err, FleetUnavailable) or _run_config is None:
        return err
    folder = _run_config.absolute().parent
    if not all((folder / name).is_file() for name in ("relay.toml", "fleet.toml")):
        return err
    if isinstance(err, RelayUnreachable):
        err.hint = (
            f"the config is the local deployment's in {folder}, which is not running"
            f" (stopped, or the machine restarted): `backupvault local up --dir {folder}`"
            " starts it again, keys and all; no guess was used"
        )
    else:
        # The relay answered but too few nodes did: some of them stopped (killed, or
        # crashed); `local up` starts only what is missing. The hint said only "try again
        # later", which for a local deployment never helps.
        err.hint = (
            f"{err.hint}; the config is the local deployment's in {folder}: `backupvault"
            f" local status --dir {folder}` shows which nodes are stopped, and `backupvault"
            f" local up --dir {folder}` starts them again"
        )
    return err


def _fail(json_mode: bool, err: BackupVaultError) -> None:
    """Report `err` and exit with its code. Under --json the error object also carries the
    run's warnings (`warnings`), as a result object would: a warning that came before the
    failure (a node whose answer did not verify, guesses counted since the last recovery,
    a secret given on the command line) is not lost to a script because the run failed."""
    output = Output(json_mode=json_mode)
    if _run_output is not None:
        output.warnings = list(_run_output.warnings)
    # stderr may be gone (a pipe whose reader exited: `2>&1 | head -1`; rich exits 1 on a
    # broken pipe): the code is all a script has left, so it stays the error's own.
    with contextlib.suppress(OSError, SystemExit):
        output.error(err)
    sys.exit(err.exit_code)


def main(argv: list[str] | None = None) -> None:
    global _run_output, _run_config
    _run_output = None  # set by the command group once the command line parsed
    _run_config = None
    args = sys.argv[1:] if argv is None else argv
    json_mode = _json_requested(args)
    if sys.stdin is None:
        # Started with stdin closed (`<&-`, a daemon): read as an empty one, so a password
        # or code asked for is "no terminal" or "stdin empty" (exit 2), as docs/cli.md
        # says; it was "unexpected AttributeError ... a bug" (review s61).
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 (kept for the run)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.suppress(ValueError):  # not the main thread: no signals
            signal.signal(signal.SIGTERM, _terminated)
        _run(args, json_mode)
    finally:
        # As they were for a caller in this process (the tests give `argv`); the command
        # line's process keeps them to its end, so that a signal after a backup was saved
        # (ignored from there) cannot kill it while it exits.
        if argv is not None:
            for signum, handler in handlers.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(signum, handler)


def _run(args: list[str], json_mode: bool) -> None:
    try:
        # Without standalone mode click returns the code of a `click.exceptions.Exit` a
        # command raised (`backup create`'s EXIT_INCOMPLETE) instead of exiting.
        code = cli.main(args=args, prog_name="backupvault", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Abort as abort:
        # Ctrl-C or SIGTERM: click's own (its cause), or one at a question (raised `from
        # None`, the interrupt kept as its context): told "end of input" until review s48.
        if isinstance(abort.__cause__ or abort.__context__, KeyboardInterrupt):
            _fail(json_mode, Interrupted("interrupted", hint=_INTERRUPTED_HINT))
        _fail(
            json_mode,
            Interrupted(
                "aborted: a question was declined or got no answer (end of input)",
                hint="nothing was changed; run the command again",
            ),
        )
    except click.UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `backupvault` alone: the help
            if json_mode and err.ctx is not None:  # a script: not help text to parse
                group = err.ctx.command
                names = group.list_commands(err.ctx) if isinstance(group, click.Group) else []
                _fail(
                    json_mode,
                    UsageError(
                        f"{err.ctx.command_path} needs a command: {', '.join(names)}",
                        hint=f"`{err.ctx.command_path} --help` says what each does",
                    ),
                )
            err.show()
            sys.exit(err.exit_code)
        if (
            isinstance(err, click.NoSuchOption)
            and err.option_name in _RESTIC_OPTIONS
            and err.ctx is not None  # a user's command, not an operator's
            and err.ctx.command_path.startswith(("backupvault backup", "backupvault vault"))
        ):
            # click's nearest spelling ("--target": "Did you mean '--storage'?") misleads.
            hint = f"as restic's `{err.option_name}`: {_RESTIC_OPTIONS[err.option_name]}"
            _fail(json_mode, UsageError(f"no such option: {err.option_name}", hint=hint))
        message = _our_style(_without_codes(err.format_message(), args))
        _fail(json_mode, UsageError(message, hint=_usage_hint(err, args)))
    except click.ClickException as err:
        _fail(json_mode, BackupVaultError(_our_style(err.format_message())))
    except BackupVaultError as err:
        _fail(json_mode, _with_local_hint(_with_storage_hint(err)))
    except KeyboardInterrupt:
        _fail(json_mode, Interrupted("interrupted", hint=_INTERRUPTED_HINT))
    except MemoryError:
        # Not a bug: storage can make an object as large as the format allows (a snapshot
        # grown by gigabytes: storage review s42, F2), or the machine is short of memory.
        _fail(
            json_mode,
            BackupVaultError(
                "ran out of memory",
                hint="storage may hold an object far larger than backupvault writes (`backup"
                " check` names what is damaged), or this machine has too little memory free"
                " for this repository; nothing was changed by the step that ran out",
            ),
        )
    except Exception as err:  # a bug: say so plainly, without a wall of traceback
        if _interrupted(err):  # a signal that broke a lock on its way (`_interrupted`)
            _fail(json_mode, Interrupted("interrupted", hint=_INTERRUPTED_HINT))
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


_INTERRUPTED_HINT = (
    "stopped by Ctrl-C or SIGTERM; run the command again (a password check with the vault"
    " is let finish first, so an interrupt does not spend a guess)"
)


class Interrupted(BackupVaultError):
    """Ctrl-C or SIGTERM, or a prompt declined or answered with end of input."""

    exit_code = 130
