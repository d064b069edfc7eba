"""Builder throughput against the bounds of its engine and its disk, measured in the same run.

    python benchmarks/builder_throughput.py --sizes 1000000 5000000 --threads 1 2 --workdir /tmp/b

For each size, raw Amazon-schema files are generated (not timed). Then, for each thread count:
- engine bound: DuckDB's own ``read_json`` counting the review file's rows (no checks, no
  output) with that many threads;
- the build: ``nextquill-data build`` in a child process (wall time, reviews/s, peak RSS, its
  per-stage seconds from stats.json);
- disk bound: writing as many bytes as the build wrote, in 8 MiB chunks, to the same folder.
A build can be no faster than the larger of the two bounds; the ratios say how close it comes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = (
    "import resource, sys; from dataset_formats.build.cli import main; main(sys.argv[1:]); "
    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)
CHUNK = 8 << 20


def engine_seconds(reviews: Path, threads: int) -> float:
    """DuckDB's read_json row count over the review file (the engine's own bound)."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    started = time.perf_counter()
    con.execute("SELECT count(*) FROM read_json(?, format = 'newline_delimited')", [str(reviews)])
    seconds = time.perf_counter() - started
    con.close()
    return seconds


def disk_seconds(folder: Path, n_bytes: int) -> float:
    """Write ``n_bytes`` to a file in ``folder`` as the builder does (no fsync), in 8 MiB chunks
    that all differ (slices of a random buffer at odd offsets), so that no layer below can
    shortcut repeated blocks."""
    pool = os.urandom(8 * CHUNK)
    path = folder / "disk_bound.tmp"
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as handle:
        written, index = 0, 0
        while written < n_bytes:
            start = (index * 4099) % (len(pool) - CHUNK)
            written += handle.write(memoryview(pool)[start : start + min(CHUNK, n_bytes - written)])
            index += 1
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def run_build(raw: Path, out: Path, threads: int, memory_limit: str) -> tuple[float, int, dict]:
    """(wall seconds, peak RSS KiB, stats.json) of one build in a child process."""
    command = [
        sys.executable,
        "-c",
        MEASURE,
        "build",
        "--reviews",
        str(raw / "reviews.jsonl.gz"),
        "--meta",
        str(raw / "meta.jsonl.gz"),
        "--out",
        str(out),
        "--quiet",
        "--memory-limit",
        memory_limit,
        "--threads",
        str(threads),
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"the build failed:\n{result.stderr[-3000:]}")
    peak_kib = int(result.stdout.split("PEAK_KIB")[-1])
    return seconds, peak_kib, json.loads((out / "stats.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from dataset_formats.build.synthetic import write_synthetic_raw

    print(
        "| reviews | threads | seconds | reviews/s | read / select / write s | output GiB "
        "| peak RSS MiB | engine bound s | disk bound s | build / larger bound |"
    )
    print("| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for size in args.sizes:
            raw = Path(tmp) / f"raw_{size}"
            n_reviews, _ = write_synthetic_raw(raw, size)
            for threads in args.threads:
                out = Path(tmp) / f"out_{size}_{threads}"
                engine = engine_seconds(raw / "reviews.jsonl.gz", threads)
                seconds, peak_kib, stats = run_build(raw, out, threads, args.memory_limit)
                assert stats["reviews_read"] == n_reviews and stats["accounted"]
                n_bytes = sum(
                    (out / f"{split}.jsonl").stat().st_size for split in stats["rows_per_split"]
                )
                shutil.rmtree(out)
                disk = disk_seconds(Path(tmp), n_bytes)
                stages = " / ".join(
                    f"{stats['stage_seconds'][k]:.1f}" for k in ("read", "select", "write")
                )
                print(
                    f"| {n_reviews:,} | {threads} | {seconds:.1f} | {n_reviews / seconds:,.0f} | "
                    f"{stages} | {n_bytes / 2**30:.2f} | {peak_kib / 1024:,.0f} | {engine:.2f} | "
                    f"{disk:.2f} | {seconds / max(engine, disk):.2f} |",
                    flush=True,
                )
            shutil.rmtree(raw)


if __name__ == "__main__":
    main()
