"""Amazon Reviews 2023 raw files -> per-user temporal splits of self-contained user rows.

Two stages, chosen for scale (Books has 29.5M reviews) and for exact accounting:

1. Every input line, cut into numbered blocks of Arrow strings, is parsed and checked by DuckDB
   (``raw_lines``, with the text rules of ``text_rules``) into the few columns the protocol
   needs. Every line ends in exactly one bucket: kept, or dropped for a named reason; bad input
   (malformed JSON, invalid UTF-8, a missing or null field, a wrong type) is also listed by file
   and line in the report.
2. DuckDB does the relational work (de-duplication, the iterative k-core, the target/profile
   split, joining item metadata, each review's JSON) and Python concatenates those JSON bytes
   into rows (``splits``), streaming and spilling to disk under a memory limit. DuckDB rather
   than Polars: its out-of-core window functions and joins spill to disk by design, which the
   per-user windows over 29.5M rows need.

Defaults reproduce the DPL protocol the paper follows (see README, "Data").
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .common import SPLITS, BuildError, BuildOptions, Report, Tables, count_rows, sql_text
from .output import (
    CARD,
    check_out_dir,
    check_writable,
    dataset_card,
    make_work_folder,
    put_in_place,
    recover_interrupted_swap,
    remove_stale_work_folders,
)
from .raw_lines import check_inputs, iter_json_lines, read_items, read_reviews
from .splits import select_users_and_targets, write_splits
from .text_rules import define_sql_functions, join_description

__all__ = [
    "SPLITS",
    "BuildError",
    "BuildOptions",
    "Report",
    "build",
    "iter_json_lines",
    "join_description",
]


@contextlib.contextmanager
def database_step(what: str) -> Iterator[None]:
    """Turn a DuckDB failure (usually memory) into a BuildError that says what to change."""
    import duckdb

    try:
        yield
    except duckdb.Error as error:
        raise BuildError(f"{what} failed ({error}); try a larger --memory-limit") from error


def build(
    reviews: list[Path], meta: list[Path], out_dir: Path, options: BuildOptions | None = None
) -> Report:
    """Build train/validation/test JSONL files and stats.json in ``out_dir``.

    Output appears only when complete: everything is written into a temporary folder beside
    ``out_dir`` and moved into place at the end. Raises BuildError when the input cannot be
    trusted (truncated gzip, empty file, ``--strict`` and a bad line) or no user survives.
    """
    import duckdb

    options = options or BuildOptions()
    options.check()
    started = time.time()
    report = Report()
    out_dir = Path(out_dir).resolve()

    def say(message: str) -> None:
        if options.show_progress:
            # Progress goes to stderr: stdout carries only the stats JSON, for pipes.
            print(
                f"[nextquill-data] {message} ({time.time() - started:.0f}s)",
                file=sys.stderr,
                flush=True,
            )

    check_inputs(reviews, meta)  # every input, before a line of any is read
    check_writable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recovered = recover_interrupted_swap(out_dir)
    if recovered:
        say(recovered)
    check_out_dir(out_dir)
    for stale in remove_stale_work_folders(out_dir):
        say(f"removed {stale}, the work folder of an interrupted build")
    work = make_work_folder(out_dir)
    # In memory, spilling to the work folder beyond --memory-limit: a database file would be
    # written to disk whole. Closed on every path: a connection that holds Python functions at
    # exit makes the extension print reference-leak warnings.
    con = duckdb.connect()
    stage_started = time.perf_counter()

    def stage_done(name: str) -> None:
        nonlocal stage_started
        report.stage_seconds[name] = round(time.perf_counter() - stage_started, 1)
        stage_started = time.perf_counter()

    try:
        con.execute(
            f"SET memory_limit = {sql_text(options.memory_limit)}; "
            f"SET temp_directory = {sql_text(str(work / 'spill'))};"
        )
        if options.threads:
            con.execute(f"SET threads = {options.threads}")
        con.execute("SET preserve_insertion_order = true")
        define_sql_functions(con)
        with database_step("reading the input"):
            read_items(con, [Path(p) for p in meta], report, options)
            read_reviews(con, [Path(p) for p in reviews], report, options)
        say(f"read {report.reviews_read} review lines and {report.items_read} item lines")
        stage_done("read")
        if options.show_progress:
            con.execute("PRAGMA enable_progress_bar")
        with database_step("the database step"):
            select_users_and_targets(con, report, options, say)
        if count_rows(con, Tables.REVIEWS) == 0:
            raise BuildError(
                "no user survived the protocol's filters; see the drop counts: "
                + json.dumps(dict(report.reviews_dropped))
            )
        stage_done("select")
        result = work / "result"
        result.mkdir()
        with database_step("writing the splits"):
            write_splits(con, result, report, options)
        stage_done("write")
        empty = [
            split
            for split, targets in zip(SPLITS, options.targets_per_split(), strict=True)
            if targets and not report.rows_per_split.get(split)
        ]
        if empty:
            raise BuildError(f"the {' and '.join(empty)} split would be empty; nothing was written")
        report.seconds = round(time.time() - started, 1)
        (result / "stats.json").write_text(
            json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"
        )
        inputs = [Path(p).name for p in [*reviews, *meta]]
        card = dataset_card(out_dir.name, report.to_json(), options.thresholds(), inputs)
        (result / CARD).write_text(card)
        check_out_dir(out_dir)  # again: files may have been put there while we built
        put_in_place(result, out_dir)
        say(f"wrote {report.rows_per_split} rows of {report.users} users to {out_dir}")
        return report
    finally:
        con.close()
        shutil.rmtree(work, ignore_errors=True)
