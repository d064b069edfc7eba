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


def test_wrong_row_options_are_usage_errors_before_any_model_loads(recipes, tmp_path, capsys):
    """They were accepted: --max-new-tokens -5 printed prompts, --limit 0 said the file had no
    rows (exit 1), --split beside --data was ignored without a word, and a greedy evaluation
    recorded --top-p 5 in its metrics.json."""
    import pytest

    rows = tmp_path / "rows.jsonl"
    rows.write_text("")
    recipe = str(recipes["amazon"])
    for command, arguments, message in (
        ("prompts", ["--max-new-tokens", "-5"], "--max-new-tokens must be >= 1 (got -5)"),
        ("prompts", ["--limit", "0"], "--limit must be >= 1 (got 0)"),
        ("evaluate", ["--split", "validation", "--data", str(rows)], "give one of them"),
        ("inspect", ["--split", "test", "--data", str(rows)], "give one of them"),
        ("evaluate", ["--top-p", "5"], "top_p in (0, 1] (got 1.0, 5.0)"),  # was recorded
    ):
        with pytest.raises(SystemExit) as error:
            nextquill([command, recipe, *arguments])
        assert error.value.code == 2, (command, arguments)
        err = capsys.readouterr().err
        assert f"usage: nextquill {command}" in err and message in err, err


def test_a_dataset_path_that_is_the_builders_folder_reads_the_split_inside_it(
    recipes, tmp_path, synthetic_splits
):
    """The split file was looked for beside the folder (a stray test.jsonl there was evaluated)."""
    from nextquill_common.jsonl import write_jsonl

    folder = tmp_path / "books"
    write_jsonl(folder / "train.jsonl", synthetic_splits["train"][:2])
    write_jsonl(folder / "test.jsonl", synthetic_splits["test"][1:2])
    write_jsonl(tmp_path / "test.jsonl", synthetic_splits["test"][:1])  # the stray file
    recipe = yaml.safe_load(recipes["amazon"].read_text())
    recipe["datasets"][0]["path"] = str(folder)
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump(recipe))
    (inside,) = render_prompts(PromptsRequest(recipe=str(path), limit=1))
    (expected,) = render_prompts(PromptsRequest(recipe=str(path), data=str(folder / "test.jsonl")))
    assert inside == expected


def test_inputs_of_the_wrong_kind_are_named_as_such(recipes, tmp_path, capsys):
    """A --data folder or /dev/null "did not exist", a binary --data gave a codec error without
    its file, a recipe folder "did not exist", --max-new-tokens 100000 spoke of a negative
    sequence_len, and a recipe's `path: json` + `data_files` was looked for in the cwd."""
    import pytest

    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"user_id": "u"}\n\xf8\xff\n')
    recipe = str(recipes["amazon"])
    for arguments, message in (
        ([recipe, "--data", str(tmp_path)], f"evaluation data {tmp_path} is a folder, not a file"),
        ([recipe, "--data", "/dev/null"], "/dev/null is not a regular file"),
        ([recipe, "--data", str(binary)], f"{binary}:2: not UTF-8 text"),
        ([str(tmp_path)], f"recipe {tmp_path} is a folder, not a file"),
        (
            [recipe, "--limit", "1", "--max-new-tokens", "100000"],
            "row user_id=",  # the row, then the numbers
        ),
        (
            [recipe, "--limit", "1", "--max-new-tokens", "100000"],
            "max_new_tokens=100000 leaves 0 of sequence_len=512 tokens for the prompt, which needs",
        ),
    ):
        with pytest.raises(SystemExit) as error:
            nextquill(["prompts", *arguments])
        assert message in str(error.value.code) + capsys.readouterr().err, arguments

    data_files = yaml.safe_load(recipes["amazon"].read_text())
    folder = recipes["amazon"].parent / "amazon"
    data_files["datasets"][0] |= {"path": "json", "data_files": [str(folder / "train.jsonl")]}
    path = tmp_path / "data_files.yml"
    path.write_text(yaml.safe_dump(data_files))
    assert render_prompts(PromptsRequest(recipe=str(path), limit=1)) == render_prompts(
        PromptsRequest(recipe=recipe, limit=1)
    )


def test_the_recipes_chat_template_renders_the_prompts_as_in_training(recipes, tmp_path, capsys):
    """Without --checkpoint, prompts (and evaluate, inspect) used the base model's template
    where training used the recipe's `chat_template` (an adversarial pass found it)."""
    recipe = yaml.safe_load(recipes["amazon"].read_text())
    template = (
        "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<<assistant>>{% endif %}"
    )
    path = tmp_path / "own_template.yml"
    # chat_template_jinja alone: Axolotl sets chat_template: jinja itself (it was ignored here)
    for keys in ({"chat_template": "jinja"}, {}):
        path.write_text(yaml.safe_dump({**recipe, **keys, "chat_template_jinja": template}))
        nextquill(["prompts", str(path), "--limit", "1"])
        assert "<<user>>" in capsys.readouterr().out, keys
