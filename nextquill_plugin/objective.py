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
    TOKEN_EFFECTS,
)

from .equations import (
    NextQuillLoss,
    PreferenceRule,
    causal_effects,
    nextquill_loss,
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
from .settings import NextQuillSettings, WeightNormalization

# The per-micro-batch metrics a trainer logs (the Axolotl and the TRL trainer alike).
NEXTQUILL_METRICS = (
    "nextquill/normal_loss",
    "nextquill/causal_loss",
    "nextquill/mean_weight",
    "nextquill/preference_token_fraction",
)


@dataclass
class BatchLoss:
    """The loss of a micro-batch and what the trainer logs about it."""

    loss: NextQuillLoss
    weights: torch.Tensor  # [N] omega_t used
    preference_mask: torch.Tensor  # [N] tokens the rule marked preference-bearing (eq. 3)
    causal_token_mask: torch.Tensor  # [N] tokens of rows that have a counterfactual prompt
    n_tokens: int
    outputs: Any  # the with-history model outputs (hidden states, last-position logits)
    # What Ln and Lp were divided by, so that the trainer can log them per target token.
    normalizer: float = 1.0
    causal_normalizer: float = 1.0

    def per_token(self) -> tuple[float, float]:
        """(Ln, Lp) of this micro-batch per target token, whatever the normalisation."""
        tokens = max(self.n_tokens, 1)
        return (
            self.loss.normal.item() * self.normalizer / tokens,
            self.loss.causal.item() * self.causal_normalizer / tokens,
        )

    def metrics(self) -> dict[str, float]:
        """``NEXTQUILL_METRICS`` of this micro-batch: Ln and Lp per target token, the mean
        weight, and the share of paired tokens the rule marked preference-bearing (empty when
        the micro-batch has no target token)."""
        if self.n_tokens == 0:
            return {}
        normal, causal = self.per_token()
        paired = self.causal_token_mask
        preference_share = 0.0
        if bool(paired.any()):
            preference_share = self.preference_mask[paired].float().mean().item()
        values = (normal, causal, self.weights.mean().item(), preference_share)
        return dict(zip(NEXTQUILL_METRICS, values, strict=True))


def loss_normalizers(
    settings: NextQuillSettings,
    weights: TokenWeights,
    causal_token_mask: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None,
    micro_batches: int,
) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """(Ln's, Lp's) divisor. ``tokens``: the window's target tokens (this micro-batch's when the
    trainer gives none), so that the split into micro-batches changes nothing. ``weights``: this
    micro-batch's sum of Ln's weights and of Lp's weights (its token count when Lp is unweighted),
    times the micro-batches of the window, so that accumulating averages the micro-batches' losses,
    as the authors' code means to."""
    n_tokens = int(causal_token_mask.numel())
    if settings.weight_normalization == WeightNormalization.tokens:
        normalizer = num_items_in_batch if num_items_in_batch else max(n_tokens, 1)
        return normalizer, normalizer
    causal_weights = weights.weights[causal_token_mask]
    if not settings.weight_causal_loss:
        causal_weights = torch.ones_like(causal_weights)
    tiny = torch.finfo(torch.float32).tiny  # a micro-batch whose weights are all 0 adds 0
    return (
        weights.weights.sum().clamp_min(tiny) * micro_batches,
        causal_weights.sum().clamp_min(tiny) * micro_batches,
    )


@dataclass
class TokenWeights:
    """omega_t of a micro-batch's target tokens and which of them the rule marked."""

    weights: torch.Tensor  # [N] float32
    preference_mask: torch.Tensor  # [N] bool

    @classmethod
    def uniform(cls, n_tokens: int, device: torch.device) -> TokenWeights:
        """Every weight 1, no token marked (CausalOnly, ordinary rows, or before the rule)."""
        return cls(
            torch.ones(n_tokens, dtype=torch.float32, device=device),
            torch.zeros(n_tokens, dtype=torch.bool, device=device),
        )

    def apply_rule(self, rule: PreferenceRule, effects: torch.Tensor, tokens: torch.Tensor):
        """Give the ``tokens`` (a bool mask) the weights eq. 3 assigns to their ``effects``."""
        self.weights[tokens] = rule.weights(effects)
        self.preference_mask[tokens] = rule.mask(effects)


def flatten_row_values(padded: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` zero-padded per-row values -> ``[N]`` in row-major target order."""
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


@dataclass
class SplitBatch:
    """A collated batch taken apart: what the model gets, and NextQuill's own columns."""

    model_inputs: dict[str, Any]  # input_ids, attention_mask and any other model kwargs
    labels: torch.Tensor
    extras: dict[str, Any]  # contract.BATCH_COLUMNS (None where absent)
    has_counterfactual: torch.Tensor  # [B] bool

    @classmethod
    def of(cls, batch: dict[str, Any]) -> SplitBatch:
        inputs = dict(batch)
        extras = {key: inputs.pop(key, None) for key in BATCH_COLUMNS}
        inputs.pop("num_items_in_batch", None)
        labels = inputs.pop("labels")
        has_cf = extras[HAS_COUNTERFACTUAL]
        if has_cf is None:
            has_cf = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
        extras[HAS_COUNTERFACTUAL] = has_cf
        return cls(inputs, labels, extras, has_cf)


def theta0_weights(
    split: SplitBatch, settings: NextQuillSettings, causal_token_mask: torch.Tensor
) -> TokenWeights:
    """omega_t from the theta_0 effects the plugin attached to the rows (eq. 3 applied here, so
    that changing delta, lambda or epsilon needs no new pass), 1 for rows without them."""
    n_tokens = int(causal_token_mask.numel())
    weights = TokenWeights.uniform(n_tokens, causal_token_mask.device)
    padded = split.extras[TOKEN_EFFECTS]
    if not settings.weights_from_theta0 or padded is None:
        return weights
    effects = flatten_row_values(padded, targets_per_row(split.labels)).to(weights.weights.device)
    if effects.shape[0] != n_tokens:
        raise ValueError(
            f"NextQuill: {effects.shape[0]} theta_0 effects for {n_tokens} target tokens; "
            "the effects cache belongs to other data. Delete it or set nextquill_weight_cache_dir."
        )
    weights.apply_rule(
        PreferenceRule.from_settings(settings), effects[causal_token_mask], causal_token_mask
    )
    return weights


def current_model_effects(
    lm_head: nn.Module, hidden_with: torch.Tensor, hidden_without: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """Eq. 4 under the model being trained (the authors' weights), without gradient."""
    log_p_with = head_token_log_probs(lm_head, hidden_with, ids)
    log_p_without = head_token_log_probs(lm_head, hidden_without, ids)
    return causal_effects(log_p_with.exp(), log_p_without.exp())


def compute_batch_loss(
    model: nn.Module,
    batch: dict[str, Any],
    settings: NextQuillSettings,
    num_items_in_batch: int | torch.Tensor | None = None,
    micro_batches: int = 1,
) -> BatchLoss:
    """L = Ln + alpha * Lp for a collated batch (see ``NextQuillDataCollator``).

    ``num_items_in_batch`` is the number of target tokens of the whole gradient-accumulation
    window and ``micro_batches`` the number of micro-batches in it; what the summed losses are
    divided by follows ``settings.weight_normalization`` (``loss_normalizers``).
    """
    split = SplitBatch.of(batch)
    lm_head = resolve_lm_head(model)
    targets = target_positions(split.labels)
    token_ids = targets.token_ids
    causal_token_mask = split.has_counterfactual.to(token_ids.device)[targets.rows]
    all_paired = bool(causal_token_mask.all())
    paired_ids = token_ids if all_paired else token_ids[causal_token_mask]
    weights = theta0_weights(split, settings, causal_token_mask)

    causal_loss = settings.causal_loss_weight > 0  # the one place Lp is switched on or off
    current_weights = settings.weights_from_current_model
    needs_counterfactual = (causal_loss or current_weights) and bool(split.has_counterfactual.any())
    # The counterfactual pass runs first so that its backward runs last: autograd runs the
    # most recently created nodes first, and with the history pass's backward first its
    # checkpointed activations are freed as parameter gradients grow, as in plain SFT; in the
    # other order all gradients exist before the long pass's backward starts (measured at
    # Qwen2.5-0.5B's shapes with checkpointing: peak 1.02x of ContextSFT's instead of 1.15x).
    if needs_counterfactual:
        hidden_without = counterfactual_hidden_states(
            model, split.extras, paired_ids, causal_loss and settings.counterfactual_gradient
        )
    inputs = dict(split.model_inputs)
    hidden_with, _, outputs = target_hidden_states(
        model, inputs.pop("input_ids"), inputs.pop("attention_mask", None), split.labels, **inputs
    )
    gather_head_after_forward(model, lm_head)

    preference_component = None  # z_h - z_0; Lp's logits are W (z_h - z_0)
    if needs_counterfactual:
        paired_hidden = hidden_with if all_paired else hidden_with[causal_token_mask]
        if current_weights:
            effects = current_model_effects(lm_head, paired_hidden, hidden_without, paired_ids)
            weights.apply_rule(PreferenceRule.from_settings(settings), effects, causal_token_mask)
        if causal_loss:
            preference_component = paired_hidden - hidden_without

    loss, normalizer, causal_normalizer = weighted_loss(
        lm_head,
        hidden_with,
        token_ids,
        weights,
        preference_component,
        causal_token_mask,
        settings,
        num_items_in_batch,
        micro_batches,
    )
    return BatchLoss(
        loss,
        weights.weights,
        weights.preference_mask,
        causal_token_mask,
        int(token_ids.numel()),
        outputs,
        normalizer,
        causal_normalizer,
    )


def weighted_loss(
    lm_head: nn.Module,
    hidden_with: torch.Tensor,
    token_ids: torch.Tensor,
    weights: TokenWeights,
    preference_component: torch.Tensor | None,
    causal_token_mask: torch.Tensor,
    settings: NextQuillSettings,
    num_items_in_batch: int | torch.Tensor | None,
    micro_batches: int,
) -> tuple[NextQuillLoss, float, float]:
    """Ln + alpha * Lp (eq. 5-7) from the final hidden states at the target positions, with what
    Ln and Lp were divided by (``loss_normalizers``). The LM head is applied in chunks: no
    [N, V] logits are held."""
    normalizer, causal_normalizer = loss_normalizers(
        settings, weights, causal_token_mask, num_items_in_batch, micro_batches
    )
    loss = nextquill_loss(
        hidden_with,
        token_ids,
        weights.weights,
        preference_component=preference_component,
        causal_token_mask=causal_token_mask,
        alpha=settings.causal_loss_weight,
        weight_causal_loss=settings.weight_causal_loss,
        normalizer=normalizer,
        causal_normalizer=causal_normalizer,
        normal_cross_entropy=partial(head_cross_entropy_sum, lm_head),
        causal_cross_entropy=partial(head_cross_entropy_sum, lm_head, without_bias=True),
    )
    return loss, float(normalizer), float(causal_normalizer)


def trainer_batch_loss(
    trainer: Any, model: nn.Module, batch: dict[str, Any], num_items_in_batch: Any
) -> BatchLoss:
    """``compute_batch_loss`` as a transformers Trainer's ``compute_loss`` calls it (the Axolotl
    and the TRL trainer alike): the trainer's ``nextquill_settings``, and while training the
    micro-batches of its accumulation window (fewer in an epoch's last window), for the
    authors' normalisation."""
    micro_batches = getattr(trainer, "current_gradient_accumulation_steps", 1)
    return compute_batch_loss(
        model,
        batch,
        trainer.nextquill_settings,
        num_items_in_batch,
        micro_batches=micro_batches if model.training else 1,
    )
