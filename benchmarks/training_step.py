"""Training-step cost of NextQuill against ContextSFT and a naive implementation, side by side.

    python benchmarks/training_step.py [--history 2048 4096] [--vocab 32000 151936]
    python benchmarks/training_step.py --smoke        # tiny shapes (the test suite runs this)

Same random Qwen2 (4 layers, hidden 256), same sample: a history prompt of H tokens, a
counterfactual prompt of 300, a target of 256. One forward+backward per repeat (after one warm-up)
of each of:
- stock: ContextSFT as stock Axolotl trains it: ``model(input_ids, labels=...)``, which is what
  AxolotlTrainer's compute_loss calls for SFT (logits for every position, then cross-entropy);
- target-only: ContextSFT with our LM head on target positions only (``forward.target_logits``);
- nextquill: ``objective.compute_batch_loss`` (both passes, Ln + alpha * Lp, theta_0 weights);
- naive: NextQuill as the authors' code computes it: full logits for every position of both
  passes, both sequences padded to the same length, full-vocabulary log-softmax of each.
Each variant runs in its own process, so its peak resident memory (above the model and batch)
is its own. Prints median step time and peak memory, and ratios to the baselines.
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

VARIANTS = ("stock", "target_only", "nextquill", "naive")
IGNORE = -100


def build(vocab: int, history: int, counterfactual: int, target: int, hidden: int, layers: int):
    import torch

    from nextquill_plugin.tiny_model import random_qwen2

    model = random_qwen2(
        vocab, hidden, layers, intermediate_multiple=4, max_positions=history + target + 16
    ).train()
    generator = torch.Generator().manual_seed(1)
    target_ids = torch.randint(0, vocab, (target,), generator=generator)
    prompt = torch.randint(0, vocab, (history,), generator=generator)
    cf_prompt = torch.randint(0, vocab, (counterfactual,), generator=generator)

    def row(p):
        ids = torch.cat([p, target_ids])[None]
        labels = torch.cat([torch.full_like(p, IGNORE), target_ids])[None]
        return ids, labels

    ids, labels = row(prompt)
    cf_ids, cf_labels = row(cf_prompt)
    weights = torch.where(torch.rand(target, generator=generator) < 0.1, 0.9, 0.1)[None]
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "cf_input_ids": cf_ids,
        "cf_attention_mask": torch.ones_like(cf_ids),
        "cf_labels": cf_labels,
        "has_counterfactual": torch.tensor([True]),
        "nq_token_weights": weights,
    }
    return model, batch


def step(variant: str, model, batch) -> None:
    """One forward + backward of ``variant``."""
    import torch
    import torch.nn.functional as F

    from nextquill_plugin.forward import resolve_lm_head, target_logits
    from nextquill_plugin.objective import NextQuillSettings, compute_batch_loss

    if variant == "stock":
        loss = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss
    elif variant == "target_only":
        logits, targets, _ = target_logits(
            model,
            resolve_lm_head(model),
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
        )
        loss = F.cross_entropy(logits.float(), targets.token_ids)
    elif variant == "nextquill":
        loss = compute_batch_loss(model, batch, NextQuillSettings()).loss.total
    else:  # naive
        width = batch["input_ids"].shape[1]
        cf = batch["cf_input_ids"]
        pad = width - cf.shape[1]
        cf_ids = F.pad(cf, (0, pad), value=0)
        cf_mask = F.pad(torch.ones_like(cf), (0, pad), value=0)
        logits_with = model(input_ids=batch["input_ids"]).logits[0, :-1]
        logits_without = model(input_ids=cf_ids, attention_mask=cf_mask).logits[0, :-1]
        labels = batch["labels"][0, 1:]
        cf_labels = F.pad(batch["cf_labels"], (0, pad), value=IGNORE)[0, 1:]
        keep, cf_keep = labels != IGNORE, cf_labels != IGNORE
        weights = batch["nq_token_weights"][0]
        normal = -(F.log_softmax(logits_with, -1)[keep].gather(1, labels[keep, None])[:, 0])
        # the authors align the two passes by target position after full-length softmaxes
        diff = logits_with[keep] - logits_without[cf_keep]
        causal = -(F.log_softmax(diff, -1).gather(1, labels[keep, None])[:, 0])
        loss = (weights * normal).mean() + 0.05 * (weights * causal).mean()
    loss.backward()


def measure(args: argparse.Namespace) -> dict:
    """Runs in a child: time and peak RSS of ``args.variant``."""
    import torch

    torch.set_num_threads(args.threads)
    model, batch = build(
        args.vocab[0], args.history[0], args.counterfactual, args.target, args.hidden, args.layers
    )
    step(args.variant, model, batch)  # warm-up: lazy initialisation is not the step's cost
    model.zero_grad(set_to_none=True)
    gc.collect()
    baseline_kib = reset_peak_rss()
    times = []
    for _ in range(args.repeats):
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        step(args.variant, model, batch)
        times.append(time.perf_counter() - started)
    return {
        "seconds": statistics.median(times),
        "peak_mib": (status_kib("VmHWM") - baseline_kib) / 1024,
    }


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 151936])
    parser.add_argument("--counterfactual", type=int, default=300)
    parser.add_argument("--target", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the child processes
    args = parser.parse_args(argv)
    if args.variant:
        print("RESULT " + json.dumps(measure(args)))
        return
    if args.smoke:
        args.history, args.vocab, args.counterfactual, args.target = [64], [1000], 16, 16
        args.hidden, args.layers, args.repeats = 32, 1, 1
    memory_budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.6
    lines = [
        f"{args.layers}-layer Qwen2, hidden {args.hidden}; counterfactual prompt "
        f"{args.counterfactual}, target {args.target} tokens; {args.threads} threads; median of "
        f"{args.repeats} forward+backward steps after a warm-up",
        "",
        "| history | vocab | variant | step s | peak MiB | time / stock | mem / stock | "
        "time / target-only | mem / target-only |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for history in args.history:
        for vocab in args.vocab:
            results = {}
            for variant in VARIANTS:
                if variant == "naive" and naive_bytes(history, args.target, vocab) > memory_budget:
                    results[variant] = None  # would not fit: reported, not run
                    continue
                command = [sys.executable, __file__, "--variant", variant]
                for key in ("counterfactual", "target", "hidden", "layers", "repeats", "threads"):
                    command += [f"--{key}", str(getattr(args, key))]
                command += ["--history", str(history), "--vocab", str(vocab)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{variant} at {history}/{vocab} failed:\n{done.stderr[-3000:]}")
                results[variant] = json.loads(done.stdout.split("RESULT ")[-1])
            stock, target_only = results["stock"], results["target_only"]
            for variant, result in results.items():
                if result is None:
                    lines.append(
                        f"| {history} | {vocab} | {variant} | not run: needs about "
                        f"{naive_bytes(history, args.target, vocab) / 2**30:.0f} GiB | | | | | |"
                    )
                    continue
                lines.append(
                    f"| {history} | {vocab} | {variant} | {result['seconds']:.3f} | "
                    f"{result['peak_mib']:.0f} | {result['seconds'] / stock['seconds']:.2f} | "
                    f"{result['peak_mib'] / max(stock['peak_mib'], 1):.2f} | "
                    f"{result['seconds'] / target_only['seconds']:.2f} | "
                    f"{result['peak_mib'] / max(target_only['peak_mib'], 1):.2f} |"
                )
            print(f"measured history {history}, vocab {vocab}", file=sys.stderr, flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
