"""Tuned comparison: NextQuill against ContextSFT, each at its own best settings, over seeds,
in conditions that change how rare and how history-only the users' personal words are.

    python benchmarks/tuned_comparison.py [--seeds 0 1 2] [--conditions frequent rare title]
    python benchmarks/tuned_comparison.py --smoke      # the test suite's few-step version

Protocol (benchmarks/README.md, section 3b, has the current result):
1. theta_0: the shipped checkpoint that copies from the history (nextquill_plugin/demo/theta0.py),
   checked against its report. Each condition's users draw their words from the word pool
   theta_0 never saw (dataset_formats/build/synthetic.py, ``Style``), through our builder.
2. Tuning, on the validation split with the first seed: ContextSFT over the learning rates;
   NextQuill with each weight normalisation (tokens: the paper; weights: the authors' code)
   over learning rates x alpha (the paper's grid). Each method keeps the setting with the best
   validation ROUGE-1, in one condition (--tune-on, default frequent) for all, or in each.
3. Test: each method at its chosen setting, every seed (the first seed's run is the tuning
   run). Greedy decoding, repetition penalty 1.2 on generated tokens only (tuned with it);
   the authors' penalty (prompt tokens counted too) is reported beside it.
4. Paired per-user differences against ContextSFT, averaged over seeds, with 95% bootstrap
   intervals over users; theta_0's marks on each condition's rows against the planted truth.
Prints the report and writes OUT/report.md; each finished run leaves OUT/<condition>/runs/
<name>/done.json, so a second invocation with the same OUT resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from planted_preference import (  # noqa: E402
    PAIRED,
    build_population,
    mean_spread,
    personalization,
    pooled_difference,
    train,
)

from dataset_formats.build.synthetic import Style  # noqa: E402
from nextquill_common.jsonl import read_jsonl, write_text_atomic  # noqa: E402
from nextquill_plugin.demo import theta0 as theta0_script  # noqa: E402
from nextquill_plugin.demo.local_runs import (  # noqa: E402
    offline_env,
    tiny_recipe,
    use_offline_mode,
)

use_offline_mode()  # before any torch/transformers/axolotl import

# The conditions: how often a user's taste and sign-off recur, and whether the review title
# (which the prompt shows, with and without history) gives the taste away.
CONDITIONS = {
    "frequent": Style(words="heldout", recurrence=0.8, title_names_taste=False),
    "rare": Style(words="heldout", recurrence=0.3, title_names_taste=False),
    "title": Style(words="heldout", recurrence=0.8, title_names_taste=True),
}
CONDITION_TEXT = {
    "frequent": "personal words in 80% of a user's reviews, plain titles",
    "rare": "personal words in 30% of a user's reviews, plain titles",
    "title": "personal words in 80% of reviews, the title names the taste",
}
BASELINE = "ContextSFT"
METHODS = {
    BASELINE: {"nextquill": False},
    "NextQuill-tokens": {"nextquill": True, "nextquill_weight_normalization": "tokens"},
    "NextQuill-weights": {"nextquill": True, "nextquill_weight_normalization": "weights"},
}
LEARNING_RATES = (0.001, 0.003, 0.01)
ALPHAS = (0.01, 0.05, 0.1)  # the paper's grid
SCOPES = {"generated": "penalty on generated tokens", "all": "authors' penalty"}
TUNING_SCOPE = "generated"
METRICS = ["rouge1", "rougeL", "meteor", "bleu", "own_phrase", "sign_off"]
LABELS = ["ROUGE-1", "ROUGE-L", "METEOR", "BLEU", "own phrase", "sign-off"]


def say(message: str) -> None:
    print(f"[tuned] {message}", flush=True)


@dataclass(frozen=True)
class Run:
    """One training run: a method at a setting and seed, in a condition."""

    condition: str
    method: str
    learning_rate: float
    alpha: float | None
    seed: int

    @property
    def name(self) -> str:
        alpha = f"-alpha{self.alpha:g}" if self.alpha is not None else ""
        return f"{self.method}-lr{self.learning_rate:g}{alpha}-seed{self.seed}"

    @property
    def setting(self) -> str:
        alpha = f", alpha {self.alpha:g}" if self.alpha is not None else ""
        return f"lr {self.learning_rate:g}{alpha}"


def grid(condition: str, seed: int, methods, learning_rates, alphas) -> list[Run]:
    runs = []
    for method in methods:
        keys = METHODS[method]
        for lr in learning_rates:
            for alpha in alphas if keys["nextquill"] else [None]:
                runs.append(Run(condition, method, lr, alpha, seed))
    return runs


class Study:
    """The runs of one invocation: training (side by side), evaluation, results on disk."""

    def __init__(self, out: Path, theta0: Path, args: argparse.Namespace) -> None:
        self.out, self.theta0, self.args = out, theta0, args
        self.users: dict[str, tuple[Path, dict]] = {}

    def folder(self, run: Run) -> Path:
        return self.out / run.condition / "runs" / run.name

    def recipe(self, run: Run) -> dict:
        users, _ = self.users[run.condition]
        keys = dict(METHODS[run.method])
        if run.alpha is not None:
            keys["nextquill_alpha"] = run.alpha
        return tiny_recipe(
            self.theta0,
            users / "train.jsonl",
            self.out / run.condition / "runs" / run.name,
            max_steps=self.args.steps,
            learning_rate=run.learning_rate,
            seed=run.seed,
            # one theta_0 pass per condition, shared by its runs
            nextquill_weight_cache_dir=str(self.out / run.condition / "theta0_effects"),
            **theta0_script.PROMPT,
            **keys,
        )

    def run_all(self, runs: list[Run], evaluations: list[tuple[str, str]]) -> None:
        """Train each run that has no checkpoint yet and evaluate it on each (split, penalty
        scope) of ``evaluations`` that it has no result for, ``--jobs`` runs side by side (a
        run's evaluation is a `nextquill evaluate` child, so that it shares the cores too)."""
        threads = max(1, 2 // self.args.jobs)

        def one(run: Run) -> None:
            folder = self.folder(run)
            if not (folder / "trained.json").exists():
                train(
                    run.name, self.recipe(run), self.out / run.condition, threads, self.args.smoke
                )
                write_text_atomic(folder / "trained.json", json.dumps(asdict(run)) + "\n")
            for split, scope in evaluations:
                self.evaluated(run, split, scope, threads)

        with ThreadPoolExecutor(self.args.jobs) as pool:
            list(pool.map(one, runs))

    def evaluated(self, run: Run, split: str, scope: str, threads: int) -> None:
        """``nextquill evaluate`` of the run's checkpoint, then its per-user records kept in
        done-<split>-<scope>.json (scores() reads them)."""
        done = self.done_file(run, split, scope)
        if done.exists():
            return
        users, truth = self.users[run.condition]
        folder = self.folder(run)
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "nextquill"),
                "evaluate",
                str(folder / f"{run.name}.yml"),
                "--checkpoint",
                str(folder / "out"),
                "--data",
                str(users / f"{split}.jsonl"),
                "--out",
                str(folder / f"eval-{split}-{scope}"),
                "--bootstrap",
                "200",
                "--max-new-tokens",
                str(self.args.max_new_tokens),
                "--batch-size",
                "16",
                "--penalty-scope",
                scope,
            ],  # fmt: skip
            env=offline_env(threads),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"evaluating {run.name} failed:\n{result.stderr[-3000:]}")
        metrics = json.loads((folder / f"eval-{split}-{scope}" / "metrics.json").read_text())
        corpus = {m: v["value"] for m, v in metrics["metrics"].items()}
        records = read_jsonl(folder / f"eval-{split}-{scope}" / "predictions.jsonl")
        kept = [
            {
                "user_id": r["user_id"],
                **{m: r[m] for m in PAIRED if m in r},
                **personalization(r, truth),
                "corpus": corpus,
            }
            for r in records
        ]
        write_text_atomic(done, json.dumps({"run": asdict(run), "records": kept}) + "\n")

    def done_file(self, run: Run, split: str, scope: str) -> Path:
        return self.folder(run) / f"done-{split}-{scope}.json"

    def scores(self, run: Run, split: str, scope: str) -> list[dict]:
        """The per-user records of an evaluated run (checked to be this run's)."""
        saved = json.loads(self.done_file(run, split, scope).read_text())
        if saved.get("run") != asdict(run):
            raise ValueError(f"{self.done_file(run, split, scope)} is not {run.name}'s result")
        return saved["records"]


