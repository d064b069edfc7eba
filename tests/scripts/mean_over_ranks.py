"""Run under torchrun (2 processes, gloo): each rank stores different NextQuill metric values
(rank 1 none of one metric, neither rank any of another) and reports mean_over_ranks."""

import json
import sys

import torch

from nextquill_plugin.distributed import mean_over_ranks
from nextquill_plugin.objective import NEXTQUILL_METRICS

torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()
normal, causal, weight, _ = NEXTQUILL_METRICS
stored = {
    0: {normal: [1.0, 2.0, 3.0], causal: [0.5], weight: [0.1]},
    1: {normal: [5.0], weight: [0.3, 0.5]},
}[rank]
means = mean_over_ranks(stored, NEXTQUILL_METRICS)
with open(f"{sys.argv[1]}.{rank}", "w") as handle:
    json.dump(means, handle)
torch.distributed.destroy_process_group()
