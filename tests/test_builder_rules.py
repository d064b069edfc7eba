"""The builder's SQL text and value rules against plain Python forms of the same rules,
on random and hand-picked inputs (the SQL is what runs; Python is the reference)."""

from __future__ import annotations

import json
import math
import random

import duckdb
import orjson
import pytest

from dataset_formats.build.text_rules import (
    WHITESPACE,
    clean_text,
    define_sql_functions,
    join_description,
)

PALETTE = [*WHITESPACE, "a", "Z", "é", "書", "😀", "\x01", "\x1b", '"', "\\", "-", "0", "9"]


@pytest.fixture(scope="module")
def con():
    connection = duckdb.connect()
    define_sql_functions(connection)
    yield connection
    connection.close()


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(PALETTE, k=rng.randint(0, 12))) for _ in range(n)]


def test_whitespace_is_what_python_collapses():
    assert {" ", "\t", "\n", "\x0b", "\x1c", "\x85", "\xa0", "\u2028", "\u3000"} <= set(WHITESPACE)
    assert "\u200b" not in WHITESPACE  # a zero-width space is not whitespace to Python


def test_sql_clean_equals_python(con):
    texts = random_texts(3000)
    got = con.execute(
        "SELECT list(nq_clean(s) ORDER BY i) FROM (SELECT unnest(?) s, generate_subscripts(?, 1) i)",
        [texts, texts],
    ).fetchone()[0]
    assert got == [clean_text(t) for t in texts]


def test_sql_description_equals_python(con):
    rng = random.Random(1)
    headings = [
        "Product Description",
        "  PRODUCT DESCRIPTION\u3000",
        "Product\u3000Description",
        "product descriptions",
    ]
    lists = []
    for _ in range(500):
        parts = random_texts(rng.randint(0, 4), seed=rng.randint(0, 10**6))
        if rng.random() < 0.5:
            parts.insert(rng.randint(0, 1) if parts else 0, rng.choice(headings))
        lists.append(parts)
    got = [
        con.execute(
            "SELECT nq_description(list_filter(?::VARCHAR[], lambda e: NOT nq_blank(e)))", [parts]
        ).fetchone()[0]
        for parts in lists
    ]
    assert got == [join_description(parts) for parts in lists]
    assert join_description(["Product Description", "a  b", "c"]) == "a b c"
    assert join_description("  x \n y ") == "x y"
    assert join_description(None) is None and join_description([1, 2]) is None


def reference_timestamp_ms(value) -> int | None:
    """The protocol's timestamp rule, the obvious way: integers, decimals (truncated) or strings
    of ASCII digits; in (0, 1e14); values below 1e11 are seconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        digits = value.strip()
        if not (digits.isascii() and digits.isdigit()):
            return None
        value = int(digits)
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    value = int(value)
    if not 0 < value < 10**14:
        return None
    return value * 1000 if value < 10**11 else value


TIMESTAMPS = [
    1_600_000_000_000,
    1_600_000_000,
    1_600_000_000.9,
    0.5,
    0,
    -5,
    10**14,
    10**14 - 1,
    99_999_999_999.99,
    100_000_000_000,
    "1600000000000",
    " 0001600000000\u3000",
    "-5",
    "1e12",
    "16.5",
    "",
    "٣٣٣",
    True,
    None,
    [1],
    {"a": 1},
    18446744073709551615,
    1.5e300,
]


@pytest.mark.parametrize("value", TIMESTAMPS, ids=repr)
def test_sql_timestamp_equals_reference(con, value):
    text = json.dumps(value)
    got = con.execute(
        "SELECT nq_timestamp_ms(?::JSON, coalesce(json_type(?::JSON), 'NULL'))", [text, text]
    ).fetchone()[0]
    assert got == reference_timestamp_ms(value)


LINES = [
    '{"a": 1}',
    '{"a": 1,}',
    '{"a": [1,]}',
    '{"a": NaN}',
    '{"a": -Infinity}',
    '{"a": 1e400}',
    '{"a": 1e300}',
    '{"a": ' + "9" * 400 + "}",
    '{"a": 12345678901234567890123}',
    '{"a": "NaN, ]"}',
    '{"a": "\\ud800"}',
    "\ufeff{}",
    "[1]",
    '"x"',
    "{",
    '{"a": 01}',
]


@pytest.mark.parametrize("line", LINES, ids=repr)
def test_the_json_check_is_strict_json(con, line):
    """A line is JSON to the builder exactly when orjson (strict JSON) parses it."""
    try:
        orjson.loads(line)
        strict = True
    except orjson.JSONDecodeError:
        strict = False
    got = con.execute(
        "SELECT try(json_type(?)) IS NOT NULL AND NOT (nq_maybe_lax_json(?) AND NOT nq_strict_json(?))",
        [line, line, line],
    ).fetchone()[0]
    assert got == strict


@pytest.mark.parametrize(
    "value",
    ["plain", "ctrl \x01 \x0b \x0e \x1b \x1f", "\u2028 é 😀 \x7f", 'q"\\/'],
    ids=repr,
)
@pytest.mark.parametrize(
    "rating", [4.0, 3.25, 1e20, 1e-7, 0.1, -2.5, 123456789.125, 0.0, 1e15, 1e16]
)
def test_review_json_bytes_are_orjsons(con, value, rating):
    got = con.execute(
        "SELECT nq_review_json(to_json({text: ?::VARCHAR, rating: ?::DOUBLE}), ?::DOUBLE)",
        [value, rating, rating],
    ).fetchone()[0]
    assert got.encode() == orjson.dumps({"text": value, "rating": rating})
    assert con.execute("SELECT nq_string_json(?)", [value]).fetchone()[0].encode() == orjson.dumps(
        value
    )
