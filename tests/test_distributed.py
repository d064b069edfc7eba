"""Every multi-process path Axolotl offers for SFT, with NextQuill on, against one process.

Two CPU processes (torchrun, gloo) run `axolotl train` through tests/scripts/torchrun_axolotl.py,
which holds every shim a CPU needs and a GPU does not: one torchrun per adapter, whose processes
import Axolotl once and train each run in a forked child (its own process group, nothing shared
with the run before). Each run starts from the shipped theta_0
(it reads the history, so some target tokens get weight lambda and the weights matter) and
trains 6 steps with SGD: SGD keeps float rounding differences between reduction orders at
rounding size, where Adam's first steps turn them into sign flips.

- 2-process paths against DDP: the same losses, NextQuill parts and weights, step by step.
- DDP against one process with gradient accumulation 2 (the same rows per step): close, not
  equal, because Axolotl divides each rank's loss by that rank's own target tokens
  (average_tokens_across_devices off) while one process divides by the window's.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nextquill_common.jsonl import write_jsonl
from nextquill_plugin.demo.local_runs import FULL_FINETUNE, offline_env, tiny_recipe
from nextquill_plugin.demo.theta0 import PROMPT, THETA0_DIR
from nextquill_plugin.equations import PreferenceRule
from nextquill_plugin.objective import NEXTQUILL_METRICS

from .stock_configs import ZERO, ZERO_COMMON, write_zero_config
from .torchrun_helpers import free_port, run_two_processes

pytestmark = pytest.mark.distributed

HARNESS = Path(__file__).parent / "scripts" / "torchrun_axolotl.py"
STEPS = 6
ADAPTERS = {
    "lora": {"lora_dropout": 0.0, "learning_rate": 1.0},  # no dropout: ranks draw other masks
    "full": {**FULL_FINETUNE, "learning_rate": 0.1},
}


def each_adapter() -> list:
    """The adapters as parameters, each in its own xdist group: the two adapters' runs share
    nothing, so two test workers train them side by side; one adapter's runs stay in one
    worker, where ``runs`` makes each once."""
    return [
        pytest.param(name, marks=pytest.mark.xdist_group(f"distributed-{name}"))
        for name in ADAPTERS
    ]


def fsdp2(reshard_after_forward: bool) -> dict:
    return {
        "fsdp_version": 2,
        "fsdp_config": {
            "reshard_after_forward": reshard_after_forward,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": "Qwen2DecoderLayer",
            # FULL_STATE_DICT's final save stops in transformers' tied-weight check on gloo
            # (Axolotl's save, after training; not NextQuill's).
            "state_dict_type": "SHARDED_STATE_DICT",
        },
    }


# name: recipe keys (a "deepspeed" stage number is written out as Axolotl's stock config)
PATHS = {
    "ZeRO-1": {"deepspeed": 1},
    # zero2.json offloads the optimizer, which puts DeepSpeed's CPU Adam in SGD's place:
    # compared here without the offload, and trained as shipped in the test below.
    "ZeRO-2": {"deepspeed": "2-no-offload"},
    "ZeRO-3": {"deepspeed": 3},
    "FSDP2 reshard_after_forward": fsdp2(True),
    "FSDP2 no reshard": fsdp2(False),
}


# bf16 runs (default attention, no flash attention): (name, adapter, recipe keys)
BF16 = [
    ("lora bf16 DDP", "lora", {}),
    ("full bf16 DDP", "full", {}),  # Axolotl keeps some modules in float32 here
    ("full bf16 ZeRO-3", "full", PATHS["ZeRO-3"]),
]


def planned_runs(adapter: str) -> dict[str, tuple[int, dict]]:
    """Every run an adapter's tests compare: name -> (processes, recipe keys)."""
    keys = ADAPTERS[adapter]
    plan = {f"{adapter} DDP": (2, keys)}
    plan |= {f"{adapter} {path}": (2, {**keys, **PATHS[path]}) for path in PATHS}
    plan |= {name: (2, {**keys, "bf16": True, **extra}) for name, a, extra in BF16 if a == adapter}
    if adapter == "lora":  # zero2.json as shipped: DeepSpeed's CPU Adam
        adam = {"optimizer": "adamw_torch", "learning_rate": 0.005}
        plan["lora stock zero2"] = (2, {**keys, **adam, "deepspeed": 2})
    # last: rank 1 has no part in it and goes on to the end
    plan[f"{adapter} 1 process"] = (1, {**keys, "gradient_accumulation_steps": 2})
    return plan


