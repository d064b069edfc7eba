"""The Table-1 metrics against values worked out by hand, the bootstrap intervals, and the
WordNet METEOR needs."""

import math

import numpy as np
import pytest

from nextquill_plugin.evaluation.metrics import (
    CorpusBleu,
    bootstrap_interval,
    evaluate_texts,
    meteor_per_sample,
    rouge_per_sample,
)
from nextquill_plugin.evaluation.wordnet_data import (
    LEXICOGRAPHER_FILES,
    MISSING_WORDNET,
    install_wordnet,
    lexnames_text,
    require_wordnet,
)


def test_rouge_by_hand():
    # pair 1: 5 of 6 unigrams shared (the x2, cat, on, mat), LCS "the cat on the mat" = 5
    # pair 2: all 4 unigrams shared, reversed order: LCS = 1
    scores = rouge_per_sample(
        ["the cat sat on the mat", "a b c d"], ["The cat is on the mat.", "d c b a"]
    )
    np.testing.assert_allclose(scores["rouge1"], [5 / 6, 1.0])
    np.testing.assert_allclose(scores["rougeL"], [5 / 6, 0.25])


def meteor_by_hand(matches: int, hyp_len: int, ref_len: int, chunks: int) -> float:
    """METEOR (Banerjee & Lavie) with NLTK's/evaluate's alpha 0.9, beta 3, gamma 0.5."""
    precision, recall = matches / hyp_len, matches / ref_len
    fmean = precision * recall / (0.9 * precision + 0.1 * recall)
    return fmean * (1 - 0.5 * (chunks / matches) ** 3)


def test_meteor_by_hand_including_a_wordnet_synonym():
    scores = meteor_per_sample(
        [
            "alpha beta delta gamma",  # 4 exact matches in 3 chunks
            "i own a boat",  # 3 of 4 match, one chunk
            "i own a auto",  # "auto" matches "car" only through WordNet
        ],
        ["alpha beta gamma delta", "i own a car", "i own a car"],
    )
    expected = [meteor_by_hand(4, 4, 4, 3), meteor_by_hand(3, 4, 4, 1), meteor_by_hand(4, 4, 4, 1)]
    np.testing.assert_allclose(scores, expected)
    assert expected == pytest.approx([0.7890625, 0.7361111, 0.9921875])


def test_corpus_bleu_by_hand():
    # Clipped n-gram matches summed over the corpus (not averaged per sentence):
    # "a b c d e" vs "a b c d f": 4/5, 3/4, 2/3, 1/2; "x y" vs "x y z w": 2/2, 1/1, 0/0, 0/0.
    predictions, references = ["a b c d e", "x y"], ["a b c d f", "x y z w"]
    precisions = [6 / 7, 4 / 5, 2 / 3, 1 / 2]
    brevity = math.exp(1 - 9 / 7)  # 7 predicted tokens, 9 reference tokens
    expected = 100 * brevity * math.exp(sum(math.log(p) for p in precisions) / 4)
    assert CorpusBleu(predictions, references).score() == pytest.approx(expected)


