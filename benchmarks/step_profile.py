"""Where a NextQuill step's time goes, against two separate target-only steps (one per prompt).

    python benchmarks/step_profile.py [--history 4096] [--vocab 32000] [--repeats 3]
    python benchmarks/step_profile.py --smoke        # tiny shapes (the test suite runs this)

``training_step.py`` times NextQuill against ``target_only`` and ``target_only_cf``; this script
says why the ratio is what it is. It runs the three variants of ``training_step.py`` on the same
model and sample under ``torch.profiler`` (CPU), interleaved round after round, and prints each
operator's self time (mean per step) and call count for NextQuill, for each target-only step,
and NextQuill minus their sum. Equal call counts mean NextQuill runs exactly the operators of
the two separate steps; a time difference with equal counts is the same work running slower
(both passes' activations alive at once, or noise), not extra work.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from training_step import (  # noqa: E402
    SMOKE_HISTORY,
    SMOKE_VOCAB,
    add_step_arguments,
    apply_smoke,
    build,
    step,
)

VARIANTS = ("nextquill", "target_only", "target_only_cf")


def profile_steps(model, batch, repeats: int) -> tuple[dict[str, Counter], dict[str, Counter]]:
    """Per variant: operator -> mean self CPU seconds per step, operator -> calls per step."""
    from torch.profiler import ProfilerActivity, profile

    seconds = {variant: Counter() for variant in VARIANTS}
    calls = {variant: Counter() for variant in VARIANTS}
    for variant in VARIANTS:  # warm-up: lazy initialisation is not a step's cost
        model.zero_grad(set_to_none=True)
        step(variant, model, batch)
    for _ in range(repeats):
        for variant in VARIANTS:
            model.zero_grad(set_to_none=True)
            gc.collect()
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                step(variant, model, batch)
            for event in profiler.key_averages():
                seconds[variant][event.key] += event.self_cpu_time_total / 1e6 / repeats
                calls[variant][event.key] += event.count / repeats
    return seconds, calls


def report(seconds: dict[str, Counter], calls: dict[str, Counter], top: int) -> list[str]:
    """A markdown table of the ``top`` operators by NextQuill self time, against the two steps."""
    totals = {variant: sum(seconds[variant].values()) for variant in VARIANTS}
    operators = set().union(*(seconds[variant] for variant in VARIANTS))

    def difference(operator: str) -> float:
        nq, to, cf = (seconds[variant][operator] for variant in VARIANTS)
        return nq - to - cf

    def count(variant: str, operator: str) -> str:
        return f"{calls[variant][operator]:.0f}"

    lines = [
        "| operator | nextquill s | target_only s | target_only_cf s | difference s | calls "
        "nextquill / target_only + target_only_cf |",
        "|---|---:|---:|---:|---:|---|",
        f"| all (self time) | {totals['nextquill']:.3f} | {totals['target_only']:.3f} | "
        f"{totals['target_only_cf']:.3f} | "
        f"{totals['nextquill'] - totals['target_only'] - totals['target_only_cf']:.3f} | |",
    ]
    for operator in sorted(operators, key=lambda op: -seconds["nextquill"][op])[:top]:
        lines.append(
            f"| {operator} | "
            + " | ".join(f"{seconds[variant][operator]:.3f}" for variant in VARIANTS)
            + f" | {difference(operator):.3f} | {count('nextquill', operator)} / "
            f"{count('target_only', operator)} + {count('target_only_cf', operator)} |"
        )
    two_steps = totals["target_only"] + totals["target_only_cf"]
    lines += [
        "",
        f"Self time: nextquill / (target_only + target_only_cf) {totals['nextquill'] / two_steps:.2f}",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32000)
    add_step_arguments(parser)
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    args = parser.parse_args(argv)
    apply_smoke(args)
    if args.smoke:
        args.history, args.vocab = SMOKE_HISTORY, SMOKE_VOCAB

    import torch

    torch.set_num_threads(args.threads)
    model, batch = build(
        args.vocab, args.history, args.counterfactual, args.target, args.hidden, args.layers
    )
    seconds, calls = profile_steps(model, batch, args.repeats)
    print(
        f"{args.layers}-layer Qwen2, hidden {args.hidden}; history {args.history}, "
        f"counterfactual {args.counterfactual}, target {args.target} tokens, vocab {args.vocab}; "
        f"{args.threads} threads; mean of {args.repeats} profiled steps per variant"
    )
    print()
    print("\n".join(report(seconds, calls, args.top)))


if __name__ == "__main__":
    main()
