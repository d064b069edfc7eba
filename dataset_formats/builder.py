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
import gzip
import json
import os
import re
import shutil
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

SPLITS = ("train", "validation", "test")
MAX_LOCATIONS_PER_REASON = 200  # bad-input locations listed in the report, per reason
_WHITESPACE = re.compile(r"\s+")


class BuildError(RuntimeError):
    """The input cannot be trusted or the result would be empty: nothing is written."""


@dataclass
class BuildOptions:
    """Every threshold of the protocol; defaults are DPL's (Qiu et al. 2025)."""

    min_text_chars: int = 200
    min_description_chars: int = 100
    max_description_chars: int = 2000
    min_item_users: int = 8
    min_user_reviews: int = 18
    max_user_reviews: int = 500
    targets_per_user: int = 10
    validation_targets: int = 1
    test_targets: int = 1
    min_profile_item_users: int = 5
    min_profile_reviews: int = 8
    max_history: int = 50
    strict: bool = False
    memory_limit: str = "8GB"
    show_progress: bool = True


@dataclass
class Report:
    """Statistics of one build; written as ``stats.json`` next to the splits."""

    reviews_read: int = 0
    reviews_kept: int = 0
    reviews_dropped: Counter = field(default_factory=Counter)
    items_read: int = 0
    items_kept: int = 0
    items_dropped: Counter = field(default_factory=Counter)
    bad_input: dict[str, list[str]] = field(default_factory=dict)
    users: int = 0
    items_used: int = 0
    rows_per_split: dict[str, int] = field(default_factory=dict)
    history_length: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def skip(self, kind: str, reason: str, where: str) -> None:
        (self.reviews_dropped if kind == "review" else self.items_dropped)[reason] += 1
        locations = self.bad_input.setdefault(f"{kind}:{reason}", [])
        if len(locations) < MAX_LOCATIONS_PER_REASON:
            locations.append(where)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reviews_dropped"] = dict(sorted(self.reviews_dropped.items()))
        data["items_dropped"] = dict(sorted(self.items_dropped.items()))
        data["accounted"] = (
            self.reviews_kept + sum(self.reviews_dropped.values()) == self.reviews_read
        )
        return data


# --------------------------------------------------------------------------- stage 1: lines


def iter_json_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of a JSONL file, gzipped or not; clear errors when unreadable."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    line_no = 0
    try:
        with opener(path, "rb") as handle:
            for line_no, line in enumerate(handle, 1):  # noqa: B007 (line_no used after the loop)
                yield line_no, line
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise BuildError(
            f"{path}: the gzip stream is truncated or corrupt after line {line_no} ({error})"
        ) from error
    if line_no == 0:
        raise BuildError(f"{path}: the file is empty")


def _bad_input(report: Report, kind: str, reason: str, where: str, strict: bool) -> None:
    """Count and locate a bad line, or stop on it with --strict."""
    if strict:
        raise BuildError(f"{where}: {reason.replace('_', ' ')} (--strict)")
    report.skip(kind, reason, where)


def _records(
    paths: list[Path], kind: str, report: Report, options: BuildOptions
) -> Iterator[tuple[int, int, str, dict]]:
    """(file index, line number, "file:line", object) of every parseable line, with progress;
    every line read is counted, unparseable ones as bad input."""
    progress = tqdm(desc=f"reading {kind}s", unit=" lines", disable=not options.show_progress)
    for file_index, path in enumerate(paths):
        for line_no, raw in iter_json_lines(path):
            progress.update()
            if kind == "review":
                report.reviews_read += 1
            else:
                report.items_read += 1
            where = f"{path.name}:{line_no}"
            obj = _parse(raw, where, kind, report, options.strict)
            if obj is not None:
                yield file_index, line_no, where, obj
    progress.close()


def _parse(raw: bytes, where: str, kind: str, report: Report, strict: bool) -> dict | None:
    def bad(reason: str) -> None:
        _bad_input(report, kind, reason, where, strict)

    if not raw.strip():
        bad("blank_line")
        return None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        bad("invalid_utf8")
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        bad("malformed_json")
        return None
    if not isinstance(obj, dict):
        bad("malformed_json")
        return None
    return obj


