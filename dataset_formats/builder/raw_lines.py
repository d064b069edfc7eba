"""Stage 1 of the builder: every raw input line, validated, into Parquet columns.

A streaming pass (orjson, constant memory). Every line ends in exactly one bucket: kept, or
dropped for a named reason; bad input (malformed JSON, invalid UTF-8, a missing or null field, a
wrong type) is also listed by file and line in the report.
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .common import BuildError, BuildOptions, Report

_WHITESPACE = re.compile(r"\s+")
MAX_TIMESTAMP_MS = 10**14  # the year 5138; larger values are not timestamps (and overflow int64)


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
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    value = int(value)
    if not 0 < value < MAX_TIMESTAMP_MS:
        return None
    return value * 1000 if value < 100_000_000_000 else value


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
        if not isinstance(obj["parent_asin"], str):
            _bad_input(report, "item", "bad_id", where, options.strict)
            continue
        if not isinstance(obj["title"], str):
            _bad_input(report, "item", "bad_title", where, options.strict)
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
                "item_title": clean_text(obj["title"]),
                "item_description": description,
            }
        )
    sink.close()
