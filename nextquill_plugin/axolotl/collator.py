"""Axolotl's collator with NextQuill's counterfactual batch and theta_0 effects."""

from __future__ import annotations

from dataclasses import dataclass

from axolotl.utils.collators.batching import DataCollatorForSeq2Seq

from ..batching import PairedBatchMixin


@dataclass
class NextQuillDataCollator(PairedBatchMixin, DataCollatorForSeq2Seq):
    """Axolotl's seq2seq collator plus the counterfactual sequence and per-token theta_0 effects
    (``batching.PairedBatchMixin``)."""
