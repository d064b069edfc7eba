"""`nextquill inspect`: which target tokens carry the user's preference, under a given model
(the paper's Figures 3, 4 and 7, for any model and data).

For every target token: p(y_t | x, h, y<t), p(y_t | x, no history, y<t), their difference (the
causal effect, eq. 4) and the weight it gets (eq. 3). Views: an HTML page (tokens coloured by
effect, numbers on hover), coloured terminal output, a histogram of the log-probability
difference for one or two models (Fig. 3), the tokens that most often get lambda as a share of
their occurrences (Fig. 7), and summary.json with the numbers behind them.

This module holds the request and the run: rows -> each model's ``TokenView``s (the theta_0
pass of training, under the inspected checkpoint) -> the outputs. The views and the numbers
taken from them are in ``inspection_views.py``; the HTML page and the terminal view in
``inspection_render.py``; the plots in ``inspection_plots.py``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dataset_formats.contract import EFFECT_INPUT_COLUMNS, IGNORE_INDEX
from nextquill_common.cli_options import option, output_folder
from nextquill_common.jsonl import write_text_atomic

from ..config_keys import settings_from
from ..equations import PreferenceRule
from ..settings import WEIGHT_PASS_BATCH_SIZE
from ..token_effects import compute_token_effects
from .generation import load_model_for_generation, model_sources
from .inspection_plots import plot_difference_histogram, plot_preference_tokens
from .inspection_render import render_html, render_terminal, use_colour
from .inspection_views import (
    TokenView,
    log_probability_differences,
    preference_token_rates,
    summary,
)
from .recipe_data import RecipeRowsRequest, load_strategy, recipe_tokenizer


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
    batch_size: int = WEIGHT_PASS_BATCH_SIZE,
    show_progress: bool = True,
    model_name: str = "theta_0",
) -> list[TokenView]:
    """Per-token effects and weights of every row under ``model`` (rows whose history had to be
    dropped entirely have no counterfactual and come back with no tokens)."""
    effects = compute_token_effects(
        model,
        columns,
        pad_token_id=tokenizer.pad_token_id,
        batch_size=batch_size,
        show_progress=show_progress,
        progress_label=f"NextQuill causal effects under {model_name}",
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


@dataclass
class InspectionRequest(RecipeRowsRequest):
    """What to inspect and where to write; one command-line option a field."""

    name: str = option("its name in the plots", default="model")
    against: str | None = option("a second checkpoint for the histogram (Fig. 3)")
    against_name: str = option("the second checkpoint's name", default="against")
    samples: int = option("samples in HTML/terminal", default=8)
    plot_samples: int = option("samples in the plots", default=200)
    out: str = option("output folder", default="inspect", type=output_folder)
    terminal: bool = option("no coloured terminal view", default=True, flag="--no-terminal")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 0:
            raise ValueError(f"--samples must be >= 0 (got {self.samples})")
        if self.plot_samples < 1:
            raise ValueError(f"--plot-samples must be >= 1 (got {self.plot_samples})")

    def checkpoints(self) -> list[tuple[str, str | None]]:
        """(name, checkpoint) of each model to inspect: the checkpoint (None: the base model),
        then --against if given."""
        named = [(self.name, self.checkpoint)]
        if self.against is not None:
            named.append((self.against_name, self.against))
        return named


def run_inspection(request: InspectionRequest, show_progress: bool = True) -> dict[str, Path]:
    """Write tokens.html, the two plots and summary.json into ``request.out``; return their
    paths."""
    recipe, dataset_type, data, rows = request.load_recipe_and_rows(
        max(request.samples, request.plot_samples)
    )
    rule = PreferenceRule.from_settings(settings_from(recipe))  # validated, as in training
    for _, checkpoint in request.checkpoints():  # each checkpoint found before any model loads
        model_sources(recipe["base_model"], checkpoint)
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    views: dict[str, list[TokenView]] = {}
    for name, checkpoint in request.checkpoints():
        model, _, _ = load_model_for_generation(recipe["base_model"], checkpoint)
        tokenizer = recipe_tokenizer(recipe, checkpoint)
        strategy = load_strategy(dataset_type, tokenizer, recipe)
        views[name] = token_views(
            model,
            tokenizer,
            [strategy.prompt_id(row, i) for i, row in enumerate(rows)],
            paired_rows(strategy, rows),
            rule=rule,
            show_progress=show_progress,
            model_name=name,
        )
        del model  # one model in memory at a time
    return write_outputs(request, views, rule, out, data.name, len(rows))


def write_outputs(
    request: InspectionRequest,
    views: dict[str, list[TokenView]],
    rule: PreferenceRule,
    out: Path,
    data_name: str,
    n_rows: int,
) -> dict[str, Path]:
    """The HTML page and terminal view of the first ``request.samples`` rows under the
    inspected model; the plots and summary.json of all ``n_rows`` rows (the histogram of
    every model)."""
    delta = rule.delta
    primary = views[request.name]
    shown = primary[: request.samples]
    rates = preference_token_rates(primary)
    paths = {
        "html": out / "tokens.html",
        "histogram": out / "logprob_difference.png",
        "preference_tokens": out / "preference_tokens.png",
        "summary": out / "summary.json",
    }
    title = f"NextQuill token effects under {request.name} ({data_name})"
    write_text_atomic(paths["html"], render_html(shown, rule=rule, title=title))
    if request.terminal:
        print(render_terminal(shown, delta=delta, colour=use_colour()), end="")
    plot_difference_histogram(
        {name: log_probability_differences(v) for name, v in views.items()},
        paths["histogram"],
        f"Effect of the history: {' vs '.join(views)} ({data_name}, {n_rows} samples)",
    )
    plot_preference_tokens(
        rates,
        paths["preference_tokens"],
        f"Tokens that get lambda (effect > {delta:g}) under {request.name} ({data_name})",
    )
    write_text_atomic(paths["summary"], json.dumps(summary(views, rates, delta), indent=2) + "\n")
    return paths
