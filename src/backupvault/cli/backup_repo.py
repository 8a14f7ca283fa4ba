"""`backup ls`, `backup diff`, `backup forget`, `backup prune`, `backup check`, `backup repair`, and
the helpers the `backup create/restore/list` commands use for the repository format."""

from __future__ import annotations

import os
import shlex
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from backupvault.backup.errors import Damaged
from backupvault.backup.repo.repository import REPACK_UNUSED_PERCENT, Repository
from backupvault.backup.repo.tree import DIR, FILE, SYMLINK, Entry
from backupvault.backup.storage import Storage
from backupvault.cli.main import (
    STORAGE_HELP,
    Context,
    _plural,
    _recovery_code,
    _root_key_by_password,
    backup,
    both_keys_given,
    recovery_code_option,
    snapshot_filter,
    snapshot_filter_options,
)
from backupvault.cli.main import pass_context as pass_ctx
from backupvault.cli.output import one_line_name, printable
from backupvault.cli.passwords import read_secret_line
from backupvault.errors import BackupVaultError, UsageError

if TYPE_CHECKING:  # imported where used: `backup create` loads this module, not maintenance
    from backupvault.backup.repo import maintenance
    from backupvault.backup.repo.damage import DamagedFiles
    from backupvault.backup.repo.state import DeviceState


# Short sentences, what to do first (user review s43: one sentence of 600 characters hid
# the action).
_RESTORE_OTHERS = (
    "Meanwhile the other files of a snapshot named restore: give them, or their folders, to"
    " `backup restore --include`."
)
_REPAIR_HINT = (
    "run `backup repair`, then `backup create` of each folder named. The repair keeps what"
    " still authenticates in the damaged packs (copied into new packs), deletes them,"
    " drops a missing pack's chunks from the index, and indexes an intact pack no index names;"
    " the backup then stores the lost chunks again for every file still in its source, and"
    " the snapshots named restore again the files that have not changed. Until the repair,"
    " a new backup reuses a damaged chunk. " + _RESTORE_OTHERS
)
# What is left after a repair: `backup repair` has nothing to do then.
_LOST_HINT = (
    "run `backup create` of each folder named: the chunks named are in no pack (lost, or"
    " dropped by `backup repair`), and the backup stores them again for every file still in"
    " its source; the snapshots named then restore again the files that have not changed."
    " `backup forget` the snapshots you no longer need (and one named unreadable: nothing"
    " can read it). " + _RESTORE_OTHERS
)


class CheckFailed(Damaged):
    """`backup check` found damage (exit 9, as any command that meets it)."""


def repository_exists(url: str) -> bool:
    """Whether storage holds a repository's config; the repository's objects without one
    raise (`lost_config`): asked before the key, so that no new repository, recovery
    code or vault key is made for a folder whose config was lost."""
    from backupvault.backup.repo.backend import Backend
    from backupvault.backup.repo.repository import lost_config

    storage = Storage(url)
    if Repository.exists(storage):
        return True
    lost = lost_config(Backend(storage))
    if lost is not None:
        raise lost
    return False


def require_repository(url: str, command: str) -> None:
    """Before the key is asked for: storage that does not exist, or holds no repository,
    is named as such. It was found only once the vault had answered (a mistyped password
    spent a guess on a mistyped --storage), and then as "config is missing from URL"."""
    from backupvault.backup.errors import BackupNotFound

    storage = Storage(url)
    if repository_exists(url):
        return
    older = storage.list(missing_ok=False)  # a missing folder: "storage not found", a hint
    if older:
        raise BackupNotFound(
            f"no repository at {storage.display_url}: it holds only"
            f" {_plural(len(older), 'single-blob backup')} of an earlier version, which"
            f" `backup {command}` does not work on",
            hint="`backup list` and `backup restore` read them",
        )
    raise BackupNotFound(
        f"no repository at {storage.display_url}: no backup was made there",
        hint="check the --storage URL (`backup list --storage URL` shows what is there);"
        " `backup create SOURCE --storage URL` makes a repository",
    )


