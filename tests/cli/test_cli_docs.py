"""docs/cli.md and the README's command lines match the CLI they describe."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import click
import pytest
from console import CONSOLE_SCRIPT  # tests/cli/console.py

from backupvault.cli.main import Group, cli, load_plugins

load_plugins()  # every command, the lazily loaded ones too

ROOT = Path(__file__).resolve().parents[2]
CLI_MD = (ROOT / "docs" / "cli.md").read_text()
GLOBAL = {"--config", "--json", "-q", "--quiet", "--version", "-h", "--help"}


def leaves(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += leaves(command, (*path, name))
        else:
            found.append((" ".join(("backupvault", *path, name)), command))
    return found


def section(path: str) -> str:
    match = re.search(rf"^### `{re.escape(path)}( [^`]*)?`\n(.*?)(?=^##)", CLI_MD, re.S | re.M)
    assert match, f"docs/cli.md has no section for `{path}`"
    return match.group(2)


@pytest.mark.parametrize(("path", "command"), leaves(cli), ids=lambda v: str(v))
def test_cli_md_describes_every_command_and_option(path: str, command: click.Command) -> None:
    text = section(path)
    for param in command.params:
        if isinstance(param, click.Option):
            names = [o for o in param.opts if o not in GLOBAL]
            if names:
                assert any(f"`{n}" in text for n in names), f"{path}: {names} undocumented"
        elif isinstance(param, click.Argument):
            assert param.human_readable_name in CLI_MD


@pytest.mark.parametrize(("path", "command"), leaves(cli), ids=lambda v: str(v))
def test_every_option_cli_md_tabulates_exists(path: str, command: click.Command) -> None:
    """The other way round: `fleet measure` documented --guess-limit, --nodes, --quorum and
    --kem long after they were removed, and a user who gave them got "No such option"."""
    rows = re.findall(r"^\| (`-.*?) \|", section(path), re.M)
    documented = {name for row in rows for name in re.findall(r"`(--?[a-zA-Z][a-z0-9-]*)", row)}
    real = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
    assert documented <= real | GLOBAL, f"{path}: no option {sorted(documented - real)}"


def test_cli_md_lists_every_exit_code() -> None:
    from backupvault.cli.main import Interrupted
    from backupvault.client import errors

    codes = {err.exit_code for err in vars(errors).values() if isinstance(err, type) and
             issubclass(err, errors.BackupVaultError)} | {0, 2, Interrupted.exit_code}  # fmt: skip
    table = re.search(r"## Exit codes\n(.*?)\n## ", CLI_MD, re.S)
    assert table
    documented = {int(c) for c in re.findall(r"^\| (\d+) \|", table.group(1), re.M)}
    assert codes <= documented


def resolve(tokens: list[str]) -> None:
    """Walk `backupvault ...` tokens through the command tree; every option must exist
    where it is given (globals anywhere, as the CLI accepts them)."""
    command: click.Command = cli
    allowed = {o for p in cli.params if isinstance(p, click.Option) for o in p.opts}
    for token in tokens[1:]:
        if token.startswith("-") and token != "-":
            name = token.split("=", 1)[0]
            assert name in allowed | GLOBAL, f"{' '.join(tokens)}: no option {name}"
        elif isinstance(command, click.Group) and token in command.commands:
            command = command.commands[token]
            allowed = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
    assert not isinstance(command, click.Group), f"{' '.join(tokens)}: no subcommand"


def command_lines(markdown: str) -> list[list[str]]:
    lines = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", markdown, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("echo ") and "| backupvault" in line:
                line = line.split("| ", 1)[1]
            if line.startswith(("backupvault ", ".venv/bin/backupvault ")):
                tokens = shlex.split(line.replace(".venv/bin/", ""))
                lines.append([t for t in tokens if t != "\\"])
    return lines


@pytest.mark.parametrize(
    "doc",
    [
        "README.md",
        "docs/operations.md",
        "docs/transparency.md",
        "docs/simulation.md",
        "CONTRIBUTING.md",
    ],
)
def test_documented_command_lines_are_real_commands(doc: str) -> None:
    lines = command_lines((ROOT / doc).read_text())
    assert lines, doc
    for tokens in lines:
        resolve(tokens)


def test_every_command_list_gives_each_summary_whole_and_operators_apart() -> None:
    """click cut each command's first sentence off at the terminal's width ("List
    snapshots (with sizes added and stored: this needs the..."); user review s42."""

    def groups(group: Group, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = [path]
        for name in group.list_commands(click.Context(group)):
            command = group.get_command(click.Context(group), name)
            if isinstance(command, Group):
                found += groups(command, (*path, name))
        return found

    for path in groups(cli, ()):
        done = subprocess.run(
            [str(CONSOLE_SCRIPT), *path, "--help"], capture_output=True, text=True, check=True
        )
        listing = done.stdout.split("Commands:", 1)[1]
        assert "..." not in listing, (path, listing)
    top = subprocess.run([str(CONSOLE_SCRIPT), "--help"], capture_output=True, text=True).stdout
    users, operators = top.split("Commands:", 1)[1].split("Operator commands:")

    def names(section: str) -> set[str]:
        return {
            line.split()[0]
            for line in section.splitlines()
            if line.startswith("  ") and line[2] != " "
        }

    assert {"backup", "vault"} <= names(users) and not names(users) & {"fleet", "node", "relay"}
    assert {"fleet", "node", "relay", "witness"} <= names(operators)
