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
