"""torch.distributed helpers every NextQuill module uses: who this process is, joining a launch,
one decision for all ranks, means over ranks, and ZeRO-3's whole weights.

Each works unchanged in a single process (no process group): rank 0 of 1, nothing to reduce.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_size() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_first_on_node() -> bool:
    """The first process of its node (LOCAL_RANK 0): it writes node-local files and shows
    progress bars."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def join_processes() -> tuple[int, int]:
    """(rank, world size); under torchrun or accelerate launch, joins the process group
    (NCCL on GPUs, gloo on CPU) and puts this process on its own GPU."""
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank_and_size()


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if is_initialized():
        torch.distributed.barrier()


def collective_device() -> torch.device:
    """Where tensors of a collective must live: this rank's GPU under NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def from_lowest_holder(value: T | None) -> T | None:
    """One decision for all ranks: if any rank holds a value (not None), the lowest such rank
    broadcasts it and every rank returns it; otherwise every rank returns None. Ranks that
    decided alone would run different collectives and hang."""
    rank, world_size = rank_and_size()
    if world_size == 1:
        return value
    dist = torch.distributed
    source = torch.tensor([rank if value is not None else world_size], device=collective_device())
    dist.all_reduce(source, op=dist.ReduceOp.MIN)
    source_rank = int(source.item())
    if source_rank == world_size:
        return None
    box = [value if rank == source_rank else None]
    dist.broadcast_object_list(box, src=source_rank)
    return box[0]


def gather_objects(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    _, world_size = rank_and_size()
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def mean_over_ranks(
    values: dict[str, list[float]], names: tuple[str, ...], device: torch.device | str = "cpu"
) -> dict[str, float | None]:
    """Per name, the mean of every rank's stored values (None where no rank has one).

    Every rank must call this at the same point (it is one all-reduce of sums and counts, of
    the same shape on every rank, whatever each rank stored): Axolotl averages ``loss`` over
    the ranks, and a rank-0-only mean of these would describe a different set of batches."""
    totals = torch.tensor(
        [[float(sum(values.get(n, []))), float(len(values.get(n, [])))] for n in names],
        dtype=torch.float64,
        device=device,
    )
    if is_initialized():
        torch.distributed.all_reduce(totals)
    return {
        name: (total / count if count else None)
        for name, (total, count) in zip(names, totals.tolist(), strict=True)
    }


def full_parameters(model: nn.Module) -> contextlib.AbstractContextManager:
    """Every parameter whole, on every rank, while the context lasts (ZeRO-3); else nothing.

    ZeRO-3 loads the model already partitioned: outside a gather each rank holds shape-(0,)
    tensors. The theta_0 pass runs before the DeepSpeed engine exists, and ranks run different
    numbers of batches, so DeepSpeed's per-module fetching would leave ranks waiting for each
    other: gather everything once, on every rank (a whole copy of the weights per process for
    the pass), and release it after."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed  # only under ZeRO-3: DeepSpeed is an optional extra

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
