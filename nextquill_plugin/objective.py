"""One micro-batch of the NextQuill objective: the two passes, the weights, the loss.

Framework-free (a transformers model and a collated batch in, a loss out) so that the trainer is
thin glue and the whole step can be tested and reused without Axolotl.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from dataset_formats.contract import (
    BATCH_COLUMNS,
    COUNTERFACTUAL_IDS,
    COUNTERFACTUAL_LABELS,
    COUNTERFACTUAL_MASK,
    HAS_COUNTERFACTUAL,
    TOKEN_WEIGHTS,
)

from .equations import (
    NextQuillLoss,
    causal_effects,
    nextquill_loss,
    preference_weights,
    target_positions,
    targets_per_row,
)
from .lm_head import (
    gather_head_after_forward,
    head_cross_entropy_sum,
    head_token_log_probs,
    resolve_lm_head,
    target_hidden_states,
)
from .settings import NextQuillSettings, WeightSource


@dataclass
class BatchLoss:
    """The loss of a micro-batch and what the trainer logs about it."""

    loss: NextQuillLoss
    weights: torch.Tensor  # [N] omega_t used
    causal_token_mask: torch.Tensor  # [N] tokens of rows that have a counterfactual prompt
    n_tokens: int
    outputs: Any  # the with-history model outputs (hidden states, last-position logits)


def flatten_row_weights(padded: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` zero-padded per-row weights -> ``[N]`` in row-major target order."""
    valid = torch.arange(padded.shape[1], device=padded.device)[None, :] < counts[:, None]
    return padded[valid]


def counterfactual_hidden_states(
    model: nn.Module, batch: dict[str, Any], expected_ids: torch.Tensor, with_grad: bool
) -> torch.Tensor:
    """Final hidden states of the counterfactual prompts at their target positions."""
    has_cf = batch[HAS_COUNTERFACTUAL]
    with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
        hidden, targets, _ = target_hidden_states(
            model,
            batch[COUNTERFACTUAL_IDS][has_cf],
            batch[COUNTERFACTUAL_MASK][has_cf],
            batch[COUNTERFACTUAL_LABELS][has_cf],
        )
    if not torch.equal(targets.token_ids, expected_ids):
        raise ValueError(
            "NextQuill: the counterfactual prompt's target tokens differ from the with-history "
            "target tokens; a dataset type must give both prompts the same target."
        )
    return hidden


def compute_batch_loss(
    model: nn.Module,
    batch: dict[str, Any],
    settings: NextQuillSettings,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> BatchLoss:
    """L = Ln + alpha * Lp for a collated batch (see ``NextQuillDataCollator``).

    ``num_items_in_batch`` is the number of target tokens of the whole gradient-accumulation
    window; the summed losses are divided by it, so that gradients do not depend on how the
    window is split into micro-batches. None divides by this micro-batch's target tokens.
    """
    batch = dict(batch)
    extras = {key: batch.pop(key, None) for key in BATCH_COLUMNS}
    batch.pop("num_items_in_batch", None)
    labels = batch.pop("labels")
    lm_head = resolve_lm_head(model)
    targets = target_positions(labels)
    token_ids = targets.token_ids
    has_cf = extras[HAS_COUNTERFACTUAL]
    if has_cf is None:
        has_cf = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
    causal_token_mask = has_cf.to(token_ids.device)[targets.rows]
    all_paired = bool(causal_token_mask.all())

    weights = torch.ones_like(token_ids, dtype=torch.float32)
    if settings.token_weighting and extras[TOKEN_WEIGHTS] is not None:
        weights = flatten_row_weights(extras[TOKEN_WEIGHTS], targets_per_row(labels)).to(
            weights.device
        )
        if weights.shape != token_ids.shape:
            raise ValueError(
                f"NextQuill: {weights.shape[0]} token weights for {token_ids.shape[0]} target tokens; "
                "the weight cache belongs to other data. Delete it or set nextquill_weight_cache_dir."
            )

    current_weights = settings.token_weighting and settings.weight_source == WeightSource.current
    needs_counterfactual = (settings.causal_loss or current_weights) and bool(has_cf.any())
    # The counterfactual pass runs first so that its backward runs last: autograd runs the
    # most recently created nodes first, and with the history pass's backward first its
    # checkpointed activations are freed as parameter gradients grow, as in plain SFT; in the
    # other order all gradients exist before the long pass's backward starts (measured at
    # Qwen2.5-0.5B's shapes with checkpointing: peak 1.02x of ContextSFT's instead of 1.15x).
    if needs_counterfactual:
        paired_ids = token_ids if all_paired else token_ids[causal_token_mask]
        hidden_without = counterfactual_hidden_states(
            model,
            {**extras, HAS_COUNTERFACTUAL: has_cf},
            paired_ids,
            settings.causal_loss and settings.counterfactual_gradient,
        )
    hidden_with, _, outputs = target_hidden_states(
        model, batch.pop("input_ids"), batch.pop("attention_mask", None), labels, **batch
    )

    gather_head_after_forward(model, lm_head)
    hidden_difference = None  # z_h - z_0; Lp's logits are W (z_h - z_0)
    if needs_counterfactual:
        paired_hidden = hidden_with if all_paired else hidden_with[causal_token_mask]
        hidden_difference = paired_hidden - hidden_without
        if current_weights:  # the authors' variant: weights from the model being trained
            log_p_with = head_token_log_probs(lm_head, paired_hidden, paired_ids)
            log_p_without = head_token_log_probs(lm_head, hidden_without, paired_ids)
            effects = causal_effects(log_p_with.exp(), log_p_without.exp())
            weights[causal_token_mask] = preference_weights(
                effects, settings.delta, settings.high_weight, settings.low_weight
            )

    n_tokens = int(token_ids.numel())
    # Ln and Lp apply the LM head to final hidden states in chunks: no [N, V] logits held.
    loss = nextquill_loss(
        hidden_with,
        token_ids,
        weights,
        causal_preference_logits=hidden_difference if settings.causal_loss else None,
        causal_token_mask=causal_token_mask,
        alpha=settings.alpha if settings.causal_loss else 0.0,
        weight_causal_loss=settings.weight_causal_loss,
        normalizer=num_items_in_batch if num_items_in_batch else max(n_tokens, 1),
        normal_cross_entropy=partial(head_cross_entropy_sum, lm_head),
        causal_cross_entropy=partial(head_cross_entropy_sum, lm_head, without_bias=True),
    )
    return BatchLoss(loss, weights, causal_token_mask, n_tokens, outputs)
