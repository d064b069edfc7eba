"""What `nextquill inspect` shows, as numbers: one ``TokenView`` per sample (each target token's
probabilities with and without history, its causal effect and its weight) and what is taken
from many of them: the log-probability gap (Fig. 3), the tokens that most often get lambda
(Fig. 7) and summary.json.

Everything here is a plain function of views: no model, no files (``inspection.py`` computes the
views under a model; ``inspection_render.py`` and ``inspection_plots.py`` draw them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..equations import PreferenceRule, causal_effects


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


def log_probability_differences(views: Sequence[TokenView]) -> np.ndarray:
    """log p(y_t | x, h) - log p(y_t | x) over all tokens of all samples (Fig. 3's quantity)."""
    tiny = np.float32(1e-12)  # p can underflow to 0 in float32; keeps the log finite
    return _end_to_end([np.log(v.p_with + tiny) - np.log(v.p_without + tiny) for v in views])


def _end_to_end(parts: list[np.ndarray], dtype: type = np.float64) -> np.ndarray:
    """Per-view arrays joined into one over all tokens; an empty one when there are no views."""
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


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


def summary(
    views: dict[str, list[TokenView]], rates: Sequence[TokenRate], delta: float, top: int = 20
) -> dict[str, Any]:
    """The numbers behind the pictures, for a machine: per model the mean log-probability gap
    and the lambda share; the top tokens of the first model with their rates; and, per
    inspected row (its position among the data file's rows, and its prompt id), the tokens
    that get lambda under the first model, so that they can be traced back to the data."""
    models = {}
    for name, model_views in views.items():
        marked = _end_to_end([v.preference for v in model_views], bool)
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
