"""Test-only: `axolotl train RECIPE` in every process of a CPU torchrun (gloo backend).

    python -m torch.distributed.run --nproc_per_node=2 torchrun_axolotl.py RECIPE METRICS.jsonl

Axolotl, accelerate, transformers and DeepSpeed assume GPUs for multi-process training. The
shims below make the same code paths run on CPU; each says what it replaces and why. They
belong to the test harness only: the plugin never needs them on GPUs.
"""

from __future__ import annotations

import os
import sys


def init_gloo() -> None:
    """Axolotl (and DeepSpeed) would create an NCCL group, which a CPU build does not have;
    a process group that already exists is used as it is."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")


def shim_cpu_device_map() -> None:
    """Axolotl maps the model of a multi-process run to ``{"": LOCAL_RANK}``, a CUDA device
    index; on CPU the model must stay on "cpu"."""
    import axolotl.cli.config as cli_config  # imports normalize_config by name

    original = cli_config.normalize_config

    def normalize_config(cfg):
        original(cfg)
        if isinstance(cfg.device_map, dict) and cfg.device == "cpu":
            cfg.device_map = {"": "cpu"}

    cli_config.normalize_config = normalize_config


def shim_accelerate_cpu_processes() -> None:
    """accelerate counts the processes of a torchrun only on an accelerator, or with cpu=True;
    but cpu=True also turns DeepSpeed off. Report the gloo group as a multi-CPU run whatever
    ``cpu`` says, so that DeepSpeed (and DDP) see both processes."""
    from accelerate.state import DistributedType, PartialState

    original = PartialState._prepare_backend

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        backend, distributed_type = original(self, cpu, sagemaker_dp, backend)
        if distributed_type == DistributedType.NO and int(os.environ.get("WORLD_SIZE", 1)) > 1:
            return "gloo", DistributedType.MULTI_CPU
        return backend, distributed_type

    PartialState._prepare_backend = _prepare_backend


def shim_deepspeed_gloo_collectives() -> None:
    """Two differences between gloo and NCCL that DeepSpeed relies on.

    1. Order: ZeRO-3's coalesced all-gather launches one asynchronous gather per parameter and
       waits only for the last ("enough" on NCCL, whose collectives run in order on one
       stream). gloo runs asynchronous collectives on a pool of threads, in any order, so the
       earlier gathers may not have landed: parameters were read as uninitialised memory
       (values like 1e37, different in every run) when the model was loaded under ZeRO-3.
       Here every asynchronous collective completes before it returns.
    2. Autograd: gloo implements ``all_gather_into_tensor`` by copying into split views of the
       output; ZeRO-1/2's step gathers the updated partitions into parameters that require
       grad, with autograd on, and autograd refuses that in-place copy (NCCL writes the output
       directly). The gathers need no gradient: they run without autograd."""
    import inspect

    import torch
    from deepspeed.comm.torch import TorchBackend

    def synchronous(name: str) -> None:
        original = getattr(TorchBackend, name)
        signature = inspect.signature(original)

        def collective(self, *args, **kwargs):
            with torch.no_grad():
                work = original(self, *args, **kwargs)
            asynchronous = signature.bind(self, *args, **kwargs).arguments.get("async_op")
            if asynchronous and work is not None:
                work.wait()
            return work

        setattr(TorchBackend, name, collective)

    for name in (
        "all_gather_into_tensor",
        "all_gather",
        "all_reduce",
        "reduce_scatter_tensor",
        "broadcast",
    ):
        synchronous(name)


def shim_deepspeed_without_shm_kernel() -> None:
    """DeepSpeed's communication backend compiles a shared-memory all-reduce kernel for CPU
    accelerators when it starts (C++, about two minutes on 2 cores, once per machine and
    venv); only its inference all-reduce uses that kernel, while training's collectives go
    through torch.distributed (gloo here). The tests train: the kernel is not built. On GPUs
    DeepSpeed never builds it."""
    import deepspeed.comm.torch as deepspeed_torch_backend

    deepspeed_torch_backend.build_shm_op = lambda: None


def shim_cpu_device_mesh() -> None:
    """Axolotl builds the FSDP device mesh on "cuda"; a CPU process group needs a "cpu" mesh."""
    import torch
    from accelerate.parallelism_config import ParallelismConfig

    original = ParallelismConfig.build_device_mesh

    def build_device_mesh(self, device_type: str):
        if device_type == "cuda" and not torch.cuda.is_available():
            device_type = "cpu"
        return original(self, device_type)

    ParallelismConfig.build_device_mesh = build_device_mesh


def shim_accelerate_cpu_fsdp() -> None:
    """accelerate turns only accelerator states (multi-GPU, -NPU, ...) into FSDP when given an
    FSDP plugin; do the same for the multi-CPU state (FSDP2 itself runs on gloo)."""
    from accelerate.state import AcceleratorState, DistributedType

    original = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = __init__


def shim_cpu_bf16() -> None:
    """transformers refuses ``bf16`` without a bf16 GPU (unless use_cpu, which also turns
    DeepSpeed off in accelerate); CPUs run bf16 autocast, so let the argument check pass."""
    import transformers.training_args as training_args

    training_args.is_torch_bf16_gpu_available = lambda: True


def record_logged_metrics(path: str) -> None:
    """Not a shim: rank 0 appends every dict the Trainer logs to ``path`` as a JSON line, at
    full precision (the printed log rounds to 4 digits)."""
    import json

    import torch.distributed as dist
    from transformers import Trainer

    original = Trainer.log

    def log(self, logs, *args, **kwargs):
        if dist.get_rank() == 0:
            with open(path, "a") as file:
                file.write(json.dumps(logs) + "\n")
        return original(self, logs, *args, **kwargs)

    Trainer.log = log


def main() -> None:
    import torch

    # The LoRA matrices are initialised before Axolotl seeds anything: the same start in every
    # run (and on every rank) makes runs comparable step by step.
    torch.manual_seed(0)
    init_gloo()
    shim_cpu_device_map()
    shim_accelerate_cpu_processes()
    shim_deepspeed_gloo_collectives()
    shim_deepspeed_without_shm_kernel()
    shim_cpu_device_mesh()
    shim_accelerate_cpu_fsdp()
    shim_cpu_bf16()
    recipe, metrics = sys.argv[1], sys.argv[2]
    record_logged_metrics(metrics)
    from axolotl.cli.train import do_cli

    sys.argv = sys.argv[:1]  # axolotl parses its own CLI dataclass from sys.argv
    do_cli(config=recipe)


# Guarded: worker processes that datasets starts re-import this file as a module.
if __name__ == "__main__":
    main()
