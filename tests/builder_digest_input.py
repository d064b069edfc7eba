"""A generated raw input for the builder's digest test: 20k synthetic reviews plus deterministic
edits that exercise every path of stage 1 (bad lines of each kind, Unicode whitespace, control
characters, timestamps in seconds and as strings, odd ratings, descriptions as strings and
lists) and of stage 2 (duplicate items and texts per user).

The digest of the builder's output on it is stored in tests/test_builder.py; it was taken from
the Python stage-1 builder, so that the DuckDB rewrite cannot drift from it.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from dataset_formats.build.synthetic import synthetic_raw_amazon

ODD_TEXTS = [
    "  Tabs\tand\nnewlines\r\n and\u3000ideographic\xa0spaces\u2028line\u2029para\x1cfs\x1f  ",
    'Quotes "inside" and back\\slashes \\u0041 and </script> <b>&amp;</b>',
    "Control \x01 and \x1b escape and \x7f delete and \x0e shift",
    "Accents: café, naïve, Ærøskøbing; CJK 書評; emoji 😀👍🏽; combining e\u0301",
]


ODD_ID_ENDINGS = ["\x1b", "é", '"q"', "\\", "\u2028"]


def _edit_review(rng: random.Random, review: dict, index: int) -> dict:
    """Change one review in one of the ways stage 1 treats specially (kept or dropped)."""
    kind = index % 12
    if kind == 0:
        review["text"] = rng.choice(ODD_TEXTS) + " " + review["text"]
    elif kind == 1:
        review["timestamp"] = review["timestamp"] // 1000  # seconds
    elif kind == 2:
        review["timestamp"] = str(review["timestamp"])
    elif kind == 3:
        review["timestamp"] = review["timestamp"] + 0.75
        if index % 24 == 3:  # JSON text that needs the strict check (but passes it)
            review["text"] += " NaN, Infinity, 12345678901234567890123 and 1e+300, ]"
    elif kind == 4:
        review["rating"] = int(review["rating"])
        if index % 24 == 4:
            review["timestamp"] = f" 000{review['timestamp']}\u3000"
    elif kind == 5:
        review["rating"] = rng.choice([3.25, 1e20, 1e-7, 0.1, -2.5, 123456789.125])
    elif kind == 6:
        review["title"] = rng.choice(ODD_TEXTS)
    elif kind == 7 and index % 24 == 7:
        review["text"] = review["text"][:150]  # short once cleaned
    if review["user_id"].endswith("3"):  # every review of some users: odd characters in the id
        review["user_id"] += ODD_ID_ENDINGS[int(review["user_id"][-2]) % len(ODD_ID_ENDINGS)]
    return review


BAD_REVIEW_LINES = [
    b"",
    b"   \t ",
    b'{"user_id": "\xff\xfe"}',
    b'{"user_id": "X", "parent_asin": ',
    b"[1, 2, 3]",
    b'"just a string"',
    b"null",
    b'{"parent_asin": "b0-B000001", "rating": 4.0, "title": "t", "text": "x", "timestamp": 1}',
    b'{"user_id": "u", "parent_asin": null, "rating": 4.0, "title": "t", "text": "x", "timestamp": 1}',
    b'{"user_id": "u", "parent_asin": "p", "title": "t", "text": "x", "timestamp": 1}',
    b'{"user_id": 17, "parent_asin": "p", "rating": 4.0, "title": "t", "text": "x", "timestamp": 1}',
    b'{"user_id": "u", "parent_asin": "p", "rating": true, "title": "t", "text": "x", "timestamp": 1}',
    b'{"user_id": "u", "parent_asin": "p", "rating": "4", "title": "t", "text": "x", "timestamp": 1}',
    b'{"user_id": "u", "parent_asin": "p", "rating": 4, "title": "t", "text": "x", "timestamp": true}',
    b'{"user_id": "u", "parent_asin": "p", "rating": 4, "title": "t", "text": "x", "timestamp": -5}',
    b'{"user_id": "u", "parent_asin": "p", "rating": 4, "title": "t", "text": "x", "timestamp": 1e15}',
    b'{"user_id": "u", "parent_asin": "p", "rating": 4, "title": "t", "text": "x", "timestamp": "soon"}',
    b'{"user_id": "u", "parent_asin": "p", "rating": 4, "title": 5, "text": "x", "timestamp": 1}',
    b'{"user_id": "u", "parent_asin": "p", "rating": 4, "title": "t", "text": ["x"], "timestamp": 1}',
    b'{"user_id": "u", "parent_asin": "p", "rating": 4, "title": "t", "text": "x", "timestamp": 1',
    # Lax JSON that DuckDB's parser accepts and strict JSON (orjson) does not:
    b'{"user_id": "u", "parent_asin": "p", "rating": 4, "title": "t", "text": "x", "timestamp": 1,}',
    b'{"user_id": "u", "parent_asin": "p", "rating": NaN, "title": "t", "text": "x", "timestamp": 1}',
    b'{"user_id": "u", "parent_asin": "p", "rating": -Infinity, "title": "t", "text": "x"}',
    b'{"user_id": "u", "parent_asin": "p", "rating": 1e400, "title": "t", "text": "x"}',
    b'{"user_id": "u", "parent_asin": "p", "rating": 4, "images": [1,], "text": "x"}',
    b'{"user_id": "u", "rating": 4, "helpful_vote": ' + b"9" * 400 + b"}",
    b"\xef\xbb\xbf{}",  # a byte-order mark
    b'{"user_id": "u", "title": "\\ud800"}',  # a lone surrogate
]

BAD_ITEM_LINES = [
    b"",
    b"{not json}",
    b'{"parent_asin": 5, "title": "t", "categories": [], "rating_number": 1, "description": "d"}',
    b'{"parent_asin": "z1", "title": ["t"], "categories": [], "rating_number": 1, "description": "d"}',
    b'{"parent_asin": "z2", "title": "t", "categories": [], "rating_number": 1, "description": [1]}',
    b'{"parent_asin": "z3", "title": "t", "categories": [], "rating_number": 1, "description": {}}',
    b'{"parent_asin": "z4", "title": "t", "rating_number": 1, "description": "d"}',
    b'{"parent_asin": "z5", "title": "t", "categories": [], "description": "d"}',
]


def _edit_item(rng: random.Random, item: dict, index: int) -> dict:
    kind = index % 6
    if kind == 0:
        item["description"] = " ".join(item["description"][1:]) + "\u3000 \t"  # a string
    elif kind == 1:
        item["description"] = ["  PRODUCT DESCRIPTION  ", "", "  ", *item["description"][1:]]
    elif kind == 2:
        item["title"] = rng.choice(ODD_TEXTS)
    elif kind == 3 and index % 12 == 3:
        item["description"] = item["description"][:1] + ["x" * 2100]  # too long
    return item


def write_digest_input(folder: Path, n_reviews: int = 20_000) -> tuple[Path, Path, Path]:
    """Two review files (one gzipped) and one metadata file; returns their paths."""
    rng = random.Random(2026)
    n_users = n_reviews // 40
    reviews, meta = synthetic_raw_amazon(n_users, 40, 24, seed=3)
    review_lines = []
    for index, review in enumerate(reviews):
        review_lines.append(
            json.dumps(_edit_review(rng, review, index), ensure_ascii=index % 2 == 0).encode()
        )
    # Per-user duplicates: the same item again later, the same text on another item.
    for index in range(0, len(reviews), 97):
        again = dict(reviews[index], timestamp=int(reviews[index]["timestamp"] or 0) + 5)
        review_lines.append(json.dumps(again).encode())
        copy = dict(reviews[index], parent_asin=reviews[index + 1]["parent_asin"])
        review_lines.append(json.dumps(copy).encode())
    for position, line in enumerate(BAD_REVIEW_LINES):  # in both files
        review_lines.insert(37 * position + 5, line)
        review_lines.insert(len(review_lines) - 41 * position - 3, line)
    for index in range(30):  # users with too few reviews (k-core)
        review_lines.insert(
            101 * index, json.dumps(dict(reviews[index], user_id=f"few{index % 7}")).encode()
        )
    item_lines = [
        json.dumps(_edit_item(rng, item, index), ensure_ascii=False).encode()
        for index, item in enumerate(meta)
    ]
    item_lines.append(item_lines[3])  # a duplicate record of an item
    for position, line in enumerate(BAD_ITEM_LINES):
        item_lines.insert(11 * position + 2, line)
    folder.mkdir(parents=True, exist_ok=True)
    half = len(review_lines) // 2
    first, second, items = (
        folder / "reviews_a.jsonl",
        folder / "reviews_b.jsonl.gz",
        folder / "meta.jsonl",
    )
    first.write_bytes(b"\n".join(review_lines[:half]) + b"\n")
    with gzip.GzipFile(second, "wb", mtime=0) as handle:
        handle.write(b"\r\n".join(review_lines[half:]))  # CRLF, no final newline
    items.write_bytes(b"\n".join(item_lines) + b"\n")
    return first, second, items
