"""`nextquill evaluate` and `nextquill compare`: the paper's Table 1 and 2 for any recipe.

evaluate: recipe + checkpoint (or none: the untuned base model) + a split of built rows ->
``predictions.jsonl`` (user id, prompt id, prediction, reference, per-sample scores) and
``metrics.json`` (ROUGE-1, ROUGE-L, METEOR, BLEU with 95% bootstrap intervals, and every setting).
compare: several ``metrics.json`` -> a markdown or CSV table, best per column marked, and the
relative improvement over a baseline.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .generation import GenerationSettings, generate_continuations, load_model_for_generation
from .metrics import METRIC_LABELS, METRIC_NAMES, evaluate_texts

SUPPORTED_TYPE = "dataset_formats.amazon_reviews"


def read_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe as a dict with command-line overrides applied (as `axolotl train` would)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {path} is not a YAML mapping")
    recipe.update(overrides or {})
    if not recipe.get("base_model"):
        raise ValueError(f"recipe {path} has no base_model")
    return recipe


def split_path(recipe: dict[str, Any], split: str) -> Path:
    """``<folder of the recipe's training file>/<split>.jsonl``: the builder writes
    train/validation/test side by side."""
    datasets = recipe.get("datasets") or []
    if not datasets or not datasets[0].get("path"):
        raise ValueError(
            "the recipe has no datasets[0].path to find the split next to; pass --data"
        )
    return Path(datasets[0]["path"]).parent / f"{split}.jsonl"


def check_dataset_type(recipe: dict[str, Any]) -> None:
    types = {d.get("type") for d in recipe.get("datasets") or []}
    if types and types != {SUPPORTED_TYPE}:
        raise ValueError(
            f"nextquill evaluate renders prompts of `{SUPPORTED_TYPE}` rows; this recipe's "
            f"datasets have types {sorted(map(str, types))}."
        )


def read_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL (or .jsonl.gz) file; a bad line is reported with its line number."""
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluation data {path} does not exist (build it with `nextquill-data build`, "
            "or pass --data FILE)"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def prompt_id(row: dict[str, Any], index: int) -> str:
    target = row.get("target") or {}
    return f"{row.get('user_id')}/{target.get('item_id') or index}"


@dataclass
class EvaluationRequest:
    recipe: str
    checkpoint: str | None = None
    data: str | None = None
    split: str = "test"
    out: str | None = None
    name: str | None = None
    limit: int | None = None
    dtype: str = "auto"
    resamples: int = 1000
    overrides: dict[str, Any] | None = None


def default_out_dir(request: EvaluationRequest, split_name: str) -> Path:
    base = Path(request.checkpoint) if request.checkpoint else Path("outputs") / "base_model"
    return base / f"eval-{split_name}"


def run_evaluation(
    request: EvaluationRequest, generation: GenerationSettings, show_progress: bool = True
) -> dict[str, Any]:
    """Generate a review for every row, score them, write predictions and metrics; return the
    metrics document."""
    from dataset_formats.amazon_reviews import load as load_strategy

    recipe = read_recipe(request.recipe, request.overrides)
    check_dataset_type(recipe)
    data = Path(request.data) if request.data else split_path(recipe, request.split)
    rows = read_rows(data, request.limit)
    out = Path(request.out) if request.out else default_out_dir(request, data.stem)
    model, tokenizer, model_description = load_model_for_generation(
        recipe["base_model"], request.checkpoint, request.dtype
    )
    strategy = load_strategy(tokenizer, recipe)
    sequence_len = strategy.settings.sequence_len
    if generation.max_new_tokens >= sequence_len:
        raise ValueError(
            f"max_new_tokens ({generation.max_new_tokens}) must be smaller than the recipe's "
            f"sequence_len ({sequence_len}): the prompt needs room too."
        )
    prompts = []
    for index, row in enumerate(rows):
        try:
            prompts.append(strategy.generation_prompts(row, generation.max_new_tokens))
        except ValueError as error:
            raise ValueError(f"{data} row {index + 1}: {error}") from None
    started = time.time()
    continuations = generate_continuations(
        model,
        [p["prompt_ids"] for p in prompts],
        generation,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        counterfactual_prompts=[p["counterfactual_prompt_ids"] for p in prompts],
        show_progress=show_progress,
    )
    seconds = time.time() - started
    predictions = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in continuations]
    references = [row["target"]["text"] for row in rows]
    scores = evaluate_texts(predictions, references, resamples=request.resamples)

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w") as handle:
        for index, (row, prediction, reference) in enumerate(
            zip(rows, predictions, references, strict=True)
        ):
            record = {
                "user_id": row.get("user_id"),
                "prompt_id": prompt_id(row, index),
                "prediction": prediction,
                "reference": reference,
                "history_kept": prompts[index]["history_kept"],
            }
            record.update({k: float(v[index]) for k, v in scores.per_sample.items()})
            handle.write(json.dumps(record) + "\n")
    document = {
        "name": request.name or _default_name(request, generation),
        "n": len(rows),
        "metrics": {k: v.as_dict() for k, v in scores.metrics.items()},
        "model": model_description,
        "checkpoint": request.checkpoint,
        "recipe": str(request.recipe),
        "data": str(data),
        "generation": generation.as_dict(),
        "meteor_tokenizer": scores.meteor_tokenizer,
        "bootstrap_resamples": request.resamples,
        "rows_truncated": sum(1 for p in prompts if p["truncation"]),
        "generation_seconds": round(seconds, 2),
        "generated_tokens": sum(len(c) for c in continuations),
    }
    (out / "metrics.json").write_text(json.dumps(document, indent=2) + "\n")
    document["out_dir"] = str(out)
    return document