def _timestamp_ms(value: Any) -> int | None:
    """Milliseconds since the epoch; seconds (< 1e11, i.e. before 1973 in ms) are converted."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int | float):
        return None
    value = int(value)
    return value * 1000 if 0 < value < 100_000_000_000 else value if value > 0 else None


def clean_text(text: str) -> str:
    """Collapse whitespace (the protocol compares texts after this)."""
    return _WHITESPACE.sub(" ", text).strip()


def join_description(value: Any) -> str | None:
    """A description as one string: lists are joined with spaces after dropping a leading
    "Product Description" heading entry; strings pass; anything else is None."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = [v for v in value if v.strip()]
        if parts and parts[0].strip().lower() == "product description":
            parts = parts[1:]
        return clean_text(" ".join(parts))
    return None


REVIEW_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("parent_asin", pa.string()),
        ("rating", pa.float64()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("timestamp", pa.int64()),
        ("file_index", pa.int32()),
        ("line_no", pa.int64()),
    ]
)
ITEM_SCHEMA = pa.schema(
    [("parent_asin", pa.string()), ("item_title", pa.string()), ("item_description", pa.string())]
)


class _ParquetSink:
    """Buffered rows -> a Parquet file, in bounded batches."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int = 100_000):
        self.writer = pq.ParquetWriter(path, schema)
        self.schema, self.batch_rows = schema, batch_rows
        self.columns: dict[str, list] = {name: [] for name in schema.names}

    def add(self, row: dict[str, Any]) -> None:
        for name, column in self.columns.items():
            column.append(row[name])
        if len(self.columns[self.schema.names[0]]) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.columns[self.schema.names[0]]:
            self.writer.write_table(pa.table(self.columns, schema=self.schema))
            self.columns = {name: [] for name in self.schema.names}

    def close(self) -> None:
        self.flush()
        self.writer.close()


def read_reviews(paths: list[Path], sink_path: Path, report: Report, options: BuildOptions) -> None:
    """Stage 1 for review files: validate each line and keep the protocol's columns."""
    sink = _ParquetSink(sink_path, REVIEW_SCHEMA)
    for file_index, line_no, where, obj in _records(paths, "review", report, options):
        reason, row = _review_row(obj)
        if reason is not None:
            if reason.startswith(("missing_", "bad_")):
                _bad_input(report, "review", reason, where, options.strict)
            else:  # a protocol filter, not bad input: counted, not listed
                report.reviews_dropped[reason] += 1
            continue
        if len(row["text"]) < options.min_text_chars:
            report.reviews_dropped["short_text"] += 1
            continue
        sink.add({**row, "file_index": file_index, "line_no": line_no})
    sink.close()


def _review_row(obj: dict) -> tuple[str | None, dict]:
    for name in ("user_id", "parent_asin", "rating", "title", "text", "timestamp"):
        if obj.get(name) is None:
            return f"missing_{name}", {}
    if not isinstance(obj["user_id"], str) or not isinstance(obj["parent_asin"], str):
        return "bad_id", {}
    rating = obj["rating"]
    if isinstance(rating, bool) or not isinstance(rating, int | float):
        return "bad_rating", {}
    timestamp = _timestamp_ms(obj["timestamp"])
    if timestamp is None:
        return "bad_timestamp", {}
    if not isinstance(obj["title"], str) or not isinstance(obj["text"], str):
        return "bad_text", {}
    return None, {
        "user_id": obj["user_id"],
        "parent_asin": obj["parent_asin"],
        "rating": float(rating),
        "title": clean_text(obj["title"]),
        "text": clean_text(obj["text"]),
        "timestamp": timestamp,
    }


