"""NextQuill on a GPU at Qwen2.5 shapes: the training step, the theta_0 pass and generation.

    python benchmarks/gpu_performance.py --out DIR            # one GPU, about 5 minutes on an H200
    python benchmarks/gpu_performance.py --smoke --out DIR    # tiny shapes on the CPU (the tests)

Needs only torch, transformers and peft (no Axolotl, DeepSpeed, datasets or trl), so that it runs
on a bare GPU machine from a checkout (``PYTHONPATH=.``). Random weights from each model's
config (no download), bf16, SDPA attention, non-reentrant gradient checkpointing, one sample of a
4096-token history prompt, a 300-token counterfactual prompt and a 256-token target:

- training step (forward + backward, micro-batch 1) of every variant, as a ratio to target-only
  ContextSFT measured in the same run, with absolute seconds and peak memory above the model:
  ``stock`` (ContextSFT as Axolotl trains it: full logits at every position), ``target_only``
  (ContextSFT with our target-only LM head), ``nextquill`` (the paper's objective),
  ``nextquill_cf_const`` (``nextquill_counterfactual_gradient: false``) and ``authors`` (both
  prompts left-padded to 4097 tokens, full-vocabulary log-softmax at every position of both
  passes); LoRA (the recipes' r 8 on q_proj and v_proj) at 0.5B and 3B, full fine-tuning at 0.5B;
- the theta_0 pass (``token_effects.compute_token_effects``): rows/s and tokens/s;
- generation (``evaluation.generation.generate_continuations``): tokens/s for batch 8 and 256
  new tokens, without and with context steering (CoS);
- from these, the wall time of a recipe's whole run (5 epochs of 8 training rows per user, the
  theta_0 pass included) on 4 such GPUs, per 1,000 users and per domain when ``--users`` gives
  the user counts of your builds (``stats.json``), beside the paper's ~26 hours per dataset on
  4 A100s.

Writes ``results.json`` and ``results.md`` to ``--out`` (atomically) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Never the network: set before transformers is imported.
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset_formats.contract import (  # noqa: E402
    COUNTERFACTUAL_IDS,
    COUNTERFACTUAL_LABELS,
    IGNORE_INDEX,
)
from nextquill_common.jsonl import write_text_atomic  # noqa: E402

VARIANTS = ("stock", "target_only", "nextquill", "nextquill_cf_const", "authors")
BASELINE = "target_only"
FORBIDDEN = ("axolotl", "deepspeed", "datasets", "trl")  # absent on the GPU machine

# Layer shapes of the models (random weights), from their published configs.
SHAPES = {
    "qwen2.5-0.5b": dict(hidden=896, layers=24, heads=14, kv_heads=2, mlp=4864, vocab=151936),
    "qwen2.5-3b": dict(hidden=2048, layers=36, heads=16, kv_heads=2, mlp=11008, vocab=151936),
    "smoke": dict(hidden=32, layers=2, heads=4, kv_heads=2, mlp=64, vocab=512),
}
# (model, adapter) pairs whose training step is measured.
STEP_RUNS = (("qwen2.5-0.5b", "lora"), ("qwen2.5-3b", "lora"), ("qwen2.5-0.5b", "full"))
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
TRAIN_ROWS_PER_USER, EPOCHS, GPUS = 8, 5, 4  # the protocol's targets 1-8; the authors' run
PAPER_HOURS = 26  # per dataset on 4 A100s (the paper's appendix A.1)


@dataclass
class Lengths:
    history: int = 4096
    counterfactual: int = 300
    target: int = 256
    new_tokens: int = 256
    generation_batch: int = 8
    theta0_rows: int = 16


SMOKE_LENGTHS = Lengths(64, 16, 16, 8, 2, 4)
ATTENTION: set[str] = set()  # the attention implementations the models were built with


def say(message: str) -> None:
    print(f"[gpu-bench] {message}", flush=True)


def build_model(shape: dict, device, dtype, adapter: str | None, checkpointing: bool):
    """A random Qwen2 of ``shape`` built on ``device`` (fast even at 3B), cast to ``dtype``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["mlp"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model = model.to(dtype)
    ATTENTION.add(model.config._attn_implementation)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    return model.train()


def sample(vocab: int, lengths: Lengths, device, seed: int = 1) -> dict:
    """One paired sample as the collator makes it, with theta_0 effects (10% above delta)."""
    from benchmarks.paired_sample import paired_sample

    return paired_sample(
        vocab, lengths.history, lengths.counterfactual, lengths.target, device, seed
    )


def authors_loss(model, batch: dict, width: int):
    """The authors' computation: both prompts left-padded to ``width``, full logits and a
    full-vocabulary log-softmax at every position of both passes, weights from the batch."""
    import torch
    import torch.nn.functional as F

    from nextquill_plugin.equations import PreferenceRule

    def padded(ids, labels):
        pad = width - ids.shape[1]
        return (
            F.pad(ids, (pad, 0), value=0),
            F.pad(torch.ones_like(ids), (pad, 0), value=0),
            F.pad(labels, (pad, 0), value=IGNORE_INDEX),
        )

    ids, mask, labels = padded(batch["input_ids"], batch["labels"])
    cf_ids, cf_mask, cf_labels = padded(batch[COUNTERFACTUAL_IDS], batch[COUNTERFACTUAL_LABELS])
    logits_with = model(input_ids=ids, attention_mask=mask).logits.float()[0, :-1]
    logits_without = model(input_ids=cf_ids, attention_mask=cf_mask).logits.float()[0, :-1]
    log_with, log_without = F.log_softmax(logits_with, -1), F.log_softmax(logits_without, -1)
    keep, cf_keep = labels[0, 1:] != IGNORE_INDEX, cf_labels[0, 1:] != IGNORE_INDEX
    targets = labels[0, 1:][keep]
    with torch.no_grad():  # their weights: from the model being trained, every step
        effects = (
            log_with[keep].exp().gather(1, targets[:, None])[:, 0]
            - log_without[cf_keep].exp().gather(1, targets[:, None])[:, 0]
        )
    weights = PreferenceRule.from_settings().weights(effects)
    normal = -log_with[keep].gather(1, targets[:, None])[:, 0]
    difference = F.log_softmax(logits_with[keep] - logits_without[cf_keep], -1)
    causal = -difference.gather(1, targets[:, None])[:, 0]
    # their normalisation: Ln over the sum of the weights, plus alpha 0.1 times Lp's plain mean
    return (weights * normal).sum() / weights.sum() + 0.1 * causal.mean()


def step_function(variant: str, model, batch: dict, width: int) -> Callable[[], None]:
    """One forward + backward of ``variant`` on ``batch``."""
    from nextquill_plugin.objective import NextQuillSettings, compute_batch_loss

    plain = {key: batch[key] for key in ("input_ids", "attention_mask", "labels")}
    settings = {
        "target_only": NextQuillSettings(token_weighting=False, causal_loss=False),
        "nextquill": NextQuillSettings(),
        "nextquill_cf_const": NextQuillSettings(counterfactual_gradient=False),
    }

    def run() -> None:
        if variant == "stock":
            loss = model(**plain).loss
        elif variant == "authors":
            loss = authors_loss(model, batch, width)
        else:
            source = plain if variant == "target_only" else batch
            loss = compute_batch_loss(model, source, settings[variant]).loss.total
        loss.backward()

    return run


class Clock:
    """Seconds of a callable on the device (synchronised) and its peak memory above the start."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def measure(self, run: Callable[[], object], repeats: int) -> dict:
        run()  # warm-up: kernels chosen, memory pools grown
        self.sync()
        base = 0
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
            base = self.torch.cuda.memory_allocated()
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            self.sync()
            seconds.append(time.perf_counter() - started)
        peak = (self.torch.cuda.max_memory_allocated() - base) / 2**20 if self.cuda else None
        return {"seconds": statistics.median(seconds), "peak_mib": peak, "repeats": repeats}


def measure_steps(name, adapter, lengths, device, dtype, repeats) -> dict:
    """Every variant's step on one model, the baseline's ratios alongside."""
    model = build_model(SHAPES[name], device, dtype, adapter, checkpointing=True)
    batch = sample(SHAPES[name]["vocab"], lengths, device)
    clock = Clock(device)
    width = lengths.history + lengths.target + 1  # the authors pad both prompts to 4097
    results = {}
    for variant in VARIANTS:
        run = step_function(variant, model, batch, width)

        def step(run=run) -> None:
            model.zero_grad(set_to_none=True)
            run()

        try:
            results[variant] = clock.measure(step, repeats)
        except RuntimeError as error:  # out of memory: say so, keep the other variants
            if "out of memory" not in str(error).lower():
                raise
            results[variant] = {"error": "out of memory"}
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
        say(f"step {name} {adapter} {variant}: {results[variant]}")
    base = results[BASELINE]
    for result in results.values():
        if "seconds" in result:
            result["time_vs_target_only"] = result["seconds"] / base["seconds"]
            if result["peak_mib"] is not None and base["peak_mib"]:
                result["memory_vs_target_only"] = result["peak_mib"] / base["peak_mib"]
    release(model, device)
    return results


def measure_theta0(name, lengths, device, dtype) -> dict:
    """The theta_0 pass over ``theta0_rows`` paired rows: rows/s and tokens/s."""
    from nextquill_plugin.token_effects import compute_token_effects

    model = build_model(SHAPES[name], device, dtype, None, checkpointing=False).eval()
    rows: dict[str, list] = {
        k: [] for k in ("input_ids", "labels", COUNTERFACTUAL_IDS, COUNTERFACTUAL_LABELS)
    }
    for i in range(lengths.theta0_rows):
        one = sample(SHAPES[name]["vocab"], lengths, "cpu", seed=10 + i)
        for key in rows:
            rows[key].append(one[key][0].tolist())
    pairs = zip(rows["input_ids"], rows[COUNTERFACTUAL_IDS], strict=True)
    tokens = sum(len(a) + len(b) for a, b in pairs)
    clock = Clock(device)
    timed = clock.measure(
        lambda: compute_token_effects(model, rows, pad_token_id=0, show_progress=False), 1
    )
    release(model, device)
    return {
        **timed,
        "rows": lengths.theta0_rows,
        "rows_per_s": lengths.theta0_rows / timed["seconds"],
        "tokens_per_s": tokens / timed["seconds"],
    }


def measure_generation(name, lengths, device, dtype) -> dict:
    """Generated tokens/s for one batch of history prompts, without and with CoS."""
    import torch

    from nextquill_plugin.evaluation.generation import GenerationSettings, generate_continuations

    model = build_model(SHAPES[name], device, dtype, None, checkpointing=False).eval()
    generator = torch.Generator().manual_seed(3)
    vocab = SHAPES[name]["vocab"]
    prompts = [
        torch.randint(1, vocab, (lengths.history,), generator=generator).tolist()
        for _ in range(lengths.generation_batch)
    ]
    counterfactual = [p[-lengths.counterfactual :] for p in prompts]
    clock, results = Clock(device), {}
    for label, gamma in (("greedy", 0.0), ("cos_1", 1.0)):
        settings = GenerationSettings(
            max_new_tokens=lengths.new_tokens,
            batch_size=lengths.generation_batch,
            cos_gamma=gamma,
            repetition_penalty=1.0,
        )
        produced: list[int] = []

        def generate(settings=settings, produced=produced) -> None:
            out = generate_continuations(
                model,
                prompts,
                settings,
                pad_token_id=0,
                eos_token_id=None,  # random weights: every row runs to max_new_tokens
                counterfactual_prompts=counterfactual,
                show_progress=False,
            )
            produced[:] = [sum(len(o) for o in out)]

        timed = clock.measure(generate, 1)
        results[label] = {
            **timed,
            "tokens": produced[0],
            "tokens_per_s": produced[0] / timed["seconds"],
        }
        say(f"generation {name} {label}: {results[label]}")
    release(model, device)
    return results


def release(model, device) -> None:
    import gc

    import torch

    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_estimates(steps: dict, theta0: dict, users: dict[str, int]) -> dict:
    """Wall time of a whole recipe (5 epochs, theta_0 pass) on 4 GPUs of this kind, assuming
    data parallelism scales linearly, per 1,000 users and per given domain."""
    estimates = {}
    for (name, adapter), results in steps.items():
        step = results.get("nextquill", {}).get("seconds")
        if step is None or name not in theta0:
            continue
        per_user = TRAIN_ROWS_PER_USER * (EPOCHS * step + 1 / theta0[name]["rows_per_s"]) / GPUS
        row = {"hours_per_1000_users": 1000 * per_user / 3600}
        row["users_in_paper_hours"] = PAPER_HOURS * 3600 / per_user
        for domain, count in users.items():
            row[f"hours_{domain}"] = count * per_user / 3600
        estimates[f"{name} {adapter}"] = row
    return estimates


def markdown(document: dict) -> str:
    """The tables of ``document`` for benchmarks/README.md."""
    lines = [
        f"Device: {document['device']}; torch {document['torch']}, transformers "
        f"{document['transformers']}, {document['dtype']}, attention "
        f"{'/'.join(document['attention'])}; {document['wall_seconds']:.0f} s. Steps are "
        "forward + backward (no optimizer step), micro-batch 1, gradient checkpointing.",
        "",
        "| model | adapter | variant | step s | peak MiB | time / target-only | memory / target-only |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for key, results in document["steps"].items():
        name, adapter = key.split(" ")
        for variant, r in results.items():
            if "error" in r:
                lines.append(f"| {name} | {adapter} | {variant} | {r['error']} | | | |")
                continue
            peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
            memory = f"{r['memory_vs_target_only']:.2f}" if "memory_vs_target_only" in r else "-"
            lines.append(
                f"| {name} | {adapter} | {variant} | {r['seconds']:.3f} | {peak} | "
                f"{r['time_vs_target_only']:.2f} | {memory} |"
            )
    lines += ["", "| model | theta_0 pass rows/s | tokens/s |", "|---|---:|---:|"]
    for name, r in document["theta0"].items():
        lines.append(f"| {name} | {r['rows_per_s']:.2f} | {r['tokens_per_s']:.0f} |")
    lines += ["", "| model | generation | tokens/s | seconds |", "|---|---|---:|---:|"]
    for name, results in document["generation"].items():
        for label, r in results.items():
            lines.append(f"| {name} | {label} | {r['tokens_per_s']:.0f} | {r['seconds']:.2f} |")
    lines += [
        "",
        f"Estimated whole run on {GPUS} GPUs of this kind ({EPOCHS} epochs of "
        f"{TRAIN_ROWS_PER_USER} rows per user, theta_0 pass included, linear scaling):",
        "",
        "| run | hours per 1,000 users | users in the paper's 26 h | per domain |",
        "|---|---:|---:|---|",
    ]
    for run, r in document["estimates"].items():
        domains = ", ".join(
            f"{k[6:]} {v:.1f} h"
            for k, v in r.items()
            if k.startswith("hours_") and k != "hours_per_1000_users"
        )
        lines.append(
            f"| {run} | {r['hours_per_1000_users']:.2f} | {r['users_in_paper_hours']:,.0f} | "
            f"{domains or '-'} |"
        )
    if document["skipped"]:
        lines += ["", "Skipped for the time budget: " + ", ".join(document["skipped"])]
    return "\n".join(lines) + "\n"


def parse_users(values: list[str]) -> dict[str, int]:
    users = {}
    for value in values:
        domain, _, count = value.partition("=")
        if not count.isdigit():
            raise SystemExit(f"--users takes DOMAIN=COUNT (e.g. Books=12000), got {value!r}")
        users[domain] = int(count)
    return users


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    parser.add_argument(
        "--budget-minutes", type=float, default=7.0, help="skip what would start after this"
    )
    parser.add_argument(
        "--users", nargs="*", default=[], metavar="DOMAIN=COUNT",
        help="users per domain for the whole-run estimate (stats.json of your builds)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    import torch
    import transformers

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    lengths = SMOKE_LENGTHS if args.smoke else Lengths()
    models = ("smoke",) if args.smoke else ("qwen2.5-0.5b", "qwen2.5-3b")
    step_runs = (("smoke", "lora"), ("smoke", "full")) if args.smoke else STEP_RUNS
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    say(f"device {name}; torch {torch.__version__}; transformers {transformers.__version__}")
    document = {
        "device": name or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "lengths": vars(lengths),
        "steps": {},
        "theta0": {},
        "generation": {},
        "skipped": [],
    }

    def within_budget(what: str) -> bool:
        if time.perf_counter() - started < args.budget_minutes * 60:
            return True
        document["skipped"].append(what)
        say(f"skipped {what}: past the {args.budget_minutes} minute budget")
        return False

    steps = {}
    plan: list[tuple[str, object]] = []  # per model: its LoRA steps, theta_0, generation
    for model in models:
        plan += [("steps", run) for run in step_runs if run == (model, "lora")]
        plan += [("theta0", model), ("generation", model)]
    plan += [("steps", run) for run in step_runs if run[1] != "lora"]  # full fine-tuning last
    for kind, what in plan:
        label = f"{kind} {' '.join(what) if isinstance(what, tuple) else what}"
        if not within_budget(label):
            continue
        if kind == "steps":
            steps[what] = measure_steps(*what, lengths, device, dtype, args.repeats)
            document["steps"][" ".join(what)] = steps[what]
        elif kind == "theta0":
            document["theta0"][what] = measure_theta0(what, lengths, device, dtype)
            say(f"theta0 {what}: {document['theta0'][what]}")
        else:
            document["generation"][what] = measure_generation(what, lengths, device, dtype)
    document["estimates"] = run_estimates(steps, document["theta0"], parse_users(args.users))
    document["attention"] = sorted(ATTENTION)
    document["wall_seconds"] = time.perf_counter() - started
    document["forbidden_modules_imported"] = sorted(
        m for m, module in sys.modules.items() if m.split(".")[0] in FORBIDDEN and module
    )
    out = Path(args.out)
    write_text_atomic(out / "results.json", json.dumps(document, indent=2) + "\n")
    table = markdown(document)
    write_text_atomic(out / "results.md", table)
    print(table, end="", flush=True)
    return document


if __name__ == "__main__":
    main()
