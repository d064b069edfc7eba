"""The end-to-end demo (`make demo`): tiny local model, shipped data, `axolotl train`.

1. Builds train/validation/test rows from the shipped raw Amazon-Reviews-2023-schema demo files
   with the builder (`nextquill-data build`).
2. theta_0: the shipped tiny Qwen2 that copies from the history (``demo/theta0_model``, made
   by ``python -m nextquill_plugin.demo.theta0`` on users whose made-up words come from
   another pool than the demo users'), checked against the report that measured it; prints
   what it marks on the demo rows against the generator's truth (``demo_users()``).
3. From theta_0, trains ContextSFT and NextQuill on the demo users with the same budget, each
   at the settings the tuned comparison chose (benchmarks/tuned_comparison.py).
4. Prints what happened: the share of preference-bearing tokens theta_0 found, the loss parts.
5. Evaluates theta_0, ContextSFT and NextQuill on the test users (`nextquill evaluate`), prints
   the comparison table (`nextquill compare`) and one sentence that reads it, and writes the
   token views and plots (`nextquill inspect`) to OUT/inspect.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from dataset_formats.build import BuildOptions, build
from dataset_formats.demo_data import DEMO_META, DEMO_REVIEWS, demo_users
from nextquill_common.jsonl import read_jsonl
from nextquill_common.quiet import quiet_library_noise

from ..evaluation.compare import comparison_table, difference_table, load_run
from ..evaluation.evaluate import EvaluationRequest, run_evaluation
from ..evaluation.generation import GenerationSettings
from ..evaluation.inspection import InspectionRequest, run_inspection
from ..evaluation.metrics import METRIC_LABELS
from ..evaluation.significance import paired_differences, read_predictions
from ..evaluation.wordnet_data import require_wordnet
from . import theta0 as theta0_script
from .local_runs import TrainingFailed, solo_run_threads, tiny_recipe, train_logged

OUT = Path(os.environ.get("NEXTQUILL_DEMO_DIR", "demo_runs")).resolve()
STEPS = int(os.environ.get("NEXTQUILL_DEMO_STEPS", "60"))
# What benchmarks/tuned_comparison.py chose on its validation split (benchmarks/README.md,
# section 3b; same budget of 60 LoRA steps): each method's learning rate, NextQuill's alpha
# (the paper's normalisation, nextquill_weight_normalization: tokens).
CONTEXT_SFT_SETTINGS = {"learning_rate": 0.003}
NEXTQUILL_SETTINGS = {"learning_rate": 0.001, "nextquill_alpha": 0.05}


def check_requirements() -> None:
    """Everything the whole demo needs, before its first step (training takes minutes, and the
    evaluation at its end needs WordNet): stop with the message alone."""

    try:
        require_wordnet()
        folder = next(p for p in [OUT, *OUT.parents] if p.exists())
        if not os.access(folder, os.W_OK):
            raise PermissionError(
                f"the demo writes to {OUT}, and {folder} is not writable; set NEXTQUILL_DEMO_DIR "
                "to a writable folder"
            )
    except (RuntimeError, PermissionError) as error:
        raise SystemExit(f"nextquill demo: {error}") from None


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def train(name: str, recipe: dict) -> list[dict]:
    """One `axolotl train` run; its full log goes to OUT/name/train.log."""
    workdir = OUT / name
    started = time.time()
    try:
        steps = train_logged(name, recipe, workdir, timeout=1800, threads=solo_run_threads())
    except TrainingFailed as failure:
        say(str(failure))
        sys.exit(1)
    say(
        f"{name}: {len(steps)} steps in {time.time() - started:.0f}s, "
        f"loss {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f}"
    )
    return steps


def build_data() -> Path:
    """Demo rows from the shipped raw files."""

    data = OUT / "data"
    report = build([DEMO_REVIEWS], [DEMO_META], data, BuildOptions(show_progress=False))
    say(
        f"built {report.rows_per_split} rows of {report.users} users from {DEMO_REVIEWS.name} "
        f"({report.reviews_read} reviews read, {report.reviews_kept} kept; {data / 'stats.json'})"
    )
    return data


def theta0_prompt() -> dict:
    """The prompt settings theta_0 was trained and measured with."""

    return dict(theta0_script.PROMPT)


def shipped_theta0() -> Path:
    """The shipped theta_0, checked against its report and copied to OUT/theta0/out."""

    report = theta0_script.load_report()
    target = OUT / "theta0" / "out"
    if target.exists():
        shutil.rmtree(target)  # a copy an earlier demo run made
    shutil.copytree(theta0_script.THETA0_DIR, target)
    trained_on = report["populations"]["trained_on"]
    say(
        f"theta_0: the shipped checkpoint ({report['copy_steps']} copying + "
        f"{report['history_steps']} pretraining + {report['mixed_steps']} mixed steps on "
        f"{trained_on['users']} users whose made-up "
        f"words come from the {trained_on['words']!r} pool; the demo users' words come from "
        "a pool it never saw)"
    )
    return target


def theta0_marks(theta0: Path, data: Path) -> None:
    """What theta_0 marks on the demo's training rows, against the generator's truth."""

    scores = theta0_script.planted_token_scores(
        theta0, read_jsonl(data / "train.jsonl")[:200], demo_users()
    )
    say(
        f"theta_0 marks {scores['lambda_share']:.1%} of the target tokens of 200 training rows "
        f"preference-bearing; {scores['precision']:.0%} of them are the users' own recurring "
        f"words (which are {scores['planted_share']:.0%} of all tokens), and it marks the "
        f"first token of {scores['history_only_first_token_recall']:.0%} of those words' "
        "occurrences (the generator's truth)"
    )


def main() -> None:
    quiet_library_noise()
    check_requirements()
    OUT.mkdir(parents=True, exist_ok=True)
    say(f"working in {OUT}")
    data = build_data()
    theta0 = shipped_theta0()
    theta0_marks(theta0, data)
    common = theta0_prompt()
    context_sft = train(
        "context_sft",
        tiny_recipe(
            theta0,
            data / "train.jsonl",
            OUT / "context_sft",
            nextquill=False,
            max_steps=STEPS,
            **CONTEXT_SFT_SETTINGS,
            **common,
        ),
    )
    nextquill = train(
        "nextquill",
        tiny_recipe(
            theta0,
            data / "train.jsonl",
            OUT / "nextquill",
            max_steps=STEPS,
            **NEXTQUILL_SETTINGS,
            **common,
        ),
    )
    log = (OUT / "nextquill" / "train.log").read_text()
    found = [line.split("] ")[-1] for line in log.splitlines() if "preference-bearing" in line]
    say("theta_0 weights: " + (found[-1] if found else "(not found in the log)"))
    last = nextquill[-1]
    say(
        f"NextQuill last step: Ln={last['nextquill/normal_loss']:.3f} "
        f"Lp={last['nextquill/causal_loss']:.3f} mean weight={last['nextquill/mean_weight']:.3f} "
        f"preference tokens={last['nextquill/preference_token_fraction']:.1%}"
    )
    say(f"ContextSFT last loss {context_sft[-1]['loss']:.3f}; models and adapters in {OUT}/*/out")
    evaluate_and_inspect(data)


def reading(method: Path, baseline: Path) -> str:
    """One sentence on NextQuill against ContextSFT in this run, whichever way it falls."""

    differences = paired_differences(read_predictions(method), read_predictions(baseline))
    above = [METRIC_LABELS[d.metric] for d in differences if d.significant and d.mean > 0]
    below = [METRIC_LABELS[d.metric] for d in differences if d.significant and d.mean < 0]
    within = [METRIC_LABELS[d.metric] for d in differences if not d.significant]
    parts = [
        f"above ContextSFT beyond noise on {', '.join(above)}" if above else "",
        f"below ContextSFT beyond noise on {', '.join(below)}" if below else "",
        f"within noise of ContextSFT on {', '.join(within)}" if within else "",
    ]
    return (
        "Reading: in this run NextQuill is "
        + "; ".join(part for part in parts if part)
        + " (one seed, paired 95% intervals over the test users; benchmarks/README.md "
        "repeats the comparison over seeds and conditions)."
    )


def evaluate_and_inspect(data: Path) -> None:
    """Step 5: `nextquill evaluate`, `compare` and `inspect` on the demo's test users."""

    # name: (recipe, checkpoint or None for the untuned theta_0, CoS gamma, output folder)
    runs = {
        "theta_0 (untuned)": ("context_sft", None, 0.0, "theta0"),
        "theta_0 + CoS 1": ("nextquill", None, 1.0, "theta0_cos"),
        "ContextSFT": ("context_sft", OUT / "context_sft" / "out", 0.0, "context_sft"),
        "NextQuill": ("nextquill", OUT / "nextquill" / "out", 0.0, "nextquill"),
        "NextQuill + CoS 1": ("nextquill", OUT / "nextquill" / "out", 1.0, "nextquill_cos"),
    }
    for name, (recipe, checkpoint, gamma, folder) in runs.items():
        document = run_evaluation(
            EvaluationRequest(
                recipe=str(OUT / recipe / f"{recipe}.yml"),
                checkpoint=str(checkpoint) if checkpoint else None,
                data=str(data / "test.jsonl"),
                out=str(OUT / "eval" / folder),
                name=name,
            ),
            GenerationSettings(max_new_tokens=96, batch_size=16, cos_gamma=gamma),
            show_progress=False,
        )
        say(f"evaluated {name} on {document['n']} test users ({document['out_dir']})")
    evaluated = [load_run(OUT / "eval" / run[3]) for run in runs.values()]
    print(comparison_table(evaluated, baseline="ContextSFT"))
    print(difference_table(evaluated, "ContextSFT"))
    say(reading(OUT / "eval" / "nextquill", OUT / "eval" / "context_sft"))
    # Fig. 7: the tokens theta_0 marks (the weights training used); Fig. 3: the trained models.
    common = {"data": str(data / "test.jsonl"), "plot_samples": 200, "terminal": False}
    theta0_views = run_inspection(
        InspectionRequest(
            recipe=str(OUT / "nextquill" / "nextquill.yml"),
            checkpoint=str(OUT / "theta0" / "out"),
            name="theta_0",
            samples=3,
            out=str(OUT / "inspect" / "theta0"),
            **common,
        ),
        show_progress=False,
    )
    trained_views = run_inspection(
        InspectionRequest(
            recipe=str(OUT / "nextquill" / "nextquill.yml"),
            checkpoint=str(OUT / "nextquill" / "out"),
            against=str(OUT / "context_sft" / "out"),
            name="NextQuill",
            against_name="ContextSFT",
            samples=3,
            out=str(OUT / "inspect" / "trained"),
            **common,
        ),
        show_progress=False,
    )
    say(
        f"inspect: tokens theta_0 marks: {theta0_views['html']}, "
        f"{theta0_views['preference_tokens']}; NextQuill vs ContextSFT: "
        f"{trained_views['histogram']}"
    )


if __name__ == "__main__":
    main()
