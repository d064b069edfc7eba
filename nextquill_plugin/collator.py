"""Collator that pads the with-history batch, the counterfactual batch and the theta_0 effects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from axolotl.utils.collators.batching import DataCollatorForSeq2Seq

from dataset_formats.contract import (
    COUNTERFACTUAL_IDS,
    COUNTERFACTUAL_LABELS,
    COUNTERFACTUAL_MASK,
    HAS_COUNTERFACTUAL,
    IGNORE_INDEX,
    ROW_COLUMNS,
    TOKEN_EFFECTS,
)

from .batching import pad_sequences
from .equations import targets_per_row


@dataclass
class NextQuillDataCollator(DataCollatorForSeq2Seq):
    """Axolotl's seq2seq collator plus the counterfactual sequence and per-token theta_0 effects.

    Rows without a counterfactual prompt (an ordinary SFT dataset mixed into the recipe) get
    ``has_counterfactual = False``: the trainer gives them plain cross-entropy (weight 1) and
    no second pass. theta_0 effects are padded with 0 to the longest target of the batch; the
    objective reads the first ``n_targets`` of each row, in the row-major order of the labels.
    """

    def __call__(self, features: list[dict[str, Any]], return_tensors: str | None = None):
        features = [dict(f) for f in features]  # the dataset's rows must not be mutated
        extras = [{k: f.pop(k, None) for k in ROW_COLUMNS} for f in features]
        batch = super().__call__(features, return_tensors=return_tensors)
        if all(e[COUNTERFACTUAL_IDS] is None for e in extras) and all(
            e[TOKEN_EFFECTS] is None for e in extras
        ):
            return batch  # no NextQuill rows at all: an ordinary batch

        side = getattr(self.tokenizer, "padding_side", "right") or "right"
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        cf_ids = [e[COUNTERFACTUAL_IDS] or [] for e in extras]
        cf_labels = [e[COUNTERFACTUAL_LABELS] or [] for e in extras]
        multiple = self.pad_to_multiple_of
        batch[COUNTERFACTUAL_IDS] = pad_sequences(cf_ids, pad_id, side=side, multiple_of=multiple)
        batch[COUNTERFACTUAL_LABELS] = pad_sequences(
            cf_labels, IGNORE_INDEX, side=side, multiple_of=multiple
        )
        batch[COUNTERFACTUAL_MASK] = pad_sequences(
            [[1] * len(s) for s in cf_ids], 0, side=side, multiple_of=multiple
        )
        batch[HAS_COUNTERFACTUAL] = torch.tensor([len(s) > 0 for s in cf_ids], dtype=torch.bool)
        effects = [e[TOKEN_EFFECTS] for e in extras]
        if any(e is not None for e in effects):
            # Rows without effects (mixed-in SFT rows) are padded too; the objective gives their
            # tokens weight 1 whatever the padding says.
            n_targets = targets_per_row(batch["labels"]).tolist()
            batch[TOKEN_EFFECTS] = pad_sequences(
                [
                    e if e is not None else [0.0] * n
                    for e, n in zip(effects, n_targets, strict=True)
                ],
                0.0,
                dtype=torch.float32,
            )
        return batch
