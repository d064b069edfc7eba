"""The target tokens coloured by their causal effect: a standalone HTML page (numbers on hover)
and the same view for a terminal. Both use one colour scale, so that a colour means the same
effect in either."""

from __future__ import annotations

import html
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..equations import PreferenceRule
from .inspection_views import TokenView


def colour_scale(views: Sequence[TokenView], delta: float) -> float:
    """The effect that gets the strongest colour: the largest |effect| shown, at least delta
    (so that a page of tiny effects is not painted as if they were large)."""
    return max([float(np.abs(v.effects).max()) for v in views if len(v.effects)] + [delta])


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


def _html_sample(view: TokenView, scale: float) -> str:
    """One sample: its prompt id, then its tokens as coloured spans with the numbers on hover."""
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
    return f'<h2>{html.escape(view.prompt_id)}</h2><p class="sample">{"".join(spans)}</p>'


def render_html(views: Sequence[TokenView], *, rule: PreferenceRule, title: str) -> str:
    """A standalone page: one paragraph per sample, tokens coloured by causal effect; hovering a
    token shows p with/without history, the effect and the weight; preference-bearing tokens
    (effect > delta) are underlined."""
    delta = rule.delta
    scale = colour_scale(views, delta)
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
    parts.extend(_html_sample(view, scale) for view in views)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def use_colour(stream: Any = None) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    stream = stream if stream is not None else sys.stdout
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def render_terminal(views: Sequence[TokenView], *, delta: float, colour: bool = True) -> str:
    """The same view for a terminal: 24-bit ANSI background colours, or (``colour=False``)
    plain text with preference-bearing tokens in [brackets]."""
    scale = colour_scale(views, delta)
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
