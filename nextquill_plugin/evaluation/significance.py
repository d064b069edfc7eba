"""Is a difference between two methods real? Paired bootstrap over users.

For each metric: the mean over users of (method - baseline), where each user's value is the mean
over their rows, with a 95% percentile interval from resampling users with replacement, the same
draw for both methods (paired). BLEU is a corpus metric: its difference is corpus BLEU of the
method minus corpus BLEU of the baseline on the resampled users' rows. A difference whose
interval excludes 0 is marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nextquill_common.jsonl import iter_jsonl

from .metrics import METRIC_NAMES, CorpusBleu, percentile_interval

PER_SAMPLE_METRICS = tuple(m for m in METRIC_NAMES if m != "bleu")


@dataclass(frozen=True)
class PairedDifference:
    """method - baseline for one metric, with its paired bootstrap interval."""

    metric: str
    mean: float
    ci_low: float
    ci_high: float
    users: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0


def user_resamples(n_users: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n_users]`` user indices drawn with replacement (shared by both methods)."""
    return np.random.default_rng(seed).integers(0, n_users, (resamples, n_users))


def mean_difference(
    metric: str, per_user_method: np.ndarray, per_user_baseline: np.ndarray, draws: np.ndarray
) -> PairedDifference:
    """Mean per-user difference and its interval over the given user draws."""
    differences = per_user_method - per_user_baseline
    low, high = percentile_interval(differences[draws].mean(axis=1))
    return PairedDifference(metric, float(differences.mean()), low, high, len(differences))


def read_predictions(folder: Path) -> list[dict[str, Any]]:
    path = folder / "predictions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: paired differences need each run's predictions.jsonl"
        )
    records = []
    for line, record in iter_jsonl(path):  # a record we cannot use is named, not averaged
        scores = [record.get(metric) for metric in PER_SAMPLE_METRICS]
        if not all(
            isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score)
            for score in scores
        ) or not all(isinstance(record.get(key), str) for key in ("prediction", "reference")):
            raise ValueError(
                f"{path}:{line} is not a complete prediction record (a prediction, a reference "
                f"and finite {', '.join(PER_SAMPLE_METRICS)} scores); evaluate that run again"
            )
        records.append(record)
    return records


def user_of(record: dict[str, Any]) -> str:
    """The user a prediction record belongs to; a row without a user id is a user of its own."""
    return str(record.get("user_id") or record["prompt_id"])


def paired_differences(
    method: Sequence[dict[str, Any]],
    baseline: Sequence[dict[str, Any]],
    *,
    resamples: int = 1000,
    seed: int = 0,
    show_progress: bool = False,
) -> list[PairedDifference]:
    """Per-metric paired differences of two runs' prediction records (same prompts)."""
    by_prompt = {r["prompt_id"]: r for r in baseline}
    if {r["prompt_id"] for r in method} != set(by_prompt):
        raise ValueError(
            "the two runs were not evaluated on the same prompts; evaluate both on one split"
        )
    differing = [
        r["prompt_id"] for r in method if r["reference"] != by_prompt[r["prompt_id"]]["reference"]
    ]
    if differing:  # the same prompt ids over edited data: the differences would mean nothing
        raise ValueError(
            f"the two runs have other references for {len(differing)} of their prompts (e.g. "
            f"{differing[0]}): they were evaluated on different versions of the data; evaluate "
            "both on the same file"
        )
    users = sorted({user_of(r) for r in method})
    index = {user: i for i, user in enumerate(users)}
    row_user = np.array([index[user_of(r)] for r in method])
    paired_baseline = [by_prompt[r["prompt_id"]] for r in method]
    draws = user_resamples(len(users), resamples, seed)

    def per_user(records: Sequence[dict[str, Any]], metric: str) -> np.ndarray:
        totals = np.bincount(row_user, [float(r[metric]) for r in records], len(users))
        return totals / np.bincount(row_user, minlength=len(users))

    results = [
        mean_difference(metric, per_user(method, metric), per_user(paired_baseline, metric), draws)
        for metric in PER_SAMPLE_METRICS
    ]

    bleu_method = CorpusBleu([r["prediction"] for r in method], [r["reference"] for r in method])
    bleu_base = CorpusBleu(
        [r["prediction"] for r in paired_baseline], [r["reference"] for r in paired_baseline]
    )
    rows_of_user = [np.flatnonzero(row_user == u) for u in range(len(users))]
    values = []
    for draw in tqdm(draws, desc="BLEU paired bootstrap", disable=not show_progress, leave=False):
        rows = np.concatenate([rows_of_user[u] for u in draw])
        values.append(bleu_method.score(rows) - bleu_base.score(rows))
    low, high = percentile_interval(np.array(values))
    results.append(
        PairedDifference("bleu", bleu_method.score() - bleu_base.score(), low, high, len(users))
    )
    return results
