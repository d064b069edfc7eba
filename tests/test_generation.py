"""Decoding (batched, left-padded, with or without context steering) against a slow reference
loop, its settings, and loading a LoRA checkpoint for it, on the tiny local model."""

import pytest
import torch

from nextquill_plugin.batching import padded_batch
from nextquill_plugin.evaluation.generation import (
    GenerationSettings,
    generate_continuations,
    load_model_for_generation,
)

from .conftest import sharpened_tiny_model


@pytest.fixture(scope="module")
def steered_model(tiny_model_dir):
    return sharpened_tiny_model(tiny_model_dir, 3.0).eval()


def slow_greedy(model, prompt, counterfactual, steps, gamma, penalty, scope, eos):
    """Decoding written out: one unpadded, uncached forward per token and row."""
    generated: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + generated])).logits[0, -1]
            scores = logits
            if gamma > 0:
                cf_logits = model(torch.tensor([counterfactual + generated])).logits[0, -1]
                with_history = torch.log_softmax(logits, -1)
                scores = with_history + gamma * (with_history - torch.log_softmax(cf_logits, -1))
        seen = set(generated) | (set(prompt) if scope == "all" else set())
        scores = scores.clone()
        for token in seen:
            value = scores[token]
            scores[token] = value * penalty if value < 0 else value / penalty
        token = int(scores.argmax())
        if token == eos:
            break
        generated.append(token)
    return generated


@pytest.mark.parametrize(
    "gamma, penalty, scope",
    [(0.0, 1.0, "all"), (0.0, 1.2, "all"), (1.5, 1.0, "all"), (1.0, 1.3, "generated")],
)
def test_batched_decoding_equals_the_slow_loop(
    steered_model, tiny_tokenizer, gamma, penalty, scope
):
    ids = tiny_tokenizer(
        ["The story follows a family", "I found it", "Great cover and a clear print. The plot"]
    )["input_ids"]
    counterfactual = [ids[1], ids[0], ids[1]]  # any other context works as the contrast
    settings = GenerationSettings(
        max_new_tokens=6,
        batch_size=3,
        repetition_penalty=penalty,
        penalty_scope=scope,
        cos_gamma=gamma,
    )
    eos = tiny_tokenizer.eos_token_id
    fast = generate_continuations(
        steered_model,
        ids,
        settings,
        pad_token_id=tiny_tokenizer.pad_token_id,
        eos_token_id=eos,
        counterfactual_prompts=counterfactual,
        show_progress=False,
    )
    slow = [
        slow_greedy(steered_model, p, c, 6, gamma, penalty, scope, eos)
        for p, c in zip(ids, counterfactual, strict=True)
    ]
    assert fast == slow
    assert any(fast)


def test_cos_with_gamma_zero_is_plain_decoding_and_gamma_changes_it(steered_model, tiny_tokenizer):
    ids = tiny_tokenizer(["The plot has a few", "Would buy again as"])["input_ids"]
    counterfactual = tiny_tokenizer(["x", "y"])["input_ids"]
    common = dict(
        pad_token_id=tiny_tokenizer.pad_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        show_progress=False,
    )
    plain = generate_continuations(
        steered_model, ids, GenerationSettings(max_new_tokens=8), **common
    )
    gamma_zero = generate_continuations(
        steered_model,
        ids,
        GenerationSettings(max_new_tokens=8, cos_gamma=0.0),
        counterfactual_prompts=counterfactual,
        **common,
    )
    steered = generate_continuations(
        steered_model,
        ids,
        GenerationSettings(max_new_tokens=8, cos_gamma=4.0),
        counterfactual_prompts=counterfactual,
        **common,
    )
    assert gamma_zero == plain
    assert steered != plain


def test_left_padding_puts_every_prompt_at_the_end():
    ids, mask = padded_batch([[5, 6, 7], [9]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_bad_generation_settings_are_named():
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1.*penalty_scope"):
        GenerationSettings(max_new_tokens=0, penalty_scope="prompt")


def test_lora_checkpoint_is_loaded_and_merged(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    with torch.no_grad():
        expected = peft_model(ids).logits
        merged, _, description = load_model_for_generation(
            str(tiny_model_dir), str(tmp_path / "adapter")
        )
        untouched = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(untouched, expected, atol=1e-3)
    assert "LoRA adapter" in description
