"""The prompts evaluation generates from: each dataset type's are its training prompts, and
`nextquill prompts` prints exactly their text."""

from __future__ import annotations

import yaml

from nextquill_plugin.cli import main as nextquill
from nextquill_plugin.evaluation.prompts import PromptsRequest, render_prompts

from .evaluation_helpers import PLUGIN, paired_rows_of


def test_both_dataset_types_meet_the_evaluation_contract(tiny_tokenizer, synthetic_splits):
    from dataset_formats.amazon_reviews import load as load_amazon
    from dataset_formats.paired import load as load_paired
    from dataset_formats.strategy import EvaluableType

    cfg = {"plugins": PLUGIN, "nextquill": False, "sequence_len": 512}
    row = paired_rows_of(synthetic_splits["test"][:1])[0]
    for strategy, example in (
        (load_amazon(tiny_tokenizer, cfg), synthetic_splits["test"][0]),
        (load_paired(tiny_tokenizer, cfg), row),
    ):
        assert isinstance(strategy, EvaluableType)
        prompts = strategy.generation_prompts(example, max_new_tokens=64)
        trained = strategy.tokenize_prompt(example)
        prompt_length = trained["labels"].index(next(t for t in trained["labels"] if t != -100))
        # the generation prompt is the training prompt (the reference never shapes it)
        assert prompts["prompt_ids"] == trained["input_ids"][:prompt_length]
        assert prompts["counterfactual_prompt_ids"] != prompts["prompt_ids"]
        reference = strategy.reference(example)
        assert reference and tiny_tokenizer.decode(trained["input_ids"][prompt_length:]).startswith(
            reference[:20]
        )
    assert load_paired(tiny_tokenizer, cfg).prompt_id(row, 5) == row["id"]


def test_prompts_command_prints_text_that_tokenizes_to_the_evaluation_prompt(
    recipes, tiny_tokenizer, synthetic_splits, capsys
):
    from dataset_formats.amazon_reviews import load

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
