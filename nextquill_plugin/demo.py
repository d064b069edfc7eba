"""The end-to-end demo (`make demo`): tiny local model, shipped data, `axolotl train`.

1. Builds train/validation/test rows from the shipped raw Amazon-Reviews-2023-schema demo files
   with the builder (`nextquill-data build`), and a disjoint population of users for theta_0.
2. Builds a tiny random-init Qwen2 and a tokenizer from the demo corpus (no hub).
3. theta_0: trains it (full fine-tuning) on a disjoint population of users, half of the rows
   without history, so that it knows both the with-history and the counterfactual prompt
   (see ../shared/research/small-model-lessons.md: a from-scratch theta_0 needs both).
4. From theta_0, trains ContextSFT and NextQuill on the demo users with the same budget.
5. Prints what happened: the share of preference-bearing tokens theta_0 found, the loss parts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .local_runs import logged_metrics, run_axolotl, tiny_recipe, write_jsonl

OUT = Path(os.environ.get("NEXTQUILL_DEMO_DIR", "demo_runs")).resolve()
STEPS = int(os.environ.get("NEXTQUILL_DEMO_STEPS", "80"))


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle]


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
        f"{name}: {len(steps)} steps in {time.time() - started:.0f}s, loss {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f}"
    )
    return steps


def main() -> None:
    from dataset_formats.synthetic import corpus_texts, synthetic_rows

    from .tiny_model import build_tiny_model

    OUT.mkdir(parents=True, exist_ok=True)
    say(f"working in {OUT}")
    demo_users = synthetic_rows(n_users=48, reviews_per_user=12, seed=0)
    theta0_users = synthetic_rows(n_users=48, reviews_per_user=12, seed=1)
    data = OUT / "data"
    for split, rows in demo_users.items():
        write_jsonl(data / f"{split}.jsonl", rows)
    # theta_0's rows: every other row without history, i.e. exactly the counterfactual prompt.
    theta0_rows = [
        row if i % 2 else {**row, "history": []} for i, row in enumerate(theta0_users["train"])
    ]
    write_jsonl(data / "theta0_train.jsonl", theta0_rows)
    say(
        f"data: {len(demo_users['train'])} train rows of {48} demo users; {len(theta0_rows)} theta_0 rows"
    )

    base = build_tiny_model(
        OUT / "base_model",
        corpus_texts(theta0_users["train"] + demo_users["train"]),
        vocab_size=1000,
        hidden_size=96,
        num_layers=2,
    )
    say(f"tiny Qwen2 built in {base}")

    common = {"sequence_len": 1024, "nextquill_history_k": 4, "micro_batch_size": 4}
    train(
        "theta0",
        tiny_recipe(
            base,
            data / "theta0_train.jsonl",
            OUT / "theta0",
            nextquill=False,
            adapter=None,
            lora_r=None,
            lora_alpha=None,
            lora_dropout=None,
            lora_target_linear=None,
            max_steps=STEPS * 2,
            learning_rate=0.003,
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
    share = [line for line in log.splitlines() if "preference-bearing" in line]
    say("theta_0 weights: " + (share[-1].split("] ")[-1] if share else "(not found in the log)"))
    last = nextquill[-1]
    say(
        f"NextQuill final step: Ln={last['nextquill/normal_loss']:.3f} Lp={last['nextquill/causal_loss']:.3f} "
        f"mean weight={last['nextquill/mean_weight']:.3f} "
        f"preference tokens={last['nextquill/preference_token_fraction']:.2%}"
    )
    say(f"ContextSFT final loss {context_sft[-1]['loss']:.3f}; adapters in {OUT}/*/out")


if __name__ == "__main__":
    main()
