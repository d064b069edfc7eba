"""The shipped theta_0 copies from the history: its report is about this very file, and its
numbers are recomputed here on users whose words come from a pool it never saw."""

from __future__ import annotations

import json

import pytest

from nextquill_plugin.demo import theta0


def test_the_report_describes_the_shipped_model(tmp_path):
    report = theta0.load_report()
    assert report["meets_target"] == theta0.meets_target(report["scores"])
    # Measured on users of a word pool it never saw: most of what it marks is their own words,
    # and the history helps on average (the recall target, 80%, is not met: README).
    assert report["scores"]["precision"] >= theta0.TARGET_PRECISION
    assert report["scores"]["history_only_first_token_recall"] >= 0.5
    assert report["scores"]["mean_log_prob_gain"] > 0
    assert (
        report["populations"]["trained_on"]["words"]
        != report["populations"]["measured_on"]["words"]
    )
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
