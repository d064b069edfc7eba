"""Training-step cost of NextQuill against ContextSFT and a naive implementation, side by side.

    python benchmarks/training_step.py [--history 2048 4096] [--vocab 32000 151936]
    python benchmarks/training_step.py --smoke        # tiny shapes (the test suite runs this)

Same random Qwen2 (4 layers, hidden 256; or ``--model qwen2.5-0.5b``: that model's layer
shapes, 24 layers of hidden 896), same sample: a history prompt of H tokens, a
counterfactual prompt of 300, a target of 256. Forward+backward steps of:
- stock: ContextSFT as stock Axolotl trains it: ``model(input_ids, labels=...)``, which is what
  AxolotlTrainer's compute_loss calls for SFT (logits for every position, then cross-entropy);
- target_only: ContextSFT with our LM head on target positions only: ``compute_batch_loss``
  on the history prompt alone, token weights off, Lp off (the same loss code as nextquill);
- nextquill: ``objective.compute_batch_loss`` (both passes, Ln + alpha * Lp, theta_0 weights);
- naive: NextQuill as the authors' code computes it: full logits for every position of both
  passes, both sequences padded to the same length, full-vocabulary log-softmax of each;
- target_only_cf: target_only on the counterfactual prompt alone. NextQuill does the work of
  target_only plus about this (a second transformer pass and LM-head product over the same
  targets), so (target_only + target_only_cf) / target_only is, measured rather than assumed,
  about the least NextQuill / target_only can be at this shape.
Times: one process runs the variants in turn, round after round, each round in a rotated order
(this machine is noisy; a drift hits every variant alike, and no variant always runs first), and
reports each one's median and its fastest and slowest step. A NextQuill / target_only ratio under
its two-step floor is flagged as a measurement problem. Peak memory: each variant in its own
process (one step after a warm-up), so the peak above the model and batch is its own; glibc's
mmap threshold is fixed there so that peak RSS follows live tensors, not heap fragmentation.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataset_formats.contract import (  # noqa: E402
    COUNTERFACTUAL_IDS,
    COUNTERFACTUAL_LABELS,
    COUNTERFACTUAL_MASK,
    TOKEN_EFFECTS,
)
from dataset_formats.contract import (
    IGNORE_INDEX as IGNORE,
)
from nextquill_plugin.demo.local_runs import use_offline_mode  # noqa: E402

use_offline_mode()  # before any torch/transformers/axolotl import below

VARIANTS = ("stock", "target_only", "nextquill", "naive", "target_only_cf")
# ContextSFT settings of compute_batch_loss: no token weights, no Lp (alpha = 0).
CONTEXT_SFT = {"token_weighting": False, "causal_loss": False}


# Layer shapes of a real model (random weights): Qwen2.5-0.5B's width, heads and MLP.
MODEL_SHAPES = {
    "qwen2.5-0.5b": {
        "hidden": 896,
        "layers": 24,
        "attention_heads": 14,
        "kv_heads": 2,
        "intermediate_size": 4864,
    },
}


def build(
    vocab: int,
    history: int,
    counterfactual: int,
    target: int,
    hidden: int,
    layers: int,
    **shape,
):
    """A random Qwen2 (4 heads, MLP 4x hidden unless ``shape`` says otherwise) and one sample."""

    from benchmarks.paired_sample import paired_sample
    from nextquill_plugin.demo.tiny_model import random_qwen2

    model = random_qwen2(
        vocab,
        hidden,
        layers,
        intermediate_multiple=4,
        max_positions=history + target + 16,
        **shape,
    ).train()
    batch = paired_sample(vocab, history, counterfactual, target)
    return model, batch


def step(variant: str, model, batch) -> None:
    """One forward + backward of ``variant``."""
    import torch
    import torch.nn.functional as F

    from nextquill_plugin.equations import PreferenceRule
    from nextquill_plugin.objective import NextQuillSettings, compute_batch_loss

    if variant == "target_only_cf":
        variant = "target_only"
        batch = {
            "input_ids": batch[COUNTERFACTUAL_IDS],
            "attention_mask": batch[COUNTERFACTUAL_MASK],
            "labels": batch[COUNTERFACTUAL_LABELS],
        }
    if variant == "stock":
        loss = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss
    elif variant == "target_only":
        # ContextSFT through the same code NextQuill uses, minus the counterfactual pass and
        # the weights: the ratio then measures what the method adds, not two loss codes.
        context_sft = {key: batch[key] for key in ("input_ids", "attention_mask", "labels")}
        loss = compute_batch_loss(model, context_sft, NextQuillSettings(**CONTEXT_SFT)).loss.total
    elif variant == "nextquill":
        loss = compute_batch_loss(model, batch, NextQuillSettings()).loss.total
    else:  # naive
        width = batch["input_ids"].shape[1]
        cf = batch[COUNTERFACTUAL_IDS]
        pad = width - cf.shape[1]
        cf_ids = F.pad(cf, (0, pad), value=0)
        cf_mask = F.pad(torch.ones_like(cf), (0, pad), value=0)
        logits_with = model(input_ids=batch["input_ids"]).logits[0, :-1]
        logits_without = model(input_ids=cf_ids, attention_mask=cf_mask).logits[0, :-1]
        labels = batch["labels"][0, 1:]
        cf_labels = F.pad(batch[COUNTERFACTUAL_LABELS], (0, pad), value=IGNORE)[0, 1:]
        keep, cf_keep = labels != IGNORE, cf_labels != IGNORE
        weights = PreferenceRule.from_settings().weights(batch[TOKEN_EFFECTS][0])
        normal = -(F.log_softmax(logits_with, -1)[keep].gather(1, labels[keep, None])[:, 0])
        # the authors align the two passes by target position after full-length softmaxes
        diff = logits_with[keep] - logits_without[cf_keep]
        causal = -(F.log_softmax(diff, -1).gather(1, labels[keep, None])[:, 0])
        loss = (weights * normal).mean() + 0.05 * (weights * causal).mean()
    loss.backward()


def child_setup(args: argparse.Namespace):
    """Thread count, model and sample of a child process, from its arguments."""
    import torch

    torch.set_num_threads(args.threads)
    shape = layer_shape(args)
    history, vocab = args.history[0], args.vocab[0]
    model, batch = build(
        vocab, history, args.counterfactual, args.target, args.hidden, args.layers, **shape
    )
    if args.gradient_checkpointing:  # as the recipes train: non-reentrant (see README)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, batch


def measure_memory(args: argparse.Namespace) -> dict:
    """Runs in a child: peak RSS of one step of ``args.variant`` above the model and batch."""
    model, batch = child_setup(args)
    step(args.variant, model, batch)  # warm-up: lazy initialisation is not the step's cost
    model.zero_grad(set_to_none=True)
    gc.collect()
    baseline_kib = reset_peak_rss()
    step(args.variant, model, batch)
    return {"peak_mib": (status_kib("VmHWM") - baseline_kib) / 1024}


def rotated(variants: list[str], round_index: int) -> list[str]:
    """The variants in round ``round_index``'s order: each round starts one later, so no variant
    always runs first (or right after the same one)."""
    shift = round_index % len(variants)
    return variants[shift:] + variants[:shift]


def measure_times(args: argparse.Namespace) -> dict:
    """Runs in a child: per variant, the median, fastest and slowest step time over
    ``args.repeats`` rounds (after a warm-up round), the order rotating from round to round."""
    model, batch = child_setup(args)
    times: dict[str, list[float]] = {variant: [] for variant in args.variants}
    for round_index in range(args.repeats + 1):  # round 0 is the warm-up
        for variant in rotated(list(args.variants), round_index):
            model.zero_grad(set_to_none=True)
            gc.collect()
            started = time.perf_counter()
            step(variant, model, batch)
            if round_index:
                times[variant].append(time.perf_counter() - started)
    return {
        variant: {"median": statistics.median(s), "min": min(s), "max": max(s)}
        for variant, s in times.items()
    }


def two_step_line(history: int, vocab: int, seconds: dict[str, float]) -> str:
    """NextQuill / target-only next to its floor, (target_only + target_only_cf) / target_only;
    a ratio under the floor is flagged: a method doing strictly more work cannot beat it, so
    such a number says the machine was noisy, not that the step got cheaper."""
    ratio = seconds["nextquill"] / seconds["target_only"]
    floor = 1 + seconds["target_only_cf"] / seconds["target_only"]
    line = (
        f"- {history}/{vocab}: nextquill / target_only {ratio:.2f}; "
        f"(target_only + target_only_cf) / target_only {floor:.2f}"
    )
    if ratio < floor:
        line += (
            " -- MEASUREMENT PROBLEM: under the two-step floor, which no step doing that work"
            " can beat; not a result (rerun on a quiet machine or with more --repeats)"
        )
    return line


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: now, VmHWM: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (this benchmark needs Linux)")


def reset_peak_rss() -> int:
    """Give freed heap pages back to the OS (else the warm-up's freed activations would count
    as baseline), reset the kernel's peak-RSS counter (clear_refs 5); return the RSS in KiB."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


