"""Builder throughput and peak memory on generated raw files of growing size.

    python benchmarks/builder_throughput.py --sizes 1000000 5000000 [--memory-limit 4GB]

For each size: generate raw Amazon-schema files (not timed), then run `nextquill-data build` in a
child process and report wall time, reviews/s and the child's peak RSS, so that one run shows
how cost grows with size on the same machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = (
    "import resource, sys; from dataset_formats.cli import main; main(sys.argv[1:]); "
    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from dataset_formats.synthetic import write_synthetic_raw

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for size in args.sizes:
            raw = Path(tmp) / f"raw_{size}"
            n_reviews, n_items = write_synthetic_raw(raw, size)
            started = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    MEASURE,
                    "build",
                    "--reviews",
                    str(raw / "reviews.jsonl.gz"),
                    "--meta",
                    str(raw / "meta.jsonl.gz"),
                    "--out",
                    str(Path(tmp) / f"out_{size}"),
                    "--quiet",
                    "--memory-limit",
                    args.memory_limit,
                ],
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                sys.exit(f"build of {size} reviews failed:\n{result.stderr[-3000:]}")
            peak_mib = int(result.stdout.split("PEAK_KIB")[-1]) / 1024
            stats = json.loads((Path(tmp) / f"out_{size}" / "stats.json").read_text())
            rows.append(
                (n_reviews, n_items, seconds, n_reviews / seconds, peak_mib, stats["users"])
            )
    base = rows[0]
    print(
        "| reviews | items | users kept | seconds | reviews/s | peak RSS (MiB) | time / first | memory / first |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, items, seconds, rate, peak, users in rows:
        print(
            f"| {n:,} | {items:,} | {users:,} | {seconds:.1f} | {rate:,.0f} | {peak:,.0f} | "
            f"{seconds / base[2]:.2f} | {peak / base[4]:.2f} |"
        )


if __name__ == "__main__":
    main()
