"""Command-line parsing of the `nextquill` command."""

import pytest

from nextquill_plugin.cli import parse_overrides


def test_overrides_keep_text_and_parse_typed_values():
    parsed = parse_overrides(
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


def test_overrides_reject_stray_words():
    with pytest.raises(SystemExit, match="unexpected argument 'oops'"):
        parse_overrides(["oops"])


def test_version(capsys):
    from importlib.metadata import version

    from nextquill_plugin.cli import main

    with pytest.raises(SystemExit) as exit_code:
        main(["--version"])
    assert exit_code.value.code == 0
    assert capsys.readouterr().out.strip() == f"nextquill {version('nextquill-axolotl')}"


def test_recipes_are_copied_out_and_nothing_is_overwritten(tmp_path, capsys):
    from pathlib import Path

    from nextquill_plugin.cli import main

    shipped = sorted((Path(__file__).parents[1] / "recipes").glob("*.yml"))
    main(["recipes", str(tmp_path / "mine")])
    copied = sorted((tmp_path / "mine").iterdir())
    assert [p.name for p in copied] == [p.name for p in shipped] and len(copied) == 19
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
    assert "dataset_formats/demo_data/Books_demo.jsonl.gz" in names
    for name in ("model.safetensors", "report.json", "tokenizer.json", "config.json"):
        assert f"nextquill_plugin/demo/theta0_model/{name}" in names
    assert "nextquill_plugin/evaluation/significance.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[axolotl.cli_commands]" in text and "[axolotl.plugins]" in text


def test_axolotl_runs_the_nextquill_command(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    axolotl = Path(sys.executable).parent / "axolotl"
    if not axolotl.exists():
        pytest.skip("no axolotl console script in this environment")
    result = subprocess.run(
        [str(axolotl), "nextquill", "recipes", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "r" / "books_nextquill.yml").exists()
