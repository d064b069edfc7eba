"""Forward passes that produce logits at target positions only (transformers-level, no Axolotl).

The model is called with ``output_hidden_states=True, logits_to_keep=1`` (as Axolotl's KD
trainer does) so that it does not build ``[batch, seq, vocab]`` logits; we apply the LM head
ourselves to the final hidden states of the target positions. With a 4096-token history and a
150k vocabulary that is the difference between ~2.4 GB and ~150 MB of float32 logits per row
of 256 target tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .causal import TargetPositions, target_positions


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed-engine ``.module`` wrappers (PEFT wrappers are kept)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def resolve_lm_head(model: nn.Module) -> nn.Module:
    """The output projection of a (possibly PEFT- or DeepSpeed-wrapped) causal LM."""
    base = unwrap_model(model)
    if hasattr(base, "get_base_model"):  # PeftModel
        base = base.get_base_model()
    if hasattr(base, "language_model") and hasattr(base.language_model, "lm_head"):
        return base.language_model.lm_head
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        raise AttributeError(f"could not find the LM head of {type(base).__name__}")
    return head


def target_hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    **model_kwargs: Any,
) -> tuple[torch.Tensor, TargetPositions, Any]:
    """Run ``model``; return ``([N, H] final hidden states at target positions, positions, outputs)``."""
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        logits_to_keep=1,
        use_cache=False,
        return_dict=True,
        **model_kwargs,
    )
    hidden_states = getattr(outputs, "hidden_states", None)
    if not hidden_states:
        raise RuntimeError(f"{type(model).__name__}.forward did not return hidden_states")
    targets = target_positions(labels)
    # hidden_states[-1] is the final (normed) hidden state in transformers >= 5.
    return hidden_states[-1][targets.rows, targets.positions], targets, outputs


def target_logits(
    model: nn.Module,
    lm_head: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    **model_kwargs: Any,
) -> tuple[torch.Tensor, TargetPositions, Any]:
    """Run ``model`` and return ``([N, V] logits at target positions, positions, raw outputs)``."""
    hidden, targets, outputs = target_hidden_states(
        model, input_ids, attention_mask, labels, **model_kwargs
    )
    return apply_lm_head(lm_head, hidden), targets, outputs


def apply_lm_head(lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``[N, H]`` hidden states -> ``[N, V]`` logits, in the head's dtype."""
    return lm_head(hidden.to(lm_head.weight.dtype))


def preference_logits(
    lm_head: nn.Module, hidden_with_history: torch.Tensor, hidden_without_history: torch.Tensor
) -> torch.Tensor:
    """f(x, h, y<t) - f(x, 0, y<t) (eq. 6's argument) as one LM-head product.

    The head is affine (W z + b), so the difference of two logit rows is W (z_h - z_0): one
    ``[M, H] x [H, V]`` product and no ``[M, V]`` subtraction, and one ``[M, V]`` tensor less
    alive, instead of two products and a difference. The head is still called as a module, so
    that PEFT adapters and DeepSpeed hooks on it take part; its bias, counted once by the call
    and cancelled in the difference, is subtracted. With LoRA dropout on the head the noise is
    drawn once for the difference instead of once per pass (same expectation).
    """
    logits = apply_lm_head(lm_head, hidden_with_history - hidden_without_history)
    bias = getattr(lm_head, "bias", None)
    return logits - bias if isinstance(bias, torch.Tensor) else logits
