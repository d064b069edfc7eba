"""`axolotl nextquill ...`: the `nextquill` command where Axolotl users look for commands.

Axolotl (>= 0.19) adds the click commands of the `axolotl.cli_commands` entry-point group to its
own CLI; this one hands every argument to `nextquill_plugin.cli.main`, so
`axolotl nextquill evaluate recipe.yml` is `nextquill evaluate recipe.yml`.
"""

from __future__ import annotations

import sys

import click

from ..cli import main


@click.command(
    "nextquill",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def nextquill(arguments: tuple[str, ...]) -> None:
    """NextQuill: theta_0 weights, evaluate, compare, inspect, recipes, demo."""
    main(as_typed(list(arguments)), prog="axolotl nextquill")


def as_typed(arguments: list[str]) -> list[str]:
    """The words after `nextquill` as the user typed them: click drops the first `--` (its end
    of options), which is where our recipe overrides begin."""
    if "nextquill" not in sys.argv:
        return arguments
    typed = sys.argv[sys.argv.index("nextquill") + 1 :]
    if "--" in typed and typed[: typed.index("--")] + typed[typed.index("--") + 1 :] == arguments:
        return typed
    return arguments
