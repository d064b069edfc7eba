"""Running without the network: this process and the child processes it starts (no Hub
downloads, no experiment tracking, no telemetry), with a chosen number of torch threads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Nothing local asks the network for anything: no Hub downloads (bitsandbytes, imported by
# Axolotl, otherwise asks the Hub for CPU kernels), no experiment tracking, no telemetry.
OFFLINE_VARIABLES = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def use_offline_mode() -> None:
    """Set ``OFFLINE_VARIABLES`` in this process (and its children).

    Call before importing transformers, huggingface_hub or Axolotl: they read these at import.
    """
    os.environ.update(OFFLINE_VARIABLES)


def solo_run_threads() -> int:
    """Torch threads for a run that has the machine to itself: the caller's OMP_NUM_THREADS if
    set, else every core this process may use. (`accelerate launch`, which `axolotl train`
    calls, gives a CPU run one thread unless OMP_NUM_THREADS is set.)"""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def offline_env(threads: int | None = None) -> dict[str, str]:
    """This process's environment with ``OFFLINE_VARIABLES`` set, for a child process; with
    ``threads``, torch in the child uses that many CPU threads (OMP_NUM_THREADS)."""
    env = {**os.environ, **OFFLINE_VARIABLES}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
