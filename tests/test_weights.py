"""theta_0 effects: values against full-logit probabilities, the cache, and multi-process runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nextquill_plugin.effects_cache import cached_token_effects
from nextquill_plugin.equations import PreferenceRule
from nextquill_plugin.token_effects import TokenEffects, compute_token_effects

from .conftest import sharpened_tiny_model


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return sharpened_tiny_model(tiny_model_dir, 6.0)


@pytest.fixture(scope="module")
def rows(paired_rows):
    tokenized = list(paired_rows)
    tokenized[2] = {**tokenized[2], "cf_input_ids": [], "cf_labels": []}  # an ordinary SFT row
    keys = ("input_ids", "labels", "cf_input_ids", "cf_labels")
    return [{k: r[k] for k in keys} for r in tokenized]


def slow_probabilities(model, ids, labels):
    """p(y_t | prefix) from full logits of one unpadded sequence."""
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    return [probs[p, labels[p + 1]].item() for p in range(len(ids) - 1) if labels[p + 1] != -100]


def as_columns(rows):
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_effects_equal_full_logit_probabilities(model, rows):
    effects = compute_token_effects(
        model, as_columns(rows), pad_token_id=0, batch_size=2, show_progress=False
    )
    assert len(effects) == len(rows)
    for i, row in enumerate(rows):
        p_with, p_without = effects.row(i)
        if not row["cf_input_ids"]:
            assert len(p_with) == 0
            continue
        assert np.allclose(
            p_with, slow_probabilities(model, row["input_ids"], row["labels"]), atol=1e-5
        )
        assert np.allclose(
            p_without, slow_probabilities(model, row["cf_input_ids"], row["cf_labels"]), atol=1e-5
        )
    assert np.abs(effects.p_with - effects.p_without).max() > 1e-3  # the history matters


def test_bf16_model_with_float32_modules_gets_autocast(tiny_model_dir, rows):
    """Axolotl's bf16 full fine-tuning keeps some modules in float32; the theta_0 pass runs
    outside the Trainer's autocast. Without one it fails on mixed dtypes; by default it
    autocasts to bf16 and gives the float32 model's probabilities within bf16's precision."""
    import contextlib

    reference = sharpened_tiny_model(tiny_model_dir, 6.0)
    mixed = sharpened_tiny_model(tiny_model_dir, 6.0).to(torch.bfloat16)
    for name, module in mixed.named_modules():
        if name.endswith("norm"):  # RMSNorms kept in float32, as Axolotl does for bf16
            module.float()
    columns = as_columns(rows)
    with pytest.raises(RuntimeError, match="dtype"):
        compute_token_effects(
            mixed, columns, pad_token_id=0, autocast=contextlib.nullcontext, show_progress=False
        )
    got = compute_token_effects(mixed, columns, pad_token_id=0, show_progress=False)
    expected = compute_token_effects(reference, columns, pad_token_id=0, show_progress=False)
    assert np.array_equal(got.offsets, expected.offsets)
    assert np.abs(got.p_with - expected.p_with).max() < 0.05
    assert np.abs(got.p_without - expected.p_without).max() < 0.05


def test_row_effects_and_the_rule_by_hand():
    effects = TokenEffects(
        np.array([0.5, 0.2, 0.9], np.float32),
        np.array([0.4, 0.2, 0.95], np.float32),
        np.array([0, 2, 2, 3]),  # the second row has no effects (no counterfactual)
    )
    assert effects.row_effects() == [
        [pytest.approx(0.1), pytest.approx(0.0)],
        None,
        [pytest.approx(-0.05)],
    ]
    flat = torch.from_numpy(effects.effects())
    paper, other = PreferenceRule(0.05, 0.9, 0.1), PreferenceRule(0.2, 0.8, 0.3)
    assert paper.weights(flat).tolist() == pytest.approx([0.9, 0.1, 0.1])
    assert other.weights(flat).tolist() == pytest.approx([0.3, 0.3, 0.3])
    assert int(paper.mask(flat).sum()) == 1
    assert int(PreferenceRule(-0.06, 0.9, 0.1).mask(flat).sum()) == 3
    # lambda == epsilon: every weight is the same, but only the tokens above delta are marked
    assert PreferenceRule(0.05, 0.5, 0.5).mask(flat).tolist() == [True, False, False]


def test_cache_is_written_once_and_keyed_by_model_and_data(model, rows, tmp_path, monkeypatch):
    from datasets import Dataset

    dataset = Dataset.from_list(rows)
    first, path, computed = cached_token_effects(
        model, dataset, tmp_path, model_name="tiny", pad_token_id=0
    )
    assert computed and path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind

    import nextquill_plugin.token_effects as weights

    def no_forward(*_a, **_k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(weights, "compute_token_effects", no_forward)
    again, path2, computed2 = cached_token_effects(
        model, dataset, tmp_path, model_name="tiny", pad_token_id=0
    )
    assert (path2, computed2) == (path, False)
    assert np.array_equal(again.p_with, first.p_with) and np.array_equal(
        again.offsets, first.offsets
    )
    monkeypatch.undo()

    fewer = Dataset.from_list(rows[:3])
    _, path3, computed3 = cached_token_effects(
        model, fewer, tmp_path, model_name="tiny", pad_token_id=0
    )
    assert computed3 and path3 != path
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0  # another model (tied: the embedding changes too)
    try:
        _, path4, computed4 = cached_token_effects(
            model, dataset, tmp_path, model_name="tiny", pad_token_id=0
        )
    finally:
        with torch.no_grad():
            model.lm_head.weight[0, 0] -= 1.0
    assert computed4 and path4 not in (path, path3)


SCRIPTS = __import__("pathlib").Path(__file__).parent / "scripts"


def run_two_processes(script: str, args: list, port: int) -> None:
    """``tests/scripts/<script>`` under torchrun, 2 processes on this node (gloo)."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
        + [f"--master_port={port}", str(SCRIPTS / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_split_the_rows_and_agree(rows, tiny_model_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_two_processes(
        "distributed_effects.py",
        [tiny_model_dir, data, tmp_path / "cache", tmp_path / "report"],
        port=29533,
    )
    reports = [json.loads((tmp_path / f"report.{rank}").read_text()) for rank in (0, 1)]
    assert sum(r["rows_computed"] for r in reports) == len(rows)  # each row once in total
    assert all(r["rows_computed"] > 0 for r in reports)
    assert reports[0]["p_with"] == reports[1]["p_with"]
    assert reports[0]["offsets"] == reports[1]["offsets"]
    assert len(list((tmp_path / "cache").glob("effects-*.npz"))) == 1


@pytest.mark.slow
def test_logged_nextquill_metrics_are_means_over_all_ranks(tmp_path):
    """Two gloo processes store different values; both log the mean over every stored value."""
    run_two_processes("mean_over_ranks.py", [tmp_path / "means"], port=29534)
    reports = [json.loads((tmp_path / f"means.{rank}").read_text()) for rank in (0, 1)]
    assert (
        reports[0]
        == reports[1]
        == {
            "nextquill/normal_loss": (1 + 2 + 3 + 5) / 4,
            "nextquill/causal_loss": 0.5,  # rank 1 stored none
            "nextquill/mean_weight": (0.1 + 0.3 + 0.5) / 3,
            "nextquill/preference_token_fraction": None,  # no rank stored any
        }
    )


def run_two_nodes(script, args, port):
    """Two torchrun "nodes" of one process each on this machine (static rendezvous)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
    nodes = [
        subprocess.Popen(
            [*command, f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}"]
            + [str(script), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    for node in nodes:
        _, stderr = node.communicate(timeout=300)
        assert node.returncode == 0, stderr[-3000:]


@pytest.mark.slow
def test_nodes_without_a_shared_disk_agree_on_the_cache(rows, tiny_model_dir, tmp_path):
    """Each node has its own cache folder. First run: both compute their share and each node
    keeps a copy. Then node 1 loses its copy: node 0's is broadcast, nobody computes (deciding
    per rank, node 1 alone would compute and wait forever for node 0)."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = SCRIPTS / "distributed_effects.py"
    args = [tiny_model_dir, data, tmp_path / "cache-node{node}", tmp_path / "report"]

    def reports():
        return [json.loads((tmp_path / f"report.{rank}").read_text()) for rank in (0, 1)]

    run_two_nodes(script, args, 29535)
    first = reports()
    assert [r["computed"] for r in first] == [True, True]
    assert sum(r["rows_computed"] for r in first) == len(rows)
    (copy0,), (copy1,) = (list((tmp_path / f"cache-node{n}").glob("*.npz")) for n in (0, 1))
    assert copy0.name == copy1.name

    copy1.unlink()
    run_two_nodes(script, args, 29536)
    second = reports()
    assert [r["computed"] for r in second] == [False, False]
    assert [r["rows_computed"] for r in second] == [0, 0]
    assert second[0]["p_with"] == second[1]["p_with"] == first[0]["p_with"]
    assert copy1.exists()  # node 1 keeps the broadcast copy for the next run
