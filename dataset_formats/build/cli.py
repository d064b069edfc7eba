"""`nextquill-data`: build NextQuill training data from Amazon Reviews 2023 files.

nextquill-data build --reviews Books.jsonl.gz --meta meta_Books.jsonl.gz --out data/books
nextquill-data convert-dpl --rows dpl_train.jsonl --meta dpl_meta.jsonl --out data/dpl/train.jsonl
nextquill-data synthetic --out raw/         (raw files with planted preferences, for trials)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from nextquill_common.cli_options import (
    add_dataclass_options,
    at_least_one,
    dataclass_from_args,
    interrupted,
    output_file,
    output_folder,
    package_version,
)
from nextquill_common.jsonl import write_jsonl

from . import BuildError, BuildOptions, build
from .dpl import convert_dpl
from .synthetic import Style, synthetic_raw_amazon

SYNTHETIC_FILES = ("reviews.jsonl.gz", "meta.jsonl.gz")  # what `synthetic` writes into --out


def folder_path(text: str) -> Path:
    """An argparse type: a folder to write into (``output_folder``), as a Path."""
    return Path(output_folder(text))


def file_path(text: str) -> Path:
    """An argparse type: a file to write (``output_file``), as a Path."""
    return Path(output_file(text))


# What runs a command, given its parsed arguments.
Run = Callable[[argparse.Namespace], None]


def main(argv: list[str] | None = None) -> None:
    """Exit codes: 0 done, 1 a build that failed (the message says why), 2 a wrong command line,
    130 interrupted (Ctrl-C). Progress goes to stderr; ``build`` prints its stats JSON on
    stdout."""
    args = command_line().parse_args(argv)
    try:
        args.run(args)
        return
    except KeyboardInterrupt:
        pass  # said below, once the interrupted frames are released (interrupted())
    except (BuildError, OSError) as error:
        print(f"nextquill-data {args.command}: error: {error}", file=sys.stderr)
        sys.exit(1)
    raise interrupted(f"nextquill-data {args.command}")


def command_line() -> argparse.ArgumentParser:
    """The parser of every command; each command's parser sets ``run``, the function that runs
    it with the parsed arguments, and ``command_parser``, itself (to report a wrong value)."""
    parser = argparse.ArgumentParser(
        prog="nextquill-data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in (_add_build, _add_convert_dpl, _add_synthetic):
        command_parser, run = add_command(commands)
        command_parser.set_defaults(run=run, command_parser=command_parser)
    return parser


def _add_build(commands) -> tuple[argparse.ArgumentParser, Run]:
    build_parser = commands.add_parser(
        "build", help="raw review + metadata files -> train/validation/test user rows"
    )
    build_parser.add_argument(
        "--reviews", nargs="+", required=True, type=Path,
        help="review files of a category ({Category}.jsonl[.gz] of Amazon Reviews 2023)",
    )  # fmt: skip
    build_parser.add_argument(
        "--meta", nargs="+", required=True, type=Path,
        help="its item metadata files (meta_{Category}.jsonl[.gz])",
    )  # fmt: skip
    build_parser.add_argument(
        "--out", required=True, type=folder_path,
        help="output folder: train/validation/test.jsonl, stats.json and a dataset card",
    )  # fmt: skip
    add_dataclass_options(build_parser, BuildOptions)
    return build_parser, _run_build


def _run_build(args: argparse.Namespace) -> None:
    options = dataclass_from_args(BuildOptions, args)
    try:
        options.check()  # before any input is read
    except BuildError as error:
        args.command_parser.error(str(error))  # exits with 2: a wrong command line
    report = build(args.reviews, args.meta, args.out, options)
    if options.show_progress:  # --quiet prints nothing; stats.json has it all
        summary = {k: v for k, v in report.to_json().items() if k != "bad_input"}
        print(json.dumps(summary, indent=2))


def _add_convert_dpl(commands) -> tuple[argparse.ArgumentParser, Run]:
    dpl_parser = commands.add_parser("convert-dpl", help="rows of the DPL release -> user rows")
    dpl_parser.add_argument("--rows", required=True, type=Path, help="a JSONL file of DPL rows")
    dpl_parser.add_argument(
        "--meta", required=True, type=Path, help="the DPL release's item metadata"
    )
    dpl_parser.add_argument(
        "--out", required=True, type=file_path, help="the JSONL file of user rows to write"
    )
    return dpl_parser, _run_convert_dpl


def _run_convert_dpl(args: argparse.Namespace) -> None:
    if args.out.exists():  # never written over: it may be anyone's file
        args.command_parser.error(f"--out {args.out} exists; remove it or name another file")
    converted = convert_dpl(args.rows, args.meta, args.out)
    print(f"wrote {converted.rows} rows to {args.out}")
    if converted.repeated_items:
        print(
            f"lines of {args.meta} that repeat an asin given before: {converted.repeated_items} "
            "(the first line of each asin was kept)"
        )
    if converted.unmatched:
        print(
            f"{converted.unmatched} of {converted.reviews} reviews name an item that "
            f"{args.meta} lacks: their item title and description are empty"
        )
    if converted.target_in_history:
        print(
            f"history entries that were their row's target review: {converted.target_in_history}"
            " (dropped: the answer would be in the prompt)"
        )
    if converted.without_history:
        print(f"rows without history: {converted.without_history} (no history to personalize)")


def _add_synthetic(commands) -> tuple[argparse.ArgumentParser, Run]:
    synthetic_parser = commands.add_parser(
        "synthetic", help="raw Amazon-schema files with planted per-user preferences"
    )
    synthetic_parser.add_argument(
        "--out",
        required=True,
        type=folder_path,
        help="folder for reviews.jsonl.gz and meta.jsonl.gz",
    )
    synthetic_parser.add_argument(
        "--users", type=at_least_one, default=200, help="how many users (default: 200)"
    )
    synthetic_parser.add_argument(
        "--reviews-per-user", type=at_least_one, default=22, help="reviews per user (default: 22)"
    )
    synthetic_parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_dataclass_options(synthetic_parser, Style)
    return synthetic_parser, _run_synthetic


def _run_synthetic(args: argparse.Namespace) -> None:
    try:
        style = dataclass_from_args(Style, args)
    except ValueError as error:
        args.command_parser.error(str(error))  # exits with 2: a wrong command line
    present = [name for name in SYNTHETIC_FILES if (args.out / name).exists()]
    if present:  # never written over: they may be anyone's files
        args.command_parser.error(
            f"--out {args.out} already holds {', '.join(present)}; name another folder"
        )
    reviews, meta = synthetic_raw_amazon(
        args.users, args.reviews_per_user, seed=args.seed, style=style
    )
    for name, rows in zip(SYNTHETIC_FILES, (reviews, meta), strict=True):
        write_jsonl(args.out / name, rows, sort_keys=True)
    print(f"wrote {len(reviews)} reviews and {len(meta)} items to {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
