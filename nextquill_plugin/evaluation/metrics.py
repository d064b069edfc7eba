"""The paper's Table 1 metrics, computed offline with the libraries the authors' code reaches
through `evaluate.load(...)` (which would fetch metric scripts from a hub):

- ROUGE-1 / ROUGE-L F1: ``rouge-score``, no stemmer, mean over samples;
- METEOR: NLTK's ``single_meteor_score`` (alpha 0.9, beta 3, gamma 0.5) on word tokens, mean over
  samples; needs WordNet (see ``wordnet_data``);
- BLEU: sacrebleu's corpus BLEU (0-100, tokenizer 13a, exponential smoothing);
- 95% confidence intervals by the percentile bootstrap over samples.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU
from tqdm.auto import tqdm

from .wordnet_data import require_wordnet

METRIC_NAMES = ("rouge1", "rougeL", "meteor", "bleu")
METRIC_LABELS = {"rouge1": "ROUGE-1", "rougeL": "ROUGE-L", "meteor": "METEOR", "bleu": "BLEU"}

# Punkt (NLTK's sentence splitter) is a separate download; without it, sentences are split at
# ., ! or ? followed by white space, which is what Punkt does apart from abbreviations.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def rouge_per_sample(
    predictions: Sequence[str], references: Sequence[str]
) -> dict[str, np.ndarray]:
    """ROUGE-1 and ROUGE-L F1 of every (prediction, reference) pair, as `evaluate`'s rouge
    computes them (rouge-score, default tokenizer, no stemmer)."""
    from rouge_score import rouge_scorer  # imports NLTK (seconds): only when scoring

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references, strict=True)]
    return {
        name: np.array([s[name].fmeasure for s in scores], dtype=np.float64)
        for name in ("rouge1", "rougeL")
    }


def word_tokenizer() -> tuple[Callable[[str], list[str]], str]:
    """NLTK's ``word_tokenize`` (Punkt sentences + Treebank words) when Punkt is installed,
    else the Treebank tokenizer on regex-split sentences. Returns (tokenize, which one)."""
    import nltk  # seconds to import; compare and the CLI's parsers import this module too
    from nltk.tokenize import word_tokenize

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return word_tokenize, "nltk word_tokenize (punkt)"
    except LookupError:
        pass

    def tokenize(text: str) -> list[str]:
        return [
            token
            for sentence in _SENTENCE_END.split(text.strip())
            for token in word_tokenize(sentence, preserve_line=True)
        ]

    return tokenize, "nltk treebank words, regex sentences (punkt not installed)"


def meteor_per_sample(
    predictions: Sequence[str], references: Sequence[str], show_progress: bool = False
) -> np.ndarray:
    """METEOR of every pair, as `evaluate`'s meteor computes it for NLTK >= 3.6.5."""
    from nltk.translate.meteor_score import single_meteor_score  # NLTK: see word_tokenizer

    wordnet = require_wordnet()
    tokenize, _ = word_tokenizer()
    pairs = tqdm(
        list(zip(predictions, references, strict=True)), desc="METEOR", disable=not show_progress
    )
    return np.array(
        [
            single_meteor_score(
                tokenize(ref), tokenize(pred), wordnet=wordnet, alpha=0.9, beta=3, gamma=0.5
            )
            for pred, ref in pairs
        ],
        dtype=np.float64,
    )


class CorpusBleu:
    """sacrebleu corpus BLEU over any subset of the samples (for the bootstrap), from each
    sample's n-gram statistics taken once, through sacrebleu's public API: a one-sentence
    ``corpus_score`` gives the statistics, ``BLEU.compute_bleu`` scores their sums."""

    def __init__(self, predictions: Sequence[str], references: Sequence[str]):
        self.bleu = BLEU()
        rows = []
        for prediction, reference in zip(predictions, references, strict=True):
            one = self.bleu.corpus_score([prediction], [[reference]])
            rows.append([*one.counts, *one.totals, one.sys_len, one.ref_len])
        self.order = self.bleu.max_ngram_order
        self.stats = np.array(rows, dtype=np.int64).reshape(len(rows), 2 * self.order + 2)

    def score(self, indices: np.ndarray | None = None) -> float:
        total = (self.stats if indices is None else self.stats[indices]).sum(axis=0).tolist()
        order = self.order
        return float(
            BLEU.compute_bleu(
                correct=total[:order],
                total=total[order : 2 * order],
                sys_len=total[2 * order],
                ref_len=total[2 * order + 1],
                smooth_method=self.bleu.smooth_method,
                smooth_value=self.bleu.smooth_value,
                max_ngram_order=order,
            ).score
        )


@dataclass
class Estimate:
    """A metric's value with its 95% bootstrap confidence interval."""

    value: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n_samples: int,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    description: str = "",
) -> tuple[float, float]:
    """Percentile bootstrap: ``statistic`` of ``resamples`` index draws with replacement (a
    progress bar when ``description`` is given)."""
    if n_samples == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = tqdm(range(resamples), desc=description, disable=not description, leave=False)
    values = np.array([statistic(rng.integers(0, n_samples, n_samples)) for _ in draws])
    return percentile_interval(values, confidence)


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The central ``confidence`` share of bootstrap ``values`` (2.5th to 97.5th percentile)."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass
class Evaluation:
    """Per-sample scores and the Table-1 metrics with confidence intervals."""

    per_sample: dict[str, np.ndarray]  # rouge1, rougeL, meteor: one value per sample
    metrics: dict[str, Estimate]  # rouge1, rougeL, meteor, bleu
    meteor_tokenizer: str


def evaluate_texts(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    resamples: int = 1000,
    seed: int = 0,
    show_progress: bool = False,
) -> Evaluation:
    """All four metrics of the paper's Table 1 with 95% bootstrap confidence intervals."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    per_sample = rouge_per_sample(predictions, references)
    per_sample["meteor"] = meteor_per_sample(predictions, references, show_progress)
    n = len(predictions)
    metrics: dict[str, Estimate] = {}
    for name, values in per_sample.items():
        low, high = bootstrap_interval(
            lambda idx, v=values: float(v[idx].mean()), n, resamples=resamples, seed=seed
        )
        metrics[name] = Estimate(float(values.mean()) if n else float("nan"), low, high)
    bleu = CorpusBleu(predictions, references)
    low, high = bootstrap_interval(
        bleu.score,
        n,
        resamples=resamples,
        seed=seed,
        description="BLEU bootstrap" if show_progress else "",
    )
    metrics["bleu"] = Estimate(bleu.score() if n else float("nan"), low, high)
    return Evaluation(per_sample, {k: metrics[k] for k in METRIC_NAMES}, word_tokenizer()[1])
