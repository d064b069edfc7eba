"""Command-line flags derived from a dataclass, so that an option is declared once (its field).

Both command lines (``nextquill-data`` and ``nextquill``) build their options this way. A
field's ``metadata`` may refine its flag: ``help``, ``choices``, ``flag`` (another name), and
``cli: False`` to leave it off the command line. ``str | None`` style fields take a value of
the inner type; a bool that defaults to False is a switch, one that defaults to True needs a
``flag`` such as ``--no-terminal``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import types
import typing
from dataclasses import MISSING, Field, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from .jsonl import nearest_write_problem

T = TypeVar("T")


def _value_type(hint: Any) -> Any:
    """``int`` for ``int | None``; the hint itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return hint


def package_version() -> str:
    """The installed version of this package, for ``--version``."""
    try:
        return version("nextquill-axolotl")
    except PackageNotFoundError:
        return "unknown (not installed)"


def cli_fields(cls: type) -> list[Field]:
    """The fields of ``cls`` that are command-line options."""
    return [f for f in fields(cls) if f.metadata.get("cli", True)]


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of ``cls``: ``--field-name`` (or its metadata ``flag``); a field
    without a default is a positional argument."""
    hints = get_type_hints(cls)
    for f in cli_fields(cls):
        kind = f.metadata.get("type") or _value_type(hints[f.name])
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if f.default is MISSING and f.default_factory is MISSING:
            nargs = f.metadata.get("nargs")
            if nargs:  # a list of values: each of the list's item type
                kind = typing.get_args(hints[f.name])[0]
            parser.add_argument(f.name, type=kind, nargs=nargs, help=help_text or None)
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        if kind is bool:
            if f.default and "flag" not in f.metadata:
                raise TypeError(f"{cls.__name__}.{f.name} defaults to True: give it a --no- flag")
            action = "store_false" if f.default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, help=help_text or None)
            continue
        suffix = f"default: {f.default}" if f.default is not None else ""
        parser.add_argument(
            flag,
            dest=f.name,
            type=kind,
            default=f.default,
            choices=f.metadata.get("choices"),
            help="; ".join(part for part in (help_text, suffix) if part) or None,
        )


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """An instance of ``cls`` from the parsed options, plus ``values`` for other fields."""
    given = {f.name: getattr(args, f.name) for f in cli_fields(cls) if hasattr(args, f.name)}
    return cls(**given, **values)


def option(
    help: str,
    *,
    default: Any = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    type: Any = None,
) -> Any:
    """A dataclass field that is a command-line option with this help text."""
    metadata: dict[str, Any] = {"help": help}
    for key, value in (("choices", choices), ("flag", flag), ("type", type)):
        if value is not None:
            metadata[key] = value
    return field(default=default, metadata=metadata)


def at_least_one(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


class UsageError(ValueError):
    """Options that do not go together, found once the command's requests are built: a wrong
    command line (exit 2 with the usage line), like an option argparse refuses."""


def output_folder(text: str) -> str:
    """An argparse type: a folder to write into, which may not exist yet but is not a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    problem = nearest_write_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}; give a folder on a writable disk")
    return text


def output_file(text: str) -> str:
    """An argparse type: a file to write, which is not a folder."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    problem = nearest_write_problem(Path(text).parent)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}; give a file on a writable disk")
    return text


def argument(help: str, *, nargs: str | None = None, type: Any = None) -> Any:
    """A dataclass field that is a positional argument (``nargs="+"``: one or more)."""
    metadata: dict[str, Any] = {"help": help}
    for key, value in (("nargs", nargs), ("type", type)):
        if value is not None:
            metadata[key] = value
    return field(metadata=metadata)


INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C (128 + SIGINT)


def interrupted(command: str) -> SystemExit:
    """Ctrl-C: one line and exit 130 instead of a KeyboardInterrupt trace (what is half-written
    is an atomic write's temporary file, removed on the way out). Call it after the ``except``
    block, once the interrupted frames are released: collecting them first closes their progress
    bars, which would otherwise redraw below this line at exit."""
    gc.collect()
    print(f"\n{command}: interrupted", file=sys.stderr)  # below a progress bar, if one was drawn
    return SystemExit(INTERRUPTED)
