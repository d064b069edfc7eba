"""`nextquill inspect`'s two pictures: the histogram of the log-probability gap for one or two
models (the paper's Fig. 3) and the tokens that most often get lambda (Fig. 7).

matplotlib is used through ``Figure`` only, never pyplot, so that no backend is switched for a
caller (e.g. a notebook)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from nextquill_common.jsonl import atomic_file

from .inspection_views import TokenRate


def _save(figure: Figure, path: Path) -> Path:
    """Save without pyplot, so that no backend is switched for the caller (e.g. a notebook)."""
    figure.tight_layout()
    with atomic_file(path) as handle:  # a reader sees the old picture or the whole new one
        figure.savefig(handle, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    return path


def plot_difference_histogram(
    differences: dict[str, np.ndarray], path: Path, title: str = ""
) -> Path:
    """Overlaid histograms of the log-probability difference, one per model (Fig. 3)."""
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    values = [v for v in differences.values() if len(v)]
    low = min((float(v.min()) for v in values), default=-1.0)
    high = max((float(v.max()) for v in values), default=1.0)
    bins = np.linspace(low, high, 60) if high > low else 10
    for name, diff in differences.items():
        axes.hist(
            diff, bins=bins, alpha=0.5, density=True, label=f"{name} (mean {diff.mean():+.3f})"
        )
    axes.set_xlabel("log p(y_t | x, h, y<t) - log p(y_t | x, y<t)")
    axes.set_ylabel("density")
    axes.set_yscale("log")
    axes.set_title(title or "Effect of the history on target tokens")
    axes.legend()
    return _save(figure, path)


def plot_preference_tokens(
    rates: Sequence[TokenRate], path: Path, title: str, top: int = 20
) -> Path:
    """Bar chart of the tokens that most often get lambda, as a share of their occurrences."""
    shown = list(rates[:top])
    figure = Figure(figsize=(7, max(2.5, 0.3 * len(shown) + 1)))
    axes = figure.subplots()
    if shown:
        shown.reverse()
        axes.barh(range(len(shown)), [r.rate for r in shown], color="tab:red")
        axes.set_yticks(
            range(len(shown)), [f"{r.token} ({r.preference}/{r.occurrences})" for r in shown]
        )
        axes.set_xlim(0, 1)
    else:
        axes.text(0.5, 0.5, "no token crossed delta", ha="center", va="center")
    axes.set_xlabel("share of the token's occurrences that get weight lambda")
    axes.set_title(title)
    return _save(figure, path)
