"""The offline build never loses or overwrites what it did not write; bad input is counted by line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_formats.build import BuildError, BuildOptions, build
from dataset_formats.build.output import aside_path

from .test_builder import SMALL, item, raw_fixture, read_split, review


def build_fixture(tmp_path: Path, out: Path, options: BuildOptions = SMALL):
    reviews, meta = raw_fixture(tmp_path)
    return build([reviews], [meta], out, options)


def test_build_refuses_a_folder_it_did_not_write_and_leaves_it_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not a previous build of nextquill-data"):
        build_fixture(tmp_path, out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_build_into_the_current_folder_is_refused(tmp_path, monkeypatch):
    reviews, meta = raw_fixture(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BuildError, match="not a previous build"):
        build([reviews], [meta], Path("."), SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_previous_build_is_replaced_whole_and_a_failed_build_keeps_it(tmp_path, monkeypatch):
    out = tmp_path / "out"
    build_fixture(tmp_path, out)
    first = read_split(out, "train")
    import dataset_formats.build as builder

    def fail(*_args, **_kwargs):
        raise BuildError("the machine went away")

    monkeypatch.setattr(builder, "write_splits", fail)
    with pytest.raises(BuildError, match="went away"):
        build_fixture(tmp_path, out, BuildOptions(**{**SMALL.__dict__, "max_history": 1}))
    assert read_split(out, "train") == first  # the old build, untouched
    monkeypatch.undo()
    build_fixture(tmp_path, out, BuildOptions(**{**SMALL.__dict__, "max_history": 1}))
    assert all(len(row["history"]) <= 1 for row in read_split(out, "train"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train.jsonl", "validation.jsonl", "test.jsonl", "stats.json", "README.md"]
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_swap_interrupted_between_renames_is_recovered_by_the_next_build(tmp_path):
    out = tmp_path / "out"
    build_fixture(tmp_path, out)
    os.replace(out, aside_path(out))  # killed after renaming the old build aside
    report = build_fixture(tmp_path, out)
    assert report.users and (out / "stats.json").exists()
    assert not aside_path(out).exists()


def test_without_an_atomic_exchange_the_build_is_swapped_through_an_aside_folder(
    tmp_path, monkeypatch
):
    import dataset_formats.build.output as output

    out = tmp_path / "out"
    build_fixture(tmp_path, out)
    renames = []
    real_replace = os.replace

    def recorded(source, target):
        renames.append((Path(source).name, Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(output, "_exchange", lambda *_: False)
    monkeypatch.setattr(output.os, "replace", recorded)
    build_fixture(tmp_path, out, BuildOptions(**{**SMALL.__dict__, "max_history": 1}))
    assert renames[0] == ("out", ".out.previous") and renames[1][1] == "out"
    assert all(len(row["history"]) <= 1 for row in read_split(out, "train"))
    assert not aside_path(out).exists()


def test_work_folders_of_killed_builds_are_removed(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / ".out.building-abc"
    stale.mkdir()
    import socket

    (stale / "owner.json").write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()})
    )
    (stale / "reviews.parquet").write_bytes(b"x" * 1000)
    live = tmp_path / ".out.building-live"
    live.mkdir()
    (live / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    build_fixture(tmp_path, out)
    assert not stale.exists()
    assert live.exists()  # a running build's folder is not touched


def test_a_quote_in_the_output_path_is_data_not_sql(tmp_path):
    out = tmp_path / "it's here"
    assert build_fixture(tmp_path, out).users > 0
    assert read_split(out, "train")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"targets_per_user": 0}, "--targets-per-user"),
        ({"targets_per_user": 2, "validation_targets": 1, "test_targets": 1}, "--targets-per-user"),
        ({"max_history": -1}, "--max-history must be >= 0"),
        ({"memory_limit": "8GB'; DROP"}, "--memory-limit"),
        ({"min_user_reviews": 7, "max_user_reviews": 6}, "--min-user-reviews \\(7\\) exceeds"),
    ],
)
def test_build_options_that_cannot_give_a_build_are_refused(tmp_path, options, message):
    with pytest.raises(BuildError, match=message):
        build_fixture(tmp_path, tmp_path / "out", BuildOptions(**{**SMALL.__dict__, **options}))
    assert not (tmp_path / "out").exists()


def test_bad_items_and_timestamps_are_counted_with_their_line(tmp_path):
    reviews, meta = raw_fixture(tmp_path)
    import gzip

    with gzip.open(meta, "at") as handle:
        handle.write(json.dumps(item(7, ["an int id"])) + "\n")  # meta line 7
        handle.write(json.dumps(item(["I9"], ["a list id"])) + "\n")  # line 8
        handle.write(json.dumps(item("I8", ["a dict title"], title={"x": 1})) + "\n")  # line 9
    with open(reviews, "a") as handle:
        handle.write(json.dumps(review("A", "I1", 1e20)) + "\n")  # line 22
    report = build([reviews], [meta], tmp_path / "out", SMALL)
    assert report.bad_input["item:bad_id"] == ["meta.jsonl.gz:7", "meta.jsonl.gz:8"]
    assert report.bad_input["item:bad_title"] == ["meta.jsonl.gz:9"]
    assert report.bad_input["review:bad_timestamp"] == ["reviews.jsonl:22"]
    assert report.to_json()["accounted"]


def test_quiet_build_prints_nothing(tmp_path):
    reviews, meta = raw_fixture(tmp_path)
    options = [
        "--min-text-chars",
        "10",
        "--min-description-chars",
        "5",
        "--max-description-chars",
        "100",
    ]
    options += ["--min-item-users", "2", "--min-user-reviews", "4", "--max-user-reviews", "6"]
    options += [
        "--targets-per-user",
        "3",
        "--min-profile-item-users",
        "1",
        "--min-profile-reviews",
        "1",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "dataset_formats.build.cli", "build", "--reviews", str(reviews)]
        + ["--meta", str(meta), "--out", str(tmp_path / "out"), "--quiet", *options],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert (tmp_path / "out" / "stats.json").exists()


def test_inputs_and_output_are_checked_before_any_line_is_read(tmp_path):
    reviews, meta = raw_fixture(tmp_path)
    with pytest.raises(BuildError, match="--reviews .* is a folder, not a file"):
        build([tmp_path], [meta], tmp_path / "out", SMALL)
    with pytest.raises(BuildError, match="--reviews .*missing.jsonl does not exist"):
        build([tmp_path / "missing.jsonl"], [meta], tmp_path / "out", SMALL)
    with pytest.raises(BuildError, match="the files look swapped"):
        build([meta], [reviews], tmp_path / "out", SMALL)
    with pytest.raises(BuildError, match=r"nextquill-out: cannot write to /proc/\d+"):
        build([reviews], [meta], Path("/proc/self/nextquill-out"), SMALL)


def test_a_truncated_gzip_names_the_lines_it_gave(tmp_path):
    import gzip

    lines = b"".join(b'{"n": %d}\n' % i for i in range(20000))
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(lines)[: len(gzip.compress(lines)) // 2])
    reviews, meta = raw_fixture(tmp_path)
    with pytest.raises(BuildError) as error:
        build([broken], [meta], tmp_path / "out", SMALL)
    decoded = int(re.search(r"after line (\d+)", str(error.value)).group(1))
    assert 0 < decoded < 20000


def test_the_command_refuses_options_that_cannot_give_a_build_as_a_wrong_command_line(tmp_path):
    """`--min-user-reviews` above `--max-user-reviews` ended in "no user survived" after the
    whole first stage; it is a wrong command line: exit 2 with the usage, before any read."""
    reviews, meta = raw_fixture(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "dataset_formats.build.cli", "build", "--reviews", str(reviews)]
        + ["--meta", str(meta), "--out", str(tmp_path / "out"), "--quiet"]
        + ["--min-user-reviews", "30", "--max-user-reviews", "20"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "usage: nextquill-data build" in result.stderr
    assert "--min-user-reviews (30) exceeds --max-user-reviews (20)" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ctrl_c_during_a_build_says_one_line_exits_130_and_leaves_nothing(tmp_path):
    """Ctrl-C printed a KeyboardInterrupt trace and exited 1; now one line and the shell's 130,
    and the build's work folder is removed as before."""
    import signal
    import time

    from dataset_formats.build.synthetic import write_synthetic_raw

    write_synthetic_raw(tmp_path / "raw", 300_000)
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "dataset_formats.build.cli", "build"]
        + ["--reviews", str(tmp_path / "raw" / "reviews.jsonl.gz")]
        + ["--meta", str(tmp_path / "raw" / "meta.jsonl.gz"), "--out", str(build_dir / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job (`make test &`) ignores SIGINT, and children inherit that:
        # the builder would never see the Ctrl-C. A terminal's Ctrl-C arrives at default handling.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while not any(build_dir.iterdir()) and process.poll() is None:  # its work folder: started
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.rstrip().split("\n")[-1] == "nextquill-data build: interrupted"
    assert "Traceback" not in stderr
    assert list(build_dir.iterdir()) == []  # no output, no work folder left behind
