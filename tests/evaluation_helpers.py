"""Recipes over both dataset types and a one-line `nextquill evaluate`, for the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

from nextquill_plugin.cli import main as nextquill

PLUGIN = ["nextquill_plugin.NextQuillPlugin"]
ROOT = Path(__file__).resolve().parents[1]
# Decoding and scoring small enough for a test: `evaluate` runs with these, and a test that
# starts its own process passes them too, so that its predictions equal `evaluate`'s.
QUICK_EVALUATION = ["--max-new-tokens", "16", "--bootstrap", "30", "--batch-size", "3"]
# The options of the one evaluation the tests share (conftest's ``untuned_run``).
UNTUNED_RUN = ["--name", "untuned", "--penalty-scope", "generated"]


def paired_rows_of(synthetic_rows: list[dict]) -> list[dict]:
    """The same users as `dataset_formats.paired` rows (query, history texts, response)."""
    return [
        {
            "id": f"{row['user_id']}-{i}",
            "query": f"Review {row['target']['item_title']}",
            "history": [h["text"] for h in row["history"][-3:]],
            "response": row["target"]["text"],
        }
        for i, row in enumerate(synthetic_rows)
    ]


def evaluate(recipe: Path, out: Path, *extra: str) -> dict:
    """`nextquill evaluate` with ``QUICK_EVALUATION`` (in this process); its metrics.json."""
    nextquill(["evaluate", str(recipe), "--out", str(out), *QUICK_EVALUATION, *extra])
    return json.loads((out / "metrics.json").read_text())
