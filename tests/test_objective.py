"""The whole micro-batch objective on a tiny Qwen2, against a slow obvious implementation."""

from __future__ import annotations

import pytest
import torch

from dataset_formats.contract import TOKEN_EFFECTS
from nextquill_plugin.equations import IGNORE_INDEX
from nextquill_plugin.objective import NextQuillSettings, compute_batch_loss

from .conftest import sharpened_tiny_model
from .slow_reference import ReferenceRow
from .slow_reference import slow_loss as reference_loss


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return sharpened_tiny_model(tiny_model_dir, 8.0)


@pytest.fixture(scope="module")
def paired_features(paired_rows):
    return paired_rows[:4]


def effects_for(weights):
    """theta_0 effects that the default rule (delta 0.05) turns into ``weights`` (0.9 or 0.1)."""
    if weights is None:
        return None
    assert set(weights) <= {0.9, 0.1}
    return [1.0 if w == 0.9 else -1.0 for w in weights]


def collate(tokenizer, features, weights=None):
    from nextquill_plugin.axolotl.collator import NextQuillDataCollator

    feats = [dict(f) for f in features]
    if weights is not None:
        for f, w in zip(feats, weights, strict=True):
            f[TOKEN_EFFECTS] = effects_for(w)
    return NextQuillDataCollator(
        tokenizer, padding=True, pad_to_multiple_of=8, return_tensors="pt"
    )(feats)


def slow_loss(model, features, weights, settings: NextQuillSettings, normalizer):
    """The shared slow reference on full logits of each row, run one unpadded row at a time.

    Without ``counterfactual_gradient`` the counterfactual pass is a constant: its final hidden
    states are detached and the (trained) LM head is applied to them.
    """
    rows = []
    for row, w_row in zip(features, weights, strict=True):
        logits_with = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
        if "cf_input_ids" not in row:
            rows.append(ReferenceRow(logits_with, row["labels"]))
            continue
        run = model(input_ids=torch.tensor([row["cf_input_ids"]]), output_hidden_states=True)
        logits_without = run.logits[0]
        if not settings.counterfactual_gradient:
            final_hidden = run.hidden_states[-1][0].detach()
            assert torch.allclose(model.lm_head(final_hidden), logits_without, atol=1e-5)
            logits_without = model.lm_head(final_hidden)
        rows.append(
            ReferenceRow(logits_with, row["labels"], w_row, logits_without, row["cf_labels"])
        )
    return reference_loss(rows, settings, normalizer)[2]


def n_targets(features):
    return sum(sum(1 for x in f["labels"][1:] if x != IGNORE_INDEX) for f in features)


def random_weights(features, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        [0.9 if torch.rand(1, generator=g).item() > 0.7 else 0.1 for _ in range(n_targets([f]))]
        for f in features
    ]


def assert_same_gradients(actual: dict, expected: dict, relative: float = 1e-5) -> None:
    assert actual.keys() == expected.keys()
    for name, g in expected.items():
        # float32 round-off, relative to the largest gradient entry of the tensor (at least 1).
        tolerance = relative * max(1.0, g.abs().max().item())
        assert (actual[name] - g).abs().max().item() <= tolerance, name


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def fast_and_slow(model, collated, features, weights, settings, normalizer):
    """compute_batch_loss and slow_loss on the same rows, each with its gradients."""
    model.zero_grad()
    fast = compute_batch_loss(model, collated, settings, normalizer)
    fast.loss.total.backward()
    fast_grads = grads(model)
    model.zero_grad()
    slow = slow_loss(model, features, weights, settings, normalizer)
    slow.backward()
    slow_grads = grads(model)
    model.zero_grad()
    return fast, fast_grads, slow, slow_grads


