"""The protocol's rules for text and values, in Python and as the DuckDB functions the builder runs.

Python's ``str.isspace`` defines whitespace (what the builder has always collapsed); the DuckDB
regular-expression class is derived from it, so that both sides collapse the same characters
(RE2's ``\\s`` alone knows only six). ``clean_text`` and ``join_description`` are the Python
forms (``nextquill-data convert-dpl`` uses them, and tests hold the SQL forms to them).

Two checks DuckDB cannot express stay in Python, run only on the rare lines that need them:
- strict JSON: DuckDB's parser accepts trailing commas, ``NaN``/``Infinity`` and numbers that
  overflow a double, which JSON (and orjson) reject; lines that may hold one of those are
  re-checked with orjson (``nq_strict_json``).
- orjson's bytes: the splits are written as orjson writes them. DuckDB's ``to_json`` differs in
  two places, the hex case of ``\\u00XX`` escapes and the notation of doubles outside
  [1e-4, 1e15]; those reviews are re-serialised with orjson (``nq_orjson``).
"""

from __future__ import annotations

import re
import sys
from typing import Any

import orjson

from .common import sql_text

WHITESPACE = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
_WHITESPACE_RUN = re.compile(f"[{re.escape(WHITESPACE)}]+")
DESCRIPTION_HEADING = "product description"  # a leading list entry that is not description


def clean_text(text: str) -> str:
    """Collapse whitespace runs to one space and strip (the protocol compares texts after this)."""
    return _WHITESPACE_RUN.sub(" ", text).strip()


def join_description(value: Any) -> str | None:
    """A description as one string: lists are joined with spaces after dropping blank entries and
    a leading "Product Description" heading; strings pass; anything else is None."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = [v for v in value if v.strip()]
        if parts and parts[0].strip().isascii() and parts[0].strip().lower() == DESCRIPTION_HEADING:
            parts = parts[1:]
        return clean_text(" ".join(parts))
    return None


def _re2_class(chars: str) -> str:
    return "[" + "".join(f"\\x{{{ord(c):04x}}}" for c in chars) + "]"


WS = _re2_class(WHITESPACE)
NEEDS_CLEANING = _re2_class(WHITESPACE.replace(" ", "")) + "|  |^ | $"
MAX_TIMESTAMP_MS = 10**14  # the year 5138; larger values are not timestamps
SECONDS_BELOW = 100_000_000_000  # smaller timestamps are in seconds (before 1973 in ms)
# Lines that DuckDB may parse although strict JSON does not (trailing commas, NaN, Infinity,
# numbers that overflow): re-checked with orjson. Literal searches are cheaper than one regex.
TRAILING_COMMA = r",\s*[}\]]"
HUGE_NUMBER = r"[0-9][eE][+-]?[0-9]{3}|[0-9]{19}"
# Reviews whose to_json bytes may differ from orjson's: re-serialised with orjson.
UPPERCASE_ESCAPE = r"\\u00[01][A-F]"


def _strict_json(line: str) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _orjson_bytes(text: str) -> str:
    return orjson.dumps(orjson.loads(text)).decode()


SQL_MACROS = f"""
-- Most texts need no change; finding that out is far cheaper than a replace.
CREATE OR REPLACE MACRO nq_clean(s) AS CASE
    WHEN regexp_matches(s, {sql_text(NEEDS_CLEANING)})
    THEN trim(regexp_replace(s, {sql_text(WS + "+")}, ' ', 'g')) ELSE s END;
CREATE OR REPLACE MACRO nq_strip(s) AS
    regexp_replace(s, {sql_text(f"^{WS}+|{WS}+$")}, '', 'g');
CREATE OR REPLACE MACRO nq_blank(s) AS NOT regexp_matches(s, {sql_text(f"[^{WS[1:-1]}]")});
-- bytes.strip() of a raw line: ASCII whitespace only
CREATE OR REPLACE MACRO nq_blank_line(s) AS NOT regexp_matches(s, '[^ \\t\\n\\r\\x0b\\x0c]');
CREATE OR REPLACE MACRO nq_maybe_lax_json(line) AS
    regexp_matches(line, {sql_text(TRAILING_COMMA)})
    OR contains(line, 'NaN') OR contains(line, 'Infinity')
    OR regexp_matches(line, {sql_text(HUGE_NUMBER)});
CREATE OR REPLACE MACRO nq_description(parts) AS nq_clean(array_to_string(
    CASE WHEN len(parts) > 0 AND regexp_full_match(nq_strip(parts[1]), '[ -~]*')
              AND lower(nq_strip(parts[1])) = {sql_text(DESCRIPTION_HEADING)}
         THEN parts[2:] ELSE parts END, ' '));
-- JSON value (as JSON) -> milliseconds since the epoch, or NULL when it is not a timestamp:
-- integers, decimals (truncated) and strings of ASCII digits; seconds are converted.
-- (v: the value as JSON; kind: its json_type)
CREATE OR REPLACE MACRO nq_timestamp_number(v, kind) AS CASE
    WHEN kind IN ('BIGINT', 'UBIGINT', 'DOUBLE') THEN trunc(v::DOUBLE)
    WHEN kind = 'VARCHAR' AND regexp_full_match(v ->> '$', {sql_text(f"{WS}*[0-9]+{WS}*")})
        THEN TRY_CAST(nq_clean(v ->> '$') AS DOUBLE) END;
CREATE OR REPLACE MACRO nq_milliseconds(x) AS CASE WHEN x > 0 AND x < {MAX_TIMESTAMP_MS}
    THEN (CASE WHEN x < {SECONDS_BELOW} THEN x * 1000 ELSE x END)::BIGINT END;
CREATE OR REPLACE MACRO nq_timestamp_ms(v, kind) AS nq_milliseconds(nq_timestamp_number(v, kind));
CREATE OR REPLACE MACRO nq_review_json(j, rating) AS CASE
    WHEN regexp_matches(j, {sql_text(UPPERCASE_ESCAPE)})
         OR NOT (rating = 0 OR abs(rating) BETWEEN 1e-4 AND 1e15) THEN nq_orjson(j)
    ELSE j END;
CREATE OR REPLACE MACRO nq_string_json(s) AS CASE
    WHEN regexp_matches(to_json(s), {sql_text(UPPERCASE_ESCAPE)}) THEN nq_orjson(to_json(s))
    ELSE to_json(s) END;
"""


def define_sql_functions(con) -> None:
    """Register the protocol's rules on a DuckDB connection (macros plus the two Python checks)."""
    con.create_function("nq_strict_json", _strict_json, ["VARCHAR"], "BOOLEAN", side_effects=False)
    con.create_function("nq_orjson", _orjson_bytes, ["VARCHAR"], "VARCHAR", side_effects=False)
    con.execute(SQL_MACROS)
