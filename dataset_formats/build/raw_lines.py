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
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from nextquill_common.jsonl import input_file_problem

from .common import (
    MAX_LOCATIONS_PER_REASON,
    BuildError,
    BuildOptions,
    Report,
    Tables,
    count_rows,
    sql_text,
)

BLOCK_BYTES = 32 << 20  # decompressed bytes per block: large enough for DuckDB's threads
BATCH_LINES = 4096
NEWLINE = 10
# Why a line is not a JSON object, the first check of every line; all three are bad input.
INVALID_UTF8, BLANK_LINE, MALFORMED_JSON = "invalid_utf8", "blank_line", "malformed_json"
PARSE_REASONS = (INVALID_UTF8, BLANK_LINE, MALFORMED_JSON)
# The prefixes of the reasons a parsed line's fields give: absent or null, of the wrong type.
MISSING, BAD = "missing_", "bad_"


def _open(path: Path):
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def iter_json_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of a JSONL file, gzipped or not; clear errors when unreadable."""
    for first, block in iter_line_blocks(path):
        for offset, line in enumerate(block.to_pylist()):
            yield first + offset, line.encode() if isinstance(line, str) else line


UTF8_BOM = b"\xef\xbb\xbf"


def iter_line_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, pa.Array]]:
    """(number of the first line, Arrow strings) blocks of a JSONL file, gzipped or not.

    Lines are split on b"\\n" (kept at the end of each string, as Python's file iteration
    does); a last line without one counts; a byte order mark before the first is dropped. Lines
    that are not valid UTF-8 are null. Raises
    BuildError for an empty file or a truncated or corrupt gzip stream.
    """
    line_no = 1
    try:
        with _open(path) as handle:
            rest = b""
            first = True
            while True:
                chunk = handle.read(block_bytes)
                if not chunk:
                    break
                if first:  # a UTF-8 byte order mark (some editors write one) is not JSON
                    chunk, first = chunk.removeprefix(UTF8_BOM), False
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
            problem = input_file_problem(path)
            if problem:
                raise BuildError(f"{flag} {path} {problem}")
    review_keys = [_first_keys(Path(p)) for p in reviews]
    meta_keys = [_first_keys(Path(p)) for p in meta]
    looks_like_items = all(k and not REVIEW_KEYS & k and ITEM_KEYS & k for k in review_keys)
    looks_like_reviews = all(k and k >= REVIEW_KEYS for k in meta_keys)
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


LINE_BLOCK = "block"  # the view of one block of lines (line_no, line) that the SQL reads


def _fields(fields: dict[str, str]) -> str:
    """SQL over ``LINE_BLOCK``: per line, its parse problem (or NULL) and, for parsed lines, the
    fields' JSON types ``json_types`` ('NULL' when absent or null; see ``_json_types``) and
    values ``parsed`` (a struct of the types in ``fields``: read only where the JSON type
    fits)."""
    paths = "[" + ", ".join(sql_text(f"$.{name}") for name in fields) + "]"
    struct = sql_text(json.dumps(fields))
    return f"""
    SELECT line_no, problem,
           CASE WHEN problem IS NULL THEN list_transform(json_type(line, {paths}),
                                                         lambda k: coalesce(k, 'NULL'))
           END AS json_types,
           CASE WHEN problem IS NULL THEN json_transform(line, {struct}) END AS parsed
    FROM (SELECT line_no, line, CASE
            WHEN line IS NULL THEN {sql_text(INVALID_UTF8)}
            WHEN nq_blank_line(line) THEN {sql_text(BLANK_LINE)}
            -- try(): NULL where DuckDB cannot parse the line
            WHEN try(json_type(line)) IS DISTINCT FROM 'OBJECT' THEN {sql_text(MALFORMED_JSON)}
            WHEN nq_maybe_lax_json(line) AND NOT nq_strict_json(line)
                THEN {sql_text(MALFORMED_JSON)}
          END AS problem FROM {LINE_BLOCK})"""


def _json_types(fields: dict[str, str]) -> dict[str, str]:
    """Per field, the SQL for its JSON type: its item of ``json_types`` (listed in the order of
    ``fields``; SQL lists count from 1)."""
    return {name: f"json_types[{index}]" for index, name in enumerate(fields, 1)}


def _missing(fields: dict[str, str]) -> str:
    """SQL CASE branches: a field absent or null gives the reason ``missing_<field>``."""
    return "\n".join(
        f"WHEN {json_type} = 'NULL' THEN {sql_text(MISSING + name)}"
        for name, json_type in _json_types(fields).items()
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


def _review_sql(options: BuildOptions) -> str:
    json_type = _json_types(REVIEW_FIELDS)
    return f"""
    SELECT ?::INTEGER AS file_index, line_no, CASE
        WHEN problem IS NOT NULL THEN problem
        {_missing(REVIEW_FIELDS)}
        WHEN {json_type["user_id"]} <> 'VARCHAR' OR {json_type["parent_asin"]} <> 'VARCHAR'
            THEN '{BAD}id'
        WHEN {json_type["rating"]} NOT IN {NUMBER} THEN '{BAD}rating'
        WHEN timestamp IS NULL THEN '{BAD}timestamp'
        WHEN {json_type["title"]} <> 'VARCHAR' OR {json_type["text"]} <> 'VARCHAR'
            THEN '{BAD}text'
        WHEN length(text) < {options.min_text_chars} THEN 'short_text'
    END AS reason, user_id, parent_asin, rating, title, text, timestamp
    FROM (
        SELECT line_no, problem, json_types, parsed.user_id, parsed.parent_asin, parsed.rating,
               CASE WHEN {json_type["title"]} = 'VARCHAR' THEN nq_clean(parsed.title) END AS title,
               CASE WHEN {json_type["text"]} = 'VARCHAR' THEN nq_clean(parsed.text) END AS text,
               nq_timestamp_ms(parsed.timestamp, {json_type["timestamp"]}) AS timestamp
        FROM ({_fields(REVIEW_FIELDS)}))"""


def _item_sql(options: BuildOptions) -> str:
    json_type = _json_types(ITEM_FIELDS)
    description_type = json_type["description"]
    return f"""
    SELECT ?::INTEGER AS file_index, line_no, CASE
        WHEN problem IS NOT NULL THEN problem
        {_missing(ITEM_FIELDS)}
        WHEN {json_type["parent_asin"]} <> 'VARCHAR' THEN '{BAD}id'
        WHEN {json_type["title"]} <> 'VARCHAR' THEN '{BAD}title'
        WHEN item_description IS NULL THEN '{BAD}description'
        WHEN length(item_description) NOT BETWEEN {options.min_description_chars}
                                              AND {options.max_description_chars}
            THEN 'description_length'
    END AS reason, parent_asin, item_title, item_description
    FROM (
        SELECT line_no, problem, json_types, parsed.parent_asin,
               CASE WHEN {json_type["title"]} = 'VARCHAR' THEN nq_clean(parsed.title)
               END AS item_title,
               CASE WHEN {description_type} = 'VARCHAR' THEN nq_clean(parsed.description ->> '$')
                    WHEN {description_type} = 'ARRAY'
                         AND list_bool_and(list_transform(json_type(parsed.description, '$[*]'),
                                                          lambda k: k = 'VARCHAR')) IS NOT false
                    THEN nq_description(list_filter(json_extract_string(parsed.description,
                                                                        '$[*]'),
                                                    lambda e: NOT nq_blank(e)))
               END AS item_description
        FROM ({_fields(ITEM_FIELDS)}))"""


def _reason_starts(prefix: str) -> str:
    """SQL: the reason begins with ``prefix`` (its ``_`` escaped: LIKE reads ``_`` as any
    character)."""
    pattern = prefix.replace("_", "\\_") + "%"
    return f"reason LIKE {sql_text(pattern)} ESCAPE '\\'"


# Reasons that are bad input (listed by file and line); the others are the protocol's filters
# (an item without a description, say, is common and not an error of the file).
_IS_PARSE_PROBLEM = f"reason IN ({', '.join(map(sql_text, PARSE_REASONS))})"
BAD_INPUT = {
    "review": f"{_IS_PARSE_PROBLEM} OR {_reason_starts(MISSING)} OR {_reason_starts(BAD)}",
    "item": f"{_IS_PARSE_PROBLEM} OR {_reason_starts(BAD)}",
}
LINES_TABLE = {"review": Tables.REVIEW_LINES, "item": Tables.ITEM_LINES}


def _classify(
    con, kind: str, paths: list[Path], select_sql: str, columns: str, options: BuildOptions
) -> None:
    """Every line of ``paths`` into table ``LINES_TABLE[kind]`` (file, line, reason, kept
    columns)."""
    table = LINES_TABLE[kind]
    con.execute(
        f"CREATE TABLE {table} (file_index INTEGER, line_no BIGINT, reason VARCHAR, {columns})"
    )
    progress = tqdm(desc=f"reading {kind}s", unit=" lines", disable=not options.show_progress)
    for file_index, path in enumerate(paths):
        for first, lines in iter_line_blocks(path):
            numbers = pa.array(np.arange(first, first + len(lines), dtype=np.int64))
            # Record batches are DuckDB's unit of parallel work on an Arrow table.
            block = pa.Table.from_batches(
                pa.table({"line_no": numbers, "line": lines}).to_batches(BATCH_LINES)
            )
            con.register(LINE_BLOCK, block)
            con.execute(f"INSERT INTO {table} {select_sql}", [file_index])
            con.unregister(LINE_BLOCK)
            progress.update(len(lines))
    progress.close()


def _account(con, kind: str, paths: list[Path], report: Report, options: BuildOptions) -> None:
    """Counts per reason, bad-input locations (the first ones per reason), --strict."""
    table = LINES_TABLE[kind]
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
    read = count_rows(con, table)
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
    """Stage 1 for review files: table ``Tables.REVIEWS`` holds the valid reviews with the
    protocol's columns (plus file and line, the tie-break of equal timestamps, and a hash of the
    text)."""
    columns = (
        "user_id VARCHAR, parent_asin VARCHAR, rating DOUBLE, title VARCHAR, text VARCHAR, "
        "timestamp BIGINT"
    )
    _classify(con, "review", paths, _review_sql(options), columns, options)
    _account(con, "review", paths, report, options)
    con.execute(
        f"""CREATE TABLE {Tables.REVIEWS} AS
               SELECT user_id, parent_asin, rating, title, text, timestamp,
                      file_index, line_no, md5(text) AS text_hash
               FROM {Tables.REVIEW_LINES} WHERE reason IS NULL ORDER BY file_index, line_no;
           DROP TABLE {Tables.REVIEW_LINES}"""
    )


def read_items(con, paths: list[Path], report: Report, options: BuildOptions) -> None:
    """Stage 1 for metadata files: table ``Tables.ITEMS`` holds items with title, categories,
    rating_number and a description of the allowed length; the first record of a parent_asin
    wins."""
    columns = "parent_asin VARCHAR, item_title VARCHAR, item_description VARCHAR"
    _classify(con, "item", paths, _item_sql(options), columns, options)
    _account(con, "item", paths, report, options)
    con.execute(
        f"""CREATE TABLE {Tables.ITEMS} AS SELECT parent_asin, item_title, item_description FROM (
               SELECT *, row_number() OVER (
                   PARTITION BY parent_asin ORDER BY file_index, line_no) AS k
               FROM {Tables.ITEM_LINES} WHERE reason IS NULL) WHERE k = 1;
           DROP TABLE {Tables.ITEM_LINES}"""
    )
    report.items_kept = count_rows(con, Tables.ITEMS)
    duplicates = report.items_read - sum(report.items_dropped.values()) - report.items_kept
    if duplicates:
        report.items_dropped["duplicate_item"] += duplicates
