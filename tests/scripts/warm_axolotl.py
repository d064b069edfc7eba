"""Test-only: `axolotl <command> recipe.yml --launcher python` from a process that has already
imported Axolotl.

    python warm_axolotl.py      (requests on stdin, one JSON object per line)

Each request, {"argv", "cwd", "stdout", "stderr"}, is run in a child forked from this process:
the child changes to ``cwd``, sends its output to the two files, and calls the `axolotl`
console script's own function with ``argv``, as the installed `axolotl` command does; its exit
status is answered on stdout as {"returncode": N}. The child starts from the state a fresh
`axolotl` process has after its imports (nothing a run sets is seen by the next), and the
imports, most of a short CPU run's time, are paid once for every run of a test worker.
The environment is this process's (the tests' offline one, with one torch thread).
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def run_in_child(request: dict) -> None:
    """The forked child: `axolotl` with the request's arguments; never returns."""
    status = 1
    try:
        os.chdir(request["cwd"])
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(file, fd)
            os.close(file)
        from axolotl.cli.main import main

        sys.argv = ["axolotl", *request["argv"]]
        try:
            main()
            status = 0
        except SystemExit as done:  # click ends every command with one
            if done.code is None or isinstance(done.code, int):
                status = done.code or 0
            else:
                print(done.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the child reports everything, then exits
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def main() -> None:
    # The answers get their own descriptor; whatever the imports print goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    # What every run imports, imported once before the forks. No torch thread pool exists
    # yet: a fork inherits none.
    import gc

    import axolotl.cli.main  # noqa: F401
    import axolotl.cli.train  # noqa: F401
    import axolotl.train  # noqa: F401

    import nextquill_plugin.axolotl.plugin  # noqa: F401

    gc.freeze()  # the collector leaves the imported objects alone: children share their pages
    for line in sys.stdin:
        request = json.loads(line)
        child = os.fork()
        if child == 0:
            answers.close()
            run_in_child(request)
        _, wait_status = os.waitpid(child, 0)
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(wait_status)}) + "\n")
        answers.flush()


# Guarded: worker processes that datasets starts re-import this file as a module.
if __name__ == "__main__":
    main()
