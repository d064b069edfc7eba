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
from dataclasses import replace
from typing import Any

from axolotl.prompt_tokenizers import PromptTokenizingStrategy

from .contract import COUNTERFACTUAL_IDS, HISTORY_KEPT, TRUNCATION
from .prompting import PromptRenderer, build_paired_example, shorten
from .settings import HistorySelection, PromptSettings

REVIEW_FIELDS = ("item_title", "item_description", "rating", "title", "text")


def _rating(value: Any) -> str:
    try:
        return f"{float(value):.1f}"
    except (TypeError, ValueError):
        return str(value or "")


def select_history(
    history: Sequence[dict], target: dict, k: int, selection: HistorySelection
) -> list[dict]:
    """The K history reviews to show, most important first (newest first, or best BM25)."""
    newest_first = sorted(history, key=lambda r: r.get("timestamp") or 0, reverse=True)
    if selection != HistorySelection.bm25 or len(newest_first) <= k:
        return newest_first[:k]
    from rank_bm25 import BM25Okapi

    def words(review: dict) -> list[str]:
        return f"{review.get('item_title') or ''} {review.get('item_description') or ''}".lower().split()

    scores = BM25Okapi([words(r) or ["<empty>"] for r in newest_first]).get_scores(words(target))
    ranked = sorted(range(len(newest_first)), key=lambda i: (-scores[i], i))  # ties: newest first
    return [newest_first[i] for i in ranked[:k]]


class AmazonReviewsStrategy(PromptTokenizingStrategy):
    """Tokenizes a user row into with-history and counterfactual prompts sharing the target."""

    def __init__(self, tokenizer, settings: PromptSettings):
        super().__init__(None, tokenizer, train_on_inputs=False, sequence_len=settings.sequence_len)
        self.settings = settings
        self.renderer = PromptRenderer(tokenizer)
        self.labels = settings.labels

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

    def tokenize_prompt(self, prompt: dict[str, Any]) -> dict[str, Any]:
        return self._paired(prompt, self._target(prompt)["text"], self.settings)

    def generation_prompts(self, row: dict[str, Any], max_new_tokens: int) -> dict[str, Any]:
        """Prompt token ids for generating the target review: with history and counterfactual.

        Built by the same code and truncation rules as training, with room for
        ``max_new_tokens`` instead of the reference (which must not shape the prompt).
        """
        self._target(row)
        settings = replace(
            self.settings,
            sequence_len=self.settings.sequence_len - max_new_tokens + 1,
            emit_counterfactual=True,
        )
        paired = self._paired(row, "", settings)  # target = EOS only
        prompt = paired["input_ids"][:-1]
        counterfactual = paired[COUNTERFACTUAL_IDS][:-1] if paired[COUNTERFACTUAL_IDS] else prompt
        return {
            "prompt_ids": prompt,
            "counterfactual_prompt_ids": counterfactual,
            "history_kept": paired[HISTORY_KEPT],
            "truncation": paired[TRUNCATION],
        }

    @staticmethod
    def _target(prompt: dict[str, Any]) -> dict[str, Any]:
        target = prompt.get("target")
        if not isinstance(target, dict) or not (target.get("text") or "").strip():
            raise ValueError(
                f"amazon_reviews row of user {prompt.get('user_id')!r} has no target review text; "
                "rows must come from `nextquill-data build` (fields: user_id, target, history)."
            )
        return target

    def _paired(
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
    return AmazonReviewsStrategy(tokenizer, PromptSettings.from_cfg(cfg))