def read_items(paths: list[Path], sink_path: Path, report: Report, options: BuildOptions) -> None:
    """Stage 1 for metadata files: keep items with title, categories, rating_number and a
    description of the allowed length; the first record of a parent_asin wins."""
    sink = _ParquetSink(sink_path, ITEM_SCHEMA)
    seen: set[str] = set()
    required = ("parent_asin", "title", "categories", "rating_number", "description")
    for _, _, where, obj in _records(paths, "item", report, options):
        missing = next((name for name in required if obj.get(name) is None), None)
        if missing:
            report.items_dropped[f"missing_{missing}"] += 1
            continue
        description = join_description(obj["description"])
        if description is None:
            _bad_input(report, "item", "bad_description", where, options.strict)
            continue
        if not options.min_description_chars <= len(description) <= options.max_description_chars:
            report.items_dropped["description_length"] += 1
            continue
        if obj["parent_asin"] in seen:
            report.items_dropped["duplicate_item"] += 1
            continue
        seen.add(obj["parent_asin"])
        report.items_kept += 1
        sink.add(
            {
                "parent_asin": obj["parent_asin"],
                "item_title": clean_text(str(obj["title"])),
                "item_description": description,
            }
        )
    sink.close()


# --------------------------------------------------------------------------- stage 2: DuckDB


def _delete(con, reason: str, report: Report, sql: str) -> int:
    before = con.execute("SELECT count(*) FROM r").fetchone()[0]
    con.execute(sql)
    removed = before - con.execute("SELECT count(*) FROM r").fetchone()[0]
    report.reviews_dropped[reason] += removed
    return removed


def _select_users_and_targets(con, report: Report, o: BuildOptions, say) -> None:
    """De-duplicate, iterate the k-core, mark targets, iterate the profile filter."""
    order = "timestamp, file_index, line_no"
    # Reviews of items without (kept) metadata.
    before = con.execute("SELECT count(*) FROM r").fetchone()[0]
    _delete(
        con,
        "item_filtered",
        report,
        "DELETE FROM r WHERE parent_asin NOT IN (SELECT parent_asin FROM items)",
    )
    if before and con.execute("SELECT count(*) FROM r").fetchone()[0] == 0:
        raise BuildError(
            f"none of the {before} valid reviews matches an item of the metadata files "
            f"({report.items_kept} items kept of {report.items_read} read; joined on parent_asin): "
            "are --reviews and --meta of the same category?"
        )
    # Per user, one review per item and per text: the earliest stays.
    _delete(
        con,
        "duplicate_item",
        report,
        f"""DELETE FROM r WHERE rowid IN (SELECT rid FROM (
        SELECT rowid AS rid, row_number() OVER (PARTITION BY user_id, parent_asin ORDER BY {order}) AS k FROM r) WHERE k > 1)""",
    )
    _delete(
        con,
        "duplicate_text",
        report,
        f"""DELETE FROM r WHERE rowid IN (SELECT rid FROM (
        SELECT rowid AS rid, row_number() OVER (PARTITION BY user_id, text_hash ORDER BY {order}) AS k FROM r) WHERE k > 1)""",
    )
    rounds = 0
    while True:
        rounds += 1
        removed = _delete(
            con,
            "k_core",
            report,
            f"""DELETE FROM r WHERE parent_asin IN (
            SELECT parent_asin FROM r GROUP BY 1 HAVING count(DISTINCT user_id) < {o.min_item_users})""",
        )
        removed += _delete(
            con,
            "k_core",
            report,
            f"""DELETE FROM r WHERE user_id IN (
            SELECT user_id FROM r GROUP BY 1 HAVING count(*) < {o.min_user_reviews} OR count(*) > {o.max_user_reviews})""",
        )
        if not removed:
            break
    say(f"k-core stable after {rounds} rounds")
    # The last N reviews of each user are targets 1..N; the rest is the profile (target 0).
    con.execute(f"""CREATE TABLE r2 AS SELECT *, greatest(0, pos - (n - {o.targets_per_user}))::INTEGER AS target_index FROM (
        SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY {order}) AS pos,
               count(*) OVER (PARTITION BY user_id) AS n FROM r)""")
    con.execute("DROP TABLE r; ALTER TABLE r2 RENAME TO r")
    while True:
        removed = _delete(
            con,
            "profile_item_rare",
            report,
            f"""DELETE FROM r WHERE target_index = 0 AND parent_asin IN (
            SELECT parent_asin FROM r WHERE target_index = 0 GROUP BY 1 HAVING count(DISTINCT user_id) < {o.min_profile_item_users})""",
        )
        removed += _delete(
            con,
            "profile_user_short",
            report,
            f"""DELETE FROM r WHERE user_id IN (
            SELECT user_id FROM r GROUP BY 1 HAVING count(*) FILTER (WHERE target_index = 0) < {o.min_profile_reviews})""",
        )
        if not removed:
            break


