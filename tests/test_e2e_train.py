"""`axolotl train` with the plugin on the tiny model: Full NextQuill, CausalOnly, NormOnly."""

from __future__ import annotations

import math

import pytest

from nextquill_plugin.local_runs import logged_metrics, run_axolotl, tiny_recipe, write_jsonl

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, synthetic_splits):
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", synthetic_splits["train"])


def assert_trained(result, workdir):
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    steps = logged_metrics(output)
    assert len(steps) >= 20, output[-3000:]
    losses = [s["loss"] for s in steps]
    assert all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, f"loss did not fall: {losses}"
    assert (workdir / "out" / "adapter_model.safetensors").exists()
    return output, steps


def test_full_nextquill_trains_logs_parts_and_reuses_weight_cache(
    tmp_path, tiny_model_dir, train_file
):
    recipe = tiny_recipe(tiny_model_dir, train_file, tmp_path)
    output, steps = assert_trained(run_axolotl("train", recipe, tmp_path), tmp_path)
    assert "computed theta_0 effects" in output
    assert all("nextquill/normal_loss" in s and "nextquill/causal_loss" in s for s in steps)
    assert all(s["nextquill/causal_loss"] > 0 for s in steps)
    assert list((tmp_path / "prepared" / "nextquill").glob("effects-*.npz"))

    second = run_axolotl("train", {**recipe, "max_steps": 2}, tmp_path)
    out2 = second.stdout + second.stderr
    assert second.returncode == 0, out2[-3000:]
    assert "used cached theta_0 effects" in out2
    assert "NextQuill theta_0 effects:" not in out2  # no progress bar: no forward pass

    changed = run_axolotl("train", {**recipe, "max_steps": 2, "sequence_len": 640}, tmp_path)
    out3 = changed.stdout + changed.stderr
    assert changed.returncode == 0, out3[-3000:]
    assert "computed theta_0 effects" in out3  # other tokenized data: other key


def test_causal_only_uses_unit_weights(tmp_path, tiny_model_dir, train_file):
    recipe = tiny_recipe(tiny_model_dir, train_file, tmp_path, nextquill_token_weighting=False)
    output, steps = assert_trained(run_axolotl("train", recipe, tmp_path), tmp_path)
    assert "theta_0 effects" not in output  # no weight pass needed
    assert all(s["nextquill/mean_weight"] == 1.0 for s in steps)
    assert all(s["nextquill/causal_loss"] > 0 for s in steps)


def test_norm_only_has_no_causal_loss(tmp_path, tiny_model_dir, train_file):
    recipe = tiny_recipe(tiny_model_dir, train_file, tmp_path, nextquill_causal_loss=False)
    output, steps = assert_trained(run_axolotl("train", recipe, tmp_path), tmp_path)
    assert "computed theta_0 effects" in output
    assert all(s["nextquill/causal_loss"] == 0.0 for s in steps)