def snapshot_names(url: str) -> list[str]:
    """The snapshot ids storage lists (its names: what they hold is checked once opened)."""
    from backupvault.backup.repo.backend import Backend

    return list(Backend(Storage(url)).list("snapshots"))


def require_snapshots(url: str, *ids: str) -> None:
    """Before the key is asked for: each snapshot id (or prefix) names a snapshot object
    in storage. Storage's names are not trusted for anything here (the one opened is
    authenticated after); a mistyped id only no longer spends a password on a lookup that
    fails."""
    from backupvault.backup.errors import BackupNotFound
    from backupvault.backup.repo.repository import is_latest

    storage = Storage(url)
    names = snapshot_names(url)
    for wanted in ids:
        if is_latest(wanted):
            continue  # which one that is, only the key tells
        if not any(name.startswith(wanted.strip().lower()) for name in names):
            raise BackupNotFound(
                f"no snapshot with id {wanted.strip().lower()} at {storage.display_url}",
                hint="`backupvault backup list` shows the snapshots and their ids",
            )


def repository_opens_with(url: str, root_key: bytes) -> bool:
    """Whether storage holds a repository whose config opens with `root_key`."""
    try:
        Repository.open(Storage(url), root_key)
    except BackupVaultError:
        return False
    return True


def existing_key(ctx: Context, password_stdin: bool, code: str | None) -> bytes:
    """RK for an existing repository: from a recovery code, or recovered from the vault."""
    if password_stdin and code is not None:
        raise both_keys_given()
    if code is not None:
        return _recovery_code(code, ctx.output)
    return _root_key_by_password(ctx, password_stdin)


def code_for_existing_repository(url: str, source: Path) -> bytes:
    """`create --recovery-code` on a storage that already holds a repository: its code.
    Without one on stdin, say why a code is wanted at all: the user may have meant a new
    repository, or one made with a password."""
    if sys.stdin.isatty():
        code = click.prompt("Recovery code of this repository", hide_input=True, err=True)
        return _recovery_code(code)
    code = read_secret_line("the recovery code")
    if not code.strip():
        raise UsageError(
            f"{url} already holds a repository: a backup into it with --recovery-code needs"
            " its recovery code on stdin",
            hint=f'echo "$CODE" | backupvault backup create {shlex.quote(str(source))}'
            f" --storage {shlex.quote(url)} --recovery-code; if its backups were made with a"
            " password, leave --recovery-code out; for a new repository with a new code, give"
            " another --storage",
        )
    return _recovery_code(code)


def summary_row(s: maintenance.SnapshotSummary) -> dict[str, Any]:
    return {
        "backup_id": s.snapshot_id,
        "parent_id": s.parent_id,
        "created_at": s.created_at.isoformat(),
        "source": s.source,
        "host": s.host,
        "files": s.files,
        "bytes": s.size,
        "added_bytes": s.added,
        "stored_bytes": s.stored,
        "key": s.key,
    }


def key_options(function: Any) -> Any:
    function = recovery_code_option("The repository's recovery code")(function)
    function = click.option(
        "--password-stdin", is_flag=True, help="Read the vault password from stdin."
    )(function)
    return click.option("--storage", "storage_url", metavar="URL", help=STORAGE_HELP)(function)


def warn_damaged(ctx: Context, damaged: dict[str, str], then: str) -> None:
    """A warning for each snapshot object that cannot be read, and what became of it."""
    for name, why in sorted(damaged.items()):
        ctx.output.warn(f"snapshot {name} cannot be read ({why}): {then}")


def _device_state(repo: Repository) -> DeviceState:
    """What this device remembers of the repository: its last snapshot of each source."""
    from backupvault.backup.repo.state import DeviceState, default_dir, place_of

    return DeviceState(default_dir(), repo.keys.repo_id, place_of(repo.backend.storage))


