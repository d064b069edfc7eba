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

import duckdb

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
    """Turn a DuckDB failure (usually memory) into a BuildError that says what to change, and a
    Ctrl-C that DuckDB caught inside a query back into the KeyboardInterrupt it was."""
    try:
        yield
    except duckdb.InterruptException:
        raise KeyboardInterrupt from None
    except duckdb.Error as error:
        raise BuildError(f"{what} failed ({error}); try a larger --memory-limit") from error
    except RuntimeError as error:  # DuckDB's Python client raises this one as a RuntimeError
        if str(error) == "Query interrupted":
            raise KeyboardInterrupt from None
        raise


class Progress:
    """Progress lines on stderr (unless ``--quiet``) and the seconds each stage took."""

    def __init__(self, report: Report, show: bool):
        self.report = report
        self.show = show
        self.started = time.time()
        self.stage_started = time.perf_counter()

    def say(self, message: str) -> None:
        if self.show:
            # Progress goes to stderr: stdout carries only the stats JSON, for pipes.
            print(
                f"[nextquill-data] {message} ({self.elapsed():.0f}s)",
                file=sys.stderr,
                flush=True,
            )

    def elapsed(self) -> float:
        """Seconds since the build started."""
        return time.time() - self.started

    def start_stages(self) -> None:
        """The first stage starts now (the checks of the inputs and --out are not a stage)."""
        self.stage_started = time.perf_counter()

    def stage_done(self, name: str) -> None:
        self.report.stage_seconds[name] = round(time.perf_counter() - self.stage_started, 1)
        self.stage_started = time.perf_counter()


def build(
    reviews: list[Path], meta: list[Path], out_dir: Path, options: BuildOptions | None = None
) -> Report:
    """Build train/validation/test JSONL files and stats.json in ``out_dir``.

    Output appears only when complete: everything is written into a temporary folder beside
    ``out_dir`` and moved into place at the end. Raises BuildError when the input cannot be
    trusted (truncated gzip, empty file, ``--strict`` and a bad line) or no user survives.
    """
    options = options or BuildOptions()
    options.check()
    report = Report()
    progress = Progress(report, options.show_progress)
    out_dir = Path(out_dir).resolve()
    check_inputs(reviews, meta)  # every input, before a line of any is read
    work = _prepare_work_folder(out_dir, progress)
    # In memory, spilling to the work folder beyond --memory-limit: a database file would be
    # written to disk whole. Closed on every path: a connection that holds Python functions at
    # exit makes the extension print reference-leak warnings.
    con = duckdb.connect()
    progress.start_stages()
    try:
        _configure(con, options, spill=work / "spill")
        _read_inputs(con, [Path(p) for p in reviews], [Path(p) for p in meta], report, options)
        progress.say(f"read {report.reviews_read} review lines and {report.items_read} item lines")
        progress.stage_done("read")
        _select(con, report, options, progress)
        progress.stage_done("select")
        result = work / "result"
        result.mkdir()
        _write_splits(con, result, report, options)
        progress.stage_done("write")
        report.seconds = round(progress.elapsed(), 1)
        inputs = [Path(p).name for p in [*reviews, *meta]]
        _write_stats_and_card(result, out_dir.name, report, options, inputs)
        check_out_dir(out_dir)  # again: files may have been put there while we built
        put_in_place(result, out_dir)
        progress.say(f"wrote {report.rows_per_split} rows of {report.users} users to {out_dir}")
        return report
    finally:
        con.close()
        shutil.rmtree(work, ignore_errors=True)


def _prepare_work_folder(out_dir: Path, progress: Progress) -> Path:
    """Check that ``out_dir`` may be built into, tidy what killed builds left beside it, and
    make this build's work folder there."""
    check_writable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recovered = recover_interrupted_swap(out_dir)
    if recovered:
        progress.say(recovered)
    check_out_dir(out_dir)
    for stale in remove_stale_work_folders(out_dir):
        progress.say(f"removed {stale}, the work folder of an interrupted build")
    return make_work_folder(out_dir)


def _configure(con, options: BuildOptions, spill: Path) -> None:
    """DuckDB's memory limit, spill folder and threads, and the protocol's SQL functions."""
    con.execute(
        f"SET memory_limit = {sql_text(options.memory_limit)}; "
        f"SET temp_directory = {sql_text(str(spill))};"
    )
    if options.threads:
        con.execute(f"SET threads = {options.threads}")
    con.execute("SET preserve_insertion_order = true")
    define_sql_functions(con)


def _read_inputs(
    con, reviews: list[Path], meta: list[Path], report: Report, options: BuildOptions
) -> None:
    """Stage 1: every line of the metadata and review files, into the valid items and reviews."""
    with database_step("reading the input"):
        read_items(con, meta, report, options)
        read_reviews(con, reviews, report, options)


def _select(con, report: Report, options: BuildOptions, progress: Progress) -> None:
    """Stage 2's filters: the reviews that make rows; raise BuildError when no user is left."""
    if options.show_progress:
        con.execute("PRAGMA enable_progress_bar")
    with database_step("the database step"):
        select_users_and_targets(con, report, options, progress.say)
    if count_rows(con, Tables.REVIEWS) == 0:
        raise BuildError(
            "no user survived the protocol's filters; see the drop counts: "
            + json.dumps(dict(report.reviews_dropped))
        )


def _write_splits(con, result: Path, report: Report, options: BuildOptions) -> None:
    """Stage 2's rows, into the split files in ``result``; raise BuildError when a split that
    should have targets has no row."""
    with database_step("writing the splits"):
        write_splits(con, result, report, options)
    empty = [
        split
        for split, targets in zip(SPLITS, options.targets_per_split(), strict=True)
        if targets and not report.rows_per_split.get(split)
    ]
    if empty:
        raise BuildError(f"the {' and '.join(empty)} split would be empty; nothing was written")


def _write_stats_and_card(
    result: Path, name: str, report: Report, options: BuildOptions, inputs: list[str]
) -> None:
    """stats.json and the dataset card, beside the split files in ``result``."""
    (result / "stats.json").write_text(
        json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"
    )
    card = dataset_card(name, report.to_json(), options.thresholds(), inputs)
    (result / CARD).write_text(card)
