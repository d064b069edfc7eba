"""What `nextquill evaluate` writes, for every recipe: predictions.jsonl and metrics.json (the
same with two processes as with one), their scores recomputed with --score-only, and the rows
that lost their history counted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from nextquill_common.jsonl import read_jsonl, write_jsonl
from nextquill_plugin.cli import main as nextquill
from nextquill_plugin.demo.local_runs import offline_env
from nextquill_plugin.evaluation.compare import load_run
from nextquill_plugin.evaluation.metrics import evaluate_texts
from nextquill_plugin.evaluation.recipe_data import evaluated_dataset, read_rows, split_path

from .evaluation_helpers import QUICK_EVALUATION, UNTUNED_RUN, evaluate


def test_evaluate_command_writes_predictions_and_metrics(untuned_run, synthetic_splits):
    predictions = read_jsonl(untuned_run / "predictions.jsonl")
    test_rows = synthetic_splits["test"][:8]
    assert [p["user_id"] for p in predictions] == [r["user_id"] for r in test_rows]
    assert [p["reference"] for p in predictions] == [r["target"]["text"] for r in test_rows]
    assert len({p["prompt_id"] for p in predictions}) == len(predictions)
    document = json.loads((untuned_run / "metrics.json").read_text())
    assert document["name"] == "untuned" and document["n"] == 8
    assert document["generation"]["repetition_penalty"] == 1.2
    assert document["generation"]["penalty_scope"] == "generated"
    recomputed = evaluate_texts(
        [p["prediction"] for p in predictions], [p["reference"] for p in predictions]
    )
    for name, estimate in recomputed.metrics.items():
        assert document["metrics"][name]["value"] == pytest.approx(estimate.value), name
    assert load_run(untuned_run).name == "untuned"


def test_an_evaluation_without_history_says_so_in_metrics(recipes, tiny_tokenizer, tmp_path):
    from dataset_formats.amazon_reviews import load

    recipe = yaml.safe_load(recipes["amazon"].read_text())
    strategy = load(tiny_tokenizer, recipe)
    row = read_rows(split_path(evaluated_dataset(recipe), "test"), 1)[0]
    # The largest generation budget at which the first row keeps no history but still fits.
    budget = next(
        m
        for m in range(recipe["sequence_len"] - 2, 0, -1)
        if not _raises(strategy.generation_prompts, row, m)
        and strategy.generation_prompts(row, m)["history_kept"] == 0
    )
    out = tmp_path / "eval"
    nextquill(
        ["evaluate", str(recipes["amazon"]), "--max-new-tokens", str(budget), "--limit", "1"]
        + ["--bootstrap", "5", "--out", str(out)]
    )
    assert json.loads((out / "metrics.json").read_text())["rows_without_history"] == 1


def _raises(function, *args) -> bool:
    try:
        function(*args)
    except ValueError:
        return True
    return False


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
def test_two_processes_generate_exactly_what_one_does(recipes, untuned_run, tmp_path):
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
    command += [*QUICK_EVALUATION, *UNTUNED_RUN]
    result = subprocess.run(
        command, capture_output=True, text=True, env=offline_env(1), timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((two / "metrics.json").read_text())["processes"] == 2
    first = read_jsonl(untuned_run / "predictions.jsonl")
    second = read_jsonl(two / "predictions.jsonl")
    assert [r["prediction"] for r in second] == [r["prediction"] for r in first]
    assert second == first  # same order, same scores
    assert list(two.glob("predictions.partial*")) == []


@pytest.mark.slow
def test_score_only_rescores_existing_predictions(recipes, untuned_run, tmp_path):
    out = tmp_path / "eval"
    shutil.copytree(untuned_run, out)  # the shared run stays as it was
    first = json.loads((out / "metrics.json").read_text())
    records = read_jsonl(out / "predictions.jsonl")
    records[0]["prediction"] = records[0]["reference"]  # a perfect first prediction
    write_jsonl(out / "predictions.jsonl", records)
    score_only = ["evaluate", str(recipes["amazon"]), "--out", str(out), "--score-only"]
    # generation options would do nothing: refused (they were accepted without a word)
    with pytest.raises(SystemExit) as error:
        nextquill([*score_only, "--max-new-tokens", "4"])
    assert error.value.code == 2
    nextquill([*score_only, "--bootstrap", "30", "--name", "renamed"])  # --name was ignored
    again = json.loads((out / "metrics.json").read_text())
    assert again["scored_again"] and again["generation"] == first["generation"]
    assert again["name"] == "renamed"
    rescored = read_jsonl(out / "predictions.jsonl")
    assert rescored[0]["rouge1"] == pytest.approx(1.0)
    mean = np.mean([r["rouge1"] for r in rescored])
    assert again["metrics"]["rouge1"]["value"] == pytest.approx(mean)
    with pytest.raises(SystemExit, match="predictions.jsonl does not exist"):
        nextquill(
            ["evaluate", str(recipes["amazon"]), "--out", str(tmp_path / "nothing"), "--score-only"]
        )


def test_a_repeated_row_is_named_with_the_rule_its_id_follows(recipes, tmp_path, synthetic_splits):
    """ "rows share prompt ids; give each row a distinct id" named no row, and an id field does
    not name an amazon_reviews row."""
    row = synthetic_splits["test"][0]
    data = write_jsonl(tmp_path / "dup.jsonl", [row, synthetic_splits["test"][1], row])
    expected = f"rows 1 and 3 have the same prompt id '{row['user_id']}/{row['target']['item_id']}'"
    with pytest.raises(SystemExit, match=expected + r" \(a row's id is user_id/target item_id\)"):
        nextquill(
            ["evaluate", str(recipes["amazon"]), "--data", str(data), "--out", str(tmp_path / "e")]
        )


def test_an_edited_recipe_is_another_evaluation(recipes, tmp_path):
    """With nextquill_history_k edited in the recipe, a rerun resumed the old rows and labelled
    them with the new setting (exit 0): the run's identity held the recipe's path only."""
    recipe = tmp_path / "r.yml"
    recipe.write_text(recipes["amazon"].read_text())
    out = tmp_path / "eval"
    evaluate(recipe, out, "--limit", "2")
    recipe.write_text(
        recipe.read_text().replace("nextquill_history_k: 2", "nextquill_history_k: 1")
    )
    with pytest.raises(SystemExit, match="holds the results of another evaluation"):
        evaluate(recipe, out, "--limit", "2")
