"""Planted-preference quality benchmark: does NextQuill find and use what the history predicts?

    python benchmarks/planted_preference.py [--seeds 0 1 2] [--steps 120] [--jobs 2]
    python benchmarks/planted_preference.py --smoke      # the test suite's few-step version

Synthetic users in the raw Amazon Reviews 2023 schema (dataset_formats/build/synthetic.py)
have planted preference tokens: two opinion words, a favourite phrase and a sign-off, made-up
words drawn per user from a pool theta_0 never saw, that recur in their history and targets;
the rest of each review is boilerplate shared by everyone. Both populations go through our
builder (the DPL protocol). benchmarks/tuned_comparison.py tunes each method first; this
script compares more variants at one setting.

Protocol (see benchmarks/README.md for why each step is there):
1. theta_0: the shipped checkpoint that copies from the history (nextquill_plugin/demo/theta0.py:
   a tiny Qwen2 trained on another population), checked against its report; or, with
   --theta0 train, one made here the same way.
2. From theta_0, with the same budget and seed: SFT, ContextSFT, CausalOnly, NormOnly, NextQuill
   and NextQuill with no gradient through the counterfactual pass (not in the paper), LoRA, for
   every seed.
3. Every model generates the test users' reviews (greedy; repetition penalty 1.2 on all tokens as
   the authors, and 1.2 on generated tokens only) and is scored with ROUGE-1/L, METEOR, BLEU, and
   directly on personalization: the share of predictions with the user's own phrase and sign-off,
   and with another user's phrase; and its mean log p(y|x,h) and log p(y|x) on the test targets.
4. theta_0's token weights against the planted tokens (nextquill_plugin/demo/theta0.py).
Prints markdown tables (mean and spread over seeds; paired per-user differences against
ContextSFT, averaged over seeds, with 95% bootstrap intervals) and writes them to OUT/report.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nextquill_common.jsonl import read_jsonl, write_jsonl  # noqa: E402
from nextquill_plugin.demo import theta0 as theta0_script  # noqa: E402
from nextquill_plugin.demo.local_runs import (  # noqa: E402
    tiny_recipe,
    train_logged,
    use_offline_mode,
)

use_offline_mode()  # before any torch/transformers/axolotl import

VARIANTS = {
    "SFT": {"nextquill": False, "nextquill_include_history": False},
    "ContextSFT": {"nextquill": False},
    "CausalOnly": {"nextquill": True, "nextquill_token_weighting": False},
    "NormOnly": {"nextquill": True, "nextquill_causal_loss": False},
    "NextQuill": {"nextquill": True},
    # Not in the paper: Lp's gradient stops at the counterfactual pass.
    "NextQuill-cf-const": {"nextquill": True, "nextquill_counterfactual_gradient": False},
}
BASELINE = "ContextSFT"
# Per-prediction metrics compared with the baseline user by user (BLEU is a corpus metric).
PAIRED = {
    "rouge1": "ROUGE-1",
    "rougeL": "ROUGE-L",
    "meteor": "METEOR",
    "own_phrase": "own phrase",
    "sign_off": "sign-off",
    "other_phrase": "other's phrase",
}
PENALTIES = {"penalty 1.2 on all tokens (authors)": "all", "penalty 1.2 on new tokens": "generated"}


def say(message: str) -> None:
    print(f"[planted] {message}", flush=True)


def build_population(
    out: Path, n_users: int, style=theta0_script.MEASURE_STYLE, seed=theta0_script.MEASURE_SEED
) -> tuple[Path, dict]:
    """The benchmark's users (raw files through our builder; by default theta_0's measurement
    population, whose words come from a pool theta_0 never saw) and their planted truth."""
    from dataset_formats.build import BuildOptions, build
    from dataset_formats.build.synthetic import synthetic_raw_amazon, synthetic_users

    reviews, meta = synthetic_raw_amazon(n_users=n_users, seed=seed, style=style)
    write_jsonl(out / "raw_users" / "reviews.jsonl.gz", reviews, sort_keys=True)
    write_jsonl(out / "raw_users" / "meta.jsonl.gz", meta, sort_keys=True)
    report = build(
        [out / "raw_users" / "reviews.jsonl.gz"],
        [out / "raw_users" / "meta.jsonl.gz"],
        out / "users",
        BuildOptions(show_progress=False),
    )
    say(f"users: {report.rows_per_split} rows of {report.users} users (builder)")
    return out / "users", {u.user_id: u for u in synthetic_users(n_users, seed, style)}


def train(
    name: str, recipe: dict, out: Path, threads: int, smoke: bool = False
) -> tuple[Path, float]:
    """One `axolotl train` subprocess; returns (output folder, seconds). Smoke runs (the
    tests') use `--launcher python`, one process instead of three; measured runs keep the
    launcher a user gets."""
    workdir = out / "runs" / name
    started = time.time()
    launcher = "python" if smoke else None
    steps = train_logged(name, recipe, workdir, threads=threads, launcher=launcher)
    say(
        f"trained {name} in {time.time() - started:.0f}s: "
        f"loss {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f}"
    )
    return workdir / "out", time.time() - started


def personalization(record: dict, truth: dict) -> dict[str, float]:
    """1.0/0.0: the prediction holds the user's own phrase, their sign-off, another user's
    phrase (with made-up words: the user's own words inside the shared frames)."""
    user, text = truth[record["user_id"]], record["prediction"]
    phrase, sign_off = user.planted[2], user.planted[3]
    others = {other.planted[2] for other in truth.values()} - {phrase}
    return {
        "own_phrase": float(phrase in text),
        "sign_off": float(sign_off in text),
        "other_phrase": float(any(other in text for other in others)),
    }


def log_prob_means(checkpoint: Path, recipe_path: Path, rows: list[dict]) -> dict[str, float]:
    """Mean log p(y_t | x, h) and log p(y_t | x) over the rows' target tokens under a model."""
    import yaml

    from dataset_formats.amazon_reviews import load
    from nextquill_plugin.equations import PreferenceRule
    from nextquill_plugin.evaluation.generation import load_model_for_generation
    from nextquill_plugin.evaluation.inspection import paired_rows, token_views

    recipe = yaml.safe_load(recipe_path.read_text())
    model, tokenizer, _ = load_model_for_generation(recipe["base_model"], str(checkpoint))
    strategy = load(tokenizer, {**theta0_script.PROMPT, "nextquill": True})
    views = token_views(
        model,
        tokenizer,
        [strategy.prompt_id(row, i) for i, row in enumerate(rows)],
        paired_rows(strategy, rows),
        rule=PreferenceRule.from_settings(),  # the paper's delta, lambda, epsilon
        batch_size=8,
        show_progress=False,
    )
    with_history = np.log(np.clip(np.concatenate([v.p_with for v in views]), 1e-30, None))
    without = np.log(np.clip(np.concatenate([v.p_without for v in views]), 1e-30, None))
    return {"with": float(with_history.mean()), "without": float(without.mean())}


def evaluate_run(
    checkpoint: Path, recipe_path: Path, test: Path, out: Path, scope: str, max_new: int
):
    from nextquill_plugin.evaluation.evaluate import EvaluationRequest, run_evaluation
    from nextquill_plugin.evaluation.generation import GenerationSettings

    document = run_evaluation(
        EvaluationRequest(
            recipe=str(recipe_path),
            checkpoint=str(checkpoint),
            data=str(test),
            out=str(out),
            resamples=200,
        ),
        GenerationSettings(max_new_tokens=max_new, batch_size=16, penalty_scope=scope),
        show_progress=False,
    )
    return document, read_jsonl(out / "predictions.jsonl")


def mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--theta0",
        choices=["shipped", "train"],
        default="shipped",
        help="the shipped theta_0 (nextquill_plugin/demo/theta0_model) or train one here",
    )
    parser.add_argument("--theta0-history-steps", type=int, default=theta0_script.HISTORY_STEPS)
    parser.add_argument("--theta0-mixed-steps", type=int, default=theta0_script.MIXED_STEPS)
    parser.add_argument("--jobs", type=int, default=2, help="trainings run side by side")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("benchmark_runs/planted"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument(
        "--smoke", action="store_true", help="a few steps, one seed, two variants (for tests)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.users, args.steps = [0], 24, 2
        args.theta0_history_steps, args.theta0_mixed_steps = 2, 2
        args.max_new_tokens, args.variants = 8, ["ContextSFT", "NextQuill"]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    users, truth = build_population(out, args.users)
    train_rows = read_jsonl(users / "train.jsonl")
    common = dict(theta0_script.PROMPT)
    if args.theta0 == "shipped":
        theta0 = theta0_script.THETA0_DIR
        theta0_script.load_report(theta0)  # the model is the one its report measured
    else:
        theta0 = out / "theta0"
        theta0_script.make_theta0(
            theta0, out / "theta0_work", args.theta0_history_steps, args.theta0_mixed_steps
        )
    weights = theta0_script.planted_token_scores(theta0, train_rows[:200], truth)
    say(f"theta_0 weights vs planted tokens on this run's rows: {weights}")

    jobs = []
    for seed in args.seeds:
        for variant in args.variants:
            keys = VARIANTS[variant]
            name = f"{variant}-seed{seed}"
            recipe = tiny_recipe(
                theta0,
                users / "train.jsonl",
                out / "runs" / name,
                max_steps=args.steps,
                learning_rate=0.002,
                seed=seed,
                **common,
                **keys,
            )
            jobs.append((name, variant, seed, recipe))
    threads = max(1, 2 // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        trained = list(pool.map(lambda job: train(job[0], job[3], out, threads, args.smoke), jobs))

    # results[penalty][variant][seed]: corpus metrics; predictions[...]: records with flags
    results: dict[str, dict[str, dict[int, dict]]] = {p: {} for p in PENALTIES}
    predictions: dict[str, dict[str, dict[int, list]]] = {p: {} for p in PENALTIES}
    log_probs: dict[str, dict[int, dict]] = {}
    test_rows = read_jsonl(users / "test.jsonl")
    for (name, variant, seed, _), (checkpoint, _) in zip(jobs, trained, strict=True):
        recipe_path = out / "runs" / name / f"{name}.yml"
        log_probs.setdefault(variant, {})[seed] = log_prob_means(checkpoint, recipe_path, test_rows)
        for label, scope in PENALTIES.items():
            document, records = evaluate_run(
                checkpoint,
                recipe_path,
                users / "test.jsonl",
                out / "eval" / scope / name,
                scope,
                args.max_new_tokens,
            )
            records = [{**r, **personalization(r, truth)} for r in records]
            row = {m: v["value"] for m, v in document["metrics"].items()}
            row.update({m: float(np.mean([r[m] for r in records])) for m in PAIRED})
            results[label].setdefault(variant, {})[seed] = row
            predictions[label].setdefault(variant, {})[seed] = records
    report = render_report(results, predictions, log_probs, weights, args, time.time() - started)
    (out / "report.md").write_text(report)
    print(report)


def pooled_difference(method: dict[int, list], baseline: dict[int, list], metric: str):
    """Per user, (method - baseline) averaged over the seeds both have, with a 95% paired
    bootstrap interval over users."""
    from nextquill_plugin.evaluation.significance import mean_difference, user_resamples

    seeds = sorted(set(method) & set(baseline))

    def per_user(records_by_seed: dict[int, list]) -> np.ndarray:
        by_user: dict[str, list[float]] = {}
        for seed in seeds:
            for record in records_by_seed[seed]:
                by_user.setdefault(record["user_id"], []).append(record[metric])
        return np.array([np.mean(by_user[user]) for user in sorted(by_user)])

    method_values, baseline_values = per_user(method), per_user(baseline)
    draws = user_resamples(len(method_values), 2000, seed=0)
    return mean_difference(metric, method_values, baseline_values, draws)


def render_report(results, predictions, log_probs, weights, args, seconds: float) -> str:
    columns = ["rouge1", "rougeL", "meteor", "bleu", "own_phrase", "sign_off", "other_phrase"]
    labels = ["ROUGE-1", "ROUGE-L", "METEOR", "BLEU", "own phrase", "sign-off", "other's phrase"]
    lines = [
        f"# Planted-preference benchmark: {len(args.seeds)} seed(s) {args.seeds}, "
        f"{args.steps} steps per model, {args.users} users, theta_0 {args.theta0}, "
        f"{seconds / 60:.1f} min",
        "",
        "theta_0's lambda tokens (effect > 0.05) against the planted tokens, 200 training rows: "
        f"{weights['lambda_share']:.1%} of target tokens get lambda "
        f"({weights['planted_share']:.1%} are planted); precision {weights['precision']:.3f}, "
        f"recall {weights['recall']:.3f}, first-token recall {weights['first_token_recall']:.3f}"
        " (history-only spans, the sign-offs: "
        f"{weights['history_only_first_token_recall']:.3f}).",
        "",
        "## Log-probability of the test targets (mean over tokens and seeds)",
        "",
        "| Method | log p(y|x,h) | log p(y|x) | gap |",
        "|---|---|---|---|",
    ]
    for variant, by_seed in log_probs.items():
        with_h = statistics.mean(v["with"] for v in by_seed.values())
        without = statistics.mean(v["without"] for v in by_seed.values())
        lines.append(f"| {variant} | {with_h:.4f} | {without:.4f} | {with_h - without:+.3f} |")
    for label in results:
        lines += ["", f"## {label} (mean ± sd over seeds)", ""]
        lines += ["| Method | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        for variant, by_seed in results[label].items():
            cells = [mean_spread([by_seed[s][c] for s in sorted(by_seed)]) for c in columns]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        base = predictions[label].get(BASELINE)
        if not base:
            continue
        lines += [
            "",
            f"Paired per-user difference against {BASELINE} (averaged over seeds; 95% paired "
            "bootstrap interval over users; * = the interval excludes 0):",
            "",
            "| Method | " + " | ".join(PAIRED.values()) + " |",
            "|---" * (len(PAIRED) + 1) + "|",
        ]
        for variant, by_seed in predictions[label].items():
            if variant == BASELINE:
                continue
            cells = []
            for metric in PAIRED:
                d = pooled_difference(by_seed, base, metric)
                mark = "*" if d.significant else ""
                cells.append(f"{d.mean:+.4f}{mark} [{d.ci_low:+.4f}, {d.ci_high:+.4f}]")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
