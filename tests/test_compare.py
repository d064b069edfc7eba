"""`nextquill compare`: the Table 1/2 comparison (best marked, relative improvement, CSV) and
the paired per-user differences from a baseline with bootstrap intervals."""

from __future__ import annotations

import csv
import io
import json

import pytest

from nextquill_plugin.cli import main as nextquill
from nextquill_plugin.evaluation.compare import RunMetrics, comparison_table
from nextquill_plugin.evaluation.significance import paired_differences

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


def run(name, r1, rl, meteor, bleu, n=100, data="test.jsonl"):
    values = {"rouge1": r1, "rougeL": rl, "meteor": meteor, "bleu": bleu}
    return RunMetrics(name, n, data, values, {k: (v * 0.9, v * 1.1) for k, v in values.items()})


def test_paired_interval_by_hand():
    """Two users with differences 0 and 2: a resample's mean is 0, 1 or 2 with probability
    1/4, 1/2, 1/4, so the 95% interval is [0, 2] (includes 0); with 1 and 3 it is [1, 3]."""
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
    # The same prompt ids over an edited file: the references differ (it reported +24.9%).
    edited = [
        {**r, "reference": r["reference"] + " edited"} if i == 2 else r
        for i, r in enumerate(baseline)
    ]
    with pytest.raises(ValueError, match="other references for 1 of their prompts"):
        paired_differences(method, edited, resamples=10)


def test_compare_markdown_marks_the_best_and_the_relative_improvement():
    runs = [
        run("ContextSFT", 0.1661, 0.0836, 0.2158, 2.1214),
        run("NextQuill", 0.2318, 0.1270, 0.2580, 3.5718),
    ]
    table = comparison_table(runs, baseline="ContextSFT")
    assert table.splitlines()[:4] == [
        "| Method | ROUGE-1 | ROUGE-L | METEOR | BLEU |",
        "|---|---|---|---|---|",
        "| ContextSFT | 0.1661 | 0.0836 | 0.2158 | 2.1214 |",
        "| NextQuill | **0.2318** | **0.1270** | **0.2580** | **3.5718** |",
    ]
    # The paper's Table 2 rounding of the same numbers: +39.6%, +51.9%, +19.6%, +68.4%
    assert table.splitlines()[-1] == "| NextQuill | +39.6% | +51.9% | +19.6% | +68.4% |"


def test_compare_csv_has_intervals_improvements_and_best_flags():
    runs = [run("SFT", 0.2, 0.1, 0.3, 1.0), run("NextQuill", 0.1, 0.2, 0.3, 2.0)]
    rows = list(
        csv.DictReader(
            io.StringIO(comparison_table(runs, baseline="SFT", fmt="csv", intervals=True))
        )
    )
    assert rows[0]["Method"] == "SFT" and rows[0]["ROUGE-1"] == "0.2000"
    assert rows[0]["ROUGE-1 CI"] == "0.1800-0.2200"
    assert rows[1]["BLEU vs SFT"] == "+1.0000"
    assert rows[0]["best"] == "ROUGE-1 METEOR" and rows[1]["best"] == "ROUGE-L METEOR BLEU"
    with pytest.raises(ValueError, match="baseline 'Qwen' is not one of the runs"):
        comparison_table(runs, baseline="Qwen")


def test_compare_command_warns_about_different_data(tmp_path, capsys):
    for name, data in (("a", "test.jsonl"), ("b", "other.jsonl")):
        metrics = {
            m: {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
            for m in ("rouge1", "rougeL", "meteor", "bleu")
        }
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(
            json.dumps({"name": name, "n": 3, "data": data, "metrics": metrics})
        )
    nextquill(
        ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--csv", str(tmp_path / "t.csv")]
    )
    captured = capsys.readouterr()
    assert "not evaluated on the same data" in captured.err
    assert "| a | **0.5000** |" in captured.out
    assert (tmp_path / "t.csv").read_text().startswith("Method,ROUGE-1")


def test_compare_prints_paired_differences_against_the_baseline(
    recipes, untuned_run, tmp_path, capsys
):
    evaluate(recipes["amazon"], tmp_path / "b", "--name", "B", "--repetition-penalty", "1.0")
    capsys.readouterr()
    nextquill(["compare", str(untuned_run), str(tmp_path / "b"), "--baseline", "untuned"])
    output = capsys.readouterr().out
    assert "Per-user difference from untuned" in output
    differences = output.split("Per-user difference from untuned", 1)[1]
    (row,) = [line for line in differences.splitlines() if line.startswith("| B |")]
    assert row.count("[") == 4  # an interval for each metric

    # a record's NaN score gave +nan intervals with exit 0: the record is named
    import shutil

    shutil.copytree(tmp_path / "b", tmp_path / "c")
    predictions = tmp_path / "c" / "predictions.jsonl"
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    records[1]["rouge1"] = float("nan")
    predictions.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(SystemExit, match=rf"{predictions}:2 is not a complete prediction record"):
        nextquill(["compare", str(untuned_run), str(tmp_path / "c"), "--baseline", "untuned"])


def test_compare_refuses_resamples_below_one(tmp_path, capsys):
    for resamples in ("0", "-5"):
        with pytest.raises(SystemExit) as error:
            nextquill(["compare", str(tmp_path), "--resamples", resamples])
        assert error.value.code == 2
        assert "must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is not a complete metrics.json"),
        ('{"name": "a", "metrics": {"rouge1": {"value": 0.5', "is not a complete metrics.json"),
        ("[1, 2]", "holds no metrics"),
        ("NaN", "holds no metrics"),
        ("NaN-in-rouge1", "rouge1 is not a finite number"),
        ("text-in-bleu", "bleu lacks a numeric value and interval"),
    ],
)
def test_compare_refuses_a_metrics_file_that_is_not_a_complete_evaluation(
    tmp_path, capsys, content, message
):
    """A cut-off, empty or non-finite metrics.json stops `compare` naming the file (it used to
    print +nan% and exit 0, or a JSON error without the file's name)."""
    metrics = {m: {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6} for m in ("rouge1", "rougeL", "meteor", "bleu")}  # fmt: skip
    if content == "NaN-in-rouge1":
        metrics["rouge1"]["value"] = float("nan")
        content = json.dumps({"name": "a", "n": 3, "metrics": metrics})  # json writes NaN
    elif content == "text-in-bleu":
        metrics["bleu"]["value"] = "high"
        content = json.dumps({"name": "a", "n": 3, "metrics": metrics})
    bad = tmp_path / "bad" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text(content)
    with pytest.raises(SystemExit) as error:
        nextquill(["compare", str(bad.parent)])
    assert str(bad) in str(error.value) and message in str(error.value)
    assert capsys.readouterr().out == ""  # no table
