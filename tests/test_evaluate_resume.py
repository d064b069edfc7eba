"""Evaluation checks its requirements first and resumes after a kill with the same result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from nextquill_common.jsonl import write_jsonl


def test_evaluate_checks_wordnet_before_loading_the_model(tmp_path, monkeypatch):
    import nextquill_plugin.evaluation.evaluate as evaluate

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


@pytest.mark.slow
def test_a_killed_evaluation_resumes_and_gives_the_uninterrupted_result(
    tmp_path, tiny_model_dir, synthetic_splits
):
    import yaml

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