def _open(
    ctx: Context,
    storage_url: str | None,
    password_stdin: bool,
    code: str | None,
    snapshot_ids: tuple[str, ...] = (),
) -> Repository:
    """The repository, once storage shows that it is there (and holds `snapshot_ids`):
    only then is the key asked for."""
    from backupvault.backup.repo import maintenance

    url = ctx.storage(storage_url)
    require_repository(url, click.get_current_context().info_name or "")
    require_snapshots(url, *snapshot_ids)
    return maintenance.open_repository(url, existing_key(ctx, password_stdin, code))


@backup.command("ls")
@click.argument("snapshot_id", metavar="SNAPSHOT_ID")
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@snapshot_filter_options
@key_options
@pass_ctx
def backup_ls(
    ctx: Context,
    snapshot_id: str,
    paths: tuple[str, ...],
    hosts: tuple[str, ...],
    source_paths: tuple[str, ...],
    storage_url: str | None,
    password_stdin: bool,
    code: str | None,
) -> None:
    """List the files, folders and links in snapshot SNAPSHOT_ID (an id, a prefix of one,
    or "latest", of --path and --host if given), or only those under each PATH, as
    restic's `ls`: what `backup restore --include` takes."""
    from backupvault.backup.repo import maintenance

    only = snapshot_filter(hosts, source_paths, snapshot_id)
    repo = _open(ctx, storage_url, password_stdin, code, snapshot_ids=(snapshot_id,))
    summary, entries = maintenance.ls(repo, snapshot_id, paths, only)
    rows = [_entry_row(e) for e in entries]
    lines = [
        f"snapshot {summary.snapshot_id} of {summary.source} at"
        f" {summary.created_at:%Y-%m-%d %H:%M:%S} UTC ({summary.host or 'no host name'}):"
    ]
    for entry, row in zip(entries, rows, strict=True):
        kind = _FILE_TYPE_BITS[entry.kind]
        shown = one_line_name(row["path"]) + (
            f" -> {one_line_name(row['target'])}" if "target" in row else ""
        )
        when = _mtime(entry.mtime_ns)
        lines.append(
            f"{stat.filemode(kind | entry.mode)} {entry.size:>12} {when:%Y-%m-%d %H:%M:%S}  {shown}"
        )
    ctx.output.result(
        {
            "backup_id": summary.snapshot_id,
            "created_at": summary.created_at.isoformat(),
            "source": summary.source,
            "host": summary.host,
            "entries": rows,
        },
        "\n".join(lines),
    )


_FILE_TYPE_BITS = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}
_TYPE_NAMES = {FILE: "file", DIR: "dir", SYMLINK: "symlink"}


