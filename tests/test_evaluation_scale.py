"""Evaluation for every recipe and at scale: the dataset-type contract, several processes,
scoring again, paired significance, and pictures that do not mislead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nextquill_common.jsonl import read_jsonl, write_jsonl
from nextquill_plugin.cli import main as nextquill

PLUGIN = ["nextquill_plugin.NextQuillPlugin"]
ROOT = Path(__file__).resolve().parents[1]


def paired_rows_of(synthetic_rows: list[dict]) -> list[dict]:
    """The same users as `dataset_formats.paired` rows (query, history texts, response)."""
    return [
        {
            "id": f"{row['user_id']}-{i}",
            "query": f"Review {row['target']['item_title']}",
            "history": [h["text"] for h in row["history"][-3:]],
            "response": row["target"]["text"],
        }
        for i, row in enumerate(synthetic_rows)
    ]


@pytest.fixture(scope="module")
def recipes(tmp_path_factory, tiny_model_dir, synthetic_splits):
    """An amazon_reviews recipe, a paired recipe, and recipes/mixed_example.yml with local paths."""
    folder = tmp_path_factory.mktemp("recipes")
    amazon, paired = folder / "amazon", folder / "paired"
    for split in ("train", "test"):
        write_jsonl(amazon / f"{split}.jsonl", synthetic_splits[split][:8])
        write_jsonl(paired / f"{split}.jsonl", paired_rows_of(synthetic_splits[split][:8]))
    common = {
        "base_model": str(tiny_model_dir),
        "plugins": PLUGIN,
        "nextquill": True,
        "nextquill_history_k": 2,
        "sequence_len": 512,
    }
    made = {}
    for name, data, kind in (("amazon", amazon, "amazon_reviews"), ("paired", paired, "paired")):
        dataset = {"path": str(data / "train.jsonl"), "type": f"dataset_formats.{kind}"}
        made[name] = folder / f"{name}.yml"
        made[name].write_text(yaml.safe_dump({**common, "datasets": [dataset]}))
    mixed = yaml.safe_load((ROOT / "recipes" / "mixed_example.yml").read_text())
    mixed["datasets"][0]["path"] = str(folder / "instructions.jsonl")
    mixed["datasets"][1]["path"] = str(amazon / "train.jsonl")
    mixed.update(common)
    made["mixed"] = folder / "mixed.yml"
    made["mixed"].write_text(yaml.safe_dump(mixed))
    return made


def evaluate(recipe: Path, out: Path, *extra: str) -> dict:
    nextquill(
        ["evaluate", str(recipe), "--out", str(out), "--max-new-tokens", "16"]
        + ["--bootstrap", "30", "--batch-size", "3", *extra]
    )
    return json.loads((out / "metrics.json").read_text())


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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((two / "metrics.json").read_text())["processes"] == 2
    first = read_jsonl(one / "predictions.jsonl")
    second = read_jsonl(two / "predictions.jsonl")
    assert [r["prediction"] for r in second] == [r["prediction"] for r in first]
    assert second == first  # same order, same scores
    assert list(two.glob("predictions.partial*")) == []


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


# ------------------------------------------------------------------------ significance


def records(values: list[float], users: list[str] | None = None) -> list[dict]:
    users = users or [f"u{i}" for i in range(len(values))]
    return [
        {
            "prompt_id": f"{user}/{i}",
            "user_id": user,
            "prediction": "the cat sat on the mat" if v else "a dog",
            "reference": "the cat sat on the mat",
            "rouge1": v,
            "rougeL": v,
            "meteor": v,
        }
        for i, (user, v) in enumerate(zip(users, values, strict=True))
    ]


def test_paired_interval_by_hand():
    """Two users with differences 0 and 2: a resample's mean is 0, 1 or 2 with probability
    1/4, 1/2, 1/4, so the 95% interval is [0, 2] (includes 0); with 1 and 3 it is [1, 3]."""
    from nextquill_plugin.evaluation.significance import paired_differences

    baseline = records([0.0, 0.0])
    (rouge1, *_rest) = paired_differences(records([0.0, 2.0]), baseline, resamples=2000)
    assert (rouge1.metric, rouge1.mean, rouge1.ci_low, rouge1.ci_high) == ("rouge1", 1.0, 0.0, 2.0)
    assert not rouge1.significant
    (rouge1, *_rest) = paired_differences(records([1.0, 3.0]), baseline, resamples=2000)
    assert (rouge1.mean, rouge1.ci_low, rouge1.ci_high) == (2.0, 1.0, 3.0)
    assert rouge1.significant
    # Paired: users differ by 10 but every user gains exactly 1, so every resample's mean
    # difference is 1 (resampling the two methods independently would give a wide interval).
    (rouge1, *_rest) = paired_differences(
        records([1.0, 11.0, 1.0, 11.0]), records([0.0, 10.0, 0.0, 10.0]), resamples=500
    )
    assert (rouge1.mean, rouge1.ci_low, rouge1.ci_high) == (1.0, 1.0, 1.0)


def test_users_are_resampled_jointly_and_rows_of_a_user_are_averaged():
    from nextquill_plugin.evaluation.significance import paired_differences

    users = ["a", "a", "b"]
    method = records([1.0, 0.0, 1.0], users)  # per user: a 0.5, b 1.0
    baseline = records([0.0, 0.0, 0.0], users)
    differences = {d.metric: d for d in paired_differences(method, baseline, resamples=500)}
    assert differences["meteor"].mean == pytest.approx(0.75) and differences["meteor"].users == 2
    assert differences["meteor"].ci_low == pytest.approx(0.5)
    assert differences["meteor"].ci_high == pytest.approx(1.0)
    # BLEU: the method's corpus of all rows against the baseline's
    assert differences["bleu"].mean > 0
    with pytest.raises(ValueError, match="same prompts"):
        paired_differences(method[:2], baseline, resamples=10)


def test_bleu_of_a_subset_equals_sacrebleu_through_its_public_api():
    from sacrebleu.metrics import BLEU

    from nextquill_plugin.evaluation.metrics import CorpusBleu

    predictions = ["the cat sat on the mat", "a dog ran", "hello there world", "the end"]
    references = ["the cat is on the mat", "the dog ran away", "hello world", "the end of it"]
    bleu = CorpusBleu(predictions, references)
    subset = np.array([0, 2, 2, 3])
    expected = BLEU().corpus_score(
        [predictions[i] for i in subset], [[references[i] for i in subset]]
    )
    assert bleu.score(subset) == pytest.approx(expected.score)
    assert bleu.score() == pytest.approx(BLEU().corpus_score(predictions, [references]).score)


def test_compare_prints_paired_differences_against_the_baseline(recipes, tmp_path, capsys):
    evaluate(recipes["amazon"], tmp_path / "a", "--name", "A")
    evaluate(recipes["amazon"], tmp_path / "b", "--name", "B", "--repetition-penalty", "1.0")
    capsys.readouterr()
    nextquill(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--baseline", "A"])
    output = capsys.readouterr().out
    assert "Per-user difference from A" in output
    differences = output.split("Per-user difference from A", 1)[1]
    (row,) = [line for line in differences.splitlines() if line.startswith("| B |")]
    assert row.count("[") == 4  # an interval for each metric


# ------------------------------------------------------------------------ pictures


def view(tokens, effects, special=None):
    from nextquill_plugin.evaluation.inspection import TokenView

    effects = np.array(effects, dtype=np.float32)
    return TokenView(
        prompt_id="u/1",
        tokens=tokens,
        special=np.array(special or [False] * len(tokens)),
        p_with=np.zeros_like(effects),
        p_without=np.zeros_like(effects),
        effects=effects,
        weights=np.where(effects > 0.05, 0.9, 0.1),
        preference=effects > 0.05,
    )


def test_token_chart_counts_shares_and_leaves_out_special_tokens():
    from nextquill_plugin.evaluation.inspection import preference_token_rates

    views = [
        view([" The", " jazz", "<eos>"], [0.1, 0.3, 0.9], [False, False, True]),
        view([" The", " jazz", " The"], [0.0, 0.2, 0.0]),
        view([" The", " jazz", " once"], [0.0, 0.4, 0.9]),
    ]
    rates = preference_token_rates(views, min_occurrences=2)
    assert [(r.token, r.preference, r.occurrences) for r in rates] == [
        ("jazz", 3, 3),
        ("The", 1, 4),
    ]
    assert rates[1].rate == 0.25  # "The" is frequent but rarely marked; "once" is seen once


def test_summary_traces_lambda_tokens_back_to_rows_and_reports_each_model():
    from nextquill_plugin.evaluation.inspection import preference_token_rates, summary

    first = [view([" The", " jazz"], [0.0, 0.3]), view([" once", " more"], [0.9, 0.01])]
    first[1].prompt_id = "u/2"
    other = [view([" The", " jazz"], [0.0, 0.0]), view([" once", " more"], [0.0, 0.0])]
    numbers = summary({"theta_0": first, "other": other}, preference_token_rates(first, 1), 0.05)
    assert numbers["rows"] == [
        {"row": 0, "prompt_id": "u/1", "lambda_tokens": [" jazz"]},
        {"row": 1, "prompt_id": "u/2", "lambda_tokens": [" once"]},
    ]
    assert numbers["models"]["theta_0"]["lambda_share"] == 0.5  # 2 of 4 tokens
    assert numbers["models"]["other"]["lambda_share"] == 0.0


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from nextquill_plugin.evaluation.inspection import (
        TokenRate,
        plot_difference_histogram,
        plot_preference_tokens,
    )

    before = matplotlib.get_backend()
    plot_difference_histogram({"m": np.array([0.1, -0.2, 0.3])}, tmp_path / "h.png", "t")
    plot_preference_tokens([TokenRate("jazz", 4, 3)], tmp_path / "p.png", "t")
    assert matplotlib.get_backend() == before
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_terminal_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    from nextquill_plugin.evaluation.inspection import render_terminal, use_colour

    class Terminal:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Terminal()) and not use_colour(open(os.devnull, "w"))  # noqa: SIM115
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Terminal())
    views = [view([" I", " love", " jazz"], [0.0, 0.01, 0.5])]
    plain = render_terminal(views, delta=0.05, colour=False)
    assert "\x1b[" not in plain and "[ jazz]" in plain
    assert render_terminal(views, delta=0.05).count("\x1b[48;2;") == 3


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
