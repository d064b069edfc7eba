"""The test suite's own machinery: `--dist loadgroup` keeps a group's tests in one worker
(tests/conftest.py groups the tests that share costly runs; spread, each would redo them)."""

import subprocess
import sys

GROUPED = """
import os, pytest

@pytest.mark.parametrize("i", range(6))
@pytest.mark.xdist_group("shared")
def test_member(i):
    with open(os.environ["WORKERS_FILE"], "a") as file:
        file.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""


def test_a_groups_tests_run_in_one_worker(tmp_path):
    """pytest 9 no longer reads the node id pytest-xdist 3.8 marks a group on, and the group's
    tests were spread over the workers (hence pytest < 9 in the dev extra)."""
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    workers = tmp_path / "workers.txt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        env={"WORKERS_FILE": str(workers), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    ran_in = workers.read_text().split()
    assert len(ran_in) == 6 and len(set(ran_in)) == 1, ran_in