_REVIEW_COLUMNS = (
    "item_id",
    "item_title",
    "item_description",
    "rating",
    "title",
    "text",
    "timestamp",
)


def _user_reviews(con, batch_rows: int = 50_000) -> Iterator[list[dict]]:
    """Each kept user's reviews in time order, one user at a time (bounded memory)."""
    reader = con.sql(
        f"""SELECT user_id, target_index, parent_asin AS item_id, {", ".join(_REVIEW_COLUMNS[1:])}
            FROM final ORDER BY user_id, pos"""
    ).to_arrow_reader(batch_rows)
    current: list[dict] = []
    for batch in reader:
        for row in batch.to_pylist():
            if current and row["user_id"] != current[0]["user_id"]:
                yield current
                current = []
            current.append(row)
    if current:
        yield current


def _write_splits(con, out_tmp: Path, report: Report, o: BuildOptions) -> None:
    """One row per target review: the target and up to ``max_history`` earlier reviews."""
    con.execute(
        "CREATE TABLE final AS SELECT r.*, i.item_title, i.item_description FROM r JOIN items i USING (parent_asin)"
    )
    first_valid = o.targets_per_user - o.validation_targets - o.test_targets + 1
    first_test = o.targets_per_user - o.test_targets + 1
    lengths: dict[str, list[int]] = {split: [] for split in SPLITS}
    users = 0
    with contextlib.ExitStack() as stack:
        handles = {
            split: stack.enter_context(open(out_tmp / f"{split}.jsonl", "wb")) for split in SPLITS
        }
        for reviews in _user_reviews(con):
            users += 1
            public = [{k: r[k] for k in _REVIEW_COLUMNS} for r in reviews]
            for i, review in enumerate(reviews):
                t = review["target_index"]
                if t <= 0:
                    continue
                split = "test" if t >= first_test else "validation" if t >= first_valid else "train"
                history = public[max(0, i - o.max_history) : i]
                lengths[split].append(len(history))
                row = {"user_id": review["user_id"], "target": public[i], "history": history}
                handles[split].write(orjson.dumps(row) + b"\n")
    for split in SPLITS:
        values = sorted(lengths[split])
        report.rows_per_split[split] = len(values)
        report.history_length[split] = (
            {
                "min": float(values[0]),
                "median": float(values[len(values) // 2]),
                "mean": round(sum(values) / len(values), 2),
                "max": float(values[-1]),
            }
            if values
            else {}
        )
    report.reviews_kept = con.execute("SELECT count(*) FROM r").fetchone()[0]
    report.users = users
    report.items_used = con.execute("SELECT count(DISTINCT parent_asin) FROM r").fetchone()[0]


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
        try:
            _select_users_and_targets(con, report, options, say)
        except duckdb.Error as error:
            raise BuildError(
                f"the database step failed ({error}); try a larger --memory-limit"
            ) from error
        if con.execute("SELECT count(*) FROM r").fetchone()[0] == 0:
            raise BuildError(
                "no user survived the protocol's filters; see the drop counts: "
                + json.dumps(dict(report.reviews_dropped))
            )
        result = work / "result"
        result.mkdir()
        try:
            _write_splits(con, result, report, options)
        except duckdb.Error as error:
            raise BuildError(
                f"writing the splits failed ({error}); try a larger --memory-limit"
            ) from error
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
