"""Smoke runs of the benchmark scripts: they run and report (their numbers are not checked here;
speed is measured by running the scripts, see benchmarks/README.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nextquill_common.offline import OFFLINE_VARIABLES
from nextquill_plugin.demo.local_runs import offline_env

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Each runs a benchmark script in a process of its own (imports alone take seconds): the quick
# loop (-m "not slow") leaves them to `make test`.
pytestmark = pytest.mark.slow


def run_script(name: str, *args: str, timeout: int = 900) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=offline_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in output.splitlines()
        if line.startswith("|") and not set(line) <= set("|-: ")  # not the separator row
    ]


def test_training_step_benchmark_reports_every_variant():
    output = run_script("training_step.py", "--smoke")
    rows = table_rows(output)
    variants = [row[2] for row in rows[1:]]
    assert variants == ["stock", "target_only", "nextquill", "naive", "target_only_cf"]
    for row in rows[1:]:
        assert float(row[3]) > 0 and float(row[5]) > 0  # step seconds, time / stock
    assert rows[1][5] == "1.00" and rows[2][7] == "1.00"  # each baseline against itself
    nextquill_ratio = float(rows[3][7])
    for row in rows[1:]:  # fastest-slowest around the median
        fastest, slowest = (float(x) for x in row[9].split("-"))
        assert fastest <= float(row[3]) <= slowest
    reference = output.split("Time against two separate target-only steps")[1]
    assert f"nextquill / target_only {nextquill_ratio:.2f}" in reference


def test_weight_pass_benchmark_reports_throughput_and_a_warm_cache_without_forwards():
    output = run_script("weight_pass.py", "--smoke")
    rows = dict((row[0], row[1]) for row in table_rows(output))
    assert float(rows["weight pass / plain forward throughput"]) > 0
    assert rows["warm cache: seconds, forward passes"].endswith(", 0")
    assert not rows["cold cache: seconds, forward passes"].endswith(", 0")


def test_builder_benchmark_reports_sizes_threads_and_bounds(tmp_path):
    rows = table_rows(
        run_script(
            "builder_throughput.py",
            *("--sizes", "3000", "6000", "--threads", "1", "2", "--workdir", str(tmp_path)),
        )
    )
    assert len(rows) == 5  # header + one row per size and thread count
    reviews = [int(row[0].replace(",", "")) for row in rows[1:]]
    assert 0 < reviews[0] == reviews[1] < reviews[2] == reviews[3]
    assert [row[1] for row in rows[1:]] == ["1", "2", "1", "2"]
    for row in rows[1:]:
        seconds, engine, disk, ratio = (float(row[i]) for i in (2, 7, 8, 9))
        assert seconds > 0 and ratio > 0
        if min(engine, disk) >= 0.1:  # printed with two decimals
            assert ratio == pytest.approx(seconds / max(engine, disk), rel=0.1)
    assert list(tmp_path.iterdir()) == []  # generated files and outputs removed


def test_planted_preference_benchmark_smoke(tmp_path):
    output = run_script("planted_preference.py", "--smoke", "--out", str(tmp_path), timeout=1200)
    assert "theta_0's lambda tokens" in output
    methods = [row[0] for row in table_rows(output) if row[0] in ("ContextSFT", "NextQuill")]
    # log-probabilities; then per penalty setting: means, and NextQuill's paired differences
    assert methods == ["ContextSFT", "NextQuill"] + ["ContextSFT", "NextQuill", "NextQuill"] * 2
    differences = next(row for row in table_rows(output) if row[0] == "NextQuill" and "[" in row[1])
    assert len(differences) == 7 and all("[" in cell for cell in differences[1:])
    assert (tmp_path / "report.md").read_text() in output


def test_tuned_comparison_smoke_tunes_tests_and_resumes(tmp_path):
    output = run_script("tuned_comparison.py", "--smoke", "--out", str(tmp_path), timeout=1200)
    assert "## rare: personal words in 30%" in output and "theta_0 marks" in output
    grid = [row for row in table_rows(output) if row[0].startswith(("ContextSFT", "NextQuill"))]
    assert grid[0][0] == "ContextSFT" and grid[0][1].startswith("**")  # the chosen setting
    assert grid[1][0] == "NextQuill-weights, alpha 0.05"
    differences = [
        row for row in table_rows(output) if row[0] == "NextQuill-weights" and "[" in row[2]
    ]
    assert len(differences) == 2 and all("[" in cell for cell in differences[0][1:])  # 2 penalties
    runs = tmp_path / "rare" / "runs"
    assert {p.name for p in runs.iterdir()} == {
        "ContextSFT-lr0.003-seed0",
        "NextQuill-weights-lr0.003-alpha0.05-seed0",
    }
    # A second invocation finds every run trained and evaluated: it trains nothing again.
    again = run_script("tuned_comparison.py", "--smoke", "--out", str(tmp_path), timeout=600)
    assert (
        "[planted] trained" not in again
        and again.split("# Tuned")[1].split("\n", 1)[1]
        == (output.split("# Tuned")[1].split("\n", 1)[1])
    )


def test_step_profile_finds_the_same_operators_as_two_target_only_steps():
    """NextQuill's matrix products are those of a target-only step on each prompt, no more."""
    output = run_script("step_profile.py", "--smoke", "--top", "100")
    rows = {row[0]: row for row in table_rows(output)}
    assert float(rows["all (self time)"][1]) > 0
    nextquill_calls, separate_calls = rows["aten::mm"][5].split(" / ")
    first, second = separate_calls.split(" + ")
    assert int(nextquill_calls) == int(first) + int(second) > 0
    assert "nextquill / (target_only + target_only_cf)" in output


