"""The one slow, obvious implementation of eq. 3-7 the fast code is tested against: explicit
loops over rows and target positions, full logits, softmax written out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nextquill_plugin.equations import IGNORE_INDEX
from nextquill_plugin.settings import NextQuillSettings


@dataclass
class ReferenceRow:
    """One sample: full logits of each pass (``[T, V]``) with its labels; a row without a
    counterfactual (ordinary SFT data) has ``logits_without=None``. ``weights`` are omega_t of
    its target tokens (ignored with the authors' current-model weights)."""

    logits_with: torch.Tensor
    labels_with: list[int]
    weights: list[float] | None = None
    logits_without: torch.Tensor | None = None
    labels_without: list[int] | None = None


def target_positions(labels: list[int]) -> list[int]:
    return [p for p in range(len(labels) - 1) if labels[p + 1] != IGNORE_INDEX]


def slow_loss(
    rows: list[ReferenceRow], settings: NextQuillSettings, normalizer: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Ln, Lp, L = Ln + alpha Lp), each divided by ``normalizer``."""
    ln = lp = torch.zeros(())
    for row in rows:
        with_positions = target_positions(row.labels_with)
        if row.logits_without is None:  # plain cross-entropy, weight 1, no Lp
            for p in with_positions:
                ln = ln - torch.log_softmax(row.logits_with[p], -1)[row.labels_with[p + 1]]
            continue
        without_positions = target_positions(row.labels_without)
        assert len(with_positions) == len(without_positions)
        for k, (pw, pc) in enumerate(zip(with_positions, without_positions, strict=True)):
            y = row.labels_with[pw + 1]
            assert y == row.labels_without[pc + 1]
            if settings.token_weighting and settings.weight_source == "current":
                with torch.no_grad():
                    p_with = torch.softmax(row.logits_with[pw], -1)[y]
                    p_without = torch.softmax(row.logits_without[pc], -1)[y]
                high = p_with - p_without > settings.delta
                w = settings.high_weight if high else settings.low_weight
            elif settings.token_weighting:
                w = row.weights[k]
            else:
                w = 1.0
            ln = ln + w * -torch.log_softmax(row.logits_with[pw], -1)[y]
            difference = row.logits_with[pw] - row.logits_without[pc]
            w_causal = w if settings.weight_causal_loss else 1.0
            lp = lp + w_causal * -torch.log_softmax(difference, -1)[y]
    ln, lp = ln / normalizer, lp / normalizer
    return ln, lp, ln + settings.causal_loss_weight * lp
