"""Evaluation never loses or mixes up work: torn partial lines, evaluations of other settings,
rows that lose their history to the generation budget, and values that cannot work."""

from __future__ import annotations

import json

import pytest

from nextquill_common.jsonl import append_jsonl, read_jsonl
from nextquill_plugin.cli import main as nextquill
from nextquill_plugin.evaluation.evaluate import check_history_kept
from nextquill_plugin.evaluation.generation import GenerationSettings
from nextquill_plugin.evaluation.predictions_store import PartialPredictions

QUICK = ["--max-new-tokens", "8", "--bootstrap", "20", "--limit", "3"]


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path):
    ids = ["a", "b", "c", "d"]
    store = PartialPredictions(tmp_path, "key", ids)
    append_jsonl(
        store.path, [{"run": "key", "index": i, "prompt_id": ids[i], "tokens": [i]} for i in (0, 1)]
    )
    with open(store.path, "ab") as handle:  # killed in the middle of the third record
        handle.write(b'{"run": "key", "index": 2, "prompt_id": "c", "tok')
    assert store.resume() == {0: [0], 1: [1]}
    store.keep([2, 3], [[2], [3]])
    records = read_jsonl(store.path)  # strict: a glued line would raise here
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert store.complete(4) == [[0], [1], [2], [3]]


def test_evaluations_of_other_settings_get_their_own_folders(recipes, tmp_path, monkeypatch):
    """The README's sequence without --out: the plain run and the CoS run both survive."""
    monkeypatch.chdir(tmp_path)
    recipe = str(recipes["amazon"])
    nextquill(["evaluate", recipe, *QUICK, "--name", "plain"])
    nextquill(["evaluate", recipe, *QUICK, "--cos-gamma", "1", "--name", "CoS"])
    folders = sorted(p.name for p in (tmp_path / "outputs" / "base_model").iterdir())
    assert folders == ["eval-test-max_new_tokens-8", "eval-test-max_new_tokens-8-cos_gamma-1"]
    names = [
        json.loads((tmp_path / "outputs" / "base_model" / f / "metrics.json").read_text())["name"]
        for f in folders
    ]
    assert names == ["plain", "CoS"]
    # The same folder named with --out for other settings is refused, and left as it was.
    plain = tmp_path / "outputs" / "base_model" / "eval-test-max_new_tokens-8"
    before = (plain / "metrics.json").read_bytes()
    with pytest.raises(SystemExit, match="results of another evaluation.*--out"):
        nextquill(["evaluate", recipe, *QUICK, "--cos-gamma", "2", "--out", str(plain)])
    assert (plain / "metrics.json").read_bytes() == before
    nextquill(["evaluate", recipe, *QUICK, "--out", str(plain), "--name", "again"])  # same run


def test_partial_predictions_of_another_evaluation_are_refused_not_deleted(recipes, tmp_path):
    out = tmp_path / "eval"
    partial = out / "predictions.partial.rank0.jsonl"
    out.mkdir()
    append_jsonl(partial, [{"run": "other", "index": 0, "prompt_id": "x", "tokens": [1]}])
    with pytest.raises(SystemExit, match="partial predictions of another evaluation"):
        nextquill(["evaluate", str(recipes["amazon"]), *QUICK, "--out", str(out)])
    assert read_jsonl(partial) == [{"run": "other", "index": 0, "prompt_id": "x", "tokens": [1]}]


def test_rows_that_lose_their_history_are_reported_and_cos_without_any_is_refused(capsys):
    settings = GenerationSettings(max_new_tokens=256)
    check_history_kept(0, 5, settings, 512)
    assert capsys.readouterr().err == ""
    check_history_kept(2, 5, settings, 512)
    assert "WARNING: 2 of 5 rows lost their whole history" in capsys.readouterr().err
    check_history_kept(5, 5, settings, 512)  # plain decoding of history-less prompts: a warning
    with pytest.raises(ValueError, match="no row keeps any history.*--cos-gamma"):
        check_history_kept(5, 5, GenerationSettings(max_new_tokens=256, cos_gamma=1.0), 512)


def test_an_evaluation_without_history_says_so_in_metrics(recipes, tiny_tokenizer, tmp_path):
    import yaml

    from dataset_formats.amazon_reviews import load
    from nextquill_plugin.evaluation.recipe_data import evaluated_dataset, read_rows, split_path

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


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--cos-gamma", "nan"], "cos_gamma must be a finite number"),
        (["--repetition-penalty", "inf"], "repetition_penalty must be a finite number"),
        (["--bootstrap", "0"], "--bootstrap must be >= 1"),
        (["--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_evaluate_refuses_values_that_cannot_work(recipes, tmp_path, arguments, message):
    with pytest.raises(SystemExit, match=message):
        nextquill(["evaluate", str(recipes["amazon"]), "--out", str(tmp_path / "e"), *arguments])
    assert not (tmp_path / "e").exists()


def test_inspect_and_compare_refuse_counts_below_one(recipes, tmp_path, capsys):
    with pytest.raises(SystemExit, match="--samples must be >= 0"):
        nextquill(["inspect", str(recipes["amazon"]), "--samples", "-1", "--out", str(tmp_path)])
    for resamples in ("0", "-5"):
        with pytest.raises(SystemExit) as error:
            nextquill(["compare", str(tmp_path), "--resamples", resamples])
        assert error.value.code == 2
        assert "must be >= 1" in capsys.readouterr().err
