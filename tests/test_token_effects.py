"""theta_0 effects (eq. 4): the pass's values against full-logit probabilities, under mixed
precision, and the rule (eq. 3) applied to them by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nextquill_plugin.equations import PreferenceRule
from nextquill_plugin.token_effects import TokenEffects, compute_token_effects

from .conftest import sharpened_tiny_model


def slow_probabilities(model, ids, labels):
    """p(y_t | prefix) from full logits of one unpadded sequence."""
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    return [probs[p, labels[p + 1]].item() for p in range(len(ids) - 1) if labels[p + 1] != -100]


def as_columns(rows):
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_effects_equal_full_logit_probabilities(sharpened_model, effect_rows):
    model, rows = sharpened_model, effect_rows
    effects = compute_token_effects(
        model, as_columns(rows), pad_token_id=0, batch_size=2, show_progress=False
    )
    assert len(effects) == len(rows)
    for i, row in enumerate(rows):
        p_with, p_without = effects.row(i)
        if not row["cf_input_ids"]:
            assert len(p_with) == 0
            continue
        assert np.allclose(
            p_with, slow_probabilities(model, row["input_ids"], row["labels"]), atol=1e-5
        )
        assert np.allclose(
            p_without, slow_probabilities(model, row["cf_input_ids"], row["cf_labels"]), atol=1e-5
        )
    assert np.abs(effects.p_with - effects.p_without).max() > 1e-3  # the history matters


def test_bf16_model_with_float32_modules_gets_autocast(tiny_model_dir, effect_rows):
    """Axolotl's bf16 full fine-tuning keeps some modules in float32; the theta_0 pass runs
    outside the Trainer's autocast. Without one it fails on mixed dtypes; by default it
    autocasts to bf16 and gives the float32 model's probabilities within bf16's precision."""
    import contextlib

    reference = sharpened_tiny_model(tiny_model_dir, 6.0)
    mixed = sharpened_tiny_model(tiny_model_dir, 6.0).to(torch.bfloat16)
    for name, module in mixed.named_modules():
        if name.endswith("norm"):  # RMSNorms kept in float32, as Axolotl does for bf16
            module.float()
    columns = as_columns(effect_rows)
    with pytest.raises(RuntimeError, match="dtype"):
        compute_token_effects(
            mixed, columns, pad_token_id=0, autocast=contextlib.nullcontext, show_progress=False
        )
    got = compute_token_effects(mixed, columns, pad_token_id=0, show_progress=False)
    expected = compute_token_effects(reference, columns, pad_token_id=0, show_progress=False)
    assert np.array_equal(got.offsets, expected.offsets)
    assert np.abs(got.p_with - expected.p_with).max() < 0.05
    assert np.abs(got.p_without - expected.p_without).max() < 0.05


def test_row_effects_and_the_rule_by_hand():
    effects = TokenEffects(
        np.array([0.5, 0.2, 0.9], np.float32),
        np.array([0.4, 0.2, 0.95], np.float32),
        np.array([0, 2, 2, 3]),  # the second row has no effects (no counterfactual)
    )
    assert effects.row_effects() == [
        [pytest.approx(0.1), pytest.approx(0.0)],
        None,
        [pytest.approx(-0.05)],
    ]
    flat = torch.from_numpy(effects.effects())
    paper, other = PreferenceRule(0.05, 0.9, 0.1), PreferenceRule(0.2, 0.8, 0.3)
    assert paper.weights(flat).tolist() == pytest.approx([0.9, 0.1, 0.1])
    assert other.weights(flat).tolist() == pytest.approx([0.3, 0.3, 0.3])
    assert int(paper.mask(flat).sum()) == 1
    assert int(PreferenceRule(-0.06, 0.9, 0.1).mask(flat).sum()) == 3
    # lambda == epsilon: every weight is the same, but only the tokens above delta are marked
    assert PreferenceRule(0.05, 0.5, 0.5).mask(flat).tolist() == [True, False, False]
