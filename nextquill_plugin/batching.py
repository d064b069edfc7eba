"""Padding ragged token lists into tensors and grouping rows by length (framework-free)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch


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
