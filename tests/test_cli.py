"""Command-line parsing of the `nextquill` command."""

import subprocess
import sys

import pytest

from nextquill_plugin.cli import parse_overrides, parse_pairs


def test_overrides_keep_text_and_parse_typed_values():
    parsed = parse_pairs(
        [
            "--save_strategy",
            "no",
            "--max_steps=3",
            "--learning_rate",
            "5e-6",
            "--bf16=false",
            "--deepspeed=",
            "--lora_target_modules=[q_proj, v_proj]",
            "--flag",
            "--base_model",
            "/models/x",
        ]
    )
    assert parsed == {
        "save_strategy": "no",
        "max_steps": 3,
        "learning_rate": 5e-6,
        "bf16": False,
        "deepspeed": "",
        "lora_target_modules": ["q_proj", "v_proj"],
        "flag": True,
        "base_model": "/models/x",
    }


def test_an_override_takes_its_keys_type():
    """A system prompt that is a number stays text (it was refused as an int); a yes/no key
    alone is true."""
    assert parse_overrides(["--nextquill_system_prompt", "42", "--nextquill_strict_rows"]) == {
        "nextquill_system_prompt": "42",
        "nextquill_strict_rows": True,
    }


def test_overrides_refuse_keys_no_schema_declares():
    assert parse_overrides(["--max_steps=3", "--nextquill_alpha", "0.1"]) == {
        "max_steps": 3,
        "nextquill_alpha": 0.1,
    }
    with pytest.raises(ValueError, match="unknown key flag"):
        parse_overrides(["--max_steps=3", "--flag"])


def test_overrides_reject_stray_words():
    with pytest.raises(ValueError, match="unexpected argument 'oops'"):
        parse_overrides(["oops"])