@pytest.mark.parametrize(
    "settings",
    [
        NextQuillSettings(alpha=0.3),
        NextQuillSettings(alpha=0.3, weight_causal_loss=False),
        NextQuillSettings(alpha=0.3, weight_source="current"),
        NextQuillSettings(alpha=0.3, counterfactual_gradient=False),
    ],
    ids=["paper", "unweighted_lp", "current_weights", "no_counterfactual_gradient"],
)
@pytest.mark.parametrize("head_chunk_rows", [None, 3], ids=["one_chunk", "chunks_of_3"])
def test_loss_and_gradients_equal_slow_reference(
    tiny_model, tiny_tokenizer, paired_features, settings, head_chunk_rows, monkeypatch
):
    import nextquill_plugin.lm_head as forward

    chunk_sizes = []
    if head_chunk_rows:  # the LM head and CE in checkpointed chunks of 3 target rows
        vocab = tiny_model.get_output_embeddings().out_features
        monkeypatch.setattr(forward, "HEAD_CHUNK_VALUES", head_chunk_rows * vocab)
        checkpoint = forward.checkpoint

        def counting_checkpoint(function, rows, *args, **kwargs):
            chunk_sizes.append(rows.shape[0])
            return checkpoint(function, rows, *args, **kwargs)

        monkeypatch.setattr(forward, "checkpoint", counting_checkpoint)
    features = paired_features[:2]
    weights = random_weights(features)
    normalizer = n_targets(features)
    collated = collate(tiny_tokenizer, features, weights)
    fast, fast_grads, slow, slow_grads = fast_and_slow(
        tiny_model, collated, features, weights, settings, normalizer
    )
    assert fast.loss.total.item() == pytest.approx(slow.item(), abs=1e-5)
    assert fast.loss.causal.item() > 0  # the counterfactual pass is part of the loss
    assert_same_gradients(fast_grads, slow_grads)
    if head_chunk_rows:
        assert max(chunk_sizes) == head_chunk_rows and len(chunk_sizes) > 4


def test_counterfactual_pass_carries_gradient(tiny_model, tiny_tokenizer, paired_features):
    """Lp's gradient must include d f(x, 0, y<t) / d theta: it differs from a detached pass."""
    batch = collate(tiny_tokenizer, paired_features[:2])
    settings = NextQuillSettings(alpha=1.0, token_weighting=False)
    tiny_model.zero_grad()
    compute_batch_loss(tiny_model, batch, settings).loss.causal.backward()
    with_cf_grad = grads(tiny_model)
    tiny_model.zero_grad()
    import nextquill_plugin.objective as objective

    original = objective.counterfactual_hidden_states
    objective.counterfactual_hidden_states = lambda *a, **k: original(*a, **k).detach()
    try:
        compute_batch_loss(tiny_model, batch, settings).loss.causal.backward()
    finally:
        objective.counterfactual_hidden_states = original
    detached_grad = grads(tiny_model)
    tiny_model.zero_grad()
    diff = sum((with_cf_grad[n] - detached_grad[n]).abs().sum().item() for n in with_cf_grad)
    assert diff > 1e-4


def test_micro_batch_split_does_not_change_loss_or_gradients(
    tiny_model, tiny_tokenizer, paired_features
):
    features = paired_features[:2]
    weights = random_weights(features, seed=3)
    settings = NextQuillSettings(alpha=0.2)
    total_items = n_targets(features)
    tiny_model.zero_grad()
    whole = compute_batch_loss(
        tiny_model, collate(tiny_tokenizer, features, weights), settings, total_items
    )
    whole.loss.total.backward()
    whole_grads = grads(tiny_model)
    tiny_model.zero_grad()
    split_total = 0.0
    for f, w in zip(features, weights, strict=True):  # micro-batch 1 x accumulation 2
        part = compute_batch_loss(
            tiny_model, collate(tiny_tokenizer, [f], [w]), settings, total_items
        )
        part.loss.total.backward()
        split_total += part.loss.total.item()
    split_grads = grads(tiny_model)
    tiny_model.zero_grad()
    assert whole.loss.total.item() == pytest.approx(split_total, abs=1e-5)
    assert_same_gradients(split_grads, whole_grads)


