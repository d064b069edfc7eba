"""`nextquill evaluate` generation throughput with one process and with two (torchrun, gloo).

    python benchmarks/generation_throughput.py [--rows 96] [--max-new-tokens 64] [--rounds 3]

Builds the demo's tiny Qwen2 and synthetic test rows, then runs the same evaluation as one
process (all cores) and as two processes (torchrun, one core each), alternating which goes first
from round to round. Reports generated tokens per second (from metrics.json: generated tokens
over the wall time until the last process finished), the median per configuration, and the
ratio two / one. The predictions of both must be identical (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nextquill_plugin.demo.local_runs import offline_env, use_offline_mode  # noqa: E402

use_offline_mode()


def make_recipe(folder: Path, rows: int) -> Path:
    import yaml

    from dataset_formats.build.synthetic import synthetic_rows
    from nextquill_common.jsonl import write_jsonl
    from nextquill_plugin.demo.local_runs import build_benchmark_model

    splits = synthetic_rows(n_users=rows, reviews_per_user=8)
    model = build_benchmark_model(folder / "model", splits["train"])
    write_jsonl(folder / "data" / "train.jsonl", splits["train"][:4])
    write_jsonl(folder / "data" / "test.jsonl", splits["test"][:rows])
    recipe = folder / "recipe.yml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "base_model": str(model),
                "plugins": ["nextquill_plugin.NextQuillPlugin"],
                "nextquill": True,
                "nextquill_history_k": 4,
                "sequence_len": 1024,
                "datasets": [
                    {
                        "path": str(folder / "data" / "train.jsonl"),
                        "type": "dataset_formats.amazon_reviews",
                    }
                ],
            }
        )
    )
    return recipe


def run(recipe: Path, out: Path, processes: int, args: argparse.Namespace) -> dict:
    evaluate = ["-m", "nextquill_plugin.cli", "evaluate", str(recipe), "--out", str(out)]
    evaluate += ["--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size)]
    evaluate += ["--bootstrap", "10", "--repetition-penalty", "1.0"]
    if processes == 1:
        command, threads = [sys.executable, *evaluate], None
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node", str(processes), *evaluate]
        threads = max(1, (os.cpu_count() or 2) // processes)
    done = subprocess.run(command, capture_output=True, text=True, env=offline_env(threads))
    if done.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = (out / "predictions.jsonl").read_text()
    return {
        "tokens_per_second": metrics["generated_tokens"] / metrics["generation_seconds"],
        "tokens": metrics["generated_tokens"],
        "predictions": predictions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = make_recipe(Path(tmp), args.rows)
        for round_number in range(args.rounds):
            order = (1, 2) if round_number % 2 == 0 else (2, 1)
            outputs = {}
            for processes in order:
                out = Path(tmp) / f"eval_{processes}_{round_number}"
                outputs[processes] = run(recipe, out, processes, args)
                results[processes].append(outputs[processes]["tokens_per_second"])
            if outputs[1]["predictions"] != outputs[2]["predictions"]:
                raise SystemExit("two processes predicted differently from one: a bug")
            print(
                f"round {round_number + 1}: "
                + ", ".join(f"{p} process(es) {results[p][-1]:.0f} tokens/s" for p in order),
                flush=True,
            )
    one, two = statistics.median(results[1]), statistics.median(results[2])
    print(f"\n{args.rows} rows, {args.max_new_tokens} new tokens each, batch {args.batch_size}")
    print("| processes | tokens/s (median) | spread |")
    print("|---:|---:|---:|")
    for processes, values in results.items():
        print(
            f"| {processes} | {statistics.median(values):.0f} | {min(values):.0f}-{max(values):.0f} |"
        )
    print(f"\ntwo / one process: {two / one:.2f}x (predictions identical)")


if __name__ == "__main__":
    main()
