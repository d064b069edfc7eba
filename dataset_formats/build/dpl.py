"""Rows of the DPL release (the data the authors trained on) -> our user rows.

DPL (Qiu et al. 2025) ships rows ``{user_id, profile: [reviews], data: review}`` and item
metadata ``{asin, title, description}``; ``convert_dpl`` joins them into the
``dataset_formats.amazon_reviews`` schema (target, history oldest first).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nextquill_common.jsonl import write_jsonl

from . import BuildError, iter_json_lines, join_description


@dataclass
class Converted:
    """What ``convert_dpl`` wrote: rows, and the reviews whose item the metadata lacks."""

    rows: int
    reviews: int
    unmatched: int
    repeated_items: int = 0  # metadata lines repeating an asin (the first is kept)
    target_in_history: int = 0  # profile entries that were the row's target review (dropped)
    without_history: int = 0  # rows whose profile held nothing else


def non_blank_lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """``iter_json_lines`` without blank lines (a line that is not UTF-8 is None: kept, so that
    its parse names it)."""
    for line_no, raw in iter_json_lines(path):
        if raw is None or raw.strip():
            yield line_no, raw


def read_dpl_items(meta_path: Path) -> tuple[dict[str, dict], int]:
    """(asin -> item metadata, lines repeating an asin); a blank line is skipped, and of an
    asin given twice the first is kept, as ``build`` does. A line that is not DPL item metadata
    stops the conversion."""
    items: dict[str, dict] = {}
    repeated = 0
    for line_no, raw in non_blank_lines(meta_path):
        try:
            item = json.loads(raw)
            if item["asin"] in items:
                repeated += 1
                continue
            items[item["asin"]] = item
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            reason = f"no {error}" if isinstance(error, KeyError) else str(error)
            raise BuildError(
                f"{meta_path.name}:{line_no}: not DPL item metadata ({reason})"
            ) from error
    return items, repeated


def convert_dpl(rows_path: Path, meta_path: Path, out_path: Path) -> Converted:
    """DPL release rows (user_id, profile, data) + item meta (asin, title, description) -> our
    rows. A review whose item the metadata lacks keeps empty item texts; when no review's item
    is there, the files do not belong together and nothing is written."""
    items, repeated = read_dpl_items(meta_path)
    converted = Converted(rows=0, reviews=0, unmatched=0, repeated_items=repeated)

    def review(r: dict) -> dict:
        converted.reviews += 1
        meta = items.get(r["asin"])
        if meta is None:
            converted.unmatched += 1
            meta = {}
        return {
            "item_id": r["asin"],
            "item_title": meta.get("title") or "",
            "item_description": join_description(meta.get("description")) or "",
            "rating": r.get("rating"),
            "title": r.get("title") or "",
            "text": r.get("text") or "",
            "timestamp": r.get("timestamp"),
        }

    def user_rows() -> Iterator[dict]:
        for line_no, raw in non_blank_lines(rows_path):
            try:
                row = json.loads(raw)
                target = review(row["data"])
                profile = [review(r) for r in row["profile"]]
            except (KeyError, TypeError, json.JSONDecodeError) as error:
                raise BuildError(f"{rows_path.name}:{line_no}: not a DPL row ({error})") from error
            # the target itself in the history would put the answer into the prompt
            history = [
                h
                for h in profile
                if (h["item_id"], h["text"]) != (target["item_id"], target["text"])
            ]
            converted.target_in_history += len(profile) - len(history)
            converted.without_history += not history
            user_row = {
                "user_id": row["user_id"],
                "target": target,
                "history": sorted(history, key=lambda r: r["timestamp"] or 0),
            }
            converted.rows += 1
            yield user_row
        if converted.reviews and converted.unmatched == converted.reviews:
            raise BuildError(
                f"none of the {converted.reviews} reviews in {rows_path.name} names an item of "
                f"{meta_path.name} ({len(items)} items): is --meta the metadata of these rows?"
            )

    write_jsonl(out_path, user_rows())  # streamed; a bad row leaves no partial file
    return converted
