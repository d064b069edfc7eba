"""One collated NextQuill sample of random tokens, as the collator makes it, for the benchmarks:
a history prompt and a counterfactual prompt sharing one target, with theta_0 effects."""

from __future__ import annotations

import torch

from dataset_formats.contract import (
    COUNTERFACTUAL_IDS,
    COUNTERFACTUAL_LABELS,
    COUNTERFACTUAL_MASK,
    HAS_COUNTERFACTUAL,
    IGNORE_INDEX,
    TOKEN_EFFECTS,
)


def paired_sample(
    vocab: int, history: int, counterfactual: int, target: int, device="cpu", seed: int = 1
) -> dict[str, torch.Tensor]:
    """Prompts of ``history`` and ``counterfactual`` random tokens, each followed by the same
    ``target`` tokens (labelled); about 10% of the targets above delta, as in the demo."""
    generator = torch.Generator().manual_seed(seed)
    target_ids = torch.randint(0, vocab, (target,), generator=generator)
    prompt = torch.randint(0, vocab, (history,), generator=generator)
    cf_prompt = torch.randint(0, vocab, (counterfactual,), generator=generator)

    def row(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.cat([p, target_ids])[None]
        labels = torch.cat([torch.full_like(p, IGNORE_INDEX), target_ids])[None]
        return ids.to(device), labels.to(device)

    ids, labels = row(prompt)
    cf_ids, cf_labels = row(cf_prompt)
    effects = torch.where(torch.rand(target, generator=generator) < 0.1, 1.0, -1.0)[None]
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        COUNTERFACTUAL_IDS: cf_ids,
        COUNTERFACTUAL_MASK: torch.ones_like(cf_ids),
        COUNTERFACTUAL_LABELS: cf_labels,
        HAS_COUNTERFACTUAL: torch.tensor([True], device=device),
        TOKEN_EFFECTS: effects.to(device),
    }
