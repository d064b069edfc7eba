"""Axolotl features a user expects to keep working with the plugin: TensorBoard logging,
resuming from a checkpoint, QLoRA; and the thread count its launcher gives a CPU run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from nextquill_common.jsonl import write_jsonl
from nextquill_plugin.demo.local_runs import (
    IN_ONE_PROCESS,
    logged_metrics,
    tiny_recipe,
)

from .axolotl_runs import run_axolotl

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, synthetic_splits):
    # 64 rows: the longest run reads 48 (24 steps of 2), and the theta_0 pass reads them all
    rows = synthetic_splits["train"][:64]
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


def trained(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def test_tensorboard_event_files_hold_the_nextquill_scalars(tmp_path, tiny_model_dir, train_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tiny_recipe(tiny_model_dir, train_file, tmp_path, max_steps=3, use_tensorboard=True)
    trained(run_axolotl("train", recipe, tmp_path, **IN_ONE_PROCESS))
    (events,) = {p.parent for p in (tmp_path / "out").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    for name in ("normal_loss", "causal_loss", "mean_weight", "preference_token_fraction"):
        (tag,) = [t for t in tags if t.endswith(f"nextquill/{name}")]
        assert len(accumulator.Scalars(tag)) == 3, tag


def test_resuming_continues_with_the_same_losses_and_the_cached_weights(
    tmp_path, tiny_model_dir, train_file
):
    common = {"max_steps": 6, "lora_dropout": 0.0, "save_strategy": "steps", "save_steps": 3}
    interrupted = tmp_path / "interrupted"
    recipe = tiny_recipe(tiny_model_dir, train_file, interrupted, **common)
    # The reference is this same run's steps 4-6: the LoRA matrices are initialised before
    # Axolotl seeds anything, so a second fresh run would start elsewhere.
    reference = logged_metrics(trained(run_axolotl("train", recipe, interrupted, **IN_ONE_PROCESS)))
    shutil.rmtree(interrupted / "out" / "checkpoint-6")  # as if stopped after step 3's save
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (interrupted / "out" / name).unlink()
    output = trained(
        run_axolotl(
            "train",
            {**recipe, "auto_resume_from_checkpoints": True},
            interrupted,
            **IN_ONE_PROCESS,
        )
    )
    assert "used cached theta_0 effects" in output  # the weights are not computed again
    resumed = logged_metrics(output)
    assert len(resumed) == 3  # steps 4-6 only
    for after, before in zip(resumed, reference[3:], strict=True):
        assert after["loss"] == pytest.approx(before["loss"], abs=2e-3)
        assert after["nextquill/causal_loss"] == pytest.approx(
            before["nextquill/causal_loss"], abs=2e-3
        )


def test_qlora_trains_with_the_lm_head_unquantised(tmp_path, tiny_tokenizer, train_file):
    """bitsandbytes' CPU 4-bit path; theta_0 weights from the current model (see the README:
    on CPU the initial-model pass before the first step trips bitsandbytes' CPU kernel)."""
    from nextquill_plugin.demo.tiny_model import random_qwen2

    model_dir = tmp_path / "model"
    model = random_qwen2(
        len(tiny_tokenizer),
        128,  # a multiple of bitsandbytes' block size
        2,
        intermediate_size=256,
        bos_token_id=None,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    recipe = tiny_recipe(
        model_dir,
        train_file,
        tmp_path,
        adapter="qlora",
        load_in_4bit=True,
        max_steps=2,
        nextquill_weight_source="current",
    )
    steps = logged_metrics(trained(run_axolotl("train", recipe, tmp_path, **IN_ONE_PROCESS)))
    assert len(steps) == 2 and all(s["nextquill/causal_loss"] > 0 for s in steps)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_recipes_name_tensorboard_and_wandb():
    recipe = (Path(__file__).parents[1] / "recipes" / "books_nextquill.yml").read_text()
    assert "# use_tensorboard: true" in recipe and "# wandb_project:" in recipe


def test_merged_lora_generates_as_the_evaluation_and_axolotl_inference_takes_our_prompt(
    tmp_path, tiny_model_dir, train_file, synthetic_splits, capsys
):
    """`axolotl merge-lora` on a NextQuill run gives the model `nextquill evaluate` builds from
    the adapter (same greedy predictions); `nextquill prompts` feeds `axolotl inference`.
    (inference's launcher: `python`; what is checked is what the commands make.)"""
    import json
    import subprocess
    import sys

    from nextquill_plugin.cli import main as nextquill
    from nextquill_plugin.demo.local_runs import offline_env

    recipe = tiny_recipe(tiny_model_dir, train_file, tmp_path, max_steps=4)
    trained(run_axolotl("train", recipe, tmp_path, **IN_ONE_PROCESS))
    # Training on from that adapter: theta_0 would be base + adapter, which the theta_0 pass
    # (adapter off) does not compute; it computed the bare base model's without a word.
    adapter = str(tmp_path / "out")
    with pytest.raises(
        SystemExit, match="lora_model_dir .* starts training from a trained adapter"
    ):
        nextquill(["weights", str(tmp_path / "recipe.yml"), "--", "--lora_model_dir", adapter])
    merge = {**recipe, "lora_model_dir": adapter}
    trained(run_axolotl("merge-lora", merge, tmp_path))  # it has no --launcher
    merged = tmp_path / "out" / "merged"
    assert (merged / "config.json").exists()

    write_jsonl(train_file.parent / "test.jsonl", synthetic_splits["test"][:4])
    recipe_file = tmp_path / "recipe.yml"
    predictions = {}
    for name, checkpoint in (("adapter", tmp_path / "out"), ("merged", merged)):
        nextquill(
            ["evaluate", str(recipe_file), "--checkpoint", str(checkpoint)]
            + ["--out", str(tmp_path / name), "--max-new-tokens", "12", "--bootstrap", "10"]
        )
        records = (tmp_path / name / "predictions.jsonl").read_text().splitlines()
        predictions[name] = [json.loads(r)["prediction"] for r in records]
    assert predictions["merged"] == predictions["adapter"]

    capsys.readouterr()
    nextquill(["prompts", str(recipe_file), "--limit", "1"])
    prompt = capsys.readouterr().out
    plain = {k: v for k, v in recipe.items() if not k.startswith("lora_") and k != "adapter"}
    inference_recipe = tmp_path / "inference.yml"
    inference_recipe.write_text(yaml.safe_dump({**plain, "base_model": str(merged)}))
    axolotl = str(Path(sys.executable).parent / "axolotl")
    inference = subprocess.run(
        [axolotl, "inference", str(inference_recipe), "--launcher", "python"],
        input=prompt,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=offline_env(1),
        timeout=600,
    )
    assert inference.returncode == 0, (inference.stdout + inference.stderr)[-3000:]
    assert "[Item Title]" in inference.stdout  # the streamer echoes our prompt, then generates


@pytest.mark.parametrize("threads", [None, 2])
def test_accelerate_launch_threads_follow_offline_env(tmp_path, threads):
    """`axolotl train` runs under `accelerate launch`, which gives a CPU run one torch thread
    unless OMP_NUM_THREADS is set; ``offline_env(threads)`` sets it (the demo passes
    ``solo_run_threads()``)."""
    import subprocess
    import sys

    from nextquill_plugin.demo.local_runs import offline_env

    script = tmp_path / "threads.py"
    script.write_text("import torch\nprint('threads', torch.get_num_threads())\n")
    accelerate = Path(sys.executable).parent / "accelerate"
    env = offline_env(threads)
    if threads is None:
        env.pop("OMP_NUM_THREADS", None)  # as in a shell that does not set it
    done = subprocess.run(
        [str(accelerate), "launch", "--num_processes", "1", str(script)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"threads {threads or 1}" in done.stdout


def test_solo_run_threads_keeps_the_callers_setting_else_takes_every_usable_core(monkeypatch):
    import os

    from nextquill_plugin.demo.local_runs import solo_run_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert solo_run_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert solo_run_threads() == len(os.sched_getaffinity(0))
