"""Two-process runs on this machine (torchrun, gloo) for the tests: free ports, never fixed ones,
since tests of several files run at once under xdist."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).parent / "scripts"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_two_processes(script: str, args: list) -> None:
    """``tests/scripts/<script>`` under torchrun, 2 processes on this node (gloo)."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
        + [f"--master_port={free_port()}", str(SCRIPTS / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def run_two_nodes(script: str, args: list) -> None:
    """Two torchrun "nodes" of one process each on this machine (static rendezvous)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
    port = free_port()
    nodes = [
        subprocess.Popen(
            [*command, f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}"]
            + [str(SCRIPTS / script), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    for node in nodes:
        _, stderr = node.communicate(timeout=300)
        assert node.returncode == 0, stderr[-3000:]
