"""Nothing lost, nothing silently wrong: output folders, interrupted runs, bad files and values."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dataset_formats.build import BuildError, BuildOptions, build
from dataset_formats.build.output import aside_path
from nextquill_common.jsonl import write_jsonl

from .test_builder import SMALL, item, raw_fixture, read_split, review

# ------------------------------------------------------------------------ builder output


def build_fixture(tmp_path: Path, out: Path, options: BuildOptions = SMALL):
    reviews, meta = raw_fixture(tmp_path)
    return build([reviews], [meta], out, options)


def test_build_refuses_a_folder_it_did_not_write_and_leaves_it_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not a previous build of nextquill-data"):
        build_fixture(tmp_path, out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_build_into_the_current_folder_is_refused(tmp_path, monkeypatch):
    reviews, meta = raw_fixture(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BuildError, match="not a previous build"):
        build([reviews], [meta], Path("."), SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_previous_build_is_replaced_whole_and_a_failed_build_keeps_it(tmp_path, monkeypatch):
    out = tmp_path / "out"
    build_fixture(tmp_path, out)
    first = read_split(out, "train")
    import dataset_formats.build as builder

    def fail(*_args, **_kwargs):
        raise BuildError("the machine went away")

    monkeypatch.setattr(builder, "write_splits", fail)
    with pytest.raises(BuildError, match="went away"):
        build_fixture(tmp_path, out, BuildOptions(**{**SMALL.__dict__, "max_history": 1}))
    assert read_split(out, "train") == first  # the old build, untouched
    monkeypatch.undo()
    build_fixture(tmp_path, out, BuildOptions(**{**SMALL.__dict__, "max_history": 1}))
    assert all(len(row["history"]) <= 1 for row in read_split(out, "train"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train.jsonl", "validation.jsonl", "test.jsonl", "stats.json"]
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_swap_interrupted_between_renames_is_recovered_by_the_next_build(tmp_path):
    out = tmp_path / "out"
    build_fixture(tmp_path, out)
    os.replace(out, aside_path(out))  # killed after renaming the old build aside
    report = build_fixture(tmp_path, out)
    assert report.users and (out / "stats.json").exists()
    assert not aside_path(out).exists()


def test_without_an_atomic_exchange_the_build_is_swapped_through_an_aside_folder(
    tmp_path, monkeypatch
):
    import dataset_formats.build.output as output

    out = tmp_path / "out"
    build_fixture(tmp_path, out)
    renames = []
    real_replace = os.replace

    def recorded(source, target):
        renames.append((Path(source).name, Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(output, "_exchange", lambda *_: False)
    monkeypatch.setattr(output.os, "replace", recorded)
    build_fixture(tmp_path, out, BuildOptions(**{**SMALL.__dict__, "max_history": 1}))
    assert renames[0] == ("out", ".out.previous") and renames[1][1] == "out"
    assert all(len(row["history"]) <= 1 for row in read_split(out, "train"))
    assert not aside_path(out).exists()


def test_work_folders_of_killed_builds_are_removed(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / ".out.building-abc"
    stale.mkdir()
    import socket

    (stale / "owner.json").write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()})
    )
    (stale / "reviews.parquet").write_bytes(b"x" * 1000)
    live = tmp_path / ".out.building-live"
    live.mkdir()
    (live / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    build_fixture(tmp_path, out)
    assert not stale.exists()
    assert live.exists()  # a running build's folder is not touched


def test_a_quote_in_the_output_path_is_data_not_sql(tmp_path):
    out = tmp_path / "it's here"
    assert build_fixture(tmp_path, out).users > 0
    assert read_split(out, "train")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"targets_per_user": 0}, "--targets-per-user"),
        ({"targets_per_user": 2, "validation_targets": 1, "test_targets": 1}, "--targets-per-user"),
        ({"max_history": -1}, "--max-history must be >= 0"),
        ({"memory_limit": "8GB'; DROP"}, "--memory-limit"),
    ],
)
def test_build_options_that_cannot_give_a_build_are_refused(tmp_path, options, message):
    with pytest.raises(BuildError, match=message):
        build_fixture(tmp_path, tmp_path / "out", BuildOptions(**{**SMALL.__dict__, **options}))
    assert not (tmp_path / "out").exists()


def test_bad_items_and_timestamps_are_counted_with_their_line(tmp_path):
    reviews, meta = raw_fixture(tmp_path)
    import gzip

    with gzip.open(meta, "at") as handle:
        handle.write(json.dumps(item(7, ["an int id"])) + "\n")  # meta line 7
        handle.write(json.dumps(item(["I9"], ["a list id"])) + "\n")  # line 8
        handle.write(json.dumps(item("I8", ["a dict title"], title={"x": 1})) + "\n")  # line 9
    with open(reviews, "a") as handle:
        handle.write(json.dumps(review("A", "I1", 1e20)) + "\n")  # line 22
    report = build([reviews], [meta], tmp_path / "out", SMALL)
    assert report.bad_input["item:bad_id"] == ["meta.jsonl.gz:7", "meta.jsonl.gz:8"]
    assert report.bad_input["item:bad_title"] == ["meta.jsonl.gz:9"]
    assert report.bad_input["review:bad_timestamp"] == ["reviews.jsonl:22"]
    assert report.to_json()["accounted"]


def test_quiet_build_prints_nothing(tmp_path):
    reviews, meta = raw_fixture(tmp_path)
    options = [
        "--min-text-chars",
        "10",
        "--min-description-chars",
        "5",
        "--max-description-chars",
        "100",
    ]
    options += ["--min-item-users", "2", "--min-user-reviews", "4", "--max-user-reviews", "6"]
    options += [
        "--targets-per-user",
        "3",
        "--min-profile-item-users",
        "1",
        "--min-profile-reviews",
        "1",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "dataset_formats.build.cli", "build", "--reviews", str(reviews)]
        + ["--meta", str(meta), "--out", str(tmp_path / "out"), "--quiet", *options],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert (tmp_path / "out" / "stats.json").exists()


# ------------------------------------------------------------------------ dataset types


def test_dataset_types_need_the_plugin_registered(tiny_tokenizer):
    from dataset_formats.amazon_reviews import load

    with pytest.raises(ValueError, match="plugins:\n    - nextquill_plugin.NextQuillPlugin"):
        load(tiny_tokenizer, {"sequence_len": 512})  # what Axolotl leaves without the plugin
    load(tiny_tokenizer, {"plugins": ["nextquill_plugin.NextQuillPlugin"], "sequence_len": 512})


BAD_AMAZON_ROWS = [
    ({"target": {"text": 5}}, "target.text must be non-empty text, got int"),
    ({"history": ["a review as a string"]}, "history[0] must be a review object, got str"),
    ({"target_description": ["long"] * 50}, "target.item_description must be text, got list"),
    ({"history_rating": {"stars": 5}}, "history[0].rating must be a number, got dict"),
]


def bad_amazon_row(good: dict, change: dict) -> dict:
    row = json.loads(json.dumps(good))
    if "target" in change:
        row["target"].update(change["target"])
    if "history" in change:
        row["history"] = change["history"]
    if "target_description" in change:
        row["target"]["item_description"] = change["target_description"]
    if "history_rating" in change:
        row["history"][0]["rating"] = change["history_rating"]
    return row


@pytest.mark.parametrize(("change", "message"), BAD_AMAZON_ROWS)
def test_a_bad_amazon_row_is_named_and_skipped_or_stops_in_strict_mode(
    tiny_tokenizer, synthetic_splits, caplog, change, message
):
    from dataset_formats.amazon_reviews import load
    from dataset_formats.strategy import BadRow

    good = synthetic_splits["train"][0]
    row = bad_amazon_row(good, change)
    strategy = load(tiny_tokenizer, {"nextquill": True, "sequence_len": 512})
    assert strategy.filter_rows(good)
    with caplog.at_level(logging.WARNING, logger="axolotl.dataset_formats"):
        assert strategy.filter_rows(row) is False
    assert message in caplog.text and f"user_id={good['user_id']!r}" in caplog.text
    strict = load(
        tiny_tokenizer, {"nextquill": True, "sequence_len": 512, "nextquill_strict_rows": True}
    )
    with pytest.raises(BadRow, match=re.escape(message)):
        strict.filter_rows(row)
    with pytest.raises(BadRow, match="dataset_formats.amazon_reviews row"):
        strategy.tokenize_prompt(row)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"query": "q", "response": 7}, "the response must be text, got int"),
        ({"query": "q", "response": "r", "history": ["ok", 3]}, "history[1] must be text, got int"),
        ({"messages": "not a list", "history": []}, "`messages` must be a list"),
    ],
)
def test_a_bad_paired_row_is_named(tiny_tokenizer, row, message):
    from dataset_formats.paired import load
    from dataset_formats.strategy import BadRow

    strategy = load(tiny_tokenizer, {"nextquill": True, "sequence_len": 512})
    assert strategy.filter_rows(row) is False
    with pytest.raises(BadRow, match=re.escape(message)):
        strategy.tokenize_prompt(row)


def test_a_newest_entry_too_long_alone_does_not_drop_the_others(tiny_tokenizer, synthetic_splits):
    from dataset_formats.amazon_reviews import load
    from dataset_formats.prompting import DROPPED_ALL_HISTORY, SKIPPED_LONG_ENTRY

    row = json.loads(json.dumps(synthetic_splits["train"][0]))
    newest = max(row["history"], key=lambda r: r["timestamp"])
    newest["text"] = "word " * 2000  # far beyond sequence_len on its own
    out = load(
        tiny_tokenizer, {"nextquill": True, "sequence_len": 700, "nextquill_history_k": 3}
    ).tokenize_prompt(row)
    assert out["nq_truncation"] & SKIPPED_LONG_ENTRY
    assert not out["nq_truncation"] & DROPPED_ALL_HISTORY
    assert out["nq_history_kept"] >= 1 and out["cf_input_ids"]
    assert "word word word" not in tiny_tokenizer.decode(out["input_ids"])
    assert len(out["input_ids"]) <= 700


# ------------------------------------------------------------------------ recipe values


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nextquill_alpha": "0.05"}, "nextquill_alpha: Input should be a valid number"),
        ({"nextquill_alpha": "abc"}, "nextquill_alpha: Input should be a valid number"),
        ({"nextquill_delta": float("nan")}, "nextquill_delta: Input should be a finite number"),
        (
            {"nextquill_high_weight": float("inf")},
            "nextquill_high_weight: Input should be a finite",
        ),
        ({"nextquil_alpha": 0.5}, "unknown key nextquil_alpha: did you mean nextquill_alpha?"),
        ({"nextquill_histroy_k": 2}, "did you mean nextquill_history_k?"),
    ],
)
def test_bad_recipe_values_are_refused_naming_the_key(load_recipe, overrides, message):
    with pytest.raises(Exception) as error:
        load_recipe(**overrides)
    assert message in str(error.value)


def test_plugin_keys_on_axolotls_command_line_are_refused():
    from nextquill_plugin.args import refuse_cli_overrides

    with pytest.raises(ValueError, match="--nextquill_alpha on the command line does not reach"):
        refuse_cli_overrides(["/venv/bin/axolotl", "train", "r.yml", "--nextquill_alpha", "0.7"])
    with pytest.raises(ValueError, match="--sweep"):
        refuse_cli_overrides(["/x/axolotl/cli/train.py", "r.yml", "--nextquill_delta=0.1"])
    refuse_cli_overrides(["/venv/bin/axolotl", "train", "r.yml", "--learning_rate", "1e-4"])
    refuse_cli_overrides(["/venv/bin/nextquill", "weights", "r.yml", "--nextquill_alpha", "0.7"])


# ------------------------------------------------------------------------ prepared rows


def test_rows_prepared_by_another_recipe_are_refused(tiny_tokenizer, synthetic_splits):
    from datasets import Dataset

    from dataset_formats.amazon_reviews import load
    from dataset_formats.checks import check_prompt_settings

    rows = synthetic_splits["train"][:3]
    plugin = ["nextquill_plugin.NextQuillPlugin"]
    context_sft = {"plugins": plugin, "nextquill": False, "sequence_len": 512}
    nextquill = {**context_sft, "nextquill": True}
    prepared = Dataset.from_list(
        [load(tiny_tokenizer, context_sft).tokenize_prompt(r) for r in rows]
    )

    class Cfg(dict):
        __getattr__ = dict.get

    check_prompt_settings(Cfg(context_sft), prepared, "train_dataset")  # its own rows
    with pytest.raises(ValueError, match="made with other NextQuill settings"):
        check_prompt_settings(Cfg(nextquill), prepared, "train_dataset")
    other_k = Cfg({**context_sft, "nextquill_history_k": 2})
    with pytest.raises(ValueError, match="dataset_prepared_path"):
        check_prompt_settings(other_k, prepared, "train_dataset")


def test_nextquill_without_a_single_paired_row_is_an_error():
    from datasets import Dataset

    from dataset_formats.checks import describe_rows

    alpaca_only = Dataset.from_list([{"input_ids": [1, 2], "labels": [1, 2]}])
    with pytest.raises(ValueError, match="it would train plain SFT"):
        describe_rows(alpaca_only, "train_dataset")
    describe_rows(alpaca_only, "eval_dataset")  # a warning only


# ------------------------------------------------------------------------ theta_0 cache


@pytest.fixture()
def cached(tiny_model_dir, paired_rows, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from nextquill_plugin.effects_cache import cached_token_effects

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dataset = Dataset.from_list(paired_rows)

    def run():
        return cached_token_effects(model, dataset, tmp_path, model_name="tiny", pad_token_id=0)

    effects, path, computed = run()
    assert computed
    return run, effects, path


def test_a_cache_with_wrong_values_for_the_same_rows_is_recomputed(cached, caplog):
    from nextquill_plugin.effects_cache import load_effects, save_effects
    from nextquill_plugin.token_effects import TokenEffects

    run, effects, path = cached
    _, meta = load_effects(path)
    offsets = effects.offsets.copy()
    offsets[1:-1] += 1  # same row count and total, other rows' lengths
    forged = TokenEffects(np.ones_like(effects.p_with), np.zeros_like(effects.p_without), offsets)
    save_effects(forged, path, meta)
    with caplog.at_level(logging.WARNING):
        again, path2, computed = run()
    assert computed and path2 == path
    assert "does not match this model and data" in caplog.text and str(path) in caplog.text
    assert np.array_equal(again.offsets, effects.offsets)
    assert np.allclose(again.p_with, effects.p_with)
    assert load_effects(path)[0].offsets.tolist() == effects.offsets.tolist()  # replaced


def test_a_truncated_cache_file_is_recomputed_with_its_path_named(cached, caplog):
    run, effects, path = cached
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with caplog.at_level(logging.WARNING):
        again, _, computed = run()
    assert computed and "unreadable" in caplog.text and str(path) in caplog.text
    assert np.allclose(again.p_without, effects.p_without)


# ------------------------------------------------------------------------ evaluation


def test_evaluate_checks_wordnet_before_loading_the_model(tmp_path, monkeypatch):
    import nextquill_plugin.evaluation.evaluate as evaluate
    import nextquill_plugin.evaluation.wordnet_data as wordnet_data

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
    monkeypatch.setattr(wordnet_data, "require_wordnet", missing)
    monkeypatch.setattr(evaluate, "load_model_for_generation", no_model)
    request = evaluate.EvaluationRequest(recipe=str(recipe), out=str(tmp_path / "eval"))
    with pytest.raises(RuntimeError, match="setup-wordnet"):
        evaluate.run_evaluation(request, evaluate.GenerationSettings(), show_progress=False)


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
