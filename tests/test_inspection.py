"""`nextquill inspect`'s pictures and numbers: token chart, summary, plots, terminal view."""

from __future__ import annotations

import os

import numpy as np


def view(tokens, effects, special=None):
    from nextquill_plugin.evaluation.inspection_views import TokenView

    effects = np.array(effects, dtype=np.float32)
    return TokenView(
        prompt_id="u/1",
        tokens=tokens,
        special=np.array(special or [False] * len(tokens)),
        p_with=np.zeros_like(effects),
        p_without=np.zeros_like(effects),
        effects=effects,
        weights=np.where(effects > 0.05, 0.9, 0.1),
        preference=effects > 0.05,
    )


def test_token_chart_counts_shares_and_leaves_out_special_tokens():
    from nextquill_plugin.evaluation.inspection_views import preference_token_rates

    views = [
        view([" The", " jazz", "<eos>"], [0.1, 0.3, 0.9], [False, False, True]),
        view([" The", " jazz", " The"], [0.0, 0.2, 0.0]),
        view([" The", " jazz", " once"], [0.0, 0.4, 0.9]),
    ]
    rates = preference_token_rates(views, min_occurrences=2)
    assert [(r.token, r.preference, r.occurrences) for r in rates] == [
        ("jazz", 3, 3),
        ("The", 1, 4),
    ]
    assert rates[1].rate == 0.25  # "The" is frequent but rarely marked; "once" is seen once


def test_summary_traces_lambda_tokens_back_to_rows_and_reports_each_model():
    from nextquill_plugin.evaluation.inspection_views import preference_token_rates, summary

    first = [view([" The", " jazz"], [0.0, 0.3]), view([" once", " more"], [0.9, 0.01])]
    first[1].prompt_id = "u/2"
    other = [view([" The", " jazz"], [0.0, 0.0]), view([" once", " more"], [0.0, 0.0])]
    numbers = summary({"theta_0": first, "other": other}, preference_token_rates(first, 1), 0.05)
    assert numbers["rows"] == [
        {"row": 0, "prompt_id": "u/1", "lambda_tokens": [" jazz"]},
        {"row": 1, "prompt_id": "u/2", "lambda_tokens": [" once"]},
    ]
    assert numbers["models"]["theta_0"]["lambda_share"] == 0.5  # 2 of 4 tokens
    assert numbers["models"]["other"]["lambda_share"] == 0.0


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from nextquill_plugin.evaluation.inspection_plots import (
        plot_difference_histogram,
        plot_preference_tokens,
    )
    from nextquill_plugin.evaluation.inspection_views import TokenRate

    before = matplotlib.get_backend()
    plot_difference_histogram({"m": np.array([0.1, -0.2, 0.3])}, tmp_path / "h.png", "t")
    plot_preference_tokens([TokenRate("jazz", 4, 3)], tmp_path / "p.png", "t")
    assert matplotlib.get_backend() == before
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_terminal_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    from nextquill_plugin.evaluation.inspection_render import render_terminal, use_colour

    class Terminal:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Terminal()) and not use_colour(open(os.devnull, "w"))  # noqa: SIM115
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Terminal())
    views = [view([" I", " love", " jazz"], [0.0, 0.01, 0.5])]
    plain = render_terminal(views, delta=0.05, colour=False)
    assert "\x1b[" not in plain and "[ jazz]" in plain
    assert render_terminal(views, delta=0.05).count("\x1b[48;2;") == 3