def _mtime(mtime_ns: int) -> datetime:
    """In UTC; by arithmetic, since a snapshot holds times back to 1677, before what
    `fromtimestamp` takes everywhere."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=mtime_ns // 1000)


def _entry_row(entry: Entry) -> dict[str, Any]:
    """An entry of `backup ls --json` (docs/cli.md)."""
    row: dict[str, Any] = {
        "path": os.fsdecode(entry.path),
        "type": _TYPE_NAMES[entry.kind],
        "size": entry.size,
        "mode": entry.mode,
        "mtime": _mtime(entry.mtime_ns).isoformat(),
    }
    if entry.kind == SYMLINK:
        row["target"] = os.fsdecode(entry.target)
    return row


@backup.command("diff")
@click.argument("first")
@click.argument("second")
@key_options
@pass_ctx
def backup_diff(
    ctx: Context,
    first: str,
    second: str,
    storage_url: str | None,
    password_stdin: bool,
    code: str | None,
) -> None:
    """What changed from snapshot FIRST to SECOND (ids, prefixes or "latest"): + added,
    - removed, M modified, T type changed, U metadata only."""
    from backupvault.backup.repo import maintenance

    repo = _open(ctx, storage_url, password_stdin, code, snapshot_ids=(first, second))
    warnings: list[str] = []
    changes = maintenance.diff(repo, first, second, warnings)
    for warning in warnings:
        ctx.output.warn(warning)
    rows = [
        {"change": c.kind, "path": c.path, "size_before": c.size_before, "size_after": c.size_after}
        for c in changes
    ]
    ctx.output.result({"changes": rows}, _diff_text(changes))


def _diff_text(changes: list[maintenance.Change]) -> str:
    """A line per path, then what it adds up to, as `restic diff` ends."""
    from backupvault.backup import human_size

    if not changes:
        return "no changes"
    count = {kind: sum(c.kind == kind for c in changes) for kind in "+-MTU"}
    added = sum(c.size_after for c in changes if c.kind == "+")
    removed = sum(c.size_before for c in changes if c.kind == "-")
    before = sum(c.size_before for c in changes if c.kind == "M")
    after = sum(c.size_after for c in changes if c.kind == "M")
    return "\n".join(
        [f"{c.kind}  {one_line_name(c.path)}" for c in changes]
        + [
            f"{count['+']} added ({human_size(added)}), {count['-']} removed"
            f" ({human_size(removed)}), {count['M']} modified ({human_size(before)} to"
            f" {human_size(after)}), {count['T']} changed type, {count['U']} changed"
            " metadata only"
        ]
    )


@backup.command("forget", short_help="Remove snapshots by id, or those a keep policy does not keep")
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT_ID]...")
@click.option("--keep-last", default=0, type=click.IntRange(0), help="Keep the N newest.")
@click.option("--keep-daily", default=0, type=click.IntRange(0), help="Newest of each of N days.")
@click.option("--keep-weekly", default=0, type=click.IntRange(0), help="Newest of each of N weeks.")
@click.option(
    "--keep-monthly", default=0, type=click.IntRange(0), help="Newest of each of N months."
)
@click.option("--keep-yearly", default=0, type=click.IntRange(0), help="Newest of each of N years.")
@click.option(
    "--damaged", is_flag=True, help="Also remove snapshots that cannot be read (damaged)."
)
@click.option("--dry-run", is_flag=True, help="Only say what would be forgotten.")
@snapshot_filter_options
@key_options
@pass_ctx
def backup_forget(
    ctx: Context,
    snapshot_ids: tuple[str, ...],
    keep_last: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    damaged: bool,
    dry_run: bool,
    hosts: tuple[str, ...],
    source_paths: tuple[str, ...],
    storage_url: str | None,
    password_stdin: bool,
    code: str | None,
) -> None:
    """Remove the snapshots SNAPSHOT_ID names (ids or unique prefixes), or those the
    policy does not keep (per source and host; with --host or --path, only among those,
    keeping the others), and with --damaged those that cannot be read. Their data stays
    until `backup prune`."""
    from backupvault.backup.repo import maintenance
    from backupvault.backup.repo.repository import is_latest

    policy = maintenance.Policy(keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    if snapshot_ids and not policy.empty():
        raise UsageError(
            "give snapshot ids or a policy (--keep-...) to forget by, not both",
            hint="`backup forget ID...` removes those snapshots; `backup forget --keep-last 7`"
            " keeps the 7 newest of each source and host",
        )
    if any(is_latest(i) or not i.strip() for i in snapshot_ids):
        raise UsageError(
            "backup forget takes snapshot ids (or unique prefixes of them), not `latest`",
            hint="`backupvault backup list` shows the snapshots and their ids",
        )
    only = snapshot_filter(hosts, source_paths)
    if only and policy.empty():
        raise UsageError(
            "--host and --path choose which snapshots a keep policy applies to: give one"
            " (--keep-last, --keep-daily, ...)",
            hint="`backup forget --keep-last 3 --path ~/Videos` keeps the 3 newest of that"
            " folder and leaves every other snapshot alone",
        )
    if policy.empty() and not damaged and not snapshot_ids:
        raise UsageError(
            "say what to forget: snapshot ids, or what to keep: --keep-last, --keep-daily,"
            " --keep-weekly, --keep-monthly or --keep-yearly (or --damaged alone, to"
            " remove only snapshots that cannot be read)",
            hint="for instance `backup forget --keep-last 7` keeps the 7 newest snapshots of"
            " each source and host; add --dry-run to see what it would remove first",
        )
    # A whole id may name a snapshot gone from the listing that prune refuses over (one
    # removed by hand, which forget then records): looked up once the key opens the
    # repository, not refused before.
    listed_ids = tuple(i for i in snapshot_ids if not maintenance.is_object_id(i.strip().lower()))
    repo = _open(ctx, storage_url, password_stdin, code, listed_ids)
    state = _device_state(repo)
    warnings: list[str] = []
    kept, removed, ahead = maintenance.forget(
        repo,
        policy,
        dry_run=dry_run,
        damaged=damaged,
        ids=snapshot_ids,
        state=state,
        only=only,
        warnings=warnings,
    )
    for warning in warnings:
        ctx.output.warn(warning)
    if not damaged:
        warn_damaged(ctx, repo.damaged, "kept; `backup forget --damaged` removes it")
    for snapshot_id in ahead:
        ctx.output.warn(
            f"snapshot {snapshot_id} is dated more than a day ahead of this device's clock "
            "(a device whose clock was ahead made it, or this one's is behind): kept, and "
            "not counted by the policy; `backup restore` takes it for the latest until then"
        )

    def line(what: str, snapshot_id: str) -> str:
        # With its date and source, so the policy's choice can be checked (user review
        # s42); a damaged or leftover snapshot has neither.
        found = repo.listed.get(snapshot_id)
        about = (
            f"  {found.header.created_at:%Y-%m-%d %H:%M} UTC  {printable(found.summary.source)}"
            if found is not None
            else ""
        )
        return f"{what:8}{snapshot_id}{about}"

    lines = [line("keep", i) for i in kept] + [line("forget", i) for i in removed]
    removed_count = _plural(len(removed), "snapshot")
    if dry_run:
        lines.append(f"would forget {removed_count} and keep {len(kept)}")
    else:
        lines.append(f"forgot {removed_count}, kept {len(kept)}")
    text = "\n".join(lines)
    report = ctx.output.result if dry_run else ctx.output.done
    report({"kept": kept, "removed": removed, "dry_run": dry_run}, text)


@backup.command("prune")
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@click.option(
    "--max-unused",
    metavar="PERCENT",
    callback=lambda _ctx, _param, value: _percent(value),
    default=str(REPACK_UNUSED_PERCENT),
    show_default=True,
    help="Leave unused data in a pack only while it is at most this share of the pack"
    " (`10` or `10%`); 0 removes all of it (every pack holding some is rewritten).",
)
@key_options
@pass_ctx
def backup_prune(
    ctx: Context,
    dry_run: bool,
    max_unused: int,
    storage_url: str | None,
    password_stdin: bool,
    code: str | None,
) -> None:
    """Delete the data no snapshot uses any more: remove the packs wholly unused, and
    rewrite those more than PERCENT of which is unused."""
    from backupvault.backup.repo import maintenance

    repo = _open(ctx, storage_url, password_stdin, code)
    state = _device_state(repo)
    with ctx.output.progress() as bar:
        result = maintenance.prune(
            repo, dry_run=dry_run, progress=bar, state=state, max_unused=max_unused / 100
        )
    report = ctx.output.result if dry_run else ctx.output.done
    report(
        dict(result.__dict__),
        _prune_text(result)
        + (
            f"; {result.temporaries_removed} unfinished uploads "
            + ("to remove" if dry_run else "removed")
            if result.temporaries_removed
            else ""
        ),
    )


def _percent(value: str) -> int:
    """`--max-unused`: a whole per cent, 0 to 100, with or without `%` (as restic writes
    it; restic's byte sizes and `unlimited` are not taken: `100` keeps every part-used
    pack)."""
    number = value.strip().removesuffix("%").strip()
    if not (number.isascii() and number.isdigit()) or int(number) > 100:
        raise click.BadParameter(
            f"{value!r} is not a per cent from 0 to 100 (`10` or `10%`)", param_hint="--max-unused"
        )
    return int(number)


def _prune_text(r: maintenance.PruneResult) -> str:
    """What prune did, or would do. A dry run writes nothing, so it has no packs it
    repacked into ("1 repacked into 0"), and what it would free is the packs it would
    delete or repack, less what the repacked chunks then take: at most that."""
    from backupvault.backup import human_size
    from backupvault.backup.repo import maintenance

    packs = _plural(r.packs, "pack")
    # Said, not only counted in --json: a user who forgot a snapshot to be rid of a file
    # took "0 deleted" for all of it gone (user review s43).
    one = r.unused_kept_chunks == 1
    kept = (
        f"; {_plural(r.unused_kept_chunks, 'unused chunk')} ({human_size(r.unused_kept_bytes)})"
        f" {'would stay' if r.dry_run else 'stays' if one else 'stay'} in packs not rewritten"
        f" (--max-unused 0 removes {'it' if one else 'them'} too)"
        if r.unused_kept_chunks
        else ""
    )

    # Said too (new-user review s48): after a backup failed on a full disk, prune freed
    # nothing and said nothing of the packs that backup left.
    def unindexed(count: int, size: int, names: str, why: str) -> str:
        if not count:
            return ""
        are = "is" if count == 1 else "are"
        return f"; {_plural(count, 'pack')} ({human_size(size)}) {names} {are} kept: {why}"

    minutes = maintenance.UNINDEXED_PACK_MIN_AGE_S // 60
    young = unindexed(
        r.young_unindexed_packs,
        r.young_unindexed_bytes,
        "that no index names yet",
        f"under {minutes} minutes old, a running backup's or one that failed (a prune after"
        " that deletes them if no backup took them)",
    ) + unindexed(
        r.undated_unindexed_packs,
        r.undated_unindexed_bytes,
        "that no index names",
        "the storage gives no time for them, so they may be a running backup's (the next"
        " `backup create` takes in what they hold)",
    )
    if r.dry_run:
        return (
            f"{packs}: {r.packs_deleted} to delete, {r.packs_repacked} to repack; would free"
            f" up to {human_size(r.bytes_freed)}{kept}{young}"
        )
    return (
        f"{packs}: {r.packs_deleted} deleted, {r.packs_repacked} repacked into"
        f" {r.packs_written}; freed {human_size(r.bytes_freed)}{kept}{young}"
    )


@backup.command("check")
@click.option("--read-data", is_flag=True, help="Also download and verify every pack.")
@key_options
@pass_ctx
def backup_check(
    ctx: Context, read_data: bool, storage_url: str | None, password_stdin: bool, code: str | None
) -> None:
    """Check the repository: every object authenticates and every chunk in use is there.
    Exit 9 if anything is damaged or missing (`backup repair` acts on it); 0 if not."""
    from backupvault.backup import human_size
    from backupvault.backup.repo import maintenance

    repo = _open(ctx, storage_url, password_stdin, code)
    with ctx.output.progress() as bar:
        result = maintenance.check(repo, read_data=read_data, progress=bar)
    for warning in result.warnings:
        ctx.output.warn(warning)
    data = {**result.__dict__, "damaged_files": [d.row() for d in result.damaged_files]}
    if result.errors:
        if ctx.output.json_mode:
            ctx.output.result(data, "")
        raise CheckFailed(
            f"the repository is damaged: {_plural(len(result.errors), 'problem')}:\n  "
            + "\n  ".join(result.errors)
            + _damaged_files_text(result.damaged_files),
            hint=_REPAIR_HINT if result.repairable else _LOST_HINT,
        )
    ctx.output.done(
        data,
        f"no errors: {_plural(result.snapshots, 'snapshot')}, {_plural(result.packs, 'pack')}, "
        f"{_plural(result.chunks, 'chunk')}"
        + (f", {human_size(result.read_bytes)} read" if read_data else ""),
    )


@backup.command(
    "repair", short_help="Save what authenticates of damaged packs; drop the rest from the index"
)
@click.argument("packs", nargs=-1, metavar="[PACK_ID]...")
@click.option("--dry-run", is_flag=True, help="Only say what would be salvaged, lost and deleted.")
@key_options
@pass_ctx
def backup_repair(
    ctx: Context,
    packs: tuple[str, ...],
    dry_run: bool,
    storage_url: str | None,
    password_stdin: bool,
    code: str | None,
) -> None:
    """Read every pack (or the PACK_IDs given: 32 hex digits each, as `backup check`
    names them); copy what authenticates out of damaged or cut-off ones into new packs,
    drop the rest (and missing packs) from the index, and delete the damaged packs. The
    next `backup create` stores what was dropped again."""
    from backupvault.backup.repo import maintenance

    maintenance.pack_names(packs)  # a malformed id is named before the key is asked for
    repo = _open(ctx, storage_url, password_stdin, code)
    with ctx.output.progress() as bar:
        result = maintenance.repair(repo, dry_run=dry_run, packs=packs, progress=bar)
    for warning in result.warnings:
        ctx.output.warn(warning)
    if result.damaged_files:
        ctx.output.warn(
            _damaged_files_text(result.damaged_files).lstrip("\n")
            + "\nthe next `backup create` stores them again if they are still in its source"
            " (where a file has not changed, the snapshots named restore it again too)"
        )
    data = {**result.__dict__, "damaged_files": [d.row() for d in result.damaged_files]}
    report = ctx.output.result if dry_run else ctx.output.done
    report(data, _repair_text(result))


def _repair_text(r: maintenance.RepairResult) -> str:
    """What was found, a line each, then what the repair did (or would do)."""
    from backupvault.backup import human_size

    read = f"{_plural(r.packs, 'pack')} read ({human_size(r.read_bytes)})"
    if not (r.damage or r.packs_missing or r.packs_indexed):
        return f"no damage: {read}, nothing to repair"
    would = "would be " if r.dry_run else ""
    into = "" if r.dry_run else f" into {_plural(r.packs_written, 'new pack')}"
    done = [
        (len(r.packs_damaged), "damaged pack", "deleted"),
        (len(r.packs_missing), "missing pack", "dropped from the index"),
        (r.packs_indexed, "unindexed pack", "indexed"),
        (r.chunks_salvaged, "chunk", f"salvaged{into}"),
        (len(r.chunks_lost), "chunk", "lost"),
    ]
    said = [f"{_plural(n, noun)} {would}{what}" for n, noun, what in done if n]
    if not r.chunks_lost:
        said.append(f"nothing {would}lost")
    found = [*r.damage, *(f"pack {name} is missing" for name in r.packs_missing)]
    return "\n".join([*found, f"{read}: {', '.join(said)}"])


def _damaged_files_text(damaged: list[DamagedFiles]) -> str:
    """A line per snapshot with files that cannot be restored (the first 20 of them)."""
    from backupvault.backup.repo.damage import listed

    if not damaged:
        return ""
    return "\nfiles that use a damaged or missing chunk, which cannot be restored:" + "".join(
        f"\n  snapshot {d.snapshot_id} of {d.source} at {d.created_at:%Y-%m-%d %H:%M:%S} UTC: "
        f"{_plural(len(d.paths), 'file')}: {listed(d.paths)}"
        for d in damaged
    )
