"""`nextquill inspect`: the command's page, terminal view and plots on the tiny model, and its
pictures and numbers from hand-made views (token chart, summary, plots, terminal view)."""

from __future__ import annotations

import os
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest

from nextquill_plugin.cli import main as nextquill
from nextquill_plugin.evaluation.inspection_plots import (
    plot_difference_histogram,
    plot_preference_tokens,
)
from nextquill_plugin.evaluation.inspection_render import render_terminal, use_colour
from nextquill_plugin.evaluation.inspection_views import (
    TokenRate,
    TokenView,
    preference_token_rates,
    summary,
)


def view(tokens, effects, special=None):
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


class SpanCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.spans, self.text = [], [], {}

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta", "br"):  # void elements have no end tag
            self.stack.append(tag)
        if tag == "span" and dict(attrs).get("class", "").split()[0] == "t":  # token spans
            self.spans.append(dict(attrs))

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"


def test_inspect_writes_valid_html_terminal_view_and_plots(
    recipes, tmp_path, capsys, tiny_tokenizer, tiny_model_dir, synthetic_splits
):
    import yaml

    from dataset_formats.amazon_reviews import load

    out = tmp_path / "inspect"
    nextquill(
        ["inspect", str(recipes["amazon"]), "--samples", "2", "--plot-samples", "4"]
        + ["--out", str(out), "--against", str(tiny_model_dir)]
        + ["--against-name", "same model as a checkpoint"]
    )
    page = (out / "tokens.html").read_text()
    parser = SpanCollector()
    parser.feed(page)
    parser.close()
    assert page.startswith("<!DOCTYPE html>") and not parser.stack
    rows = synthetic_splits["test"][:2]  # the recipe's test split begins with them
    strategy = load(tiny_tokenizer, yaml.safe_load(recipes["amazon"].read_text()))
    targets = sum(
        len([t for t in strategy.tokenize_prompt(r)["labels"] if t != -100]) for r in rows
    )
    assert len(parser.spans) == targets
    for span in parser.spans:
        numbers = dict(part.split("=") for part in span["title"].split())
        effect = float(numbers["p_with"]) - float(numbers["p_without"])
        assert float(numbers["effect"]) == pytest.approx(effect, abs=2e-4)
        assert float(numbers["weight"]) in (0.1, 0.9)
    captured = capsys.readouterr()
    terminal = captured.out
    # each model's pass says whose effects it computes (--against scored "theta_0 effects")
    assert "NextQuill causal effects under model" in captured.err
    assert "NextQuill causal effects under same model as a checkpoint" in captured.err
    assert "theta_0 effects" not in captured.err
    assert "\x1b[" not in terminal  # not a terminal here: no colour codes in the captured text
    assert not use_colour()
    for name in ("logprob_difference.png", "preference_tokens.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_refuses_a_negative_sample_count(recipes, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        nextquill(["inspect", str(recipes["amazon"]), "--samples", "-1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert error.value.code == 2 and "usage: nextquill inspect" in err
    assert "--samples must be >= 0" in err


def test_token_chart_counts_shares_and_leaves_out_special_tokens():
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
    before = matplotlib.get_backend()
    plot_difference_histogram({"m": np.array([0.1, -0.2, 0.3])}, tmp_path / "h.png", "t")
    plot_preference_tokens([TokenRate("jazz", 4, 3)], tmp_path / "p.png", "t")
    assert matplotlib.get_backend() == before
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_terminal_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
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


def test_a_second_checkpoint_that_is_no_model_is_named_before_any_model_loads(
    recipes, tmp_path, monkeypatch
):
    """`--against /nope` was found only after the first model's whole pass."""
    from nextquill_plugin.evaluation import inspection

    loaded = []
    monkeypatch.setattr(inspection, "load_model_for_generation", lambda *a: loaded.append(a))
    with pytest.raises(SystemExit, match=f"checkpoint {tmp_path / 'nope'} holds neither"):
        nextquill(["inspect", str(recipes["amazon"]), "--against", str(tmp_path / "nope"),
                   "--out", str(tmp_path / "out")])  # fmt: skip
    assert loaded == []
