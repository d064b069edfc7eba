"""`axolotl` runs for the tests: ``run_axolotl`` as in nextquill_plugin.demo.local_runs, except
that a run in one process (``IN_ONE_PROCESS``: `--launcher python`, one torch thread) is forked
from a process of this test worker that has imported Axolotl already (tests/scripts/
warm_axolotl.py): the same `axolotl` command function with the same arguments, without the
imports that make up most of a short CPU run. Runs whose launcher is under test (the default
accelerate launcher, torchrun) still start the installed `axolotl` command."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from nextquill_common.offline import offline_env
from nextquill_plugin.demo import local_runs
from nextquill_plugin.demo.local_runs import IN_ONE_PROCESS

SERVER = Path(__file__).parent / "scripts" / "warm_axolotl.py"
_server: subprocess.Popen | None = None


def _warm_server() -> subprocess.Popen:
    """This worker's server, started on first use (in its own session, so that a run that
    overstays its timeout is killed with every process it started)."""
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen(
            [sys.executable, str(SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=offline_env(IN_ONE_PROCESS["threads"]),
            text=True,
            start_new_session=True,
        )
        atexit.register(_stop, _server)
    return _server


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def run_axolotl(
    command: str,
    recipe: dict,
    workdir: Path,
    timeout: int = 600,
    extra_args: tuple[str, ...] = (),
    name: str = "recipe.yml",
    threads: int | None = None,
    launcher: str | None = None,
) -> subprocess.CompletedProcess:
    """`axolotl <command> recipe.yml` in ``workdir``, as ``local_runs.run_axolotl``."""
    if {"launcher": launcher, "threads": threads} != IN_ONE_PROCESS:
        return local_runs.run_axolotl(
            command, recipe, workdir, timeout, extra_args, name, threads, launcher
        )
    argv = local_runs.axolotl_arguments(command, recipe, workdir, extra_args, name, launcher)
    with tempfile.TemporaryDirectory() as logs:
        out, err = Path(logs) / "stdout", Path(logs) / "stderr"
        request = {"argv": argv, "cwd": str(workdir), "stdout": str(out), "stderr": str(err)}
        server = _warm_server()
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        ready, _, _ = select.select([server.stdout], [], [], timeout)
        if not ready:
            _stop(server)
            raise subprocess.TimeoutExpired(["axolotl", *argv], timeout)
        answer = server.stdout.readline()
        if not answer:
            raise RuntimeError(f"{SERVER.name} exited (its error is in the test's output)")
        return subprocess.CompletedProcess(
            ["axolotl", *argv],
            json.loads(answer)["returncode"],
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
        )
