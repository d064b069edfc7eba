"""The end-to-end demo (`make demo`): tiny local model, shipped data, `axolotl train`.

1. Builds train/validation/test rows from the shipped raw Amazon-Reviews-2023-schema demo files
   with the builder (`nextquill-data build`), and rows of a disjoint population for theta_0.
2. Builds a tiny random-init Qwen2 and a tokenizer from the demo corpus (no hub).
3. theta_0: trains it (full fine-tuning) on the other population, half of the rows without
   history, so that it knows both the with-history and the counterfactual prompt
   (a theta_0 trained from scratch on one kind of prompt only reads the other as noise).
4. From theta_0, trains ContextSFT and NextQuill on the demo users with the same budget.
5. Prints what happened: the share of preference-bearing tokens theta_0 found, the loss parts.
6. Evaluates theta_0, ContextSFT and NextQuill on the test users (`nextquill evaluate`), prints
   the comparison table (`nextquill compare`) and writes the token views and plots
   (`nextquill inspect`) to OUT/inspect.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from dataset_formats.jsonl import read_jsonl, write_jsonl

from .local_runs import (
    build_benchmark_model,
    half_without_history,
    logged_metrics,
    run_axolotl,
    tiny_recipe,
)

OUT = Path(os.environ.get("NEXTQUILL_DEMO_DIR", "demo_runs")).resolve()
STEPS = int(os.environ.get("NEXTQUILL_DEMO_STEPS", "80"))


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def train(name: str, recipe: dict) -> list[dict]:
    """One `axolotl train` run; its full log goes to OUT/name/train.log."""
    workdir = OUT / name
    started = time.time()
    result = run_axolotl("train", recipe, workdir, timeout=1800, name=f"{name}.yml")
    (workdir / "train.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        say(f"{name} failed; the end of its log ({workdir / 'train.log'}):")
        print((result.stdout + result.stderr)[-4000:])
        sys.exit(result.returncode)
    steps = logged_metrics(result.stdout + result.stderr)
    say(
        f"{name}: {len(steps)} steps in {time.time() - started:.0f}s, "
        f"loss {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f}"
    )
    return steps


def build_data() -> tuple[Path, list[dict]]:
    """Demo rows from the shipped raw files; theta_0 rows from another generated population."""
    from dataset_formats.builder import BuildOptions, build
    from dataset_formats.demo_data import DEMO_META, DEMO_REVIEWS
    from dataset_formats.synthetic import synthetic_raw_amazon

    quiet = BuildOptions(show_progress=False)
    data = OUT / "data"
    report = build([DEMO_REVIEWS], [DEMO_META], data, quiet)
    say(
        f"built {report.rows_per_split} rows of {report.users} users from {DEMO_REVIEWS.name} "
        f"({report.reviews_read} reviews read, {report.reviews_kept} kept; {data / 'stats.json'})"
    )
    raw = OUT / "theta0_raw"
    reviews, meta = synthetic_raw_amazon(n_users=120, seed=1)
    write_jsonl(raw / "reviews.jsonl.gz", reviews, sort_keys=True)
    write_jsonl(raw / "meta.jsonl.gz", meta, sort_keys=True)
    build([raw / "reviews.jsonl.gz"], [raw / "meta.jsonl.gz"], OUT / "theta0_data", quiet)
    theta0_train = read_jsonl(OUT / "theta0_data" / "train.jsonl")
    # Every other theta_0 row without history: exactly the counterfactual prompt.
    mixed = half_without_history(theta0_train)
    write_jsonl(data / "theta0_train.jsonl", mixed)
    say(f"theta_0 data: {len(mixed)} rows of 120 other users, half of them without history")
    return data, theta0_train


def main() -> None:

    OUT.mkdir(parents=True, exist_ok=True)
    say(f"working in {OUT}")
    data, theta0_train = build_data()
    base = build_benchmark_model(OUT / "base_model", theta0_train, read_jsonl(data / "train.jsonl"))
    say(f"tiny Qwen2 built in {base}")

    common = {"sequence_len": 1024, "nextquill_history_k": 4, "micro_batch_size": 4}
    full_finetune = {
        "adapter": None,
        "lora_r": None,
        "lora_alpha": None,
        "lora_dropout": None,
        "lora_target_linear": None,
    }
    train(
        "theta0",
        tiny_recipe(
            base,
            data / "theta0_train.jsonl",
            OUT / "theta0",
            nextquill=False,
            max_steps=STEPS * 2,
            learning_rate=0.003,
            **full_finetune,
            **common,
        ),
    )
    theta0 = OUT / "theta0" / "out"
    context_sft = train(
        "context_sft",
        tiny_recipe(
            theta0,
            data / "train.jsonl",
            OUT / "context_sft",
            nextquill=False,
            max_steps=STEPS,
            learning_rate=0.002,
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
            learning_rate=0.002,
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


def evaluate_and_inspect(data: Path) -> None:
    """Step 6: `nextquill evaluate`, `compare` and `inspect` on the demo's test users."""
    from ..evaluation.compare import comparison_table, difference_table, load_run
    from ..evaluation.evaluate import EvaluationRequest, run_evaluation
    from ..evaluation.generation import GenerationSettings
    from ..evaluation.inspection import InspectionRequest, run_inspection

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
