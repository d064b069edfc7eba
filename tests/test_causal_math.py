"""NextQuill's math against hand-computed values and a slow, obvious implementation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nextquill_plugin.equations import (
    causal_effects,
    nextquill_loss,
    preference_weights,
    target_positions,
    token_log_probs,
)
from nextquill_plugin.settings import NextQuillSettings

from .slow_reference import ReferenceRow, slow_loss


def test_target_positions_are_shifted_and_row_major():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, 8, 9, -100]])
    t = target_positions(labels)
    assert t.rows.tolist() == [0, 0, 1, 1, 1]
    assert t.positions.tolist() == [1, 2, 0, 1, 2]  # position p predicts labels[p + 1]
    assert t.token_ids.tolist() == [5, 6, 7, 8, 9]


def test_effects_and_weights_by_hand():
    p_with = torch.tensor([0.50, 0.30, 0.20, 0.90])
    p_without = torch.tensor([0.40, 0.30, 0.10, 0.95])
    effects = causal_effects(p_with, p_without)
    assert torch.allclose(effects, torch.tensor([0.10, 0.0, 0.10, -0.05]))
    # delta 0.05: strictly greater crosses; equality does not.
    weights = preference_weights(effects, delta=0.05, high_weight=0.9, low_weight=0.1)
    assert weights.tolist() == pytest.approx([0.9, 0.1, 0.9, 0.1])
    at_threshold = preference_weights(torch.tensor([0.05]), 0.05, 0.9, 0.1)
    assert at_threshold.tolist() == pytest.approx([0.1])


def test_losses_by_hand_on_two_tokens():
    # Vocabulary of 2; logits chosen so that every softmax is easy to write down.
    logits_with = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # p = [3/4, 1/4], [1/2, 1/2]
    logits_without = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    targets = torch.tensor([0, 1])
    weights = torch.tensor([0.9, 0.1])
    # Ln = (0.9 * -log(3/4) + 0.1 * -log(1/2)) / 2
    ln = (0.9 * -math.log(0.75) + 0.1 * -math.log(0.5)) / 2
    # difference logits: [log3, 0] -> p(0)=3/4 ; [0, -log3] -> p(1) = (1/3)/(1+1/3) = 1/4
    lp = (0.9 * -math.log(0.75) + 0.1 * -math.log(0.25)) / 2
    out = nextquill_loss(
        logits_with,
        targets,
        weights,
        preference_component=logits_with - logits_without,
        alpha=0.5,
    )
    assert out.normal.item() == pytest.approx(ln, abs=1e-6)
    assert out.causal.item() == pytest.approx(lp, abs=1e-6)
    assert out.total.item() == pytest.approx(ln + 0.5 * lp, abs=1e-6)
    unweighted = nextquill_loss(
        logits_with,
        targets,
        weights,
        preference_component=logits_with - logits_without,
        alpha=0.5,
        weight_causal_loss=False,
    )
    assert unweighted.causal.item() == pytest.approx(
        (-math.log(0.75) - math.log(0.25)) / 2, abs=1e-6
    )
    no_causal = nextquill_loss(logits_with, targets, weights, preference_component=None, alpha=0.5)
    assert no_causal.total.item() == pytest.approx(ln, abs=1e-6)
    assert nextquill_loss(
        logits_with, targets, weights, normalizer=4
    ).normal.item() == pytest.approx(ln / 2, abs=1e-6)


def test_token_log_probs_matches_softmax():
    logits = torch.randn(5, 11)
    ids = torch.randint(0, 11, (5,))
    expected = torch.log_softmax(logits, -1)[torch.arange(5), ids]
    assert torch.allclose(token_log_probs(logits, ids), expected, atol=1e-6)


def test_vectorised_loss_equals_slow_reference():
    torch.manual_seed(0)
    vocab = 13
    labels_with = torch.tensor(
        [[-100, -100, -100, 3, 4, 5, -100], [-100, -100, 7, 8, -100, -100, -100]]
    )
    labels_cf = torch.tensor([[-100, 3, 4, 5, -100], [-100, -100, 7, 8, -100]])
    logits_with = torch.randn(2, 7, vocab)
    logits_cf = torch.randn(2, 5, vocab)
    weights = [[0.9, 0.1, 0.9], [0.1, 0.9]]
    tw, tc = target_positions(labels_with), target_positions(labels_cf)
    flat_w = torch.tensor([x for row in weights for x in row])
    out = nextquill_loss(
        logits_with[tw.rows, tw.positions],
        tw.token_ids,
        flat_w,
        preference_component=logits_with[tw.rows, tw.positions] - logits_cf[tc.rows, tc.positions],
        alpha=0.05,
        normalizer=7,
    )
    rows = [
        ReferenceRow(
            logits_with[b], labels_with[b].tolist(), weights[b], logits_cf[b], labels_cf[b].tolist()
        )
        for b in range(2)
    ]
    ln, lp, total = slow_loss(rows, NextQuillSettings(alpha=0.05), normalizer=7)
    assert out.normal.item() == pytest.approx(ln.item(), abs=1e-5)
    assert out.causal.item() == pytest.approx(lp.item(), abs=1e-5)
    assert out.total.item() == pytest.approx(total.item(), abs=1e-5)


def test_gradients_flow_into_both_logit_inputs_but_not_weights():
    logits_with = torch.randn(4, 6, requires_grad=True)
    difference = torch.randn(4, 6, requires_grad=True)
    weights = torch.rand(4, requires_grad=True)
    out = nextquill_loss(
        logits_with, torch.tensor([0, 1, 2, 3]), weights, preference_component=difference
    )
    out.total.backward()
    assert logits_with.grad is not None and logits_with.grad.abs().sum() > 0
    assert difference.grad is not None and difference.grad.abs().sum() > 0
    assert weights.grad is None


def test_causal_token_mask_restricts_lp_to_paired_rows():
    torch.manual_seed(1)
    logits_with, logits_without = torch.randn(3, 5), torch.randn(2, 5)
    ids, w = torch.tensor([1, 2, 3]), torch.ones(3)
    mask = torch.tensor([True, False, True])
    out = nextquill_loss(
        logits_with,
        ids,
        w,
        preference_component=logits_with[mask] - logits_without,
        causal_token_mask=mask,
        normalizer=3,
    )
    expected = F.cross_entropy(logits_with[mask] - logits_without, ids[mask], reduction="sum") / 3
    assert out.causal.item() == pytest.approx(expected.item(), abs=1e-6)
