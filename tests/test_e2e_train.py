"""`axolotl train` with the plugin on the tiny model: Full NextQuill, CausalOnly, NormOnly."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nextquill_common.jsonl import write_jsonl
from nextquill_common.offline import offline_env
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


def assert_trained(result, workdir):
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    steps = logged_metrics(output)
    assert len(steps) >= 20, output[-3000:]
    losses = [s["loss"] for s in steps]
    assert all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, f"loss did not fall: {losses}"
    assert (workdir / "out" / "adapter_model.safetensors").exists()
    return output, steps


def test_full_nextquill_trains_logs_parts_and_reuses_weight_cache(
    tmp_path, tiny_model_dir, train_file
):
    recipe = tiny_recipe(tiny_model_dir, train_file, tmp_path)
    output, steps = assert_trained(run_axolotl("train", recipe, tmp_path), tmp_path)
    assert "computed theta_0 effects" in output
    assert all("nextquill/normal_loss" in s and "nextquill/causal_loss" in s for s in steps)
    assert all(s["nextquill/causal_loss"] > 0 for s in steps)
    assert list((tmp_path / "prepared" / "nextquill").glob("effects-*.npz"))

    second = run_axolotl("train", {**recipe, "max_steps": 2}, tmp_path, **IN_ONE_PROCESS)
    out2 = second.stdout + second.stderr
    assert second.returncode == 0, out2[-3000:]
    assert "used cached theta_0 effects" in out2
    assert "NextQuill theta_0 effects:" not in out2  # no progress bar: no forward pass

    changed = run_axolotl(
        "train", {**recipe, "max_steps": 2, "sequence_len": 640}, tmp_path, **IN_ONE_PROCESS
    )
    out3 = changed.stdout + changed.stderr
    assert changed.returncode == 0, out3[-3000:]
    assert "computed theta_0 effects" in out3  # other tokenized data: other key


def test_causal_only_uses_unit_weights(tmp_path, tiny_model_dir, train_file):
    recipe = tiny_recipe(tiny_model_dir, train_file, tmp_path, nextquill_token_weighting=False)
    output, steps = assert_trained(
        run_axolotl("train", recipe, tmp_path, **IN_ONE_PROCESS), tmp_path
    )
    assert "theta_0 effects" not in output  # no weight pass needed
    assert all(s["nextquill/mean_weight"] == 1.0 for s in steps)
    assert all(s["nextquill/causal_loss"] > 0 for s in steps)


def test_norm_only_has_no_causal_loss(tmp_path, tiny_model_dir, train_file):
    recipe = tiny_recipe(tiny_model_dir, train_file, tmp_path, nextquill_causal_loss=False)
    output, steps = assert_trained(
        run_axolotl("train", recipe, tmp_path, **IN_ONE_PROCESS), tmp_path
    )
    assert "computed theta_0 effects" in output
    assert all(s["nextquill/causal_loss"] == 0.0 for s in steps)


def test_mixed_recipe_trains_stock_rows_with_plain_loss(tmp_path, tiny_model_dir, train_file):
    """recipes/mixed_example.yml with local paths: alpaca rows and NextQuill rows together."""
    import yaml

    recipe = yaml.safe_load(
        (Path(__file__).parent.parent / "recipes" / "mixed_example.yml").read_text()
    )
    alpaca = write_jsonl(
        tmp_path / "data" / "instructions.jsonl",
        [
            {"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
            for i in range(40)
        ],
    )
    recipe["datasets"][0]["path"], recipe["datasets"][1]["path"] = str(alpaca), str(train_file)
    local = tiny_recipe(tiny_model_dir, train_file, tmp_path, max_steps=6)
    for key in (
        "base_model",
        "output_dir",
        "dataset_prepared_path",
        "bf16",
        "gradient_checkpointing",
        "micro_batch_size",
        "gradient_accumulation_steps",
        "sequence_len",
        "max_steps",
        "save_strategy",
        "lora_mlp_kernel",
        "lora_qkv_kernel",
        "lora_o_kernel",
        "lora_embedding_kernel",
        "tf32",
        "fp16",
    ):
        recipe[key] = local.get(key, False)  # keys the tiny recipe leaves out are off
    recipe["shuffle_merged_datasets"] = True
    result = run_axolotl("train", recipe, tmp_path, **IN_ONE_PROCESS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    paired = len(train_file.read_text().splitlines())
    assert f"has {paired} paired rows and {40} ordinary rows" in output
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_weights_command_fills_the_cache_then_full_finetune_with_eval_uses_it(
    tmp_path, tiny_model_dir, train_file, synthetic_splits
):
    """`nextquill weights` ahead of training; then full fine-tuning (no LoRA) with evaluation."""
    import subprocess
    import sys

    from nextquill_plugin.demo.local_runs import offline_env

    val_file = write_jsonl(tmp_path / "validation.jsonl", synthetic_splits["validation"])
    recipe = tiny_recipe(
        tiny_model_dir,
        train_file,
        tmp_path,
        adapter=None,
        lora_r=None,
        lora_alpha=None,
        lora_dropout=None,
        lora_target_linear=None,
        max_steps=4,
        learning_rate=0.001,
        eval_strategy="steps",
        eval_steps=2,
        test_datasets=[
            {
                "path": str(val_file),
                "ds_type": "json",
                "split": "train",
                "type": "dataset_formats.amazon_reviews",
            }
        ],
    )
    import yaml

    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(recipe))
    nextquill = [
        sys.executable,
        "-m",
        "nextquill_plugin.cli",
        "weights",
        str(tmp_path / "recipe.yml"),
    ]
    ahead = subprocess.run(
        nextquill, cwd=tmp_path, env=offline_env(), capture_output=True, text=True, timeout=600
    )
    out1 = ahead.stdout + ahead.stderr
    assert ahead.returncode == 0, out1[-4000:]
    assert "computed theta_0 effects" in out1 and "theta_0 effects are cached in" in out1
    assert (
        len(list((tmp_path / "prepared" / "nextquill").glob("effects-*.npz"))) == 2
    )  # train and eval

    result = run_axolotl("train", recipe, tmp_path, **IN_ONE_PROCESS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert (
        "computed theta_0 effects" not in output
        and output.count("used cached theta_0 effects") == 2
    )
    # evaluation ran through the NextQuill loss (its parts are logged beside eval_loss)
    assert re.search(r"\{'eval_loss': [^}]*'nextquill/causal_loss'", output), output[-3000:]
    assert (tmp_path / "out" / "model.safetensors").exists()  # full fine-tuning saves the model


def weights_command(recipe: dict) -> subprocess.CompletedProcess:
    """`nextquill weights recipe.yml` in a child process, the recipe written to its output
    folder's parent (tiny_recipe's workdir)."""
    workdir = Path(recipe["output_dir"]).parent
    (workdir / "recipe.yml").write_text(yaml.safe_dump(recipe))
    return subprocess.run(
        [sys.executable, "-m", "nextquill_plugin.cli", "weights", str(workdir / "recipe.yml")],
        cwd=workdir,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_weights_command_refuses_a_recipe_without_nextquill(tmp_path, tiny_model_dir, train_file):

    result = weights_command(tiny_recipe(tiny_model_dir, train_file, tmp_path, nextquill=False))
    assert result.returncode != 0 and "does not set `nextquill: true`" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_fresh_runs_of_a_lora_recipe_log_identical_losses(tmp_path, tiny_model_dir, train_file):
    """The recipe's seed decides everything: the plugin seeds before Axolotl builds the model
    and its LoRA adapter (Axolotl itself seeds only after), so nothing drifts apart. Fresh
    processes, not tests/axolotl_runs.py's forks, whose random states would be one."""
    from nextquill_plugin.demo.local_runs import run_axolotl as fresh_process_run

    runs = []
    for name in ("first", "second"):
        workdir = tmp_path / name
        recipe = tiny_recipe(tiny_model_dir, train_file, workdir, max_steps=4)
        result = fresh_process_run("train", recipe, workdir, **IN_ONE_PROCESS)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        runs.append(logged_metrics(result.stdout + result.stderr))
    first, second = runs
    assert len(first) == 4
    for key in ("loss", "grad_norm", "nextquill/normal_loss", "nextquill/causal_loss"):
        assert [s[key] for s in first] == [s[key] for s in second], key


