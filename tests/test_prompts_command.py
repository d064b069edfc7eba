"""`nextquill prompts` prints exactly the text evaluation generates from."""

from __future__ import annotations

import yaml

from nextquill_plugin.cli import main as nextquill


def test_prompts_command_prints_text_that_tokenizes_to_the_evaluation_prompt(
    recipes, tiny_tokenizer, synthetic_splits, capsys
):
    from dataset_formats.amazon_reviews import load
    from nextquill_plugin.evaluation.prompts import PromptsRequest, render_prompts

    request = PromptsRequest(recipe=str(recipes["amazon"]), limit=1, max_new_tokens=32)
    (text,) = render_prompts(request)
    strategy = load(tiny_tokenizer, yaml.safe_load(recipes["amazon"].read_text()))
    expected = strategy.generation_prompts(synthetic_splits["test"][0], 32)
    assert expected["history_kept"] > 0
    assert tiny_tokenizer(text, add_special_tokens=False)["input_ids"] == expected["prompt_ids"]
    (without,) = render_prompts(
        PromptsRequest(
            recipe=str(recipes["amazon"]), limit=1, max_new_tokens=32, without_history=True
        )
    )
    assert len(without) < len(text) and "[Review 1]" in text and "[Review 1]" not in without
    nextquill(["prompts", str(recipes["amazon"]), "--limit", "2", "--max-new-tokens", "32"])
    assert capsys.readouterr().out.count(text) == 1
