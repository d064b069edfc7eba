"""The shapes of Axolotl's stock ``deepspeed_configs/*.json`` (the repository's, not in the
wheel, and fetching them needs the network): the tests write these instead."""

from __future__ import annotations

import json
from pathlib import Path

ZERO_COMMON = {
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto", "auto_cast": False, "loss_scale": 0},
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False,
}
ZERO = {
    1: {"zero_optimization": {"stage": 1, "overlap_comm": True}},
    2: {  # zero2.json offloads the optimizer to the CPU
        "zero_optimization": {
            "stage": 2,
            "offload_optimizer": {"device": "cpu"},
            "contiguous_gradients": True,
            "overlap_comm": True,
        }
    },
    3: {
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "sub_group_size": 0,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": 0,
            "stage3_max_reuse_distance": 0,
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    },
}


def write_zero_config(folder: Path, stage: int) -> Path:
    """``folder/zero<stage>.json`` as Axolotl ships it."""
    path = folder / f"zero{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**ZERO[stage], **ZERO_COMMON}, indent=2))
    return path
