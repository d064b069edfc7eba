"""Stage 1 of the builder: every raw input line, classified by DuckDB into kept columns or a reason.

Python only cuts the (decompressed) files into blocks of lines, numbered, as Arrow strings with
no per-line Python objects; DuckDB parses and checks them in parallel (``json_valid``, typed
extraction, the text rules of ``text_rules``). Every line ends in exactly one bucket: kept, or
dropped for a named reason; bad input (malformed JSON, invalid UTF-8, a missing or null field,
a wrong type) is also listed by file and line in the report.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from .common import MAX_LOCATIONS_PER_REASON, BuildError, BuildOptions, Report, sql_text

BLOCK_BYTES = 32 << 20  # decompressed bytes per block: large enough for DuckDB's threads
BATCH_LINES = 4096
NEWLINE = 10
PARSE_REASONS = ("invalid_utf8", "blank_line", "malformed_json")


def _open(path: Path):
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def iter_json_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of a JSONL file, gzipped or not; clear errors when unreadable."""
    for first, block in iter_line_blocks(path):
        for offset, line in enumerate(block.to_pylist()):
            yield first + offset, line.encode() if isinstance(line, str) else line


def iter_line_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, pa.Array]]:
    """(number of the first line, Arrow strings) blocks of a JSONL file, gzipped or not.

    Lines are split on b"\\n" (kept at the end of each string, as Python's file iteration
    does); a last line without one counts. Lines that are not valid UTF-8 are null. Raises
    BuildError for an empty file or a truncated or corrupt gzip stream.
    """
    line_no = 1
    try:
        with _open(path) as handle:
            rest = b""
            while True:
                chunk = handle.read(block_bytes)
                if not chunk:
                    break
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
                body, rest = data[:cut], data[cut:]
                yield line_no, _strings(body)
                line_no += body.count(b"\n")
            if rest:
                yield line_no, _strings(rest + b"\n")
                line_no += 1
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise BuildError(
            f"{path}: the gzip stream is truncated or corrupt after line "
            f"{decodable_lines(path)} ({error})"
        ) from error
    if line_no == 1:
        raise BuildError(f"{path}: the file is empty")


def decodable_lines(path: Path, chunk_bytes: int = 1 << 16) -> int:
    """How many complete lines a broken gzip file gives before its stream breaks (read again
    in small pieces: the big blocks above are lost whole when the stream breaks)."""
    lines = 0
    with contextlib.suppress(EOFError, zlib.error, gzip.BadGzipFile), gzip.open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            lines += chunk.count(b"\n")
    return lines


REVIEW_KEYS = {"user_id", "rating", "text"}  # a review line has these; an item line has none
ITEM_KEYS = {"main_category", "categories", "description"}


def check_inputs(reviews: list[Path], meta: list[Path]) -> None:
    """Every input is a readable file, and the review and metadata files are not swapped
    (judged by the first line of each), before a line of any is read."""
    for flag, paths in (("--reviews", reviews), ("--meta", meta)):
        for path in map(Path, paths):
            if not path.exists():
                raise BuildError(f"{flag} {path} does not exist")
            if not path.is_file():
                raise BuildError(f"{flag} {path} is a folder, not a file; name the file in it")
            if not os.access(path, os.R_OK):
                raise BuildError(f"{flag} {path} cannot be read (permission denied)")
    review_keys = [_first_keys(Path(p)) for p in reviews]
    meta_keys = [_first_keys(Path(p)) for p in meta]
    looks_like_items = all(k and not REVIEW_KEYS & k and ITEM_KEYS & k for k in review_keys)
    looks_like_reviews = all(k and REVIEW_KEYS <= k for k in meta_keys)
    if looks_like_items and looks_like_reviews:
        raise BuildError(
            "the files look swapped: the --reviews files hold item metadata (main_category, "
            "categories, description) and the --meta files hold reviews (user_id, rating, "
            "text); give the review files to --reviews and the meta_* files to --meta"
        )


def _first_keys(path: Path) -> set[str] | None:
    """The keys of the first line's JSON object, or None when it is not one."""
    try:
        with _open(path) as handle:
            first = handle.readline(1 << 20)
        value = json.loads(first)
    except (OSError, ValueError, EOFError, zlib.error):
        return None
    return set(value) if isinstance(value, dict) else None


def _strings(body: bytes) -> pa.Array:
    """Lines of ``body`` (which ends with a newline) as Arrow strings, without copying them."""
    ends = np.flatnonzero(np.frombuffer(body, np.uint8) == NEWLINE) + 1
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(body))
    try:
        lines.validate(full=True)
        return lines
    except pa.ArrowInvalid:  # some line is not UTF-8: find which, in Python (rare)
        decoded = []
        for line in lines.view(pa.large_binary()).to_pylist():
            try:
                decoded.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(None)
        return pa.array(decoded, pa.large_string())


