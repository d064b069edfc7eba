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
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from .equations import (
    TargetPositions,
    target_positions,
    token_log_probs,
    weighted_cross_entropy_sum,
)

# The chunked head losses build at most this many logits at a time (64 MiB of float32), so the
# rows per chunk shrink as the vocabulary grows: ~110 rows at 151k, ~520 at 32k.
HEAD_CHUNK_VALUES = 2**24


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed-engine ``.module`` wrappers (PEFT wrappers are kept)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


# Config fields under which transformers models change the logits after ``lm_head(hidden)``
# (Gemma 2/3 soft-capping, Cohere's logit_scale, Granite's and MiniCPM3's logits_scaling,
# Falcon-H1's lm_head_multiplier), with the value at which they do nothing.
LOGIT_TRANSFORMS: dict[str, float | None] = {
    "final_logit_softcapping": None,
    "logit_scale": 1.0,
    "logits_scaling": 1.0,
    "lm_head_multiplier": 1.0,
}


def check_plain_lm_head(config: Any) -> None:
    """Raise when the model's logits are not ``lm_head(last hidden state)``.

    Our target-only passes apply the LM head themselves, so a model that scales or soft-caps
    its logits would train on logits it never produces; say so instead of training silently.
    """
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for cfg in configs:
        for field, neutral in LOGIT_TRANSFORMS.items():
            value = getattr(cfg, field, None)
            if value is not None and value != neutral and not isinstance(value, bool):
                raise NotImplementedError(
                    f"NextQuill: this model's config sets {field}={value!r}, so its logits are "
                    "not lm_head(last hidden state). NextQuill applies the LM head itself at "
                    "target positions and does not support such models yet (see the README's "
                    "known limitations)."
                )


def resolve_lm_head(model: nn.Module) -> nn.Module:
    """The output projection of a (possibly PEFT- or DeepSpeed-wrapped) causal LM.

    Raises NotImplementedError for models that transform their logits after the head."""
    base = unwrap_model(model)
    if hasattr(base, "get_base_model"):  # PeftModel
        base = base.get_base_model()
    if getattr(base, "config", None) is not None:
        check_plain_lm_head(base.config)
    if hasattr(base, "language_model") and hasattr(base.language_model, "lm_head"):
        return base.language_model.lm_head
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        raise AttributeError(f"could not find the LM head of {type(base).__name__}")
    return head


def gather_head_after_forward(model: nn.Module, lm_head: nn.Module) -> None:
    """Gather the LM head's FSDP2 shards again when the model's forward has freed them.

    With ``reshard_after_forward`` (accelerate's FSDP2 default) a module frees its gathered
    parameters when its forward returns, and our target-only head runs after the forward.
    Unsharding the innermost FSDP module that holds the head keeps it whole until that
    module's post-backward, which reduce-scatters its gradient and reshards it as usual."""
    if not isinstance(lm_head.weight, DTensor):
        return
    from torch.distributed.fsdp import FSDPModule  # only under FSDP2 (DTensor weights)

    owners = [
        module
        for module in model.modules()
        if isinstance(module, FSDPModule) and any(sub is lm_head for sub in module.modules())
    ]
    if owners:
        owners[-1].unshard()


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


def apply_lm_head(lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``[N, H]`` hidden states -> ``[N, V]`` logits, in the head's dtype."""
    return lm_head(hidden.to(lm_head.weight.dtype))


def apply_lm_head_without_bias(lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """W z: the head called as a module (PEFT adapters and DeepSpeed hooks take part), minus its bias.

    Lp's logits f(x, h, y<t) - f(x, 0, y<t) (eq. 6's argument) are this applied to
    z_h - z_0: the head is affine (W z + b), so the difference of two logit rows is
    W (z_h - z_0), one ``[M, H] x [H, V]`` product instead of two and a difference. The bias,
    counted once by the call and cancelled in the difference, is taken off. With LoRA dropout on
    the head the noise is drawn once for the difference instead of once per pass (same
    expectation).
    """
    logits = apply_lm_head(lm_head, hidden)
    bias = getattr(lm_head, "bias", None)
    return logits - bias if isinstance(bias, torch.Tensor) else logits


def head_chunk_rows(lm_head: nn.Module) -> int:
    """Rows per chunk of the chunked head losses for this head's vocabulary."""
    # out_features survives ZeRO-3 partitioning (the weight's own shape does not) and PEFT.
    vocab = getattr(lm_head, "out_features", None) or lm_head.weight.shape[0]
    return max(1, HEAD_CHUNK_VALUES // max(int(vocab), 1))


def head_cross_entropy_sum(
    lm_head: nn.Module,
    hidden: torch.Tensor,
    token_ids: torch.Tensor,
    weights: torch.Tensor,
    *,
    without_bias: bool = False,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """sum_t w_t * CE(lm_head(z_t), y_t) over ``[N, H]`` hidden states, never holding ``[N, V]``.

    The head and the cross-entropy run on chunks of rows. With autograd on and more than one
    chunk, each chunk is checkpointed: only its hidden rows are kept and its logits are rebuilt
    in the backward pass. The cost is one more head product; the gain is that the logits and
    log-softmax alive at once are one chunk's, not all N rows' (twice over in NextQuill: Ln and
    Lp), which at a 151k vocabulary is most of a checkpointed step's peak memory. ``without_bias`` drops the
    head's bias (for Lp's W (z_h - z_0), see ``apply_lm_head_without_bias``).
    """
    project = apply_lm_head_without_bias if without_bias else apply_lm_head

    def chunk_loss(rows: torch.Tensor, ids: torch.Tensor, row_weights: torch.Tensor):
        return weighted_cross_entropy_sum(project(lm_head, rows), ids, row_weights)

    if hidden.shape[0] == 0:
        return chunk_loss(hidden, token_ids, weights)  # an empty sum still joins the graph
    rows = chunk_rows or head_chunk_rows(lm_head)
    # Logits that fit in one chunk are small: recomputing them would cost time and save little.
    recompute = torch.is_grad_enabled() and hidden.shape[0] > rows
    total = None
    for start in range(0, hidden.shape[0], rows):
        chunk = (
            hidden[start : start + rows],
            token_ids[start : start + rows],
            weights[start : start + rows],
        )
        if recompute:
            part = checkpoint(chunk_loss, *chunk, use_reentrant=False)
        else:
            part = chunk_loss(*chunk)
        total = part if total is None else total + part
    return total


@torch.no_grad()
def head_token_log_probs(
    lm_head: nn.Module, hidden: torch.Tensor, token_ids: torch.Tensor, chunk_rows: int | None = None
) -> torch.Tensor:
    """log p(y_t | z_t) under the head, ``[N]``, chunk by chunk (no gradient)."""
    rows = chunk_rows or head_chunk_rows(lm_head)
    parts = [
        token_log_probs(apply_lm_head(lm_head, hidden[i : i + rows]), token_ids[i : i + rows])
        for i in range(0, hidden.shape[0], rows)
    ]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