class Runs:
    """The `axolotl train` runs of each adapter, all made by one torchrun on first use."""

    def __init__(self, root: Path, train_file: Path):
        self.root, self.train_file = root, train_file
        self.done: dict[str, list[dict]] = {}

    def deepspeed_config(self, stage: int | str) -> str:
        if stage == "2-no-offload":
            path = self.root / "deepspeed_configs" / "zero2_no_offload.json"
            path.parent.mkdir(exist_ok=True)  # the first config this worker writes, maybe
            zero = {k: v for k, v in ZERO[2]["zero_optimization"].items() if "offload" not in k}
            path.write_text(json.dumps({"zero_optimization": zero, **ZERO_COMMON}))
            return str(path)
        return str(write_zero_config(self.root / "deepspeed_configs", stage))

    def workdir(self, name: str) -> Path:
        return self.root / name.replace(" ", "_")

    def planned(self, name: str, processes: int, overrides: dict) -> dict:
        """One run of the harness's plan: its recipe written, its files named."""
        workdir = self.workdir(name)
        if "deepspeed" in overrides:
            overrides = {**overrides, "deepspeed": self.deepspeed_config(overrides["deepspeed"])}
        recipe = tiny_recipe(
            THETA0_DIR,
            self.train_file,
            workdir,
            **{
                **PROMPT,
                "micro_batch_size": 2,
                "max_steps": STEPS,
                "optimizer": "sgd",
                **overrides,
            },
        )
        workdir.mkdir(parents=True)
        config = workdir / "recipe.yml"
        config.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return {
            "name": name,
            "recipe": str(config),
            "metrics": str(workdir / "metrics.jsonl"),
            "log": str(workdir / "train.log"),
            "processes": processes,
            "port": free_port(),
        }

    def train(self, adapter: str) -> None:
        """All of the adapter's runs in one torchrun of 2 processes (see the harness)."""
        session = self.root / f"{adapter}-session"
        session.mkdir()
        plan = {
            "runs": [self.planned(name, *run) for name, run in planned_runs(adapter).items()],
            "status": str(session / "status.json"),
        }
        (session / "plan.json").write_text(json.dumps(plan, indent=1))
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
        result = subprocess.run(
            [*command, f"--master_port={free_port()}", str(HARNESS), str(session / "plan.json")],
            cwd=session,
            env=offline_env(),
            capture_output=True,
            text=True,
            timeout=3600,
        )
        assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
        statuses = json.loads(Path(plan["status"]).read_text())
        for run in plan["runs"]:
            logs = "".join(
                Path(f"{run['log']}.rank{r}").read_text()[-2500:]
                for r in (0, 1)
                if Path(f"{run['log']}.rank{r}").exists()
            )
            if statuses.get(run["name"]) != 0:
                self.done[run["name"]] = AssertionError(f"{run['name']} failed:\n{logs}")
                continue
            steps = [json.loads(line) for line in Path(run["metrics"]).read_text().splitlines()]
            steps = [step for step in steps if "loss" in step]
            if len(steps) != STEPS or not all(math.isfinite(step["loss"]) for step in steps):
                self.done[run["name"]] = AssertionError(f"{run['name']}: {steps}\n{logs}")
                continue
            self.done[run["name"]] = steps

    def __call__(self, name: str) -> list[dict]:
        """The logged steps of a run (full precision, from rank 0)."""
        if name not in self.done:
            self.train(name.split()[0])
        steps = self.done[name]
        if isinstance(steps, AssertionError):
            raise steps
        return steps

    def effects(self, name: str) -> tuple[str, dict[str, np.ndarray]]:
        """(file name, arrays) of the theta_0 cache a run wrote."""
        (path,) = self.workdir(name).glob("prepared/nextquill/effects-*.npz")
        with np.load(path) as cache:
            return path.name, {key: cache[key] for key in ("p_with", "p_without", "offsets")}


# Session-scoped: a module-scoped fixture is torn down whenever an xdist worker waits for more
# tests (pytest sees no next item), and its runs would be made again.
@pytest.fixture(scope="session")
def runs(tmp_path_factory, synthetic_splits):
    root = tmp_path_factory.mktemp("distributed")
    # 32 rows: the runs read 24 (6 steps of 4 rows), and the theta_0 pass reads all of them
    return Runs(root, write_jsonl(root / "train.jsonl", synthetic_splits["train"][:32]))


def column(steps: list[dict], key: str) -> np.ndarray:
    return np.array([step[key] for step in steps])


