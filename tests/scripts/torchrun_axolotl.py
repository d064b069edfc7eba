"""Test-only: `axolotl train` runs in the processes of one CPU torchrun (gloo backend).

    python -m torch.distributed.run --nproc_per_node=2 torchrun_axolotl.py PLAN.json

PLAN.json lists runs: {"recipe", "metrics", "log", "processes" (1 or 2), "port"}. Each process
imports Axolotl once, then forks one child per run: the child trains the recipe from the state
a fresh process has after its imports (nothing a run sets is seen by the next), and the
imports, most of a run's time on CPU, are paid once for all runs. A 1-process run trains in
rank 0's child alone. Each child joins its own gloo group (the run's port); the exit status of
every run is written to PLAN.json's "status" file by rank 0 (rank 1's failures show in rank 1's
log, and make rank 0's child fail too).

Axolotl, accelerate, transformers and DeepSpeed assume GPUs for multi-process training. The
shims below make the same code paths run on CPU; each says what it replaces and why. They
belong to the test harness only: the plugin never needs them on GPUs.
"""

from __future__ import annotations

import os
import sys


def init_gloo() -> None:
    """Axolotl (and DeepSpeed) would create an NCCL group, which a CPU build does not have;
    a process group that already exists is used as it is. A run that hangs on a dead peer
    fails within minutes, not gloo's default half hour."""
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(minutes=5))


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
    import importlib

    # not `import deepspeed.comm.torch as ...`: that names deepspeed.comm's attribute `torch`,
    # which is torch itself
    backend_module = importlib.import_module("deepspeed.comm.torch")
    backend_module.build_shm_op = lambda: None


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


def train_in_child(run: dict, rank: int) -> None:
    """The forked child: the run's own process group and log, then `axolotl train`."""
    import traceback

    import torch

    log = os.open(f"{run['log']}.rank{rank}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    status = 1
    try:
        processes = run["processes"]
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(run["port"]),
            WORLD_SIZE=str(processes),
            LOCAL_WORLD_SIZE=str(processes),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
        )
        # torchrun's agent hosts the store of its own port; this group's rank 0 hosts its own
        os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
        # The LoRA matrices are initialised before Axolotl seeds anything: the same start in
        # every run (and on every rank) makes runs comparable step by step.
        torch.manual_seed(0)
        init_gloo()
        record_logged_metrics(run["metrics"])
        from axolotl.cli.train import do_cli

        sys.argv = sys.argv[:1]  # axolotl parses its own CLI dataclass from sys.argv
        do_cli(config=run["recipe"])
        status = 0
    except BaseException:  # noqa: BLE001 - the child reports everything, then exits
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def main() -> None:
    import json

    shim_cpu_device_map()
    shim_accelerate_cpu_processes()
    shim_deepspeed_gloo_collectives()
    shim_deepspeed_without_shm_kernel()
    shim_cpu_device_mesh()
    shim_accelerate_cpu_fsdp()
    shim_cpu_bf16()
    # What every run imports, imported once before the forks (anything else a run imports
    # itself). No torch thread pool and no process group exist yet: a fork inherits neither.
    import gc
    from pathlib import Path

    import axolotl.cli.train  # noqa: F401
    import axolotl.train  # noqa: F401
    import deepspeed  # noqa: F401

    import nextquill_plugin.axolotl.plugin  # noqa: F401

    gc.freeze()  # the collector leaves the imported objects alone: children share their pages
    plan = json.loads(Path(sys.argv[1]).read_text())
    rank = int(os.environ["RANK"])
    statuses = {}
    for run in plan["runs"]:
        if rank >= run["processes"]:
            continue
        child = os.fork()
        if child == 0:
            train_in_child(run, rank)
        _, wait_status = os.waitpid(child, 0)
        statuses[run["name"]] = os.waitstatus_to_exitcode(wait_status)
    if rank == 0:
        with open(plan["status"], "w") as file:
            json.dump(statuses, file)


# Guarded: worker processes that datasets starts re-import this file as a module.
if __name__ == "__main__":
    main()
