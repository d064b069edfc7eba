"""A theta_0 that copies from the history: the checkpoint the demo and the benchmarks start
from (shipped in ``theta0_model/``, 2.5 MB), and the script that makes it (its time and scores:
benchmarks/README.md, section 3a).

    python -m nextquill_plugin.demo.theta0 [--out DIR] [--copy-steps C] [--history-steps N]
                                           [--mixed-steps M] [--copy-words pool|fresh]

NextQuill's weights are only as good as theta_0's reading of the history: a token gets lambda
when the history raises its probability by more than delta. The paper's theta_0 is a pretrained
LLM that copies from its context; ours is a tiny Qwen2 trained from scratch to copy. Its users'
personal words are made-up words drawn per user from a large pool (``Style`` in
dataset_formats/build/synthetic.py), so only a user's own history predicts them and memorising
an inventory of phrases does not help. Three stages:
0. short texts that repeat a run of letter strings drawn anew (``copy_texts``): learning to copy;
1. with-history prompts as plain text, a loss on every token (the history's reviews repeat the
   user's words, so it learns to copy them);
2. mixed rows, every other one without history, so that it knows the counterfactual prompt
   too and the tokens the history does not change get the same probability under both.
Its tokenizer is trained on its own users' texts only. It is then measured on users whose
words come from another pool, one it never saw: the share of lambda tokens that lie in the
users' planted spans (opinion words, favourite phrase, sign-off), the share of the first
tokens of history-only spans whose effect exceeds delta, and the mean log-probability of the
targets with and without history. All go to ``report.json`` beside the model, with its sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from transformers import AutoModelForCausalLM, AutoTokenizer

from dataset_formats.amazon_reviews import load
from dataset_formats.build import BuildOptions, build
from dataset_formats.build.synthetic import (
    CONSONANTS,
    VOWELS,
    Style,
    synthetic_raw_amazon,
    synthetic_users,
    word_pool,
)
from nextquill_common.jsonl import read_jsonl, write_jsonl, write_text_atomic

from ..equations import PreferenceRule
from ..evaluation.inspection import paired_rows, token_views
from .local_runs import (
    FULL_FINETUNE,
    build_benchmark_model,
    half_without_history,
    solo_run_threads,
    tiny_recipe,
    train_logged,
)

THETA0_DIR = Path(__file__).resolve().parent / "theta0_model"
REPORT = "report.json"
MODEL_FILE = "model.safetensors"
THETA0_SEED, MEASURE_SEED = 12, 11  # populations: theta_0's own, the planted benchmark's
THETA0_USERS, USERS = 300, 120
# theta_0's users draw their words from one pool; everyone it is measured on from another.
THETA0_STYLE = Style(words="train", recurrence=0.8, title_names_taste=False)
MEASURE_STYLE = Style(words="heldout", recurrence=0.8, title_names_taste=False)
# The prompt settings theta_0 is trained and measured with (and the demo and benchmark use).
PROMPT = {"sequence_len": 1024, "nextquill_history_k": 4, "micro_batch_size": 4}
RULE = PreferenceRule.from_settings()  # the recipes' default delta, lambda, epsilon
# Files of Axolotl's output folder that the shipped checkpoint leaves out (logs, model card).
NOT_SHIPPED = frozenset({"debug.log", "README.md", "training_args.bin", "trainer_state.json"})
TARGET_FIRST_TOKEN_RECALL, TARGET_PRECISION = 0.8, 0.6
# The recipe of the shipped checkpoint (its report.json records what was used).
COPY_STEPS, HISTORY_STEPS, MIXED_STEPS, HIDDEN_SIZE, LAYERS = 2500, 600, 150, 160, 2
COPY_WORDS_SHIPPED = "fresh"
LEARNING_RATE = 0.001  # every stage; the copying stage needs it this low
COPY_TEXTS = 8000


def say(message: str) -> None:
    print(f"[theta0] {message}", flush=True)


def population_rows(out: Path, seed: int, n_users: int, style: Style) -> list[dict]:
    """Train rows of a synthetic population (raw Amazon schema, through our builder)."""

    reviews, meta = synthetic_raw_amazon(n_users=n_users, seed=seed, style=style)
    raw = out / f"raw_{seed}"
    write_jsonl(raw / "reviews.jsonl.gz", reviews, sort_keys=True)
    write_jsonl(raw / "meta.jsonl.gz", meta, sort_keys=True)
    build(
        [raw / "reviews.jsonl.gz"],
        [raw / "meta.jsonl.gz"],
        out / f"rows_{seed}",
        BuildOptions(show_progress=False),
    )
    return read_jsonl(out / f"rows_{seed}" / "train.jsonl")


def pretraining_texts(rows: list[dict], tokenizer_dir: Path) -> list[dict]:
    """Each row's whole with-history prompt and target as one text, for a completion dataset
    (a loss on every token, as an LLM is pretrained): most of the users' made-up words there
    recur within reach, in the earlier reviews of the history, so copying is what pays."""

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    strategy = load(tokenizer, {**PROMPT, "nextquill": False})
    return [{"text": tokenizer.decode(strategy.tokenize_prompt(row)["input_ids"])} for row in rows]


# What the copying stage's texts are made of: "fresh" (the shipped checkpoint's), runs of
# letter strings drawn anew, of other lengths than the pools' four letters and never a held-out
# word, so that only copying predicts them; "pool", runs of the training pool's words, with which
# the model learns that pool's lexicon more than copying (benchmarks/README.md, section 3a).
COPY_WORDS = ("pool", "fresh")


def fresh_word(rng, excluded: frozenset[str]) -> str:
    """A made-up word of 3 to 7 letters, consonants and vowels alternating, not in ``excluded``."""

    while True:
        length, start = rng.randint(3, 7), rng.randint(0, 1)
        letters = [
            rng.choice(CONSONANTS if (i + start) % 2 == 0 else VOWELS) for i in range(length)
        ]
        word = "".join(letters)
        if word not in excluded:
            return word


def copy_texts(
    n_texts: int, seed: int = THETA0_SEED, words: str = COPY_WORDS_SHIPPED
) -> list[dict]:
    """Short texts that repeat a random run of words three times: the plainest lesson in
    copying from context, before the reviews (without it, a model this small never learned to
    copy a word it had seen in the history). ``words``: see ``COPY_WORDS``."""

    if words not in COPY_WORDS:
        raise ValueError(f"copy words {words!r}: one of {', '.join(COPY_WORDS)}")
    rng = random.Random(seed)
    pool = word_pool(THETA0_STYLE.words)
    held_out = frozenset(word_pool(MEASURE_STYLE.words))
    texts = []
    for _ in range(n_texts):
        count = rng.randint(4, 12)
        if words == "pool":
            run = rng.sample(pool, count)
        else:
            run = [fresh_word(rng, held_out) for _ in range(count)]
        text = " ".join(run)
        texts.append({"text": f"{text}. {text}. {text}."})
    return texts


def train_stage(
    name: str,
    model: Path,
    rows_file: Path,
    out: Path,
    steps: int,
    every_token: bool = False,
    **settings,
) -> Path:
    """Full fine-tuning of ``model`` on ``rows_file``: ContextSFT on user rows, or with
    ``every_token`` plain language modelling of a completion dataset; returns the checkpoint."""
    started = time.time()
    overrides = {"nextquill": False, **FULL_FINETUNE, **PROMPT, **settings}
    if every_token:  # a completion dataset, trained without the plugin
        overrides.update(
            plugins=None,
            nextquill=None,
            nextquill_history_k=None,
            datasets=[{"path": str(rows_file), "ds_type": "json", "type": "completion"}],
        )
    recipe = tiny_recipe(
        model, rows_file, out / name, max_steps=steps, learning_rate=LEARNING_RATE, **overrides
    )
    losses = train_logged(name, recipe, out / name, threads=solo_run_threads())
    say(
        f"{name}: {steps} steps in {time.time() - started:.0f}s, "
        f"loss {losses[0]['loss']:.3f} -> {losses[-1]['loss']:.3f}"
    )
    return out / name / "out"


def planted_token_scores(
    model_dir: Path, rows: list[dict], truth: dict, rule: PreferenceRule = RULE
):
    """theta_0's lambda tokens (effect > delta) against the planted tokens of ``rows``: shares;
    precision (lambda tokens that are planted); recall over all planted tokens, over the first
    token of each planted span (later tokens of a phrase follow from its first, with or
    without history), and over the first tokens of the history-only spans; the mean
    log-probability of the target tokens with history minus without (> 0: the history helps)."""

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    strategy = load(tokenizer, {**PROMPT, "nextquill": True})
    views = token_views(
        model,
        tokenizer,
        [strategy.prompt_id(row, i) for i, row in enumerate(rows)],
        paired_rows(strategy, rows),
        rule=rule,
        batch_size=8,
        show_progress=False,
    )
    counts = dict.fromkeys(
        ("tokens", "marked", "planted", "hits", "first", "first_hits", "only", "only_hits"), 0
    )
    log_prob_gain = 0.0
    for row, view in zip(rows, views, strict=True):
        text = row["target"]["text"]
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ][: len(view.effects)]
        spans = truth[row["user_id"]].planted_spans(text)
        lam = view.preference[: len(offsets)]
        log_prob_gain += float(
            np.sum(
                np.log(np.maximum(view.p_with, 1e-12)) - np.log(np.maximum(view.p_without, 1e-12))
            )
        )
        in_span = np.array([any(s < e2 and e1 < e for s, e, _ in spans) for e1, e2 in offsets])
        counts["tokens"] += len(lam)
        counts["marked"] += int(lam.sum())
        counts["planted"] += int(in_span.sum())
        counts["hits"] += int((lam & in_span).sum())
        for s, e, history_only in spans:
            inside = [i for i, (e1, e2) in enumerate(offsets) if s < e2 and e1 < e]
            if inside:
                counts["first"] += 1
                counts["first_hits"] += int(lam[inside[0]])
                counts["only"] += history_only
                counts["only_hits"] += int(history_only and lam[inside[0]])
    return {
        "rows": len(rows),
        "tokens": counts["tokens"],
        "lambda_share": counts["marked"] / max(counts["tokens"], 1),
        "planted_share": counts["planted"] / max(counts["tokens"], 1),
        "precision": counts["hits"] / max(counts["marked"], 1),
        "recall": counts["hits"] / max(counts["planted"], 1),
        "first_token_recall": counts["first_hits"] / max(counts["first"], 1),
        "history_only_first_token_recall": counts["only_hits"] / max(counts["only"], 1),
        "mean_log_prob_gain": log_prob_gain / max(counts["tokens"], 1),
    }


def measurement_rows(work: Path, n_rows: int = 200) -> tuple[list[dict], dict]:
    """Users of the held-out word pool (not theta_0's): rows and each user's planted truth."""

    rows = population_rows(work, MEASURE_SEED, USERS, MEASURE_STYLE)[:n_rows]
    users = synthetic_users(USERS, MEASURE_SEED, MEASURE_STYLE)
    return rows, {user.user_id: user for user in users}


def meets_target(scores: dict) -> bool:
    """The history-only planted spans' first tokens cross delta for >= 80% of their
    occurrences, and >= 60% of the lambda tokens are planted."""
    return (
        scores["history_only_first_token_recall"] >= TARGET_FIRST_TOKEN_RECALL
        and scores["precision"] >= TARGET_PRECISION
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_report(model_dir: Path = THETA0_DIR) -> dict:
    """The shipped report, checked against the model file it describes."""
    report = json.loads((model_dir / REPORT).read_text())
    if sha256(model_dir / MODEL_FILE) != report["model_sha256"]:
        raise ValueError(f"{model_dir / MODEL_FILE} is not the model {model_dir / REPORT} measured")
    return report


def make_theta0(
    out: Path,
    work: Path,
    history_steps: int = HISTORY_STEPS,
    mixed_steps: int = MIXED_STEPS,
    hidden_size: int = HIDDEN_SIZE,
    num_layers: int = LAYERS,
    copy_steps: int = COPY_STEPS,
    copy_words: str = COPY_WORDS_SHIPPED,
) -> dict:
    """Train theta_0 (every stage), measure it, and write model, tokenizer and report to out
    (replacing only an earlier theta_0: a folder with this script's report)."""
    if out.exists() and any(out.iterdir()) and not (out / REPORT).exists():
        raise SystemExit(f"--out {out} holds files this script did not write; choose another")
    own = population_rows(work, THETA0_SEED, THETA0_USERS, THETA0_STYLE)
    measured_rows, truth = measurement_rows(work)
    base = build_benchmark_model(
        work / "base_model", own, hidden_size=hidden_size, num_layers=num_layers
    )
    write_jsonl(work / "copying.jsonl", copy_texts(COPY_TEXTS, words=copy_words))
    write_jsonl(work / "with_history.jsonl", pretraining_texts(own, base))
    write_jsonl(work / "mixed.jsonl", half_without_history(own))
    stage0 = train_stage(
        "copying", base, work / "copying.jsonl", work, copy_steps, every_token=True,
        micro_batch_size=16, sequence_len=256,
    )  # fmt: skip
    stage1 = train_stage(
        "with_history", stage0, work / "with_history.jsonl", work, history_steps, every_token=True
    )
    stage2 = train_stage("mixed", stage1, work / "mixed.jsonl", work, mixed_steps)
    scores = planted_token_scores(stage2, measured_rows, truth)
    say(f"measured on {scores['rows']} rows of the planted benchmark's users: {scores}")
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    for path in stage2.iterdir():
        if path.is_file() and path.name not in NOT_SHIPPED:
            shutil.copy2(path, staging / path.name)
    report = {
        "hidden_size": hidden_size,
        "layers": num_layers,
        "learning_rate": LEARNING_RATE,
        "copy_steps": copy_steps,
        "copy_words": copy_words,
        "history_steps": history_steps,
        "mixed_steps": mixed_steps,
        "delta": RULE.delta,
        "prompt": PROMPT,
        "populations": {
            "trained_on": {"seed": THETA0_SEED, "users": THETA0_USERS, **asdict(THETA0_STYLE)},
            "measured_on": {"seed": MEASURE_SEED, "users": USERS, **asdict(MEASURE_STYLE)},
        },
        "scores": scores,
        "meets_target": meets_target(scores),
        "model_sha256": sha256(staging / MODEL_FILE),
    }
    (staging / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return report


def remeasure(out: Path, work: Path) -> dict:
    """Measure an existing theta_0 again (after a change of the measurement) and rewrite its
    report; the model must be the one the report names."""

    report = load_report(out)
    rows, truth = measurement_rows(work, report["scores"]["rows"])
    report["scores"] = planted_token_scores(out, rows, truth)
    report["meets_target"] = meets_target(report["scores"])
    write_text_atomic(out / REPORT, json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=THETA0_DIR)
    parser.add_argument("--copy-steps", type=int, default=COPY_STEPS)
    parser.add_argument(
        "--copy-words",
        choices=COPY_WORDS,
        default=COPY_WORDS_SHIPPED,
        help="the copying stage's words: fresh letter strings (the shipped recipe) or the "
        "training pool's (see COPY_WORDS)",
    )
    parser.add_argument("--history-steps", type=int, default=HISTORY_STEPS)
    parser.add_argument("--mixed-steps", type=int, default=MIXED_STEPS)
    parser.add_argument("--hidden-size", type=int, default=HIDDEN_SIZE)
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    parser.add_argument(
        "--remeasure", action="store_true", help="measure --out's theta_0 again, no training"
    )
    args = parser.parse_args(argv)
    started = time.time()
    if args.remeasure:
        with tempfile.TemporaryDirectory() as work:
            say(f"remeasured {args.out}: {json.dumps(remeasure(args.out, Path(work)))}")
        return
    recipe = (args.history_steps, args.mixed_steps, args.hidden_size, args.layers, args.copy_steps)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = args.workdir
        report = make_theta0(args.out, work, *recipe, copy_words=args.copy_words)
    else:
        with tempfile.TemporaryDirectory() as work:
            report = make_theta0(args.out, Path(work), *recipe, copy_words=args.copy_words)
    say(f"wrote {args.out} in {(time.time() - started) / 60:.1f} min: {json.dumps(report)}")


if __name__ == "__main__":
    main()