@pytest.mark.parametrize("adapter", each_adapter())
def test_ddp_matches_one_process_with_the_same_rows_per_step(runs, adapter):
    ddp, one = runs(f"{adapter} DDP"), runs(f"{adapter} 1 process")
    # Before any update both see the same rows: Ln, Lp, weights and marks over them are equal.
    for key in ("nextquill/normal_loss", "nextquill/causal_loss", "nextquill/mean_weight"):
        assert column(ddp, key)[0] == pytest.approx(column(one, key)[0], abs=1e-4), key
    # The loss differs a little: Axolotl divides each rank's loss by that rank's target tokens,
    # one process divides both micro-batches' by the window's (docs/distributed.md).
    assert np.abs(column(ddp, "loss") - column(one, "loss")).max() < 5e-3
    # the weights matter: theta_0 gives some target tokens lambda
    assert column(ddp, "nextquill/preference_token_fraction").max() > 0


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("adapter", each_adapter())
def test_every_parallel_path_trains_as_ddp_does(runs, adapter, path):
    ddp, one, other = (runs(f"{adapter} {name}") for name in ("DDP", "1 process", path))
    for key in ("loss", *NEXTQUILL_METRICS):
        np.testing.assert_allclose(column(other, key), column(ddp, key), atol=1e-4, err_msg=key)
    assert np.abs(column(other, "loss") - column(one, "loss")).max() < 5e-3


@pytest.mark.parametrize("adapter", each_adapter())
def test_zero3_theta0_cache_is_the_unpartitioned_models(runs, adapter):
    """The theta_0 pass and the cache key see ZeRO-3's gathered weights: the same file name
    (a cache `nextquill weights` filled is found) and the same effects as DDP's."""
    runs(f"{adapter} DDP"), runs(f"{adapter} ZeRO-3")
    name, ddp = runs.effects(f"{adapter} DDP")
    zero3_name, zero3 = runs.effects(f"{adapter} ZeRO-3")
    assert zero3_name == name
    np.testing.assert_array_equal(zero3["offsets"], ddp["offsets"])
    for key in ("p_with", "p_without"):
        np.testing.assert_allclose(zero3[key], ddp[key], atol=1e-6)


@pytest.mark.parametrize(
    ("name", "adapter", "path"),
    [pytest.param(*case, marks=pytest.mark.xdist_group(f"distributed-{case[1]}")) for case in BF16],
)
def test_bf16_trains_close_to_float32(runs, name, adapter, path):
    """bf16: theta_0 pass and training.

    bf16 keeps 8 bits of mantissa, so a logit near 16 moves by up to 0.06 and a probability
    near 0.5 by about a quarter of that per logit: effects differ by a few hundredths at
    worst. What the weights depend on is which tokens pass delta; nearly all must agree."""
    float32, bf16 = runs(f"{adapter} DDP"), runs(name)
    assert np.abs(column(bf16, "loss") - column(float32, "loss")).max() < 0.02
    _, effects32 = runs.effects(f"{adapter} DDP")
    _, effects16 = runs.effects(name)
    effect16 = effects16["p_with"] - effects16["p_without"]
    effect32 = effects32["p_with"] - effects32["p_without"]
    difference = np.abs(effect16 - effect32)
    rule = PreferenceRule.from_settings()
    disagreement = np.mean(rule.mask(effect16) != rule.mask(effect32))
    summary = f"max {difference.max():.4f}, mean {difference.mean():.5f}, marks {disagreement:.4f}"
    assert difference.max() < 0.1 and difference.mean() < 2e-3, summary
    assert disagreement < 0.005, summary


@pytest.mark.xdist_group("distributed-lora")
def test_stock_zero2_with_optimizer_offload_trains(runs):
    """zero2.json as shipped (DeepSpeed's CPU Adam): the first step, before any update, logs
    DDP's loss; every step is finite."""
    ddp, offload = runs("lora DDP"), runs("lora stock zero2")
    assert column(offload, "loss")[0] == pytest.approx(column(ddp, "loss")[0], abs=1e-5)


@pytest.mark.slow
def test_logged_nextquill_metrics_are_means_over_all_ranks(tmp_path):
    """Two gloo processes store different values; both log the mean over every stored value."""
    run_two_processes("mean_over_ranks.py", [tmp_path / "means"])
    reports = [json.loads((tmp_path / f"means.{rank}").read_text()) for rank in (0, 1)]
    assert (
        reports[0]
        == reports[1]
        == {
            "nextquill/normal_loss": (1 + 2 + 3 + 5) / 4,
            "nextquill/causal_loss": 0.5,  # rank 1 stored none
            "nextquill/mean_weight": (0.1 + 0.3 + 0.5) / 3,
            "nextquill/preference_token_fraction": None,  # no rank stored any
        }
    )