def _fields(fields: dict[str, str]) -> str:
    """SQL over ``block``: per line, its parse problem (or NULL) and, for parsed lines, the
    fields' JSON types ``t`` ('NULL' when absent or null) and values ``v`` (a struct of the
    types in ``fields``: read only where ``t`` says the JSON type fits)."""
    paths = "[" + ", ".join(sql_text(f"$.{name}") for name in fields) + "]"
    struct = sql_text(json.dumps(fields))
    return f"""
    SELECT line_no, problem,
           CASE WHEN problem IS NULL THEN list_transform(json_type(line, {paths}),
                                                         lambda k: coalesce(k, 'NULL')) END AS t,
           CASE WHEN problem IS NULL THEN json_transform(line, {struct}) END AS v
    FROM (SELECT line_no, line, CASE
            WHEN line IS NULL THEN 'invalid_utf8'
            WHEN nq_blank_line(line) THEN 'blank_line'
            -- try(): NULL where DuckDB cannot parse the line
            WHEN try(json_type(line)) IS DISTINCT FROM 'OBJECT' THEN 'malformed_json'
            WHEN nq_maybe_lax_json(line) AND NOT nq_strict_json(line) THEN 'malformed_json'
          END AS problem FROM block)"""


def _missing(fields: dict[str, str]) -> str:
    return "\n".join(
        f"WHEN t[{i}] = 'NULL' THEN 'missing_{name}'" for i, name in enumerate(fields, 1)
    )


NUMBER = "('BIGINT', 'UBIGINT', 'DOUBLE')"
# Field -> the SQL type it is read as (JSON: read later, by its JSON type).
REVIEW_FIELDS = {
    "user_id": "VARCHAR",
    "parent_asin": "VARCHAR",
    "rating": "DOUBLE",
    "title": "VARCHAR",
    "text": "VARCHAR",
    "timestamp": "JSON",
}
ITEM_FIELDS = {
    "parent_asin": "VARCHAR",
    "title": "VARCHAR",
    "categories": "JSON",
    "rating_number": "JSON",
    "description": "JSON",
}


def _review_sql(o: BuildOptions) -> str:
    # t[k] follows REVIEW_FIELDS: user_id, parent_asin, rating, title, text, timestamp
    return f"""
    SELECT ?::INTEGER AS file_index, line_no, CASE
        WHEN problem IS NOT NULL THEN problem
        {_missing(REVIEW_FIELDS)}
        WHEN t[1] <> 'VARCHAR' OR t[2] <> 'VARCHAR' THEN 'bad_id'
        WHEN t[3] NOT IN {NUMBER} THEN 'bad_rating'
        WHEN timestamp IS NULL THEN 'bad_timestamp'
        WHEN t[4] <> 'VARCHAR' OR t[5] <> 'VARCHAR' THEN 'bad_text'
        WHEN length(text) < {o.min_text_chars} THEN 'short_text'
    END AS reason, user_id, parent_asin, rating, title, text, timestamp
    FROM (
        SELECT line_no, problem, t, v.user_id, v.parent_asin, v.rating,
               CASE WHEN t[4] = 'VARCHAR' THEN nq_clean(v.title) END AS title,
               CASE WHEN t[5] = 'VARCHAR' THEN nq_clean(v.text) END AS text,
               nq_timestamp_ms(v.timestamp, t[6]) AS timestamp
        FROM ({_fields(REVIEW_FIELDS)}))"""


def _item_sql(o: BuildOptions) -> str:
    # t[k] follows ITEM_FIELDS: parent_asin, title, categories, rating_number, description
    return f"""
    SELECT ?::INTEGER AS file_index, line_no, CASE
        WHEN problem IS NOT NULL THEN problem
        {_missing(ITEM_FIELDS)}
        WHEN t[1] <> 'VARCHAR' THEN 'bad_id'
        WHEN t[2] <> 'VARCHAR' THEN 'bad_title'
        WHEN item_description IS NULL THEN 'bad_description'
        WHEN length(item_description) NOT BETWEEN {o.min_description_chars}
                                              AND {o.max_description_chars}
            THEN 'description_length'
    END AS reason, parent_asin, item_title, item_description
    FROM (
        SELECT line_no, problem, t, v.parent_asin,
               CASE WHEN t[2] = 'VARCHAR' THEN nq_clean(v.title) END AS item_title,
               CASE WHEN t[5] = 'VARCHAR' THEN nq_clean(v.description ->> '$')
                    WHEN t[5] = 'ARRAY'
                         AND list_bool_and(list_transform(json_type(v.description, '$[*]'),
                                                          lambda k: k = 'VARCHAR')) IS NOT false
                    THEN nq_description(list_filter(json_extract_string(v.description, '$[*]'),
                                                    lambda e: NOT nq_blank(e)))
               END AS item_description
        FROM ({_fields(ITEM_FIELDS)}))"""


