"""The LM head on the final hidden states (lm_head.py): Lp's logits are the difference of two head
calls, the chunked losses equal full logits, and a model that transforms its logits is refused."""

from __future__ import annotations

import pytest
import torch


def test_causal_preference_logits_equal_the_difference_of_two_head_calls():
    """One product W (z_h - z_0) instead of two, for a biased head and a LoRA-wrapped one."""
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from nextquill_plugin.lm_head import apply_lm_head_without_bias, resolve_lm_head

    torch.manual_seed(0)
    with_history, without_history = torch.randn(3, 5), torch.randn(3, 5)
    head = nn.Linear(5, 7, bias=True)
    nn.init.normal_(head.bias, std=1.0)
    expected = head(with_history) - head(without_history)
    got = apply_lm_head_without_bias(head, with_history - without_history)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(head(with_history - without_history), expected, atol=1e-3)

    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = nn.Linear(5, 7, bias=True)

        def get_output_embeddings(self):
            return self.lm_head

    config = LoraConfig(r=2, target_modules=["lm_head"], lora_dropout=0.0, init_lora_weights=False)
    peft_model = get_peft_model(TinyLM(), config)
    lora_head = resolve_lm_head(peft_model)
    expected = lora_head(with_history) - lora_head(without_history)
    got = apply_lm_head_without_bias(lora_head, with_history - without_history)
    assert torch.allclose(got, expected, atol=1e-6)


def test_models_that_transform_their_logits_are_refused():
    """Soft-capped or scaled logits are not lm_head(hidden): fail clearly, do not train on them."""
    from transformers import (
        CohereConfig,
        Gemma2Config,
        Gemma2ForCausalLM,
        Gemma3Config,
        GraniteConfig,
        Qwen2Config,
    )

    from nextquill_plugin.lm_head import check_plain_lm_head, resolve_lm_head

    small = dict(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=4,
    )  # fmt: skip
    gemma2 = Gemma2ForCausalLM(Gemma2Config(**small, final_logit_softcapping=30.0))
    with pytest.raises(NotImplementedError, match="final_logit_softcapping=30.0"):
        resolve_lm_head(gemma2)
    with pytest.raises(NotImplementedError, match="logit_scale"):
        check_plain_lm_head(CohereConfig(logit_scale=0.0625))
    with pytest.raises(NotImplementedError, match="logits_scaling=8.0"):
        check_plain_lm_head(GraniteConfig(logits_scaling=8.0))
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        check_plain_lm_head(Gemma3Config(text_config={"final_logit_softcapping": 30.0}))

    # The same families with the transform switched off, and a plain Qwen2, are accepted.
    resolve_lm_head(Gemma2ForCausalLM(Gemma2Config(**small, final_logit_softcapping=None)))
    check_plain_lm_head(GraniteConfig(logits_scaling=1.0))
    check_plain_lm_head(Qwen2Config())


@pytest.mark.parametrize("without_bias", [False, True])
def test_chunked_head_loss_equals_full_logits(without_bias):
    """Chunks of 2 rows (5 rows: the last chunk is short), checkpointed, against one [N, V] CE."""
    from torch import nn

    from nextquill_plugin.equations import token_log_probs, weighted_cross_entropy_sum
    from nextquill_plugin.lm_head import head_cross_entropy_sum, head_token_log_probs

    torch.manual_seed(0)
    head = nn.Linear(4, 9, bias=True)
    nn.init.normal_(head.bias, std=1.0)
    hidden = torch.randn(5, 4, requires_grad=True)
    ids, weights = torch.randint(0, 9, (5,)), torch.rand(5)

    def full_logits():
        return hidden @ head.weight.T + (0 if without_bias else head.bias)

    expected = weighted_cross_entropy_sum(full_logits(), ids, weights)
    expected_grads = torch.autograd.grad(
        expected, [hidden, head.weight, head.bias], allow_unused=True
    )
    got = head_cross_entropy_sum(
        head, hidden, ids, weights, without_bias=without_bias, chunk_rows=2
    )
    got_grads = torch.autograd.grad(got, [hidden, head.weight, head.bias], allow_unused=True)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    for g, e in zip(got_grads, expected_grads, strict=True):
        if e is None:  # without_bias: the bias takes no part
            assert g is None or g.abs().max() < 1e-7
        else:
            assert torch.allclose(g, e, atol=1e-6)
    with torch.no_grad():
        no_grad = head_cross_entropy_sum(
            head, hidden, ids, weights, without_bias=without_bias, chunk_rows=2
        )
        assert no_grad.item() == pytest.approx(expected.item(), rel=1e-6)
        if not without_bias:
            log_probs = head_token_log_probs(head, hidden, ids, chunk_rows=2)
            assert torch.allclose(log_probs, token_log_probs(full_logits(), ids), atol=1e-6)
