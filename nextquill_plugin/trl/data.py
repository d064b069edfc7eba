"""The TRL trainer's rows: tokenized by the dataset types (the Axolotl path's code and truncation
rules) and collated with the counterfactual columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from transformers import DataCollatorForSeq2Seq

from dataset_formats import strategy_class
from dataset_formats.contract import IGNORE_INDEX
from dataset_formats.settings import PromptSettings

from ..batching import PairedBatchMixin


@dataclass
class NextQuillSFTCollator(PairedBatchMixin, DataCollatorForSeq2Seq):
    """transformers' seq2seq collator (as Axolotl's: labels padded with ``IGNORE_INDEX``) plus
    the counterfactual sequence and per-token theta_0 effects (``batching.PairedBatchMixin``)."""

    label_pad_token_id: int = IGNORE_INDEX


def tokenized_rows(rows: Any, dataset_type: str, tokenizer, settings: PromptSettings, split: str):
    """``rows`` (a ``datasets.Dataset`` or a list of dicts, as the dataset type documents them)
    tokenized into NextQuill's columns; bad rows are skipped with a warning naming them, or stop
    the run under ``nextquill_strict_rows``, as in Axolotl."""
    if isinstance(rows, list):
        rows = Dataset.from_list(rows)
    if not isinstance(rows, Dataset):
        raise TypeError(
            f"NextQuillSFTTrainer: the {split} dataset must be a datasets.Dataset or a list of "
            f"{dataset_type} rows, got {type(rows).__name__}"
        )
    if len(rows) == 0:
        raise ValueError(f"NextQuillSFTTrainer: the {split} dataset has no rows")
    strategy = strategy_class(dataset_type)(tokenizer, settings)
    kept = rows.filter(strategy.filter_rows, desc=f"NextQuill: checking {split} rows")
    if len(kept) == 0:
        raise ValueError(
            f"NextQuillSFTTrainer: none of the {len(rows)} {split} rows is a valid {dataset_type} "
            "row (the warnings above name what is wrong; is nextquill_dataset_type right?)"
        )
    return kept.map(
        strategy.tokenize_prompt,
        remove_columns=kept.column_names,
        desc=f"NextQuill: tokenizing {split} rows",
    )
