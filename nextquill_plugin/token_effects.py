"""The data-side identification (eq. 4): per-token probabilities with and without history under
theta_0, and the pass that computes them over a dataset's rows.

The cache of these values (``effects_cache.py``) makes the pass run once per model and data;
token weights are applied from them per batch by ``equations.PreferenceRule`` (eq. 3), so
changing delta, lambda or epsilon needs no forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dataset_formats.contract import COUNTERFACTUAL_IDS, COUNTERFACTUAL_LABELS, IGNORE_INDEX

from .batching import length_buckets, pad_sequences, padded_batch
from .equations import causal_effects
from .lm_head import head_token_log_probs, resolve_lm_head, target_hidden_states, unwrap_model
from .settings import WEIGHT_PASS_BATCH_SIZE


@dataclass
class TokenEffects:
    """Per-row target-token probabilities with and without history, flattened with offsets."""

    p_with: np.ndarray  # float32 [total target tokens]
    p_without: np.ndarray  # float32 [total target tokens]
    offsets: np.ndarray  # int64 [rows + 1]; row i owns [offsets[i], offsets[i+1])

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.p_with[lo:hi], self.p_without[lo:hi]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def effects(self) -> np.ndarray:
        """The causal effect of every target token (eq. 4), float32."""
        return causal_effects(self.p_with, self.p_without)

    def row_effects(self) -> list[list[float] | None]:
        """Each row's effects as a list; None for a row without any (no counterfactual)."""
        flat = self.effects()
        return [
            flat[lo:hi].tolist() if hi > lo else None
            for lo, hi in zip(self.offsets[:-1], self.offsets[1:], strict=True)
        ]

    @classmethod
    def empty(cls) -> TokenEffects:
        return cls(np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(1, np.int64))

    @classmethod
    def concatenate(cls, parts: Sequence[TokenEffects]) -> TokenEffects:
        lengths = np.concatenate([np.diff(p.offsets) for p in parts]) if parts else np.zeros(0)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(
            np.concatenate([p.p_with for p in parts]).astype(np.float32),
            np.concatenate([p.p_without for p in parts]).astype(np.float32),
            offsets,
        )


@torch.no_grad()
def compute_token_effects(
    model: nn.Module,
    rows: dict[str, list[list[int]]],
    *,
    pad_token_id: int,
    batch_size: int = WEIGHT_PASS_BATCH_SIZE,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    show_progress: bool = True,
    progress_label: str = "NextQuill theta_0 effects",
) -> TokenEffects:
    """Target-token probabilities with and without history for every row, under ``model``.

    ``rows`` holds the columns ``input_ids``, ``labels``, ``cf_input_ids`` and ``cf_labels``.
    Rows without a counterfactual prompt get no effects (zero target tokens). ``autocast``
    (a context factory) defaults to ``mixed_precision_autocast(model)``.
    """
    autocast = autocast or mixed_precision_autocast(model)
    lm_head = resolve_lm_head(model)
    device = lm_head.weight.device
    n_rows = len(rows["input_ids"])
    p_with: list[np.ndarray | None] = [None] * n_rows
    p_without: list[np.ndarray | None] = [None] * n_rows
    lengths = [
        len(a) + len(b or [])
        for a, b in zip(rows["input_ids"], rows[COUNTERFACTUAL_IDS], strict=True)
    ]
    was_training = model.training
    model.eval()
    try:
        batches = list(length_buckets(lengths, batch_size))
        for batch in tqdm(batches, desc=progress_label, disable=not show_progress):
            batch = [i for i in batch if rows[COUNTERFACTUAL_IDS][i]]
            if not batch:
                continue
            probs = []
            for ids_key, labels_key in (
                ("input_ids", "labels"),
                (COUNTERFACTUAL_IDS, COUNTERFACTUAL_LABELS),
            ):
                ids = [rows[ids_key][i] for i in batch]
                input_ids, mask = (t.to(device) for t in padded_batch(ids, pad_token_id))
                labels = pad_sequences([rows[labels_key][i] for i in batch], IGNORE_INDEX)
                labels = labels.to(device)
                with autocast():
                    hidden, targets, _ = target_hidden_states(model, input_ids, mask, labels)
                    # in chunks: no [N, V] logits for the whole batch
                    log_probs = head_token_log_probs(lm_head, hidden, targets.token_ids)
                probs.append((log_probs.exp().cpu().numpy(), targets))
            (pw, tw), (pc, tc) = probs
            if not torch.equal(tw.token_ids, tc.token_ids):
                raise ValueError("NextQuill: with/without-history target tokens differ in a row.")
            rows_of_token = tw.rows.cpu().numpy()
            for j, i in enumerate(batch):
                p_with[i] = pw[rows_of_token == j]
                p_without[i] = pc[rows_of_token == j]
    finally:
        model.train(was_training)
    empty = np.zeros(0, dtype=np.float32)
    lengths_out = [len(p) if p is not None else 0 for p in p_with]
    return TokenEffects(
        np.concatenate([p if p is not None else empty for p in p_with] or [empty]).astype(
            np.float32
        ),
        np.concatenate([p if p is not None else empty for p in p_without] or [empty]).astype(
            np.float32
        ),
        np.concatenate([[0], np.cumsum(lengths_out)]).astype(np.int64),
    )


def mixed_precision_autocast(model: nn.Module) -> Callable[[], contextlib.AbstractContextManager]:
    """Autocast to the model's half-precision dtype when its parameters mix it with float32.

    For bf16 training Axolotl keeps some modules in float32 and relies on the Trainer's
    autocast; the theta_0 pass runs before and outside the Trainer's step (transformers' own
    autocast helper is a no-op there), so without this it multiplies bf16 by float32 and fails.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    half = dtypes & {torch.bfloat16, torch.float16}
    if len(half) != 1 or torch.float32 not in dtypes:
        return contextlib.nullcontext
    dtype = half.pop()
    device_type = next(p for p in model.parameters() if p.dtype == dtype).device.type
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def initial_model_context(model: nn.Module) -> contextlib.AbstractContextManager:
    """theta_0: with LoRA, the base model with adapters disabled; otherwise the model as loaded."""
    base = unwrap_model(model)
    if hasattr(base, "disable_adapter") and hasattr(base, "peft_config"):
        return base.disable_adapter()
    return contextlib.nullcontext()