def summary(records: list[dict]) -> dict[str, float]:
    """Corpus metrics and the share of predictions with the personal words."""
    values = {m: records[0]["corpus"][m] for m in ("rouge1", "rougeL", "meteor", "bleu")}
    values.update({m: float(np.mean([r[m] for r in records])) for m in ("own_phrase", "sign_off")})
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS)
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=list(LEARNING_RATES))
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    parser.add_argument("--jobs", type=int, default=2, help="trainings run side by side")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("benchmark_runs/tuned"))
    parser.add_argument(
        "--tune-on",
        choices=["each", *CONDITIONS],
        default="frequent",
        help="the condition whose validation split chooses every condition's settings, or "
        "'each' to tune in every condition (default: frequent)",
    )
    parser.add_argument("--smoke", action="store_true", help="a few steps, tiny grid (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.conditions, args.seeds, args.users, args.steps = ["rare"], [0], 24, 2
        args.tune_on = "rare"
        args.methods = [BASELINE, "NextQuill-weights"]
        args.learning_rates, args.alphas, args.max_new_tokens = [0.003], [0.05], 8
    if args.tune_on != "each" and args.tune_on not in args.conditions:
        parser.error(f"--tune-on {args.tune_on} is not one of --conditions {args.conditions}")
    tuned_in = args.conditions if args.tune_on == "each" else [args.tune_on]
    started = time.time()
    out = args.out.resolve()
    theta0 = theta0_script.THETA0_DIR
    theta0_script.load_report(theta0)  # the model is the one its report measured
    study = Study(out, theta0, args)
    marks = {}
    for condition in args.conditions:
        study.users[condition] = build_population(
            out / condition, args.users, CONDITIONS[condition]
        )
        users, truth = study.users[condition]
        rows = read_jsonl(users / "train.jsonl")[:200]
        marks[condition] = theta0_script.planted_token_scores(theta0, rows, truth)
        say(f"{condition}: theta_0 on its rows: {marks[condition]}")

    tuning = [
        run
        for condition in tuned_in
        for run in grid(condition, args.seeds[0], args.methods, args.learning_rates, args.alphas)
    ]
    study.run_all(tuning, [("validation", TUNING_SCOPE)])
    validation = {run: summary(study.scores(run, "validation", TUNING_SCOPE)) for run in tuning}
    chosen: dict[tuple[str, str], Run] = {}
    for run in tuning:
        key = (run.condition, run.method)
        if key not in chosen or validation[run]["rouge1"] > validation[chosen[key]]["rouge1"]:
            chosen[key] = run
    for (condition, method), run in chosen.items():
        say(f"{condition}: {method} chose {run.setting} (validation ROUGE-1 "
            f"{validation[run]['rouge1']:.4f})")  # fmt: skip
    if args.tune_on != "each":  # every condition takes the settings chosen in one
        for condition in args.conditions:
            for method in args.methods:
                best = chosen[(args.tune_on, method)]
                chosen[(condition, method)] = Run(
                    condition, method, best.learning_rate, best.alpha, best.seed
                )
    test_runs = {
        key: [Run(best.condition, best.method, best.learning_rate, best.alpha, seed)
              for seed in args.seeds]
        for key, best in chosen.items()
    }  # fmt: skip
    study.run_all(
        [run for runs in test_runs.values() for run in runs], [("test", s) for s in SCOPES]
    )
    test = {
        scope: {
            key: [study.scores(r, "test", scope) for r in runs] for key, runs in test_runs.items()
        }
        for scope in SCOPES
    }
    report = render(args, marks, validation, chosen, test, time.time() - started)
    write_text_atomic(out / "report.md", report)
    print(report)


def paired_cells(method_runs: list[list[dict]], base_runs: list[list[dict]]) -> list[str]:
    """Per user, method - baseline averaged over seeds; 95% paired bootstrap over users."""
    method = dict(enumerate(method_runs))
    base = dict(enumerate(base_runs))
    cells = []
    for metric in ("rouge1", "rougeL", "meteor", "own_phrase", "sign_off"):
        d = pooled_difference(method, base, metric)
        mark = "*" if d.significant else ""
        cells.append(f"{d.mean:+.4f}{mark} [{d.ci_low:+.4f}, {d.ci_high:+.4f}]")
    return cells


def render(args, marks, validation, chosen, test, seconds: float) -> str:
    lines = [
        f"# Tuned comparison: seeds {args.seeds}, {args.steps} LoRA steps per model, "
        f"{args.users} users per condition, {seconds / 60:.0f} min",
        "",
        f"Grid: learning rate {args.learning_rates}; NextQuill's alpha {args.alphas}. Chosen by "
        f"validation ROUGE-1 ({'each condition' if args.tune_on == 'each' else args.tune_on}, "
        f"seed {args.seeds[0]}, penalty on generated tokens); test metrics over every seed.",
    ]
    for condition in args.conditions:
        m = marks[condition]
        lines += [
            "",
            f"## {condition}: {CONDITION_TEXT[condition]}",
            "",
            f"theta_0 marks {m['lambda_share']:.1%} of target tokens; {m['precision']:.0%} of "
            f"them are the users' planted words (chance {m['planted_share']:.0%}); the first "
            f"token of {m['history_only_first_token_recall']:.0%} of history-only planted spans"
            f" is marked; history gains {m['mean_log_prob_gain']:+.3f} nats a token.",
            "",
        ]
        if condition != args.tune_on and args.tune_on != "each":
            lines.append(f"Settings: those chosen on {args.tune_on}'s validation split.")
            methods_in_grid = []
        else:
            lines += [
                "Validation ROUGE-1 of the grid (chosen in bold):",
                "",
                "| Method | " + " | ".join(f"lr {lr:g}" for lr in args.learning_rates) + " |",
                "|---" * (len(args.learning_rates) + 1) + "|",
            ]
            methods_in_grid = args.methods
        for method in methods_in_grid:
            for alpha in args.alphas if METHODS[method]["nextquill"] else [None]:
                label = f"{method}, alpha {alpha:g}" if alpha is not None else method
                cells = []
                for lr in args.learning_rates:
                    run = Run(condition, method, lr, alpha, args.seeds[0])
                    value = f"{validation[run]['rouge1']:.4f}"
                    cells.append(f"**{value}**" if chosen[(condition, method)] == run else value)
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for scope, scope_label in SCOPES.items():
            by_method = {method: test[scope][(condition, method)] for method in args.methods}
            lines += [
                "",
                f"Test, {scope_label} (mean ± sd over seeds):",
                "",
                "| Method | setting | " + " | ".join(LABELS) + " |",
                "|---" * (len(LABELS) + 2) + "|",
            ]
            for method, runs in by_method.items():
                values = [summary(records) for records in runs]
                cells = [mean_spread([v[metric] for v in values]) for metric in METRICS]
                setting = chosen[(condition, method)].setting
                lines.append(f"| {method} | {setting} | " + " | ".join(cells) + " |")
            lines += [
                "",
                f"Paired per-user difference against {BASELINE} (* = 95% interval excludes 0):",
                "",
                "| Method | ROUGE-1 | ROUGE-L | METEOR | own phrase | sign-off |",
                "|---|---|---|---|---|---|",
            ]
            for method, runs in by_method.items():
                if method != BASELINE:
                    cells = paired_cells(runs, by_method[BASELINE])
                    lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
