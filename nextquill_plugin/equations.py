"""NextQuill's math as pure functions of tensors (paper eq. 2-7); no Axolotl imports.

Conventions used throughout:
- ``labels`` are the usual causal-LM labels: ``-100`` on prompt and padding, the token id on
  target tokens. Position ``p`` of a sequence predicts ``labels[p + 1]``.
- The with-history and the counterfactual (history removed) sequences of a sample carry the
  *same* target tokens, so their k-th target positions correspond. Gathering target positions
  row-major (``nonzero`` order) therefore aligns the two passes token by token although their
  prompts differ in length.
- Everything per token is flattened to ``[N]`` (N = target tokens in the micro-batch) and logits
  to ``[N, vocab]``: no tensor ever has a vocabulary axis for prompt positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dataset_formats.contract import IGNORE_INDEX

from .settings import NextQuillSettings


@dataclass(frozen=True)
class TargetPositions:
    """Where the target tokens are predicted in a ``[batch, seq]`` batch."""

    rows: torch.Tensor  # [N] batch row of each target token
    positions: torch.Tensor  # [N] sequence position whose output predicts the token
    token_ids: torch.Tensor  # [N] the target token ids y_t


def target_positions(labels: torch.Tensor) -> TargetPositions:
    """Return the positions whose next token is a target, in row-major order."""
    next_labels = labels[:, 1:]
    rows, positions = (next_labels != IGNORE_INDEX).nonzero(as_tuple=True)
    return TargetPositions(rows, positions, next_labels[rows, positions])


def targets_per_row(labels: torch.Tensor) -> torch.Tensor:
    """Number of target tokens in each row (``[batch]``), counted as the loss counts them."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def token_log_probs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(y_t | ...) for each row of ``logits`` ``[N, V]`` and its token ``[N]``."""
    logits = logits.float()
    return logits.gather(1, token_ids[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)


def causal_effects(p_with_history: torch.Tensor, p_without_history: torch.Tensor) -> torch.Tensor:
    """Causal preference effect of the history on each target token (eq. 4): p(y|x,h) - p(y|x,0)."""
    return p_with_history - p_without_history


def preference_weights(
    effects: torch.Tensor, delta: float, high_weight: float, low_weight: float
) -> torch.Tensor:
    """Token weights omega_t (eq. 3): ``high_weight`` (lambda) where effect > delta, else epsilon."""
    high = torch.full_like(effects, high_weight, dtype=torch.float32)
    low = torch.full_like(effects, low_weight, dtype=torch.float32)
    return torch.where(effects > delta, high, low)


@dataclass(frozen=True)
class PreferenceRule:
    """Eq. 3 as one object: a target token is preference-bearing when its causal effect exceeds
    delta; its weight omega_t is then lambda (``high_weight``), else epsilon (``low_weight``).

    Built from the settings (``from_settings``), so that the three numbers travel together and
    every caller (training, the cache report, inspection, benchmarks) applies the same rule."""

    delta: float
    high_weight: float
    low_weight: float

    @classmethod
    def from_settings(cls, settings: NextQuillSettings | None = None) -> PreferenceRule:
        """The rule of ``settings`` (the defaults, i.e. the paper's, when None)."""
        settings = settings or NextQuillSettings()
        return cls(settings.delta, settings.high_weight, settings.low_weight)

    def mask(self, effects: Any) -> Any:
        """Which tokens are preference-bearing (effect > delta), for a tensor or an array."""
        return effects > self.delta

    def weights(self, effects: torch.Tensor) -> torch.Tensor:
        """omega_t of each token, float32."""
        return preference_weights(effects, self.delta, self.high_weight, self.low_weight)


def weighted_cross_entropy_sum(
    logits: torch.Tensor, token_ids: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """sum_t omega_t * CE(logits_t, y_t), in float32 (summed, not averaged: see ``nextquill_loss``)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0  # keeps the graph connected for empty micro-batches
    per_token = F.cross_entropy(logits.float(), token_ids, reduction="none")
    return (per_token * weights.detach().to(per_token.dtype)).sum()


# What the loss functions take per target token: logits ``[N, V]``, or final hidden states
# ``[N, H]`` when the cross-entropy function applies the LM head itself (``lm_head.py``).
LossInputs = torch.Tensor
# (inputs [N, ...], token ids [N], weights [N]) -> sum_t w_t * CE(logits_t, y_t)
CrossEntropySum = Callable[[LossInputs, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class NextQuillLoss:
    """The total loss and its parts, each already divided by the normaliser."""

    total: torch.Tensor  # L = Ln + alpha * Lp (eq. 7)
    normal: torch.Tensor  # Ln (eq. 5)
    causal: torch.Tensor  # Lp (eq. 6); 0 when it is off


def nextquill_loss(
    with_history: LossInputs,
    token_ids: torch.Tensor,
    weights: torch.Tensor,
    *,
    preference_component: LossInputs | None = None,
    causal_token_mask: torch.Tensor | None = None,
    alpha: float = 0.05,
    weight_causal_loss: bool = True,
    normalizer: float | torch.Tensor | None = None,
    causal_normalizer: float | torch.Tensor | None = None,
    normal_cross_entropy: CrossEntropySum = weighted_cross_entropy_sum,
    causal_cross_entropy: CrossEntropySum = weighted_cross_entropy_sum,
) -> NextQuillLoss:
    """NextQuill's objective L = Ln + alpha * Lp (eq. 5-7) on target tokens only.

    Args:
        with_history: ``[N, ...]`` what ``normal_cross_entropy`` scores: by default the logits
            f(x, h, y<t) at the target positions; ``objective.compute_batch_loss`` passes the
            final hidden states z_h with a function that applies the LM head in chunks.
        token_ids: ``[N]`` target tokens y_t.
        weights: ``[N]`` token weights omega_t (no gradient flows into them).
        preference_component: eq. 6's argument f(x, h, y<t) - f(x, 0, y<t) for the tokens
            selected by ``causal_token_mask`` (all N when the mask is None), in the same form as
            ``with_history`` (logits, or z_h - z_0 for a head-applying function: the head is
            affine, see ``lm_head.apply_lm_head_without_bias``). None: no Lp (NormOnly); the
            caller decides, this function does not look at alpha to switch it off.
        causal_token_mask: ``[N]`` bool, tokens of samples that have a counterfactual prompt;
            rows mixed in from ordinary SFT data have none and only contribute to Ln.
        alpha: weight of the causal preference loss.
        weight_causal_loss: True weights Lp by omega (eq. 6); False is the authors' unweighted Lp.
        normalizer: what the summed losses are divided by. The trainer passes the number of
            target tokens in the whole gradient-accumulation window (``num_items_in_batch``),
            so the result does not depend on how a batch is split into micro-batches.
            Defaults to N.
        causal_normalizer: what Lp's sum is divided by; defaults to ``normalizer``.
        normal_cross_entropy, causal_cross_entropy: ``(inputs, ids, weights) -> sum_t w_t CE``
            for Ln and Lp.
    """
    if normalizer is None:
        normalizer = max(int(token_ids.numel()), 1)
    normal = normal_cross_entropy(with_history, token_ids, weights) / normalizer

    if preference_component is None:
        causal = normal.new_zeros(())
    else:
        causal_ids, causal_weights = token_ids, weights
        if causal_token_mask is not None:  # [N] ids and weights only: a cheap copy
            causal_ids, causal_weights = token_ids[causal_token_mask], weights[causal_token_mask]
        if not weight_causal_loss:
            causal_weights = torch.ones_like(causal_weights)
        # eq. 6: the preference-driven component of the prediction is fitted to y_t directly.
        causal = causal_cross_entropy(preference_component, causal_ids, causal_weights)
        causal = causal / (normalizer if causal_normalizer is None else causal_normalizer)
    return NextQuillLoss(total=normal + alpha * causal, normal=normal, causal=causal)
