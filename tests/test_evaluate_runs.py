"""`nextquill evaluate` for every recipe: the dataset-type contract, several processes, scoring again."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nextquill_common.jsonl import read_jsonl, write_jsonl
from nextquill_plugin.demo.local_runs import offline_env

from .evaluation_helpers import PLUGIN, evaluate, paired_rows_of


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


@pytest.mark.slow
def test_paired_and_mixed_recipes_are_evaluated(recipes, tmp_path, synthetic_splits):
    paired = evaluate(recipes["paired"], tmp_path / "paired")
    assert paired["n"] == 8 and paired["dataset_type"] == "dataset_formats.paired"
    predictions = read_jsonl(tmp_path / "paired" / "predictions.jsonl")
    assert [p["reference"] for p in predictions] == [
        r["target"]["text"] for r in synthetic_splits["test"][:8]
    ]
    mixed = evaluate(recipes["mixed"], tmp_path / "mixed")
    assert mixed["dataset_type"] == "dataset_formats.amazon_reviews" and mixed["n"] == 8
    assert mixed["data"].endswith("amazon/test.jsonl")


@pytest.mark.slow
def test_two_processes_generate_exactly_what_one_does(recipes, tmp_path):
    one = tmp_path / "one"
    evaluate(recipes["amazon"], one)
    two = tmp_path / "two"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    command += ["-m", "nextquill_plugin.cli", "evaluate", str(recipes["amazon"]), "--out", str(two)]
    command += ["--max-new-tokens", "16", "--bootstrap", "30", "--batch-size", "3"]
    result = subprocess.run(
        command, capture_output=True, text=True, env=offline_env(1), timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((two / "metrics.json").read_text())["processes"] == 2
    first = read_jsonl(one / "predictions.jsonl")
    second = read_jsonl(two / "predictions.jsonl")
    assert [r["prediction"] for r in second] == [r["prediction"] for r in first]
    assert second == first  # same order, same scores
    assert list(two.glob("predictions.partial*")) == []


@pytest.mark.slow
def test_score_only_rescores_existing_predictions(recipes, tmp_path):
    out = tmp_path / "eval"
    first = evaluate(recipes["amazon"], out)
    records = read_jsonl(out / "predictions.jsonl")
    records[0]["prediction"] = records[0]["reference"]  # a perfect first prediction
    write_jsonl(out / "predictions.jsonl", records)
    again = evaluate(recipes["amazon"], out, "--score-only")
    assert again["scored_again"] and again["generation"] == first["generation"]
    rescored = read_jsonl(out / "predictions.jsonl")
    assert rescored[0]["rouge1"] == pytest.approx(1.0)
    mean = np.mean([r["rouge1"] for r in rescored])
    assert again["metrics"]["rouge1"]["value"] == pytest.approx(mean)
    with pytest.raises(SystemExit, match="predictions.jsonl does not exist"):
        evaluate(recipes["amazon"], tmp_path / "nothing", "--score-only")
