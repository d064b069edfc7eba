"""Evaluation checks what can fail before the model loads, never loses or mixes up work (torn
partial lines, evaluations of other settings, partial files of another evaluation) and resumes
after a kill with the uninterrupted result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

import nextquill_plugin.evaluation.evaluate as evaluate
from nextquill_common.jsonl import append_jsonl, read_jsonl, write_jsonl
from nextquill_plugin.cli import main as nextquill
from nextquill_plugin.evaluation.evaluate import check_history_kept
from nextquill_plugin.evaluation.generation import GenerationSettings
from nextquill_plugin.evaluation.predictions_store import PartialPredictions

QUICK = ["--max-new-tokens", "8", "--bootstrap", "20", "--limit", "3"]


def test_evaluate_checks_wordnet_before_loading_the_model(tmp_path, monkeypatch):
    def missing():
        raise RuntimeError("METEOR needs WordNet: run nextquill setup-wordnet")

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the requirements were checked")

    rows = write_jsonl(tmp_path / "test.jsonl", [{"user_id": "u", "target": {"text": "x"}}])
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        "base_model: nowhere\nnextquill: true\ndatasets:\n"
        f"  - path: {rows}\n    type: dataset_formats.amazon_reviews\n"
    )
    monkeypatch.setattr(evaluate, "require_wordnet", missing)
    monkeypatch.setattr(evaluate, "load_model_for_generation", no_model)
    request = evaluate.EvaluationRequest(recipe=str(recipe), out=str(tmp_path / "eval"))
    with pytest.raises(RuntimeError, match="setup-wordnet"):
        evaluate.run_evaluation(request, evaluate.GenerationSettings(), show_progress=False)


def test_evaluate_reports_bad_input_plainly(recipes, tmp_path):
    recipe = str(recipes["amazon"])
    with pytest.raises(SystemExit, match="neither adapter_config.json"):
        nextquill(["evaluate", recipe, "--checkpoint", str(tmp_path)])
    with pytest.raises(SystemExit, match="must be smaller than the recipe's sequence_len"):
        nextquill(["evaluate", recipe, "--max-new-tokens", "600"])
    with pytest.raises(SystemExit, match="validation.jsonl does not exist"):
        nextquill(["evaluate", recipe, "--split", "validation"])
    with pytest.raises(SystemExit, match="recipe .*missing.yml does not exist"):
        nextquill(["evaluate", str(tmp_path / "missing.yml")])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--cos-gamma", "nan"], "cos_gamma must be a finite number"),
        (["--repetition-penalty", "inf"], "repetition_penalty must be a finite number"),
        (["--bootstrap", "0"], "--bootstrap must be >= 1"),
        (["--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_evaluate_refuses_values_that_cannot_work(recipes, tmp_path, capsys, arguments, message):
    """A value that cannot work is a wrong command line: exit 2 with the usage (it was 1)."""
    with pytest.raises(SystemExit) as error:
        nextquill(["evaluate", str(recipes["amazon"]), "--out", str(tmp_path / "e"), *arguments])
    err = capsys.readouterr().err
    assert error.value.code == 2 and "usage: nextquill evaluate" in err and message in err
    assert not (tmp_path / "e").exists()


def test_rows_that_lose_their_history_are_reported_and_cos_without_any_is_refused(capsys):
    settings = GenerationSettings(max_new_tokens=256)
    check_history_kept(0, 5, settings, 512)
    assert capsys.readouterr().err == ""
    check_history_kept(2, 5, settings, 512)
    assert "WARNING: 2 of 5 rows lost their whole history" in capsys.readouterr().err
    check_history_kept(5, 5, settings, 512)  # plain decoding of history-less prompts: a warning
    with pytest.raises(ValueError, match="no row keeps any history.*--cos-gamma"):
        check_history_kept(5, 5, GenerationSettings(max_new_tokens=256, cos_gamma=1.0), 512)


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
    """The README's sequence without --out: the plain run, the CoS run and a run of fewer rows
    all survive (a second --limit silently replaced the first's results)."""
    monkeypatch.chdir(tmp_path)
    recipe = str(recipes["amazon"])
    nextquill(["evaluate", recipe, *QUICK, "--name", "plain"])
    nextquill(["evaluate", recipe, *QUICK, "--cos-gamma", "1", "--name", "CoS"])
    nextquill(["evaluate", recipe, *QUICK, "--limit", "2", "--name", "two rows"])
    folders = sorted(p.name for p in (tmp_path / "outputs" / "base_model").iterdir())
    assert folders == [
        "eval-test-max_new_tokens-8-cos_gamma-1-limit-3",
        "eval-test-max_new_tokens-8-limit-2",
        "eval-test-max_new_tokens-8-limit-3",
    ]
    names = [
        json.loads((tmp_path / "outputs" / "base_model" / f / "metrics.json").read_text())["name"]
        for f in folders
    ]
    assert names == ["CoS", "two rows", "plain"]
    # The same folder named with --out for other settings or rows is refused, left as it was.
    plain = tmp_path / "outputs" / "base_model" / "eval-test-max_new_tokens-8-limit-3"
    before = (plain / "metrics.json").read_bytes()
    with pytest.raises(SystemExit, match="results of another evaluation.*--out"):
        nextquill(["evaluate", recipe, *QUICK, "--cos-gamma", "2", "--out", str(plain)])
    with pytest.raises(SystemExit, match="results of another evaluation.*--out"):
        nextquill(["evaluate", recipe, *QUICK, "--limit", "2", "--out", str(plain)])
    assert (plain / "metrics.json").read_bytes() == before
    nextquill(["evaluate", recipe, *QUICK, "--out", str(plain), "--name", "again"])  # same run
    mine = tmp_path / "mine"  # a user's own predictions.jsonl: it was written over, exit 0
    mine.mkdir()
    (mine / "predictions.jsonl").write_text('{"mine": 1}\n')
    with pytest.raises(SystemExit, match="predictions.jsonl without the metrics.json"):
        nextquill(["evaluate", recipe, *QUICK, "--out", str(mine)])
    assert (mine / "predictions.jsonl").read_text() == '{"mine": 1}\n'


def test_partial_predictions_of_another_evaluation_are_refused_not_deleted(recipes, tmp_path):
    out = tmp_path / "eval"
    partial = out / "predictions.partial.rank0.jsonl"
    out.mkdir()
    append_jsonl(partial, [{"run": "other", "index": 0, "prompt_id": "x", "tokens": [1]}])
    with pytest.raises(SystemExit, match="partial predictions of another evaluation"):
        nextquill(["evaluate", str(recipes["amazon"]), *QUICK, "--out", str(out)])
    assert read_jsonl(partial) == [{"run": "other", "index": 0, "prompt_id": "x", "tokens": [1]}]


@pytest.mark.slow
def test_a_killed_evaluation_resumes_and_gives_the_uninterrupted_result(
    tmp_path, tiny_model_dir, synthetic_splits
):
    folder = tmp_path / "data"
    write_jsonl(folder / "train.jsonl", synthetic_splits["train"][:2])
    write_jsonl(folder / "test.jsonl", synthetic_splits["test"][:12])
    recipe = folder / "recipe.yml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "base_model": str(tiny_model_dir),
                "plugins": ["nextquill_plugin.NextQuillPlugin"],
                "nextquill": True,
                "nextquill_history_k": 2,
                "sequence_len": 512,
                "datasets": [
                    {"path": str(folder / "train.jsonl"), "type": "dataset_formats.amazon_reviews"}
                ],
            }
        )
    )
    command = [sys.executable, "-m", "nextquill_plugin.cli", "evaluate", str(recipe)]
    command += ["--max-new-tokens", "24", "--batch-size", "2", "--bootstrap", "20"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    whole = tmp_path / "whole"
    done = subprocess.run([*command, "--out", str(whole)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    partial = out / "predictions.partial.rank0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if partial.exists() and len(partial.read_text().splitlines()) >= 4:
            process.kill()
            break
        time.sleep(0.05)
    process.wait()
    assert process.returncode != 0, "the run finished before it could be killed"
    assert not (out / "predictions.jsonl").exists()
    kept = len(partial.read_text().splitlines())
    resumed = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {kept} of 12 rows already generated" in resumed.stdout
    assert (out / "predictions.jsonl").read_text() == (whole / "predictions.jsonl").read_text()
    assert not partial.exists()
    assert json.loads((out / "metrics.json").read_text())["rows_resumed"] == kept
