"""The shipped theta_0 copies from the history: its report is about this very file, and its
numbers are recomputed here on users whose words come from a pool it never saw."""

from __future__ import annotations

import json

import pytest

from nextquill_plugin.demo import theta0


def test_the_report_describes_the_shipped_model(tmp_path):
    report = theta0.load_report()
    # Measured on users of a word pool it never saw: most of what it marks is their own words,
    # it marks the first token of most of their history-only words, the history helps on average.
    assert report["meets_target"] and theta0.meets_target(report["scores"])
    assert report["scores"]["precision"] >= theta0.TARGET_PRECISION
    assert report["scores"]["history_only_first_token_recall"] >= theta0.TARGET_FIRST_TOKEN_RECALL
    assert report["scores"]["mean_log_prob_gain"] > 0
    # The script's defaults are the recipe the report records.
    recipe = {"copy_steps": theta0.COPY_STEPS, "copy_words": theta0.COPY_WORDS_SHIPPED,
              "history_steps": theta0.HISTORY_STEPS, "mixed_steps": theta0.MIXED_STEPS,
              "hidden_size": theta0.HIDDEN_SIZE, "layers": theta0.LAYERS,
              "learning_rate": theta0.LEARNING_RATE}  # fmt: skip
    assert {key: report[key] for key in recipe} == recipe
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


@pytest.mark.slow
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


@pytest.mark.parametrize("words", theta0.COPY_WORDS)
def test_copy_texts_repeat_a_run_and_never_show_a_measured_word(words):
    from dataset_formats.build.synthetic import word_pool

    texts = theta0.copy_texts(300, words=words)
    runs = [text["text"].rstrip(".").split(". ") for text in texts]
    assert all(len(set(parts)) == 1 and len(parts) == 3 for parts in runs)  # one run, 3 times
    seen = {word.strip(".") for text in texts for word in text["text"].split()}
    assert seen & set(word_pool(theta0.MEASURE_STYLE.words)) == set()
    if words == "pool":
        assert seen <= set(word_pool(theta0.THETA0_STYLE.words))
    else:  # fresh strings: other lengths than the pools' four letters, drawn anew
        assert {len(word) for word in seen} == {3, 4, 5, 6, 7}
        # a four-letter one may be a training-pool word by chance (3,000 of the 4,900 there are)
        assert len(seen & set(word_pool(theta0.THETA0_STYLE.words))) < 0.1 * len(seen)