def naive_bytes(history: int, target: int, vocab: int) -> int:
    """Rough peak of the naive variant: about eight [L, V] float32 tensors alive at once."""
    return 8 * (history + target) * vocab * 4


def layer_shape(args: argparse.Namespace) -> dict:
    """Heads and MLP width of ``--model`` (hidden size and depth are args.hidden/args.layers)."""
    if not args.model:
        return {}
    shape = dict(MODEL_SHAPES[args.model])
    del shape["hidden"], shape["layers"]
    return shape


def run_child(args: argparse.Namespace, history: int, vocab: int, *extra: str) -> dict:
    """Run this script in a child process at one shape; return what it reports."""
    command = [sys.executable, __file__, *extra, "--history", str(history), "--vocab", str(vocab)]
    for key in ("counterfactual", "target", "hidden", "layers", "repeats", "threads"):
        command += [f"--{key}", str(getattr(args, key))]
    if args.model:
        command += ["--model", args.model]
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    env = dict(os.environ)
    if "--variant" in extra:
        # glibc otherwise raises its mmap threshold as big blocks are freed and keeps freed
        # tensors in its heap: peak RSS would then follow fragmentation, not live tensors
        # (seen: a one-pass step "peaking" above a two-pass one). A fixed threshold maps every
        # block over 128 KiB on its own and unmaps it when freed.
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{extra} at {history}/{vocab} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.split("RESULT ")[-1])


