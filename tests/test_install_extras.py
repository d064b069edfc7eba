"""Each framework is an extra (pyproject.toml): the core and the TRL path import no Axolotl, and a
command whose framework is missing names the extra to install instead of ending in a traceback.
Also run by the TRL-only lane (.ci/lane_trl_only), where Axolotl is really absent."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nextquill_common.offline import offline_env

pytestmark = pytest.mark.slow  # each starts a fresh interpreter that imports the framework


def run_without(libraries: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where ``libraries`` cannot be imported."""
    blocked = "".join(f"sys.modules[{name!r}] = None\n" for name in libraries)
    return subprocess.run(
        [sys.executable, "-c", "import sys\n" + blocked + code],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=300,
    )


def test_the_core_and_the_trl_path_import_without_axolotl():
    result = run_without(
        ("axolotl",),
        "import nextquill_plugin, nextquill_plugin.objective, nextquill_plugin.trainer_mixin\n"
        "from nextquill_plugin.trl import NextQuillSFTConfig, NextQuillSFTTrainer\n"
        "import nextquill_plugin.evaluation.evaluate, nextquill_plugin.cli\n"
        "print('imported')\n",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "imported"


def test_a_command_whose_framework_is_missing_names_the_extra(tmp_path):
    recipe = tmp_path / "r.yml"
    recipe.write_text("base_model: x\nnextquill: true\n")
    code = "from nextquill_plugin.cli import main\nmain(sys.argv[1:])\n"
    for blocked, argv, extra in (
        (("axolotl",), ["weights", str(recipe)], "axolotl"),
        (("trl",), ["trl-sft", "--config", str(recipe)], "trl"),
    ):
        result = run_without(blocked, code.replace("sys.argv[1:]", repr(argv)))
        assert result.returncode == 1, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert f"pip install 'nextquill-axolotl[{extra}]'" in result.stderr.strip().splitlines()[-1]
