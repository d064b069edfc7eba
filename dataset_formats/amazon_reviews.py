"""Axolotl dataset type ``dataset_formats.amazon_reviews``: one user row -> paired prompts.

A row (as written by ``nextquill-data build``) looks like::

    {"user_id": "U1",
     "target":  {"item_id", "item_title", "item_description", "rating", "title", "text", "timestamp"},
     "history": [ reviews with the same fields, oldest first ]}

The with-history prompt shows the K most recent (newest first) or the K most relevant (BM25)
history reviews; the counterfactual prompt replaces the whole history block by a placeholder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rank_bm25 import BM25Okapi

from .prompting import build_paired_example, shorten
from .settings import HistorySelection, PromptSettings
from .sources import data_source
from .strategy import NextQuillStrategy, require_plugin

REVIEW_FIELDS = ("item_title", "item_description", "rating", "title", "text")


def _rating(value: Any) -> str:
    try:
        return f"{float(value):.1f}"
    except (TypeError, ValueError):
        return str(value or "")


TEXT_FIELDS = ("item_title", "item_description", "title", "text")


def review_problem(review: dict[str, Any], where: str) -> str | None:
    """What is wrong with one review object's fields, or None."""
    for name in TEXT_FIELDS:
        value = review.get(name)
        if value is not None and not isinstance(value, str):
            return f"{where}.{name} must be text, got {type(value).__name__}"
    rating = review.get("rating")
    if rating is not None and not _is_rating(rating):
        return f"{where}.rating must be a number from 1 to 5, got {rating!r}"
    timestamp = review.get("timestamp")
    if timestamp is not None and (
        isinstance(timestamp, bool) or not isinstance(timestamp, int | float)
    ):
        return f"{where}.timestamp must be a number, got {type(timestamp).__name__}"
    return None


def _is_rating(value: Any) -> bool:
    """A star rating: a number (or numeric text, as some exports write it) from 1 to 5."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return False
    try:
        number = float(value)
    except ValueError:
        return False
    return 1 <= number <= 5


def select_history(
    history: Sequence[dict], target: dict, k: int, selection: HistorySelection
) -> list[dict]:
    """The K history reviews to show, most important first (newest first, or best BM25)."""
    newest_first = sorted(history, key=lambda r: r.get("timestamp") or 0, reverse=True)
    if selection != HistorySelection.bm25 or len(newest_first) <= k:
        return newest_first[:k]

    def words(review: dict) -> list[str]:
        return f"{review.get('item_title') or ''} {review.get('item_description') or ''}".lower().split()

    scores = BM25Okapi([words(r) or ["<empty>"] for r in newest_first]).get_scores(words(target))
    ranked = sorted(range(len(newest_first)), key=lambda i: (-scores[i], i))  # ties: newest first
    return [newest_first[i] for i in ranked[:k]]


class AmazonReviewsStrategy(NextQuillStrategy):
    """Tokenizes a user row into with-history and counterfactual prompts sharing the target."""

    dataset_type = "dataset_formats.amazon_reviews"

    def __init__(self, tokenizer, settings: PromptSettings, source: str | None = None):
        super().__init__(tokenizer, settings, source)
        self.labels = settings.labels

    @classmethod
    def row_problem(cls, row: dict[str, Any]) -> str | None:
        target = row.get("target")
        if not isinstance(target, dict):
            return (
                f"has no target review text (target must be a review object, got "
                f"{type(target).__name__}; rows come from `nextquill-data build`: user_id, "
                "target, history)"
            )
        if not isinstance(target.get("text"), str) or not target["text"].strip():
            return (
                "has no target review text (target.text must be non-empty text, got "
                f"{type(target.get('text')).__name__}; rows come from `nextquill-data build`: "
                "user_id, target, history)"
            )
        problem = review_problem(target, "target")
        if problem:
            return problem
        if "history" not in row:  # it would train as an ordinary row: no counterfactual at all
            return (
                "has no history key (a user row of `nextquill-data build` always has one; a user "
                "without past reviews has history: [])"
            )
        history = row["history"]
        if not isinstance(history, list):
            return f"history must be a list of reviews, got {type(history).__name__}"
        for index, review in enumerate(history):
            if not isinstance(review, dict):
                return f"history[{index}] must be a review object, got {type(review).__name__}"
            problem = review_problem(review, f"history[{index}]")
            if problem:
                return problem
        return None

    def _review_entry(self, index: int, review: dict):
        lab = self.labels

        def render(limit: int | None) -> str:
            return "\n".join(
                [
                    lab["review"].format(i=index),
                    f"{lab['review_item_title']}: {review.get('item_title') or ''}",
                    f"{lab['review_item_description']}: {shorten(review.get('item_description'), limit)}",
                    f"{lab['review_rating']}: {_rating(review.get('rating'))}",
                    f"{lab['review_title']}: {review.get('title') or ''}",
                    f"{lab['review_text']}: {review.get('text') or ''}",
                ]
            )

        return render

    def reference(self, row: dict[str, Any]) -> str:
        return row["target"]["text"]

    prompt_id_rule = "user_id/target item_id"

    def prompt_id(self, row: dict[str, Any], index: int) -> str:
        return f"{row.get('user_id')}/{(row.get('target') or {}).get('item_id') or index}"

    def paired_example(
        self, prompt: dict[str, Any], target_text: str, settings: PromptSettings
    ) -> dict[str, Any]:
        target = prompt["target"]
        lab = self.labels
        history = select_history(
            prompt.get("history") or [], target, self.settings.history_k, self.settings.selection
        )
        entries = [self._review_entry(i + 1, r) for i, r in enumerate(history)]

        def user_message(block: str, limit: int | None) -> str:
            return (
                f"{lab['item_title']}: {target.get('item_title') or ''}\n"
                f"{lab['item_description']}: {shorten(target.get('item_description'), limit)}\n"
                f"{lab['history']}:\n{block}\n\n"
                f"{lab['output_rating']}: {_rating(target.get('rating'))}\n"
                f"{lab['output_title']}: {target.get('title') or ''}"
            )

        return build_paired_example(
            self.renderer, settings, user_message, entries, target_text, "\n\n".join
        )


def load(tokenizer, cfg, ds_cfg: dict[str, Any] | None = None) -> AmazonReviewsStrategy:
    """Entry point Axolotl calls for ``type: dataset_formats.amazon_reviews``."""
    require_plugin(cfg, AmazonReviewsStrategy.dataset_type)
    return AmazonReviewsStrategy(tokenizer, PromptSettings.from_cfg(cfg), data_source(ds_cfg))


STRATEGY = (
    AmazonReviewsStrategy  # the class `nextquill_plugin` checks rows with (dataset_formats.checks)
)
