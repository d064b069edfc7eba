"""The theta_0 weight pass: throughput against a plain forward, and the cost of a warm cache.

    python benchmarks/weight_pass.py [--rows 64] [--history 1024] [--vocab 32000]
    python benchmarks/weight_pass.py --smoke

Same random Qwen2 (4 layers, hidden 256) and rows (history prompt, counterfactual prompt, shared
target), in one process, alternating the two so that machine noise hits both alike:
- plain: a no-grad forward of every with-history and counterfactual sequence, in the same
  length-sorted batches, returning full logits (what a forward over the data costs anyway);
- weights: ``weights.compute_token_effects`` (target-position logits, probabilities kept).
Then ``effects_cache.cached_token_effects`` twice on a datasets.Dataset: the second call must find the
cache and run no forward pass at all (counted with a forward hook).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataset_formats.contract import (  # noqa: E402
    COUNTERFACTUAL_IDS,
    COUNTERFACTUAL_LABELS,
)
from dataset_formats.contract import (
    IGNORE_INDEX as IGNORE,
)
from nextquill_plugin.demo.local_runs import use_offline_mode  # noqa: E402

use_offline_mode()  # before any torch/transformers/axolotl import below


def make_rows(n: int, history: int, counterfactual: int, target: int, vocab: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(0)
    rows: dict[str, list] = {
        "input_ids": [],
        "labels": [],
        COUNTERFACTUAL_IDS: [],
        COUNTERFACTUAL_LABELS: [],
    }
    for i in range(n):
        length = history - (i * 37) % (history // 4)  # varied lengths, as real rows have
        tgt = torch.randint(0, vocab, (target,), generator=generator).tolist()
        prompt = torch.randint(0, vocab, (length,), generator=generator).tolist()
        cf = torch.randint(0, vocab, (counterfactual,), generator=generator).tolist()
        rows["input_ids"].append(prompt + tgt)
        rows["labels"].append([IGNORE] * length + tgt)
        rows[COUNTERFACTUAL_IDS].append(cf + tgt)
        rows[COUNTERFACTUAL_LABELS].append([IGNORE] * counterfactual + tgt)
    return rows


def plain_forward(model, rows: dict, batch_size: int) -> None:
    import torch

    from nextquill_plugin.batching import length_buckets, padded_batch

    lengths = [
        len(a) + len(b) for a, b in zip(rows["input_ids"], rows[COUNTERFACTUAL_IDS], strict=True)
    ]
    with torch.no_grad():
        for batch in length_buckets(lengths, batch_size):
            for key in ("input_ids", COUNTERFACTUAL_IDS):
                input_ids, mask = padded_batch([rows[key][i] for i in batch], 0)
                model(input_ids=input_ids, attention_mask=mask).logits.float().softmax(-1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--history", type=int, default=1024)
    parser.add_argument("--counterfactual", type=int, default=300)
    parser.add_argument("--target", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.history, args.counterfactual, args.target = 6, 64, 16, 16
        args.vocab, args.hidden, args.layers, args.repeats = 1000, 32, 1, 1

    from datasets import Dataset

    from nextquill_plugin.demo.tiny_model import random_qwen2
    from nextquill_plugin.effects_cache import cached_token_effects
    from nextquill_plugin.token_effects import compute_token_effects

    model = random_qwen2(
        args.vocab,
        args.hidden,
        args.layers,
        intermediate_multiple=4,
        max_positions=args.history + args.target + 16,
    ).eval()
    rows = make_rows(args.rows, args.history, args.counterfactual, args.target, args.vocab)
    tokens = sum(
        len(a) + len(b) for a, b in zip(rows["input_ids"], rows[COUNTERFACTUAL_IDS], strict=True)
    )
    warm_up = {k: v[:2] for k, v in rows.items()}
    plain_forward(model, warm_up, args.batch_size)
    compute_token_effects(model, warm_up, pad_token_id=0, show_progress=False)
    plain_times, weight_times = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        plain_forward(model, rows, args.batch_size)
        plain_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        compute_token_effects(
            model, rows, pad_token_id=0, batch_size=args.batch_size, show_progress=False
        )
        weight_times.append(time.perf_counter() - started)
    plain, weights = statistics.median(plain_times), statistics.median(weight_times)

    forwards = []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    dataset = Dataset.from_dict(rows)
    cache_times, cache_forwards = [], []
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(2):
            forwards.clear()
            started = time.perf_counter()
            _, path, computed = cached_token_effects(
                model,
                dataset,
                Path(cache),
                model_name="bench",
                pad_token_id=0,
                batch_size=args.batch_size,
            )
            cache_times.append(time.perf_counter() - started)
            cache_forwards.append(len(forwards))
    hook.remove()

    print(
        f"{args.layers}-layer Qwen2, hidden {args.hidden}, vocab {args.vocab}; {args.rows} rows "
        f"(history prompt up to {args.history}, counterfactual {args.counterfactual}, target "
        f"{args.target}); {tokens:,} tokens per pass; median of {args.repeats}\n"
    )
    print("| measure | value |\n|---|---:|")
    print(f"| plain no-grad forward, tokens/s | {tokens / plain:,.0f} |")
    print(f"| theta_0 weight pass, tokens/s | {tokens / weights:,.0f} |")
    print(f"| weight pass / plain forward throughput | {plain / weights:.2f} |")
    print(f"| cold cache: seconds, forward passes | {cache_times[0]:.2f} s, {cache_forwards[0]} |")
    print(f"| warm cache: seconds, forward passes | {cache_times[1]:.3f} s, {cache_forwards[1]} |")


if __name__ == "__main__":
    main()
