"""`nextquill inspect`: which target tokens carry the user's preference, under a given model
(the paper's Figures 3, 4 and 7, for any model and data).

For every target token: p(y_t | x, h, y<t), p(y_t | x, no history, y<t), their difference (the
causal effect, eq. 4) and the weight it gets (eq. 3). Views: an HTML page (tokens coloured by
effect, numbers on hover), coloured terminal output, a histogram of the log-probability
difference for one or two models (Fig. 3), the tokens that most often get lambda as a share of
their occurrences (Fig. 7), and summary.json with the numbers behind them.
"""

from __future__ import annotations

import copy
import html
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from dataset_formats.contract import EFFECT_INPUT_COLUMNS, IGNORE_INDEX
from nextquill_common.cli_options import option
from nextquill_common.jsonl import atomic_file, write_text_atomic

from ..equations import PreferenceRule, causal_effects
from ..token_effects import compute_token_effects
from .recipe_data import RecipeRowsRequest, load_strategy


@dataclass
class TokenView:
    """One sample's target tokens with their probabilities, effects and weights."""

    prompt_id: str
    tokens: list[str]
    special: np.ndarray  # bool: special tokens (end of text, ...), left out of the token chart
    p_with: np.ndarray
    p_without: np.ndarray
    effects: np.ndarray
    weights: np.ndarray
    preference: np.ndarray  # bool: the rule marks the token preference-bearing (weight lambda)

    @classmethod
    def of(cls, prompt_id, tokens, special, p_with, p_without, rule: PreferenceRule) -> TokenView:
        """A view whose effects (eq. 4), weights and marks (eq. 3) follow from the probabilities."""
        effects = causal_effects(torch.from_numpy(p_with), torch.from_numpy(p_without))
        return cls(
            prompt_id=prompt_id,
            tokens=tokens,
            special=special,
            p_with=p_with,
            p_without=p_without,
            effects=effects.numpy(),
            weights=rule.weights(effects).numpy(),
            preference=rule.mask(effects).numpy(),
        )


def paired_rows(strategy, rows: Sequence[dict[str, Any]]) -> dict[str, list]:
    """Training-identical tokenization of ``rows``, counterfactual prompts included (by a copy
    of ``strategy``: the caller's is left as it was)."""
    paired = copy.copy(strategy)
    paired.settings = replace(strategy.settings, emit_counterfactual=True)
    columns: dict[str, list] = {column: [] for column in EFFECT_INPUT_COLUMNS}
    for row in rows:
        example = paired.tokenize_prompt(row)
        for key in columns:
            columns[key].append(example[key])
    return columns