def test_benchmarks_go_offline_before_anything_reads_the_offline_setting():
    """Run as documented (``python benchmarks/<name>.py``, no offline variables set), each
    script sets offline mode before huggingface_hub reads it at import (bitsandbytes, imported
    by Axolotl, would otherwise ask the Hub for kernels). The probe stops each script at its
    first import of huggingface_hub and prints what that import would read."""
    env = {key: value for key, value in offline_env().items() if not key.endswith("OFFLINE")}
    for name in ("training_step.py", "step_profile.py", "weight_pass.py", "planted_preference.py"):
        probe = (
            "import importlib.abc, os, runpy, sys\n"
            "class StopAtHub(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, fullname, path, target=None):\n"
            "        if fullname == 'huggingface_hub':\n"
            "            print(os.environ.get('HF_HUB_OFFLINE'), flush=True)\n"
            "            os._exit(0)\n"
            "sys.meta_path.insert(0, StopAtHub())\n"
            f"runpy.run_path({str(BENCHMARKS / name)!r}, run_name='imported')\n"
            "print('huggingface_hub never imported')\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, env=env
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip() == OFFLINE_VARIABLES["HF_HUB_OFFLINE"], name


def test_generation_throughput_benchmark_compares_one_and_two_processes():
    output = run_script(
        "generation_throughput.py", "--rows", "6", "--max-new-tokens", "4", "--rounds", "1"
    )
    rows = table_rows(output)
    assert [row[0] for row in rows[1:]] == ["1", "2"]
    assert all(float(row[1]) > 0 for row in rows[1:])
    assert "two / one process:" in output and "(predictions identical)" in output


def training_step_module():
    import runpy

    return runpy.run_path(str(BENCHMARKS / "training_step.py"), run_name="imported")


def test_training_step_rotates_the_order_of_the_variants():
    rotated = training_step_module()["rotated"]
    variants = ["stock", "target_only", "nextquill"]
    orders = [rotated(variants, r) for r in range(4)]
    assert orders[0] == variants and orders[3] == variants
    assert [order[0] for order in orders[:3]] == variants  # each runs first once in 3 rounds
    assert all(sorted(order) == sorted(variants) for order in orders)


def test_training_step_flags_a_ratio_under_the_two_step_floor():
    two_step_line = training_step_module()["two_step_line"]
    plausible = two_step_line(
        64, 1000, {"target_only": 1.0, "target_only_cf": 0.2, "nextquill": 1.3}
    )
    assert "nextquill / target_only 1.30" in plausible and "1.20" in plausible
    assert "MEASUREMENT PROBLEM" not in plausible
    too_cheap = two_step_line(
        64, 1000, {"target_only": 1.0, "target_only_cf": 0.2, "nextquill": 1.1}
    )
    assert "MEASUREMENT PROBLEM" in too_cheap


def test_gpu_script_runs_without_axolotl_deepspeed_datasets_or_trl(tmp_path):
    """The GPU machine has none of them: the smoke run (tiny shapes, CPU) must not import them;
    it writes every section, every variant with its ratio to target-only, and the estimates."""
    script = BENCHMARKS / "gpu_performance.py"
    blocker = (
        "import runpy, sys\n"
        "for name in ('axolotl', 'deepspeed', 'datasets', 'trl'):\n"
        "    sys.modules[name] = None  # as if not installed: import fails, find_spec is None\n"
        f"sys.argv = [{str(script)!r}, '--smoke', '--out', {str(tmp_path)!r}, '--users', 'Books=100']\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["forbidden_modules_imported"] == []
    for run in ("smoke lora", "smoke full"):
        steps = document["steps"][run]
        assert set(steps) == {"stock", "target_only", "nextquill", "nextquill_cf_const", "authors"}
        assert steps["target_only"]["time_vs_target_only"] == 1.0
        assert all(s["seconds"] > 0 for s in steps.values())
    assert document["theta0"]["smoke"]["rows_per_s"] > 0
    generation = document["generation"]["smoke"]
    assert generation["greedy"]["tokens"] == generation["cos_1"]["tokens"] == 2 * 8
    estimate = document["estimates"]["smoke lora"]
    assert estimate["hours_Books"] == pytest.approx(estimate["hours_per_1000_users"] / 10)
    assert "| smoke | lora | nextquill |" in (tmp_path / "results.md").read_text()
