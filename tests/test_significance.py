"""Paired per-user differences with bootstrap intervals, and `nextquill compare`."""

from __future__ import annotations

import numpy as np
import pytest

from nextquill_plugin.cli import main as nextquill

from .evaluation_helpers import evaluate


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
