"""Run `axolotl` on a recipe in a subprocess, offline, on CPU, and read its log.

Used by the demo, the benchmarks and the tests; not needed to train with the plugin.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from dataset_formats.build.synthetic import corpus_texts
from nextquill_common.offline import offline_env, solo_run_threads, use_offline_mode

from .tiny_model import build_tiny_model

__all__ = [
    "offline_env",
    "solo_run_threads",
    "use_offline_mode",
]  # re-exported for the scripts that run axolotl

CPU_SETTINGS = {
    "bf16": False,
    "fp16": False,
    "tf32": False,
    "optimizer": "adamw_torch",
    "lora_mlp_kernel": False,
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
    "lora_embedding_kernel": False,
}

# Overrides of ``tiny_recipe`` for full fine-tuning instead of its LoRA adapter.
FULL_FINETUNE = {
    "adapter": None,
    "lora_r": None,
    "lora_alpha": None,
    "lora_dropout": None,
    "lora_target_linear": None,
}


# `axolotl train --launcher python` with the one torch thread accelerate's launcher gives a CPU
# run: the same training in one Python process instead of three (the default launcher's `axolotl`,
# `accelerate` and trainer processes each import torch). The tests use it where the launcher is
# not what they test (forked from a process that imported Axolotl: tests/axolotl_runs.py); the
# demo keeps the launcher a user gets by default.
IN_ONE_PROCESS = {"launcher": "python", "threads": 1}


def tiny_recipe(model_dir: Path, train_file: Path, workdir: Path, **overrides) -> dict:
    """A complete CPU recipe for the tiny model; ``overrides`` replace or add keys (None removes)."""
    recipe = {
        "base_model": str(model_dir),
        "plugins": ["nextquill_plugin.NextQuillPlugin"],
        "nextquill": True,
        "datasets": [
            {"path": str(train_file), "ds_type": "json", "type": "dataset_formats.amazon_reviews"}
        ],
        "sequence_len": 768,
        "nextquill_history_k": 3,
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target_linear": True,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": 24,
        "learning_rate": 0.005,
        "lr_scheduler": "constant",
        "output_dir": str(workdir / "out"),
        "dataset_prepared_path": str(workdir / "prepared"),
        "logging_steps": 1,
        "val_set_size": 0,
        "save_strategy": "no",
        "seed": 7,
        "dataset_processes": 1,
        **CPU_SETTINGS,
    }
    recipe.update(overrides)
    return {key: value for key, value in recipe.items() if value is not None}


def run_axolotl(
    command: str,
    recipe: dict,
    workdir: Path,
    timeout: int = 600,
    extra_args: tuple[str, ...] = (),
    name: str = "recipe.yml",
    threads: int | None = None,
    launcher: str | None = None,
) -> subprocess.CompletedProcess:
    """`axolotl <command> recipe.yml`, exactly as a user runs it (from the venv's bin); with
    ``threads``, torch uses that many CPU threads; ``launcher`` is `axolotl train`'s
    (default accelerate; "python" trains in the one process, without two more Python starts)."""
    axolotl = Path(sys.executable).parent / "axolotl"
    return subprocess.run(
        [str(axolotl), *axolotl_arguments(command, recipe, workdir, extra_args, name, launcher)],
        cwd=workdir,
        env=offline_env(threads),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def axolotl_arguments(
    command: str,
    recipe: dict,
    workdir: Path,
    extra_args: tuple[str, ...] = (),
    name: str = "recipe.yml",
    launcher: str | None = None,
) -> list[str]:
    """The arguments after `axolotl` for ``command`` on ``recipe``, written to workdir/name."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / name
    config.write_text(yaml.safe_dump(recipe, sort_keys=False))
    launch = ("--launcher", launcher) if launcher else ()
    return [command, str(config.resolve()), *launch, *extra_args]


class TrainingFailed(RuntimeError):
    """`axolotl train` exited with an error; the message ends with its log's tail."""


def train_logged(
    name: str,
    recipe: dict,
    workdir: Path,
    timeout: int = 3600,
    threads: int | None = None,
    launcher: str | None = None,
) -> list[dict]:
    """`axolotl train` on ``recipe`` in ``workdir``, its whole log kept in workdir/train.log;
    returns the logged per-step metrics, or raises TrainingFailed with the log's tail."""
    result = run_axolotl(
        "train",
        recipe,
        workdir,
        timeout=timeout,
        name=f"{name}.yml",
        threads=threads,
        launcher=launcher,
    )
    log = result.stdout + result.stderr
    (workdir / "train.log").write_text(log)
    if result.returncode != 0:
        raise TrainingFailed(f"{name} failed; the end of {workdir / 'train.log'}:\n{log[-4000:]}")
    return logged_metrics(log)


def logged_metrics(output: str) -> list[dict[str, float]]:
    """The per-step metric dicts the Trainer prints, e.g. {'loss': '0.68', ...}."""
    steps = []
    for match in re.finditer(r"\{'loss': [^}]*\}", output):
        pairs = re.findall(r"'([^']+)': '([^']*)'", match.group(0))
        steps.append({k: float(v) for k, v in pairs if re.fullmatch(r"[-+0-9.eE]+|nan|inf", v)})
    return steps


def build_benchmark_model(
    out_dir: Path, *row_sets: list[dict], hidden_size: int = 96, num_layers: int = 2
) -> Path:
    """A tiny Qwen2 for the demo and the benchmarks (by default 2 layers, hidden 96) with a
    1000-token vocabulary, its tokenizer trained on the texts of up to 400 rows of each set."""

    rows = [row for row_set in row_sets for row in row_set[:400]]
    return build_tiny_model(
        out_dir, corpus_texts(rows), vocab_size=1000, hidden_size=hidden_size, num_layers=num_layers
    )


def half_without_history(rows: list[dict]) -> list[dict]:
    """Every other row with its history removed, i.e. exactly the counterfactual prompt.

    A from-scratch theta_0 trained only on with-history prompts predicts ordinary tokens poorly
    without history, so most tokens cross delta and the weights say nothing about the user;
    trained on both prompts, the history's effect is left on the tokens it really changes."""
    return [row if i % 2 else {**row, "history": []} for i, row in enumerate(rows)]
