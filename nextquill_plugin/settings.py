"""The objective's settings, each declared once (name, default, paper symbol, description).

Framework-free. The plugin derives from ``NextQuillSettings`` its pydantic recipe schema
(``args.ObjectiveArgs``), its training-arguments mixin and what it passes to the trainer; a test
keeps the README's key table in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SETTING_PREFIX = "nextquill_"  # recipe key of a setting: SETTING_PREFIX + field name

# Rows per forward pass of the theta_0 pass: the default of nextquill_weight_batch_size (not an
# objective setting: it changes the pass's memory, not its values).
WEIGHT_PASS_BATCH_SIZE = 4


class WeightSource(StrEnum):
    """Which model's causal effects decide the token weights."""

    initial = "initial"  # the paper (eq. 4): theta_0, computed once before training
    current = "current"  # the authors' code: the model being trained, detached, every step


class WeightNormalization(StrEnum):
    """What the summed, weighted token losses are divided by."""

    tokens = "tokens"  # the paper's eq. 5-6: the target tokens of the accumulation window
    weights = "weights"  # the authors' code: each micro-batch's sum of the weights


def setting(default: Any, symbol: str, description: str, **bounds: float) -> Any:
    """A field of ``NextQuillSettings``: its default, the paper's symbol, a description, and
    pydantic bounds (``ge``/``le``/``lt``) that the recipe schema enforces."""
    return field(default=default, metadata={"symbol": symbol, "description": description, **bounds})


@dataclass(frozen=True)
class NextQuillSettings:
    """The knobs of the objective, each declared once here.

    The recipe key of a field is ``nextquill_<name>``: the plugin's pydantic schema, its
    training-arguments mixin and the README's table are derived from these fields.
    """

    alpha: float = setting(0.05, "alpha", "Weight of Lp in L = Ln + alpha * Lp (eq. 7).", ge=0)
    delta: float = setting(
        0.05,
        "delta",
        "Effect threshold: a token is preference-bearing when p(y|x,h) - p(y|x) > delta (eq. 3).",
        ge=-1,
        lt=1,
    )
    high_weight: float = setting(
        0.9, "lambda", "omega_t of preference-bearing tokens (eq. 3).", ge=0, le=1
    )
    low_weight: float = setting(0.1, "epsilon", "omega_t of the other tokens (eq. 3).", ge=0, le=1)
    token_weighting: bool = setting(
        True, "omega", "False: every omega_t = 1 (the CausalOnly ablation)."
    )
    causal_loss: bool = setting(
        True, "Lp", "False: alpha = 0 and no counterfactual pass in training (NormOnly)."
    )
    weight_source: WeightSource = setting(
        WeightSource.initial,
        "theta_0",
        "initial: weights from theta_0, once (the paper); current: from the model being "
        "trained, every step (the authors' code).",
    )
    weight_causal_loss: bool = setting(
        True, "omega in eq. 6", "True: Lp weighted by omega (eq. 6); False: the authors' code."
    )
    weight_normalization: WeightNormalization = setting(
        WeightNormalization.tokens,
        "1/N in eq. 5-6",
        "tokens: Ln and Lp divided by the target tokens of the accumulation window (the paper); "
        "weights: each micro-batch's Ln divided by the sum of its weights and Lp by the sum of "
        "its Lp weights (a plain mean when unweighted), micro-batches averaged (the authors' "
        "code).",
    )
    counterfactual_gradient: bool = setting(
        True,
        "f(x,0) in eq. 6",
        "True: Lp's gradient flows through both passes (the paper); False (not in the paper): "
        "not through the counterfactual pass (the transformer on the no-history prompt; the "
        "shared LM head still learns from Lp), so the pass needs no backward.",
    )

    @property
    def causal_loss_weight(self) -> float:
        """alpha as the loss applies it: 0 when Lp is off (NormOnly, or alpha = 0), in which
        case training runs no counterfactual pass for Lp."""
        return self.alpha if self.causal_loss else 0.0

    @property
    def weights_from_theta0(self) -> bool:
        """Token weights come from the theta_0 pass before training (the paper)."""
        return self.token_weighting and self.weight_source == WeightSource.initial

    @property
    def weights_from_current_model(self) -> bool:
        """Token weights come from the model being trained, every step (the authors' code)."""
        return self.token_weighting and self.weight_source == WeightSource.current
