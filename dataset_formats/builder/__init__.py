"""Amazon Reviews 2023 raw files -> per-user temporal splits of self-contained user rows.

Two stages, chosen for scale (Books has 29.5M reviews) and for exact accounting:

1. A streaming pass over every input line (orjson, constant memory) validates it and writes the
   few columns the protocol needs to Parquet. Every line ends in exactly one bucket: kept, or
   dropped for a named reason; bad input (malformed JSON, invalid UTF-8, a missing or null
   field, a wrong type) is also listed by file and line in the report.
2. DuckDB does the relational work on those Parquet files (de-duplication, the iterative k-core,
   the target/profile split, joining item metadata, building history lists), streaming and
   spilling to disk under a memory limit. DuckDB rather than Polars: its out-of-core window
   functions and joins spill to disk by design, which the per-user windows over 29.5M rows need.

Defaults reproduce the DPL protocol the paper follows (see README, "Data").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .common import SPLITS, BuildError, BuildOptions, Report
from .raw_lines import iter_json_lines, join_description, read_items, read_reviews
from .splits import select_users_and_targets, write_splits

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
    started = time.time()
    report = Report()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))

    def say(message: str) -> None:
        if options.show_progress:
            print(f"[nextquill-data] {message} ({time.time() - started:.0f}s)", flush=True)

    try:
        read_items([Path(p) for p in meta], work / "items.parquet", report, options)
        read_reviews([Path(p) for p in reviews], work / "reviews.parquet", report, options)
        say(f"read {report.reviews_read} review lines and {report.items_read} item lines")
        con = duckdb.connect(str(work / "build.duckdb"))
        con.execute(
            f"SET memory_limit = '{options.memory_limit}'; SET temp_directory = '{work / 'spill'}';"
        )
        con.execute("SET preserve_insertion_order = true")
        if options.show_progress:
            con.execute("PRAGMA enable_progress_bar")
        con.execute(f"CREATE TABLE items AS SELECT * FROM read_parquet('{work / 'items.parquet'}')")
        con.execute(
            f"""CREATE TABLE r AS SELECT *, md5(text) AS text_hash FROM read_parquet('{work / "reviews.parquet"}')"""
        )
        with database_step("the database step"):
            select_users_and_targets(con, report, options, say)
        if con.execute("SELECT count(*) FROM r").fetchone()[0] == 0:
            raise BuildError(
                "no user survived the protocol's filters; see the drop counts: "
                + json.dumps(dict(report.reviews_dropped))
            )
        result = work / "result"
        result.mkdir()
        with database_step("writing the splits"):
            write_splits(con, result, report, options)
        con.close()
        report.seconds = round(time.time() - started, 1)
        (result / "stats.json").write_text(
            json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(result, out_dir)
        say(f"wrote {report.rows_per_split} rows of {report.users} users to {out_dir}")
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)