def test_lm_head_sees_only_target_positions(tiny_model, tiny_tokenizer, paired_features):
    features = paired_features[:3]
    batch = collate(tiny_tokenizer, features)
    rows_seen = []
    handle = tiny_model.lm_head.register_forward_hook(
        lambda _m, inputs, _o: rows_seen.append(inputs[0].reshape(-1, inputs[0].shape[-1]).shape[0])
    )
    try:
        compute_batch_loss(tiny_model, batch, NextQuillSettings())
    finally:
        handle.remove()
    batch_size, n = len(features), n_targets(features)
    # Per pass: the model's own logits_to_keep=1 call (one row per sample) + ours (targets).
    assert sorted(rows_seen) == sorted([batch_size, n, batch_size, n])
    assert max(rows_seen) < batch["input_ids"].numel()


def test_history_pass_backward_runs_before_the_counterfactual_pass_backward(
    tiny_model, tiny_tokenizer, paired_features
):
    """The long pass's backward first frees its activations while gradients grow (as in SFT);
    in the other order every gradient exists before it starts (a higher peak)."""
    batch = collate(tiny_tokenizer, paired_features[:2])
    finished = []  # sequence width of each pass, in the order its backward reaches the embedding

    def on_embedding(_module, _inputs, output):
        output.register_hook(lambda _grad: finished.append(output.shape[1]))

    handle = tiny_model.model.embed_tokens.register_forward_hook(on_embedding)
    try:
        compute_batch_loss(tiny_model, batch, NextQuillSettings()).loss.total.backward()
    finally:
        handle.remove()
    history_width, counterfactual_width = (
        batch["input_ids"].shape[1],
        batch["cf_input_ids"].shape[1],
    )
    assert history_width > counterfactual_width
    assert finished == [history_width, counterfactual_width]


def test_norm_only_runs_no_counterfactual_pass(tiny_model, tiny_tokenizer, paired_features):
    batch = collate(tiny_tokenizer, paired_features[:2])
    calls = []
    handle = tiny_model.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = compute_batch_loss(tiny_model, batch, NextQuillSettings(causal_loss=False))
    finally:
        handle.remove()
    assert len(calls) == 1
    assert out.loss.causal.item() == 0.0


def test_rows_without_counterfactual_get_plain_cross_entropy(
    tiny_model, tiny_tokenizer, paired_features
):
    plain = {k: v for k, v in paired_features[1].items() if not k.startswith("cf_")}
    plain_only = compute_batch_loss(
        tiny_model, collate(tiny_tokenizer, [plain]), NextQuillSettings(alpha=0.5)
    )
    mixed_weights = [random_weights(paired_features[:1])[0], None]
    mixed = compute_batch_loss(
        tiny_model,
        collate(tiny_tokenizer, [paired_features[0], plain], mixed_weights),
        NextQuillSettings(alpha=0.5),
    )
    assert mixed.causal_token_mask.sum().item() == n_targets(paired_features[:1])
    plain_part = mixed.weights[~mixed.causal_token_mask]
    assert torch.all(plain_part == 1.0)
    assert plain_only.loss.causal.item() == 0.0


@pytest.mark.parametrize("weight_source", ["initial", "current"])
def test_mixed_batch_equals_slow_reference(
    tiny_model, tiny_tokenizer, paired_features, weight_source
):
    """Rows with and without a counterfactual prompt in one micro-batch (the masked path)."""
    plain = {k: v for k, v in paired_features[1].items() if not k.startswith("cf_")}
    features = [paired_features[0], plain, paired_features[2]]
    weights = random_weights(features, seed=5)
    collated = collate(tiny_tokenizer, features, [weights[0], None, weights[2]])
    settings = NextQuillSettings(alpha=0.4, weight_source=weight_source)
    normalizer = n_targets(features)
    fast, fast_grads, slow, slow_grads = fast_and_slow(
        tiny_model, collated, features, weights, settings, normalizer
    )
    assert fast.loss.total.item() == pytest.approx(slow.item(), abs=1e-5)
    # Three padded rows of unequal length against unpadded ones: round-off reaches ~1.2e-5 on
    # this sharpened model (measured the same with the former two-product Lp).
    assert_same_gradients(fast_grads, slow_grads, relative=5e-5)


