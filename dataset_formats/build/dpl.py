"""Rows of the DPL release (the data the authors trained on) -> our user rows.

DPL (Qiu et al. 2025) ships rows ``{user_id, profile: [reviews], data: review}`` and item
metadata ``{asin, title, description}``; ``convert_dpl`` joins them into the
``dataset_formats.amazon_reviews`` schema (target, history oldest first).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from nextquill_common.jsonl import write_jsonl

from . import BuildError, iter_json_lines, join_description


def convert_dpl(rows_path: Path, meta_path: Path, out_path: Path) -> int:
    """DPL release rows (user_id, profile, data) + item meta (asin, title, description) -> our rows."""
    items = {}
    for _, raw in iter_json_lines(meta_path):
        obj = json.loads(raw)
        items[obj["asin"]] = obj

    def review(r: dict) -> dict:
        meta = items.get(r["asin"], {})
        return {
            "item_id": r["asin"],
            "item_title": meta.get("title") or "",
            "item_description": join_description(meta.get("description")) or "",
            "rating": r.get("rating"),
            "title": r.get("title") or "",
            "text": r.get("text") or "",
            "timestamp": r.get("timestamp"),
        }

    written = 0

    def user_rows() -> Iterator[dict]:
        nonlocal written
        for line_no, raw in iter_json_lines(rows_path):
            try:
                row = json.loads(raw)
                user_row = {
                    "user_id": row["user_id"],
                    "target": review(row["data"]),
                    "history": sorted(
                        (review(r) for r in row["profile"]), key=lambda r: r["timestamp"] or 0
                    ),
                }
            except (KeyError, TypeError, json.JSONDecodeError) as error:
                raise BuildError(f"{rows_path.name}:{line_no}: not a DPL row ({error})") from error
            written += 1
            yield user_row

    write_jsonl(out_path, user_rows())  # streamed; a bad row leaves no partial file
    return written
