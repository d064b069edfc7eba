"""Test-only helper: initialise torch.distributed with gloo, then run Axolotl in this process.

Axolotl hard-codes NCCL when a recipe names DeepSpeed, which does not exist on a CPU machine;
a process group that already exists is used as it is (Axolotl only creates one when none is
initialised), so initialising gloo first lets a recipe that names DeepSpeed run on CPU.

    python gloo_axolotl.py validate RECIPE... --base_model PATH   prints one JSON line per recipe
    python gloo_axolotl.py train RECIPE --key value ...           axolotl's own train entry point
"""

import importlib.util
import json
import os
import sys


def main() -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("MASTER_PORT", str(29000 + os.getpid() % 1000))
    import torch.distributed as dist

    from nextquill_plugin.cli import parse_pairs

    dist.init_process_group("gloo", rank=0, world_size=1)
    if importlib.util.find_spec("deepspeed"):  # the [deepspeed] extra
        from torchrun_axolotl import shim_deepspeed_without_shm_kernel  # this folder's

        shim_deepspeed_without_shm_kernel()
    mode, rest = sys.argv[1], sys.argv[2:]
    recipes = [a for a in rest if not a.startswith("--") and a.endswith(".yml")]
    overrides = parse_pairs([a for a in rest if a not in recipes])
    sys.argv = sys.argv[:1]  # axolotl parses its own CLI dataclass from sys.argv
    if mode == "validate":
        import axolotl.utils.distributed
        from axolotl.cli.config import load_cfg

        keys = (
            "nextquill",
            "nextquill_token_weighting",
            "nextquill_causal_loss",
            "nextquill_include_history",
            "nextquill_alpha",
            "nextquill_weight_source",
            "nextquill_weight_causal_loss",
            "nextquill_weight_normalization",
            "learning_rate",
            "num_epochs",
            "lora_r",
            "sequence_len",
            "deepspeed",
            "adapter",
            "load_in_4bit",
        )
        for recipe in recipes:
            # `axolotl train` loads one recipe per process; forget the previous recipe's state
            # (axolotl refuses to set up DeepSpeed twice in one process).
            axolotl.utils.distributed.distributed_state = None
            cfg = load_cfg(recipe, **overrides)
            print(
                "RECIPE "
                + json.dumps({"recipe": os.path.basename(recipe), **{k: cfg.get(k) for k in keys}})
            )
    elif mode == "train":
        from axolotl.cli.train import do_cli

        report_deepspeed_engines()
        do_cli(config=recipes[0], **overrides)
    else:
        raise SystemExit(f"unknown mode {mode}")


def report_deepspeed_engines() -> None:
    """Not a shim: print a line each time a DeepSpeed engine is built, so that a test can tell
    that a recipe's DeepSpeed config was really used (accelerate builds it through
    deepspeed.initialize)."""
    if not importlib.util.find_spec("deepspeed"):
        return
    import deepspeed

    original = deepspeed.initialize

    def initialize(*args, **kwargs):
        engine = original(*args, **kwargs)
        stage = engine[0].zero_optimization_stage()
        print(f"gloo_axolotl: DeepSpeed engine built (ZeRO stage {stage})", flush=True)
        return engine

    deepspeed.initialize = initialize


# Guarded: worker processes that datasets starts re-import this file as a module.
if __name__ == "__main__":
    main()