def test_loss_normalizers_by_hand():
    from nextquill_plugin.objective import TokenWeights, loss_normalizers
    from nextquill_plugin.settings import WeightNormalization

    weights = TokenWeights(
        torch.tensor([0.9, 0.1, 0.1, 1.0]), torch.tensor([True, False, False, False])
    )
    paired = torch.tensor([True, True, True, False])  # the last token is an ordinary row's
    tokens = NextQuillSettings()
    assert loss_normalizers(tokens, weights, paired, 40, 2) == (40, 40)
    assert loss_normalizers(tokens, weights, paired, None, 2) == (4, 4)
    authors = NextQuillSettings(weight_normalization=WeightNormalization.weights)
    ln, lp = loss_normalizers(authors, weights, paired, 40, 2)
    assert (ln.item(), lp.item()) == pytest.approx((2 * 2.1, 2 * 1.1))
    unweighted = NextQuillSettings(weight_normalization="weights", weight_causal_loss=False)
    ln, lp = loss_normalizers(unweighted, weights, paired, 40, 2)
    assert (ln.item(), lp.item()) == pytest.approx((2 * 2.1, 2 * 3.0))  # Lp: a plain mean


def authors_formula(model, features, weights, alpha):
    """Their objective by hand on the slow reference's sums: sum(w l) / sum(w) + alpha * mean(Lp)."""
    from nextquill_plugin.objective import NextQuillSettings as Settings

    ones = [[1.0] * len(w) for w in weights]
    weighted_ln = slow_loss(model, features, weights, Settings(alpha=0.0), 1.0)
    plain = Settings(alpha=1.0, weight_causal_loss=False)
    mean_lp = (
        slow_loss(model, features, ones, plain, 1.0)
        - slow_loss(model, features, ones, Settings(alpha=0.0), 1.0)
    ) / n_targets(features)
    return weighted_ln / sum(sum(w) for w in weights) + alpha * mean_lp


def test_authors_normalisation_equals_their_formula_and_averages_micro_batches(
    tiny_model, tiny_tokenizer, paired_features
):
    """weights normalisation with the authors' other settings (unweighted Lp, alpha 0.1): one
    micro-batch gives their formula; two micro-batches of one row each, accumulated, give the
    mean of each row's own formula (their per-micro-batch normalisation, averaged)."""
    features = paired_features[:2]
    weights = random_weights(features, seed=7)
    settings = NextQuillSettings(
        alpha=0.1, weight_causal_loss=False, weight_normalization="weights"
    )
    whole = compute_batch_loss(tiny_model, collate(tiny_tokenizer, features, weights), settings)
    expected = authors_formula(tiny_model, features, weights, 0.1)
    assert whole.loss.total.item() == pytest.approx(expected.item(), abs=1e-5)
    accumulated = sum(
        compute_batch_loss(
            tiny_model, collate(tiny_tokenizer, [f], [w]), settings, 999, micro_batches=2
        ).loss.total.item()
        for f, w in zip(features, weights, strict=True)
    )
    per_row = [
        authors_formula(tiny_model, [f], [w], 0.1).item()
        for f, w in zip(features, weights, strict=True)
    ]
    assert accumulated == pytest.approx(sum(per_row) / 2, abs=1e-5)
    assert accumulated != pytest.approx(whole.loss.total.item(), abs=1e-4)  # per micro-batch
    assert whole.per_token()[0] == pytest.approx(
        slow_loss(
            tiny_model, features, weights, NextQuillSettings(alpha=0.0), n_targets(features)
        ).item(),
        abs=1e-5,
    )  # logged Ln is per target token in either normalisation