def test_bleu_of_a_bootstrap_subset_equals_sacrebleu_on_that_subset():
    """Against both of sacrebleu's public entry points: ``corpus_bleu`` and ``BLEU()``."""
    import sacrebleu
    from sacrebleu.metrics import BLEU

    predictions = ["the plot is slow", "great cover art", "i loved every page of it", "meh"]
    references = ["the plot is very slow", "great cover", "i loved each page of it", "not for me"]
    bleu = CorpusBleu(predictions, references)
    indices = np.array([0, 2, 2, 3])
    subset = sacrebleu.corpus_bleu(
        [predictions[i] for i in indices], [[references[i] for i in indices]]
    ).score
    assert bleu.score(indices) == pytest.approx(subset)
    assert bleu.score() == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)

    predictions = ["the cat sat on the mat", "a dog ran", "hello there world", "the end"]
    references = ["the cat is on the mat", "the dog ran away", "hello world", "the end of it"]
    bleu = CorpusBleu(predictions, references)
    expected = BLEU().corpus_score(
        [predictions[i] for i in indices], [[references[i] for i in indices]]
    )
    assert bleu.score(indices) == pytest.approx(expected.score)
    assert bleu.score() == pytest.approx(BLEU().corpus_score(predictions, [references]).score)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.3, 0.1, 30), rng.normal(0.3, 0.1, 3000)
    for values in (small, large):
        low, high = bootstrap_interval(lambda idx, v=values: float(v[idx].mean()), len(values))
        assert low < values.mean() < high
    width_small = np.subtract(*bootstrap_interval(lambda i: float(small[i].mean()), 30)[::-1])
    width_large = np.subtract(*bootstrap_interval(lambda i: float(large[i].mean()), 3000)[::-1])
    assert width_large < width_small / 5  # ~ 1/sqrt(100)


def test_evaluate_texts_reports_every_metric_with_an_interval():
    predictions = ["the plot is slow", "great cover art", "i loved every page", "meh", "fine"]
    references = ["the plot is very slow", "great cover", "i loved each page", "no", "fine book"]
    result = evaluate_texts(predictions, references, resamples=200)
    assert list(result.metrics) == ["rouge1", "rougeL", "meteor", "bleu"]
    for name, estimate in result.metrics.items():
        assert estimate.ci_low <= estimate.value <= estimate.ci_high, name
    assert result.metrics["rouge1"].value == pytest.approx(result.per_sample["rouge1"].mean())
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        evaluate_texts(["a", "b"], ["a"])


def test_lexnames_table_matches_wordnet_30():
    lines = lexnames_text().splitlines()
    assert len(lines) == len(LEXICOGRAPHER_FILES) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2" and lines[44] == "44\tadj.ppl\t3"
    assert lines[2] == "02\tadv.all\t4"


def test_install_wordnet_says_what_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="wordnet-base wordnet-sense-index"):
        install_wordnet(tmp_path / "empty", tmp_path / "nltk")
    assert "online:  nextquill setup-wordnet" in MISSING_WORDNET
    assert "apt-get install wordnet-base wordnet-sense-index" in MISSING_WORDNET


def test_setup_wordnet_without_debians_files_downloads_and_fails_loudly_offline(
    tmp_path, monkeypatch
):
    """The README's install line: NLTK's download returns False offline (`nltk.download` then
    exited 0); `nextquill setup-wordnet` exits 1 naming both routes. An explicit --source that
    lacks the files is named too."""
    import nltk

    from nextquill_plugin.cli import main
    from nextquill_plugin.evaluation import wordnet_data

    asked = []
    monkeypatch.setattr(wordnet_data, "DEBIAN_WORDNET", tmp_path / "no-debian-wordnet")
    monkeypatch.setattr(nltk, "download", lambda *a, **k: asked.append((a, k)) or False)
    with pytest.raises(SystemExit) as error:
        main(["setup-wordnet", "--nltk-dir", str(tmp_path / "nltk")])
    assert str(error.value.code).startswith("nextquill setup-wordnet: NLTK could not download")
    assert asked == [(("wordnet",), {"download_dir": str(tmp_path / "nltk"), "quiet": True})]
    with pytest.raises(SystemExit, match="lacks adj.exc"):
        main(["setup-wordnet", "--source", str(tmp_path), "--nltk-dir", str(tmp_path / "n")])
    assert len(asked) == 1  # an explicit source is never swapped for a download


def test_missing_wordnet_is_reported_with_both_install_routes(monkeypatch):
    from nltk.corpus import wordnet

    def not_found():
        raise LookupError("Resource wordnet not found.")

    monkeypatch.setattr(wordnet, "ensure_loaded", not_found)
    with pytest.raises(RuntimeError, match="nextquill setup-wordnet"):
        require_wordnet()