def token_views(
    model,
    tokenizer,
    prompt_ids: Sequence[str],
    columns: dict[str, list],
    *,
    rule: PreferenceRule,
    batch_size: int = 4,
    show_progress: bool = True,
) -> list[TokenView]:
    """Per-token effects and weights of every row under ``model`` (rows whose history had to be
    dropped entirely have no counterfactual and come back with no tokens)."""
    effects = compute_token_effects(
        model,
        columns,
        pad_token_id=tokenizer.pad_token_id,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    special = set(tokenizer.all_special_ids)
    views = []
    for i, name in enumerate(prompt_ids):
        p_with, p_without = effects.row(i)
        target_ids = [t for t in columns["labels"][i] if t != IGNORE_INDEX][: len(p_with)]
        views.append(
            TokenView.of(
                name,
                [tokenizer.decode([t]) for t in target_ids],
                np.array([t in special for t in target_ids], dtype=bool),
                p_with,
                p_without,
                rule,
            )
        )
    return views


def _colour(effect: float, scale: float) -> tuple[int, int, int]:
    """White at 0, red for a positive effect (history helps), blue for negative."""
    strength = min(1.0, abs(effect) / scale) if scale > 0 else 0.0
    fade = int(255 * (1 - 0.75 * strength))
    return (255, fade, fade) if effect > 0 else (fade, fade, 255)


def _html_legend(scale: float, rule: PreferenceRule) -> str:
    """A row of swatches from -scale to +scale, with the effect each colour stands for."""
    cells = []
    for effect in np.linspace(-scale, scale, 9):
        red, green, blue = _colour(float(effect), scale)
        css = "swatch pref" if rule.mask(effect) else "swatch"
        cells.append(
            f'<span class="{css}" style="background:rgb({red},{green},{blue});padding:0 .6em">'
            f"{effect:+.2f}</span>"
        )
    return '<p class="legend">effect: ' + " ".join(cells) + "</p>"


def render_html(views: Sequence[TokenView], *, rule: PreferenceRule, title: str) -> str:
    """A standalone page: one paragraph per sample, tokens coloured by causal effect; hovering a
    token shows p with/without history, the effect and the weight; preference-bearing tokens
    (effect > delta) are underlined."""
    delta = rule.delta
    scale = max([float(np.abs(v.effects).max()) for v in views if len(v.effects)] + [delta])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "p.sample{line-height:1.9;white-space:pre-wrap}span.t{border-radius:3px}"
        "span.pref{text-decoration:underline;font-weight:bold}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Colour: causal effect p(y|x,h) - p(y|x) (red: the history makes the token more "
        f"likely; blue: less). Underlined: effect &gt; delta = {delta:g} (weight lambda).</p>",
        _html_legend(scale, rule),
    ]
    for view in views:
        spans = []
        if not view.tokens:
            spans.append("<em>no counterfactual for this row (its history did not fit)</em>")
        for token, pw, pn, effect, weight, marked in zip(
            view.tokens,
            view.p_with,
            view.p_without,
            view.effects,
            view.weights,
            view.preference,
            strict=True,
        ):
            red, green, blue = _colour(float(effect), scale)
            css = "t pref" if marked else "t"
            tip = f"p_with={pw:.4f} p_without={pn:.4f} effect={effect:+.4f} weight={weight:g}"
            spans.append(
                f'<span class="{css}" style="background:rgb({red},{green},{blue})" '
                f'title="{tip}">{html.escape(token)}</span>'
            )
        # One line: the paragraph keeps white space (tokens carry their own spaces).
        parts.append(
            f'<h2>{html.escape(view.prompt_id)}</h2><p class="sample">{"".join(spans)}</p>'
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def use_colour(stream: Any = None) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    stream = stream if stream is not None else sys.stdout
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def render_terminal(views: Sequence[TokenView], *, delta: float, colour: bool = True) -> str:
    """The same view for a terminal: 24-bit ANSI background colours, or (``colour=False``)
    plain text with preference-bearing tokens in [brackets]."""
    scale = max([float(np.abs(v.effects).max()) for v in views if len(v.effects)] + [delta])
    lines = []
    for view in views:
        marked = int(view.preference.sum())
        lines.append(
            f"== {view.prompt_id}: {marked}/{len(view.tokens)} tokens with effect > {delta:g}"
        )
        text = []
        for token, effect, preference in zip(
            view.tokens, view.effects, view.preference, strict=True
        ):
            if not colour:
                text.append(f"[{token}]" if preference else token)
                continue
            red, green, blue = _colour(float(effect), scale)
            style = "\x1b[4m" if preference else ""
            text.append(f"\x1b[48;2;{red};{green};{blue}m\x1b[30m{style}{token}\x1b[0m")
        lines.append("".join(text))
    return "\n".join(lines) + "\n"


def log_probability_differences(views: Sequence[TokenView]) -> np.ndarray:
    """log p(y_t | x, h) - log p(y_t | x) over all tokens of all samples (Fig. 3's quantity)."""
    tiny = np.float32(1e-12)
    parts = [np.log(v.p_with + tiny) - np.log(v.p_without + tiny) for v in views]
    return np.concatenate(parts) if parts else np.zeros(0)


@dataclass
class TokenRate:
    """How often a token (stripped text) gets lambda among its occurrences as a target."""

    token: str
    occurrences: int
    preference: int  # occurrences with effect > delta

    @property
    def rate(self) -> float:
        return self.preference / self.occurrences


def preference_token_rates(views: Sequence[TokenView], min_occurrences: int = 3) -> list[TokenRate]:
    """Tokens by the share of their occurrences that cross delta (Fig. 7), special tokens and
    tokens seen fewer than ``min_occurrences`` times left out, so that a frequent word does not
    win by frequency alone. Highest share first, then most occurrences."""
    seen: Counter[str] = Counter()
    marked: Counter[str] = Counter()
    for view in views:
        for token, preference, special in zip(
            view.tokens, view.preference, view.special, strict=True
        ):
            text = token.strip()
            if special or not text:
                continue
            seen[text] += 1
            marked[text] += int(preference)
    rates = [
        TokenRate(text, n, marked[text])
        for text, n in seen.items()
        if n >= min_occurrences and marked[text]
    ]
    return sorted(rates, key=lambda r: (-r.rate, -r.occurrences, r.token))


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


def summary(
    views: dict[str, list[TokenView]], rates: Sequence[TokenRate], delta: float, top: int = 20
) -> dict[str, Any]:
    """The numbers behind the pictures, for a machine: per model the mean log-probability gap
    and the lambda share; the top tokens of the first model with their rates; and, per
    inspected row (its position among the data file's rows, and its prompt id), the tokens
    that get lambda under the first model, so that they can be traced back to the data."""
    models = {}
    for name, model_views in views.items():
        marked = np.concatenate([v.preference for v in model_views] or [np.zeros(0, bool)])
        gaps = log_probability_differences(model_views)
        models[name] = {
            "target_tokens": int(len(marked)),
            "mean_log_prob_gap": float(gaps.mean()) if len(gaps) else None,
            "lambda_share": float(marked.mean()) if len(marked) else None,
        }
    first = next(iter(views.values()), [])
    return {
        "delta": delta,
        "models": models,
        "rows": [
            {
                "row": index,
                "prompt_id": view.prompt_id,
                "lambda_tokens": [
                    t for t, marked in zip(view.tokens, view.preference, strict=True) if marked
                ],
            }
            for index, view in enumerate(first)
        ],
        "top_tokens": [
            {"token": r.token, "rate": r.rate, "lambda": r.preference, "occurrences": r.occurrences}
            for r in rates[:top]
        ],
    }


@dataclass
class InspectionRequest(RecipeRowsRequest):
    """What to inspect and where to write; one command-line option a field."""

    name: str = option("its name in the plots", default="model")
    against: str | None = option("a second checkpoint for the histogram (Fig. 3)")
    against_name: str = option("the second checkpoint's name", default="against")
    samples: int = option("samples in HTML/terminal", default=8)
    plot_samples: int = option("samples in the plots", default=200)
    out: str = option("output folder", default="inspect")
    terminal: bool = option("no coloured terminal view", default=True, flag="--no-terminal")

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError(f"--samples must be >= 0 (got {self.samples})")
        if self.plot_samples < 1:
            raise ValueError(f"--plot-samples must be >= 1 (got {self.plot_samples})")


def run_inspection(request: InspectionRequest, show_progress: bool = True) -> dict[str, Path]:
    """Write tokens.html, the two plots and summary.json into ``request.out``; return their
    paths."""
    from ..config_keys import settings_from
    from .generation import load_model_for_generation

    recipe, dataset_type, data, rows = request.load_recipe_and_rows(
        max(request.samples, request.plot_samples)
    )
    rule = PreferenceRule.from_settings(settings_from(recipe))  # validated, as in training
    delta = rule.delta
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)

    views: dict[str, list[TokenView]] = {}
    for name, checkpoint in (
        (request.name, request.checkpoint),
        (request.against_name, request.against),
    ):
        if name == request.against_name and request.against is None:
            continue
        model, tokenizer, _ = load_model_for_generation(recipe["base_model"], checkpoint)
        strategy = load_strategy(dataset_type, tokenizer, recipe)
        views[name] = token_views(
            model,
            tokenizer,
            [strategy.prompt_id(row, i) for i, row in enumerate(rows)],
            paired_rows(strategy, rows),
            rule=rule,
            show_progress=show_progress,
        )
        del model
    primary = views[request.name]
    shown = primary[: request.samples]
    rates = preference_token_rates(primary)
    paths = {
        "html": out / "tokens.html",
        "histogram": out / "logprob_difference.png",
        "preference_tokens": out / "preference_tokens.png",
        "summary": out / "summary.json",
    }
    title = f"NextQuill token effects under {request.name} ({data.name})"
    write_text_atomic(paths["html"], render_html(shown, rule=rule, title=title))
    if request.terminal:
        print(render_terminal(shown, delta=delta, colour=use_colour()), end="")
    plot_difference_histogram(
        {name: log_probability_differences(v) for name, v in views.items()},
        paths["histogram"],
        f"Effect of the history: {' vs '.join(views)} ({data.name}, {len(rows)} samples)",
    )
    plot_preference_tokens(
        rates,
        paths["preference_tokens"],
        f"Tokens that get lambda (effect > {delta:g}) under {request.name} ({data.name})",
    )
    write_text_atomic(paths["summary"], json.dumps(summary(views, rates, delta), indent=2) + "\n")
    return paths