SMOKE_HISTORY, SMOKE_VOCAB = 64, 1000
SMOKE_SHAPE = {"counterfactual": 16, "target": 16, "hidden": 32, "layers": 1, "repeats": 1}


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """Sample and model options shared by the step benchmarks; ``--smoke`` sets tiny values."""
    parser.add_argument("--counterfactual", type=int, default=300)
    parser.add_argument("--target", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (the tests run this)")


def apply_smoke(args: argparse.Namespace) -> None:
    """With ``--smoke``: the tiny sample and model of SMOKE_SHAPE."""
    if args.smoke:
        for key, value in SMOKE_SHAPE.items():
            setattr(args, key, value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 151936])
    add_step_arguments(parser)
    parser.add_argument(
        "--model",
        choices=sorted(MODEL_SHAPES),
        help="a real model's layer shapes (random weights) instead of --hidden/--layers",
    )
    parser.add_argument(
        "--variants",
        dest="run_variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="which to run (target_only, the baseline, always runs)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="checkpoint every layer, as the recipes train (non-reentrant)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="times only (peak memory runs each variant again)"
    )
    # Set in the child processes: one variant's memory, or the interleaved times of several.
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--time-variants", dest="variants", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print("RESULT " + json.dumps(measure_memory(args)))
        return
    if args.variants:
        print("RESULT " + json.dumps(measure_times(args)))
        return
    apply_smoke(args)
    if args.smoke:
        args.history, args.vocab = [SMOKE_HISTORY], [SMOKE_VOCAB]
    if args.model:
        args.hidden = MODEL_SHAPES[args.model]["hidden"]
        args.layers = MODEL_SHAPES[args.model]["layers"]
    memory_budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.6
    lines = [
        f"{args.layers}-layer Qwen2, hidden {args.hidden}"
        f"{', gradient checkpointing' if args.gradient_checkpointing else ''}; counterfactual prompt "
        f"{args.counterfactual}, target {args.target} tokens; {args.threads} threads; median of "
        f"{args.repeats} interleaved forward+backward steps after a warm-up round",
        "",
        "| history | vocab | variant | step s | peak MiB | time / stock | mem / stock | "
        "time / target-only | mem / target-only | step s, fastest-slowest |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    references = []
    for history in args.history:
        for vocab in args.vocab:
            fits = naive_bytes(history, args.target, vocab) <= memory_budget
            chosen = [v for v in VARIANTS if v in args.run_variants or v == "target_only"]
            variants = [v for v in chosen if v != "naive" or fits]  # too big: reported, not run

            spread = run_child(args, history, vocab, "--time-variants", *variants)
            seconds = {variant: spread[variant]["median"] for variant in variants}
            peak = {v: float("nan") for v in variants}
            if not args.no_memory:
                peak = {
                    v: run_child(args, history, vocab, "--variant", v)["peak_mib"] for v in variants
                }
            reference = seconds.get("stock", float("nan")), peak.get("stock", float("nan"))
            for variant in chosen:
                if variant not in variants:
                    lines.append(
                        f"| {history} | {vocab} | {variant} | not run: needs about "
                        f"{naive_bytes(history, args.target, vocab) / 2**30:.0f} GiB | | | | | | |"
                    )
                    continue
                lines.append(
                    f"| {history} | {vocab} | {variant} | {seconds[variant]:.3f} | "
                    f"{peak[variant]:.0f} | {seconds[variant] / reference[0]:.2f} | "
                    f"{peak[variant] / max(reference[1], 1):.2f} | "
                    f"{seconds[variant] / seconds['target_only']:.2f} | "
                    f"{peak[variant] / max(peak['target_only'], 1):.2f} | "
                    f"{spread[variant]['min']:.3f}-{spread[variant]['max']:.3f} |"
                )
            if "nextquill" in seconds and "target_only_cf" in seconds:
                references.append(two_step_line(history, vocab, seconds))
            print(f"measured history {history}, vocab {vocab}", file=sys.stderr, flush=True)
    heading = "Time against two separate target-only steps (one per prompt):"
    print("\n".join([*lines, "", heading, *references] if references else lines))


if __name__ == "__main__":
    main()