def _default_name(request: EvaluationRequest, generation: GenerationSettings) -> str:
    name = Path(request.recipe).stem if request.checkpoint else "base model (no fine-tuning)"
    if generation.cos_gamma > 0:
        name += f" + CoS {generation.cos_gamma:g}"
    return name


# ---------------------------------------------------------------- compare


@dataclass
class RunMetrics:
    name: str
    n: int
    data: str
    values: dict[str, float]
    intervals: dict[str, tuple[float, float]]


def load_run(path: str | Path) -> RunMetrics:
    """A run's metrics.json, given the file or the folder holding it."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: pass an evaluation folder or its metrics.json")
    document = json.loads(file.read_text())
    missing = [m for m in METRIC_NAMES if m not in document.get("metrics", {})]
    if missing:
        raise ValueError(
            f"{file} lacks the metrics {missing}; was it written by nextquill evaluate?"
        )
    metrics = document["metrics"]
    return RunMetrics(
        name=document.get("name") or file.parent.name,
        n=int(document.get("n", 0)),
        data=str(document.get("data", "")),
        values={m: float(metrics[m]["value"]) for m in METRIC_NAMES},
        intervals={m: (metrics[m]["ci_low"], metrics[m]["ci_high"]) for m in METRIC_NAMES},
    )


def comparison_warnings(runs: Sequence[RunMetrics]) -> list[str]:
    """Runs scored on different data are not comparable; say so."""
    keys = {(run.data, run.n) for run in runs}
    if len(keys) <= 1:
        return []
    return [
        "these runs were not evaluated on the same data: "
        + "; ".join(f"{run.name}: {run.n} rows of {run.data}" for run in runs)
    ]


def relative_improvement(value: float, baseline: float) -> float:
    """(value - baseline) / baseline, as the paper's Table 2 reports it (a fraction)."""
    return (value - baseline) / baseline if baseline else math.nan


def _format(metric: str, value: float) -> str:
    return f"{value:.4f}" if not math.isnan(value) else "nan"


def comparison_table(
    runs: Sequence[RunMetrics],
    *,
    baseline: str | None = None,
    fmt: str = "markdown",
    intervals: bool = False,
) -> str:
    """Table 1 (one row per run; the best value of each column in bold in markdown, flagged in
    the CSV's ``best`` column) and, with ``baseline``, Table 2's relative improvement rows."""
    if not runs:
        raise ValueError("nothing to compare")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names repeat ({names}); give evaluations distinct --name values")
    if baseline is not None and baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {names}")
    best = {m: max(run.values[m] for run in runs) for m in METRIC_NAMES}
    base = next((run for run in runs if run.name == baseline), None)
    headers = ["Method"] + [METRIC_LABELS[m] for m in METRIC_NAMES]

    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        extra = [f"{METRIC_LABELS[m]} CI" for m in METRIC_NAMES] if intervals else []
        improvement = [f"{METRIC_LABELS[m]} vs {baseline}" for m in METRIC_NAMES] if base else []
        writer.writerow([*headers, *extra, *improvement, "best"])
        for run in runs:
            cells = [run.name] + [_format(m, run.values[m]) for m in METRIC_NAMES]
            if intervals:
                cells += [
                    f"{_format(m, run.intervals[m][0])}-{_format(m, run.intervals[m][1])}"
                    for m in METRIC_NAMES
                ]
            if base:
                cells += [
                    f"{relative_improvement(run.values[m], base.values[m]):+.4f}"
                    for m in METRIC_NAMES
                ]
            cells.append(
                " ".join(METRIC_LABELS[m] for m in METRIC_NAMES if run.values[m] == best[m])
            )
            writer.writerow(cells)
        return buffer.getvalue()
    if fmt != "markdown":
        raise ValueError(f"unknown format {fmt!r}: markdown or csv")

    def cell(run: RunMetrics, metric: str) -> str:
        text = _format(metric, run.values[metric])
        if intervals:
            low, high = run.intervals[metric]
            text += f" [{_format(metric, low)}, {_format(metric, high)}]"
        return f"**{text}**" if run.values[metric] == best[metric] else text

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += [
        "| " + " | ".join([run.name] + [cell(run, m) for m in METRIC_NAMES]) + " |" for run in runs
    ]
    if base:
        lines += ["", f"Relative improvement over {base.name}:", ""]
        lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for run in runs:
            if run is base:
                continue
            gains = [
                f"{relative_improvement(run.values[m], base.values[m]):+.1%}" for m in METRIC_NAMES
            ]
            lines.append("| " + " | ".join([run.name, *gains]) + " |")
    return "\n".join(lines) + "\n"