def test_weights_command_refuses_an_unwritable_cache_before_the_pass(
    tmp_path, tiny_model_dir, train_file
):
    """`nextquill weights` exists to fill the cache: with a folder nothing can be written to
    (procfs here; a read-only mount for users) it stops before the pass, and never says the
    effects are cached (it used to warn, compute, and exit 0 saying so)."""

    recipe = tiny_recipe(
        tiny_model_dir,
        train_file,
        tmp_path,
        nextquill_weight_cache_dir="/proc/self/nextquill-cache",
    )
    result = weights_command(recipe)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "cannot write the theta_0 cache to /proc/self/nextquill-cache" in result.stderr
    assert "are cached in" not in result.stdout + result.stderr
    assert "theta_0 effects" not in result.stderr.split("cannot write")[0]  # no pass ran
    assert "Traceback" not in result.stderr


def test_axolotl_preprocess_says_which_command_computes_the_theta0_effects(
    tmp_path, tiny_model_dir, train_file
):
    """`axolotl preprocess` loads no model, so it cannot run the theta_0 pass; it used to say
    nothing about it. Multi-GPU users run preprocess first: it names `nextquill weights`."""
    recipe = tiny_recipe(tiny_model_dir, train_file, tmp_path)
    result = run_axolotl("preprocess", recipe, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "`axolotl preprocess` prepares the rows only" in output
    assert f"`nextquill weights {tmp_path / 'recipe.yml'}`" in output
