"""The shipped theta_0 reads the history: its report is about this very file, and its numbers
are recomputed here on the planted benchmark's users (another population than its own)."""

from __future__ import annotations

import json

import pytest

from nextquill_plugin.demo import theta0


def test_the_report_describes_the_shipped_model(tmp_path):
    report = theta0.load_report()
    assert report["meets_target"] is True and theta0.meets_target(report["scores"])
    assert report["scores"]["history_only_first_token_recall"] >= theta0.TARGET_FIRST_TOKEN_RECALL
    assert report["scores"]["precision"] >= theta0.TARGET_PRECISION
    # A model that is not the measured one is refused.
    copy = tmp_path / "theta0"
    copy.mkdir()
    (copy / theta0.REPORT).write_text(json.dumps(report))
    (copy / theta0.MODEL_FILE).write_bytes(b"another model")
    with pytest.raises(ValueError, match="is not the model"):
        theta0.load_report(copy)


def test_the_shipped_theta0_marks_the_planted_words_as_its_report_says(tmp_path):
    report = theta0.load_report()
    rows, truth = theta0.measurement_rows(tmp_path, n_rows=report["scores"]["rows"])
    assert report["delta"] == theta0.RULE.delta
    scores = theta0.planted_token_scores(theta0.THETA0_DIR, rows, truth)
    assert scores == pytest.approx(report["scores"], abs=1e-6)


def test_make_theta0_never_replaces_a_folder_it_did_not_write(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="did not write"):
        theta0.make_theta0(foreign, history_steps=1, mixed_steps=1, work=tmp_path / "work")
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "work").exists()  # refused before any work


def test_planted_spans_by_hand():
    from dataset_formats.build.synthetic import SyntheticUser

    user = SyntheticUser("u", ("gritty", "relentless", "the pacing never lets up"), "Worth it.")
    text = "I found it gritty and relentless, and the pacing never lets up. Worth it."
    spans = theta0.planted_spans(text, user)
    assert [(text[s:e], only) for s, e, only in spans] == [
        ("gritty", False),
        ("relentless", False),
        ("the pacing never lets up", False),
        ("Worth it.", True),  # only the sign-off is not named by the prompt's review title
    ]