def test_version_without_torch(capsys):
    """`--version` answers at once: it builds no parser (they import torch through evaluation)."""
    from importlib.metadata import version

    from nextquill_plugin.cli import main

    main(["--version"])
    assert capsys.readouterr().out.strip() == f"nextquill {version('nextquill-axolotl')}"
    probe = (
        "import sys\nfrom nextquill_plugin.cli import main\nmain(['--version'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'axolotl', 'datasets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.splitlines()[-1] == "[]", result.stderr[-2000:]
    data = subprocess.run(
        [sys.executable, "-m", "dataset_formats.build.cli", "--version"],
        capture_output=True,
        text=True,
    )
    assert (
        data.returncode == 0
        and data.stdout.strip() == f"nextquill-data {version('nextquill-axolotl')}"
    )


def test_recipes_are_copied_out_and_nothing_is_overwritten(tmp_path, capsys):
    from pathlib import Path

    from nextquill_plugin.cli import main

    recipes = Path(__file__).parents[1] / "recipes"
    shipped = sorted([*recipes.glob("*.yml"), *recipes.glob("trl/*.yaml")])
    main(["recipes", str(tmp_path / "mine")])
    copied = sorted(p for p in (tmp_path / "mine").rglob("*") if p.is_file())
    relative = [p.relative_to(tmp_path / "mine") for p in copied]
    assert relative == [p.relative_to(recipes) for p in shipped]
    assert len(copied) == 22 + 6  # 21 + mixed, and the TRL configs in trl/
    assert all(a.read_text() == b.read_text() for a, b in zip(copied, shipped, strict=True))
    (tmp_path / "mine" / "books_sft.yml").write_text("my own edits\n")
    with pytest.raises(SystemExit, match="already has .*books_sft.yml.*nothing was copied"):
        main(["recipes", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "books_sft.yml").read_text() == "my own edits\n"


def test_the_wheel_ships_recipes_demo_data_license_and_entry_points(tmp_path):
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).parents[1]
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w"]
        + [str(tmp_path), str(root)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("nextquill_axolotl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nextquill_plugin/recipes/books_nextquill.yml" in names
    assert "nextquill_plugin/recipes/mixed_example.yml" in names
    assert "nextquill_plugin/recipes/trl/books_nextquill.yaml" in names
    assert "nextquill_plugin/trl/trainer.py" in names
    assert "dataset_formats/demo_data/Books_demo.jsonl.gz" in names
    for name in ("model.safetensors", "report.json", "tokenizer.json", "config.json"):
        assert f"nextquill_plugin/demo/theta0_model/{name}" in names
    assert "nextquill_plugin/evaluation/significance.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[axolotl.cli_commands]" in text and "[axolotl.plugins]" in text


@pytest.mark.slow
def test_axolotl_runs_the_nextquill_command_with_its_overrides(recipes):
    """`axolotl nextquill ... -- --key value`: click took the first `--` for its own end of
    options, so every override was refused as an argument to put after `--`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    axolotl = Path(sys.executable).parent / "axolotl"
    if not axolotl.exists():
        pytest.skip("no axolotl console script in this environment")
    result = subprocess.run(
        [str(axolotl), "nextquill", "prompts", str(recipes["amazon"]), "--limit", "1"]
        + ["--", "--nextquill_history_placeholder", "NO HISTORY HERE"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NO HISTORY HERE" in result.stdout


@pytest.mark.slow
def test_exit_codes_and_the_subcommands_own_usage(tmp_path):
    """2 for a wrong command line, with the subcommand's usage; 1 for a run that failed, with
    its message and no traceback; the same rule for both commands."""

    def run(*args):
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)

    wrong = run("nextquill_plugin.cli", "evaluate", "r.yml", "--max-new-tokenz", "5")
    assert wrong.returncode == 2 and "usage: nextquill evaluate" in wrong.stderr
    assert "--max-new-tokenz" in wrong.stderr and "go after --" in wrong.stderr
    missing = run("nextquill_plugin.cli", "weights", str(tmp_path / "missing.yml"))
    assert missing.returncode == 1 and "missing.yml does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    data_wrong = run("dataset_formats.build.cli", "build", "--reviews", "x")
    assert data_wrong.returncode == 2 and "usage: nextquill-data build" in data_wrong.stderr
    data_failed = run(
        "dataset_formats.build.cli", "build", "--reviews", str(tmp_path), "--meta", str(tmp_path),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert data_failed.returncode == 1 and "is a folder, not a file" in data_failed.stderr
    assert "Traceback" not in data_failed.stderr


def test_every_flag_of_both_commands_says_what_it_does():
    import argparse

    from dataset_formats.build import cli as data_cli
    from nextquill_plugin.cli import build_parser

    parser, subcommands = build_parser("nextquill")
    captured = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        captured["parser"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            data_cli.main([])
    finally:
        argparse.ArgumentParser.parse_args = original
    data_parser = captured["parser"]
    data_subcommands = next(
        a for a in data_parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    silent = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in [*subcommands.items(), *data_subcommands.items()]
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert silent == []
    build_help = data_subcommands["build"].format_help()
    assert "a user needs at least this many reviews" in build_help and "default: 18" in build_help


def test_the_axolotl_command_calls_itself_so():
    from nextquill_plugin.cli import main

    with pytest.raises(SystemExit) as exit_code:
        main(["evaluate"], prog="axolotl nextquill")
    assert exit_code.value.code == 2


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    import os
    import stat

    from nextquill_common.jsonl import write_jsonl, write_text_atomic

    previous = os.umask(0o022)
    try:
        rows = write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
        text = write_text_atomic(tmp_path / "m.json", "{}")
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(previous)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert plain == 0o644
    assert {stat.S_IMODE(p.stat().st_mode) for p in (rows, text)} == {plain}


@pytest.mark.slow
def test_known_library_noise_stays_off_our_commands():
    """torchao's missing CUDA kernels, torch's pytree deprecation, bitsandbytes' Hub lookups and
    trl's experimental notice (all printed when Axolotl is imported, as `nextquill weights` and
    the dataset checks do) mean nothing to our users; our commands keep them off stderr."""

    def stderr_of(quiet: bool) -> str:
        code = (
            "from nextquill_common.quiet import quiet_library_noise\n"
            + ("quiet_library_noise()\n" if quiet else "")
            + "import axolotl.cli.config, axolotl.core.trainers.base\n"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stderr

    assert "_pytree" in stderr_of(quiet=False)  # the noise is there without it
    quiet = stderr_of(quiet=True)
    for noise in ("Failed to load", "_pytree", "publisher trust", "trl.experimental"):
        assert noise not in quiet, noise


def test_the_demo_checks_what_it_needs_before_its_first_step(monkeypatch, tmp_path):
    from pathlib import Path

    import nextquill_plugin.demo.run as demo
    import nextquill_plugin.evaluation.wordnet_data as wordnet_data

    def no_wordnet():
        raise RuntimeError(wordnet_data.MISSING_WORDNET)

    monkeypatch.setattr(demo, "build_data", lambda: pytest.fail("the demo started its work"))
    monkeypatch.setattr(demo, "require_wordnet", no_wordnet)
    monkeypatch.setattr(demo, "OUT", tmp_path / "demo")
    with pytest.raises(SystemExit, match="nextquill demo: METEOR needs the WordNet corpus"):
        demo.main()
    monkeypatch.setattr(demo, "require_wordnet", lambda: None)
    monkeypatch.setattr(demo, "OUT", Path("/proc/self/nextquill-demo"))
    with pytest.raises(SystemExit, match="not writable; set NEXTQUILL_DEMO_DIR"):
        demo.main()


def test_the_demo_reads_its_comparison_whichever_way_it_falls(tmp_path):
    """The demo's sentence names the metrics beyond noise on each side and those within it."""
    from nextquill_common.jsonl import write_jsonl
    from nextquill_plugin.demo.run import reading

    def records(rouge1: list[float]) -> list[dict]:
        return [
            {"user_id": f"u{i}", "prompt_id": f"u{i}/item", "rouge1": r, "rougeL": 0.5,
             "meteor": 0.5 + 0.01 * (i % 3), "prediction": "a b c", "reference": "a b c"}
            for i, r in enumerate(rouge1)
        ]  # fmt: skip

    write_jsonl(tmp_path / "base" / "predictions.jsonl", records([0.4] * 40))
    write_jsonl(tmp_path / "better" / "predictions.jsonl", records([0.5] * 40))
    write_jsonl(tmp_path / "worse" / "predictions.jsonl", records([0.3] * 40))
    better = reading(tmp_path / "better", tmp_path / "base")
    assert "NextQuill is above ContextSFT beyond noise on ROUGE-1;" in better
    assert "within noise of ContextSFT on ROUGE-L, METEOR, BLEU" in better
    assert "below" not in better
    worse = reading(tmp_path / "worse", tmp_path / "base")
    assert "NextQuill is below ContextSFT beyond noise on ROUGE-1;" in worse


def test_every_subcommand_prints_its_help(capsys):
    """`nextquill compare --help` crashed in argparse on the "%" of its help ("95% ...")."""
    from nextquill_plugin.cli import SUBCOMMANDS, main

    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0, name
        assert f"usage: nextquill {name}" in capsys.readouterr().out


def test_an_output_that_is_the_wrong_kind_of_path_is_a_usage_error(tmp_path, capsys):
    """--out naming a file ended in "[Errno 17] File exists" (synthetic, evaluate, inspect,
    recipes), after the work for some; compare --csv naming a folder in "[Errno 21]"; --out on
    a disk nothing can be written to in "[Errno 1]"."""
    from dataset_formats.build.cli import main as nextquill_data
    from nextquill_plugin.cli import main

    a_file = tmp_path / "afile"
    a_file.write_text("mine\n")
    cases = [
        (nextquill_data, ["synthetic", "--out", str(a_file)], "is a file; give a folder"),
        (nextquill_data, ["build", "--reviews", "r", "--meta", "m", "--out", str(a_file)], "is a file; give a folder"),
        (nextquill_data, ["convert-dpl", "--rows", "r", "--meta", "m", "--out", str(tmp_path)], "is a folder; give a file name"),
        (main, ["evaluate", "r.yml", "--out", str(a_file)], "is a file; give a folder"),
        (main, ["inspect", "r.yml", "--out", str(a_file)], "is a file; give a folder"),
        (main, ["recipes", str(a_file)], "is a file; give a folder"),
        (main, ["compare", "a", "b", "--csv", str(tmp_path)], "is a folder; give a file name"),
        # a folder nothing can be written to (procfs; a read-only disk for users): raw errnos,
        # one naming a temporary file the user never chose
        (nextquill_data, ["synthetic", "--out", "/proc/1/raw"], "cannot write to /proc/1"),
        (nextquill_data, ["convert-dpl", "--rows", "r", "--meta", "m", "--out", "/proc/1/o.jsonl"], "cannot write to /proc/1"),
        (main, ["evaluate", "r.yml", "--out", "/proc/1/eval"], "give a folder on a writable disk"),
    ]  # fmt: skip
    for command, arguments, message in cases:
        with pytest.raises(SystemExit) as error:
            command(arguments)
        err = capsys.readouterr().err
        assert error.value.code == 2 and message in err and "usage:" in err, arguments
    assert a_file.read_text() == "mine\n"
