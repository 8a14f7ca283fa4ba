"""`backupvault sim`: the deterministic fleet simulation (docs/simulation.md).

Registered on the `backupvault` group when the CLI starts. Its options are the module's
(`backupvault.sim.options`), made into click options here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from backupvault.cli.main import cli
from backupvault.sim.options import OPTIONS, argv_of


def _with_sim_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(OPTIONS):  # click lists them in the order they are applied last
        if option.number:
            command = click.option(
                option.flag,
                type=int,
                default=option.default,
                show_default=option.default is not None and "(default:" not in option.help,
                help=option.help,
            )(command)
        else:
            command = click.option(option.flag, is_flag=True, help=option.help)(command)
    return command


@cli.command("sim", cls=click.Command)
@_with_sim_options
def sim(**values: object) -> None:
    """Run the real node code under a seeded scheduler with faults; check the invariants."""
    from backupvault.sim.__main__ import main

    sys.exit(main(argv_of(values)))
