"""`nextquill compare`: several evaluations' ``metrics.json`` -> the paper's Table 1 and 2.

A markdown or CSV table, best per column marked, the relative improvement over a baseline, and
each method's paired per-user difference from the baseline with its bootstrap interval.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .metrics import METRIC_LABELS, METRIC_NAMES
from .significance import paired_differences, read_predictions


@dataclass
class RunMetrics:
    name: str
    n: int
    data: str
    values: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    folder: Path | None = None  # where predictions.jsonl is


def load_run(path: str | Path) -> RunMetrics:
    """A run's metrics.json, given the file or the folder holding it; a file that is not a
    complete evaluation (cut off, empty, a non-finite score) is refused, naming it."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: pass an evaluation folder or its metrics.json")
    try:
        document = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is not a complete metrics.json ({error})") from None
    metrics = document.get("metrics") if isinstance(document, dict) else None
    if not isinstance(metrics, dict):
        raise ValueError(f"{file} holds no metrics; was it written by nextquill evaluate?")
    missing = [m for m in METRIC_NAMES if m not in metrics]
    if missing:
        raise ValueError(
            f"{file} lacks the metrics {missing}; was it written by nextquill evaluate?"
        )
    scores = {m: metric_scores(file, m, metrics[m]) for m in METRIC_NAMES}
    return RunMetrics(
        name=document.get("name") or file.parent.name,
        n=int(document.get("n", 0)),
        data=str(document.get("data", "")),
        values={m: scores[m][0] for m in METRIC_NAMES},
        intervals={m: scores[m][1:] for m in METRIC_NAMES},
        folder=file.parent,
    )


def metric_scores(file: Path, metric: str, entry: Any) -> tuple[float, float, float]:
    """(value, ci_low, ci_high) of one metric, each a finite number, or a ValueError naming the
    file and the metric."""
    try:
        scores = tuple(float(entry[key]) for key in ("value", "ci_low", "ci_high"))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{file}: {metric} lacks a numeric value and interval") from None
    if not all(math.isfinite(score) for score in scores):
        raise ValueError(f"{file}: {metric} is not a finite number ({entry!r})")
    return scores


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


def difference_table(
    runs: Sequence[RunMetrics], baseline: str, *, resamples: int = 1000, show_progress: bool = False
) -> str:
    """Markdown: each run minus ``baseline``, per metric, as the mean per-user difference with
    its 95% paired bootstrap interval; * marks an interval that excludes 0."""
    base = next((run for run in runs if run.name == baseline), None)
    if base is None:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {[r.name for r in runs]}")
    base_records = read_predictions(base.folder)
    headers = ["Method"] + [METRIC_LABELS[m] for m in METRIC_NAMES]
    lines = [
        f"Per-user difference from {base.name} (mean, 95% paired bootstrap interval over users, "
        f"{resamples} resamples; * = the interval excludes 0):",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for run in runs:
        if run is base:
            continue
        differences = {
            d.metric: d
            for d in paired_differences(
                read_predictions(run.folder),
                base_records,
                resamples=resamples,
                show_progress=show_progress,
            )
        }
        cells = [
            f"{d.mean:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}]{'*' if d.significant else ''}"
            for d in (differences[m] for m in METRIC_NAMES)
        ]
        lines.append("| " + " | ".join([run.name, *cells]) + " |")
    return "\n".join(lines) + "\n"