# Reasons that are bad input (listed by file and line); the others are the protocol's filters.
BAD_INPUT = {
    "review": "reason IN ('invalid_utf8', 'blank_line', 'malformed_json') "
    "OR reason LIKE 'missing\\_%' ESCAPE '\\' OR reason LIKE 'bad\\_%' ESCAPE '\\'",
    "item": "reason IN ('invalid_utf8', 'blank_line', 'malformed_json') "
    "OR reason LIKE 'bad\\_%' ESCAPE '\\'",
}


def _classify(
    con, kind: str, paths: list[Path], select_sql: str, columns: str, options: BuildOptions
) -> None:
    """Every line of ``paths`` into table ``{kind}_lines`` (file, line, reason, kept columns)."""
    con.execute(
        f"CREATE TABLE {kind}_lines (file_index INTEGER, line_no BIGINT, reason VARCHAR, {columns})"
    )
    progress = tqdm(desc=f"reading {kind}s", unit=" lines", disable=not options.show_progress)
    for file_index, path in enumerate(paths):
        for first, lines in iter_line_blocks(path):
            numbers = pa.array(np.arange(first, first + len(lines), dtype=np.int64))
            # Record batches are DuckDB's unit of parallel work on an Arrow table.
            block = pa.Table.from_batches(
                pa.table({"line_no": numbers, "line": lines}).to_batches(BATCH_LINES)
            )
            con.register("block", block)
            con.execute(f"INSERT INTO {kind}_lines {select_sql}", [file_index])
            con.unregister("block")
            progress.update(len(lines))
    progress.close()


def _account(con, kind: str, paths: list[Path], report: Report, options: BuildOptions) -> None:
    """Counts per reason, bad-input locations (the first ones per reason), --strict."""
    table = f"{kind}_lines"
    names = [path.name for path in paths]
    bad = BAD_INPUT[kind]
    if options.strict:
        first = con.execute(
            f"SELECT file_index, line_no, reason FROM {table} WHERE {bad} "
            "ORDER BY file_index, line_no LIMIT 1"
        ).fetchone()
        if first:
            file_index, line_no, reason = first
            raise BuildError(
                f"{names[file_index]}:{line_no}: {reason.replace('_', ' ')} (--strict)"
            )
    read = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    dropped = report.reviews_dropped if kind == "review" else report.items_dropped
    for reason, count in con.execute(
        f"SELECT reason, count(*) FROM {table} WHERE reason IS NOT NULL GROUP BY 1 ORDER BY 1"
    ).fetchall():
        dropped[reason] += count
    for reason, locations in con.execute(
        f"""SELECT reason, list([file_index, line_no] ORDER BY file_index, line_no)
            FROM (SELECT *, row_number() OVER (
                      PARTITION BY reason ORDER BY file_index, line_no) AS k
                  FROM {table} WHERE {bad}) WHERE k <= {MAX_LOCATIONS_PER_REASON}
            GROUP BY 1 ORDER BY 1"""
    ).fetchall():
        report.bad_input[f"{kind}:{reason}"] = [f"{names[f]}:{n}" for f, n in locations]
    if kind == "review":
        report.reviews_read += read
    else:
        report.items_read += read


def read_reviews(con, paths: list[Path], report: Report, options: BuildOptions) -> None:
    """Stage 1 for review files: table ``r`` holds the valid reviews with the protocol's columns
    (plus file and line, the tie-break of equal timestamps, and a hash of the text)."""
    columns = "user_id VARCHAR, parent_asin VARCHAR, rating DOUBLE, title VARCHAR, text VARCHAR, timestamp BIGINT"
    _classify(con, "review", paths, _review_sql(options), columns, options)
    _account(con, "review", paths, report, options)
    con.execute(
        """CREATE TABLE r AS SELECT user_id, parent_asin, rating, title, text, timestamp,
                  file_index, line_no, md5(text) AS text_hash
           FROM review_lines WHERE reason IS NULL ORDER BY file_index, line_no;
           DROP TABLE review_lines"""
    )


def read_items(con, paths: list[Path], report: Report, options: BuildOptions) -> None:
    """Stage 1 for metadata files: table ``items`` holds items with title, categories,
    rating_number and a description of the allowed length; the first record of a parent_asin
    wins."""
    columns = "parent_asin VARCHAR, item_title VARCHAR, item_description VARCHAR"
    _classify(con, "item", paths, _item_sql(options), columns, options)
    _account(con, "item", paths, report, options)
    con.execute(
        """CREATE TABLE items AS SELECT parent_asin, item_title, item_description FROM (
               SELECT *, row_number() OVER (
                   PARTITION BY parent_asin ORDER BY file_index, line_no) AS k
               FROM item_lines WHERE reason IS NULL) WHERE k = 1;
           DROP TABLE item_lines"""
    )
    report.items_kept = con.execute("SELECT count(*) FROM items").fetchone()[0]
    duplicates = report.items_read - sum(report.items_dropped.values()) - report.items_kept
    if duplicates:
        report.items_dropped["duplicate_item"] += duplicates
