"""Padding ragged token lists into tensors, grouping rows by length, and the columns a
collator adds for NextQuill rows (framework-free)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from dataset_formats.contract import (
    COUNTERFACTUAL_IDS,
    COUNTERFACTUAL_LABELS,
    COUNTERFACTUAL_MASK,
    HAS_COUNTERFACTUAL,
    IGNORE_INDEX,
    ROW_COLUMNS,
    TOKEN_EFFECTS,
)

from .equations import targets_per_row


def pad_sequences(
    sequences: Sequence[Sequence[int | float]],
    value: int | float,
    *,
    side: str = "right",
    multiple_of: int | None = None,
    min_length: int = 1,
    dtype: torch.dtype = torch.long,
) -> torch.Tensor:
    """Pad ragged lists to one ``[batch, length]`` tensor (length rounded up to ``multiple_of``)."""
    length = max([min_length, *(len(s) for s in sequences)])
    if multiple_of:
        length = math.ceil(length / multiple_of) * multiple_of
    out = torch.full((len(sequences), length), value, dtype=dtype)
    for i, seq in enumerate(sequences):
        if not len(seq):
            continue
        row = torch.as_tensor(list(seq), dtype=dtype)
        if side == "right":
            out[i, : len(seq)] = row
        else:
            out[i, length - len(seq) :] = row
    return out


def padded_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ragged token lists padded on ``side``."""
    ids = pad_sequences(sequences, pad_id, side=side)
    mask = pad_sequences([[1] * len(s) for s in sequences], 0, side=side)
    return ids, mask


def length_buckets(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches of ``batch_size``, longest rows first, so that padding is small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


class PairedBatchMixin:
    """Mixed into a seq2seq collator (Axolotl's, or transformers' for TRL): the base pads the
    with-history batch; this adds the counterfactual sequence and per-token theta_0 effects.

    Rows without a counterfactual prompt (an ordinary SFT dataset mixed into the recipe) get
    ``has_counterfactual = False``: the objective gives them plain cross-entropy (weight 1) and
    no second pass. theta_0 effects are padded with 0 to the longest target of the batch; the
    objective reads the first ``n_targets`` of each row, in the row-major order of the labels.
    The base needs ``tokenizer`` and ``pad_to_multiple_of`` attributes.
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
