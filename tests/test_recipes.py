"""The shipped recipes: in sync with their generator, valid for Axolotl, and they train."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nextquill_common.jsonl import write_jsonl
from nextquill_plugin.demo.local_runs import offline_env

from .stock_configs import write_zero_config

ROOT = Path(__file__).parent.parent
RECIPES = ROOT / "recipes"
HELPER = Path(__file__).parent / "scripts" / "gloo_axolotl.py"
# Boolean flags of axolotl's CLI are --x/--no-x; the other options take a value.
CPU_FLAGS = [
    "--no-lora-mlp-kernel",
    "--no-lora-qkv-kernel",
    "--no-lora-o-kernel",
    "--no-lora-embedding-kernel",
]
CPU_OVERRIDES = [
    "--bf16=false",
    "--tf32=false",
    "--gradient-accumulation-steps=1",
    "--save-strategy=no",
    "--eval-strategy=no",
    "--max-steps=3",
    "--logging-steps=1",
    "--micro-batch-size=2",
    "--sequence-len=1024",
    "--dataset-processes=1",
]


def load_generator():
    spec = importlib.util.spec_from_file_location("recipe_generator", RECIPES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipes_match_their_generator():
    expected = load_generator().expected_recipes()
    # 3 domains x 5 variants, and per domain NextQuill with QLoRA and as the authors train it;
    # and 3 domains x (NextQuill, ContextSFT) as TRL-style configs
    assert len(expected) == 21 + 6
    on_disk = {p for p in RECIPES.glob("*.yml") if p.name != "mixed_example.yml"}
    on_disk |= set((RECIPES / "trl").glob("*.yaml"))
    assert on_disk == set(expected)
    for path, text in expected.items():
        assert path.read_text() == text, f"{path.name} differs from recipes/generate.py"
        if path.suffix == ".yml":
            assert "\nbf16: auto" in text  # as Axolotl's examples: GPUs without bf16 run them too


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, synthetic_splits):
    """A folder laid out as the recipes expect: data/<domain>/*.jsonl and deepspeed_configs/."""
    root = tmp_path_factory.mktemp("recipes_cwd")
    for domain in ("books", "movies_tv", "cds_vinyl"):
        write_jsonl(root / "data" / domain / "train.jsonl", synthetic_splits["train"][:24])
        write_jsonl(root / "data" / domain / "validation.jsonl", synthetic_splits["validation"])
    for stage in (1, 2):
        write_zero_config(root / "deepspeed_configs", stage)
    return root


def run(args, cwd, timeout=900):
    return subprocess.run(
        args, cwd=cwd, env=offline_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_every_recipe_validates_with_axolotl(workdir, tiny_model_dir):
    # Only the base model is overridden (it must be local); everything else is the recipe's.
    generated = sorted(p for p in load_generator().expected_recipes() if p.suffix == ".yml")
    recipes = [str(p) for p in [*generated, RECIPES / "mixed_example.yml"]]
    result = run(
        [sys.executable, str(HELPER), "validate", *recipes, f"--base_model={tiny_model_dir}"],
        workdir,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    seen = {}
    for line in result.stdout.splitlines():
        if line.startswith("RECIPE "):
            cfg = json.loads(line[len("RECIPE ") :])
            seen[cfg["recipe"]] = cfg
    assert set(seen) == {Path(r).name for r in recipes}  # the 21 and the mixed example
    assert seen.pop("mixed_example.yml")["nextquill"] is True
    variants = sorted(load_generator().VARIANTS, key=len, reverse=True)  # context_sft before sft
    for name, cfg in seen.items():
        qlora = name.endswith("_qlora.yml")
        authors = name.endswith("_nextquill_authors.yml")
        assert (cfg["adapter"], bool(cfg.get("load_in_4bit"))) == (
            ("qlora", True) if qlora else (None, False) if authors else ("lora", False)
        ), name
        if authors:  # the authors' objective, exactly
            assert (cfg["nextquill_weight_source"], cfg["nextquill_weight_normalization"]) == (
                "current",
                "weights",
            )
            assert (cfg["nextquill_alpha"], cfg["nextquill_weight_causal_loss"]) == (0.1, False)
        name = name.removesuffix("_qlora.yml") + ".yml" if qlora else name
        variant = next(v for v in variants if name.endswith(f"_{v}.yml"))
        assert (
            cfg["learning_rate"] == 5e-6 and cfg["num_epochs"] == 5 and cfg["sequence_len"] == 4096
        )
        assert cfg["deepspeed"], name
        assert cfg["nextquill"] == variant.startswith(("nextquill", "causal_only", "norm_only")), (
            name
        )
        assert cfg["nextquill_token_weighting"] == (variant != "causal_only"), name
        assert cfg["nextquill_causal_loss"] == (variant != "norm_only"), name
        assert cfg["nextquill_include_history"] == (variant != "sft"), name


@pytest.mark.e2e
@pytest.mark.parametrize(
    "variant", ["nextquill", "causal_only", "norm_only", "context_sft", "sft", "nextquill_authors"]
)
def test_recipe_trains_unchanged_on_cpu(workdir, tiny_model_dir, variant):
    """`axolotl train recipes/books_<variant>.yml` with command-line overrides only."""
    axolotl = Path(sys.executable).parent / "axolotl"
    result = run(
        [
            str(axolotl),
            "train",
            str(RECIPES / f"books_{variant}.yml"),
            "--launcher",
            "python",
            f"--base-model={tiny_model_dir}",
            "--deepspeed=",
            *CPU_OVERRIDES,
            *CPU_FLAGS,
        ],
        workdir,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    saved = "model.safetensors" if variant == "nextquill_authors" else "adapter_model.safetensors"
    assert (workdir / "outputs" / f"books_{variant}" / saved).exists()
    assert ("nextquill/causal_loss" in output) == (variant != "context_sft" and variant != "sft")


@pytest.mark.e2e
@pytest.mark.parametrize("stage", [1, 2])
def test_nextquill_recipe_under_deepspeed_zero(workdir, tiny_model_dir, stage):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed in this environment (pip install '.[deepspeed]')")
    out = workdir / "outputs" / f"zero{stage}"
    # axolotl's own train entry point, in a process whose torch.distributed group is gloo.
    overrides = [arg.replace("-", "_").replace("__", "--", 1) for arg in CPU_OVERRIDES]
    overrides += [f"--{flag.removeprefix('--no-').replace('-', '_')}=false" for flag in CPU_FLAGS]
    result = run(
        [
            sys.executable,
            str(HELPER),
            "train",
            str(RECIPES / "books_nextquill.yml"),
            f"--base_model={tiny_model_dir}",
            f"--deepspeed=deepspeed_configs/zero{stage}.json",
            f"--output_dir={out}",
            *overrides,
        ],
        workdir,
        timeout=1200,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "nextquill/causal_loss" in output
    assert f"DeepSpeed engine built (ZeRO stage {stage})" in output  # the engine was used
    assert (out / "adapter_model.safetensors").exists()
    shutil.rmtree(out, ignore_errors=True)
