"""Run under torchrun: every rank calls cached_token_effects on the same data and reports.
A "{node}" in the cache folder becomes the node's rank (torchrun's GROUP_RANK): nodes that
share no disk."""

import json
import os
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

import nextquill_plugin.effects_cache as weights

torch.distributed.init_process_group("gloo")  # what a launcher does before the trainer exists
model_dir, data_file, cache_dir, report = sys.argv[1:5]
cache_dir = cache_dir.replace("{node}", os.environ.get("GROUP_RANK", "0"))
with open(data_file) as handle:
    rows = [json.loads(line) for line in handle]
dataset = Dataset.from_list(rows)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

computed_rows = []
original = weights.compute_token_effects


def counting(model, rows, **kwargs):
    computed_rows.extend(len(x) for x in rows["input_ids"])  # one entry per row computed here
    return original(model, rows, **kwargs)


weights.compute_token_effects = counting
effects, path, computed = weights.cached_token_effects(
    model, dataset, cache_dir, model_name="tiny", pad_token_id=0
)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
with open(f"{report}.{rank}", "w") as handle:
    json.dump(
        {
            "rows_computed": len(computed_rows),
            "p_with": effects.p_with.tolist(),
            "offsets": effects.offsets.tolist(),
            "computed": computed,
        },
        handle,
    )
