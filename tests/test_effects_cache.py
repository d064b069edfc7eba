"""The theta_0 effects cache: written once and keyed by model and data, a file that is not what it
claims to be recomputed and replaced, and one decision for all processes and nodes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from nextquill_plugin.effects_cache import cached_token_effects

from .torchrun_helpers import run_two_nodes, run_two_processes


@pytest.fixture()
def cached(tiny_model_dir, paired_rows, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from nextquill_plugin.effects_cache import cached_token_effects

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dataset = Dataset.from_list(paired_rows)

    def run():
        return cached_token_effects(model, dataset, tmp_path, model_name="tiny", pad_token_id=0)

    effects, path, computed = run()
    assert computed
    return run, effects, path


def test_a_cache_with_wrong_values_for_the_same_rows_is_recomputed(cached, caplog):
    from nextquill_plugin.effects_cache import load_effects, save_effects
    from nextquill_plugin.token_effects import TokenEffects

    run, effects, path = cached
    _, meta = load_effects(path)
    offsets = effects.offsets.copy()
    offsets[1:-1] += 1  # same row count and total, other rows' lengths
    forged = TokenEffects(np.ones_like(effects.p_with), np.zeros_like(effects.p_without), offsets)
    save_effects(forged, path, meta)
    with caplog.at_level(logging.WARNING):
        again, path2, computed = run()
    assert computed and path2 == path
    assert "does not match this model and data" in caplog.text and str(path) in caplog.text
    assert np.array_equal(again.offsets, effects.offsets)
    assert np.allclose(again.p_with, effects.p_with)
    assert load_effects(path)[0].offsets.tolist() == effects.offsets.tolist()  # replaced


def test_a_truncated_cache_file_is_recomputed_with_its_path_named(cached, caplog):
    run, effects, path = cached
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with caplog.at_level(logging.WARNING):
        again, _, computed = run()
    assert computed and "unreadable" in caplog.text and str(path) in caplog.text
    assert np.allclose(again.p_without, effects.p_without)


def test_a_forged_cache_with_self_consistent_values_is_recomputed(cached, caplog):
    """p_with 1 and p_without 0 everywhere: probabilities of the right shapes, every token
    preference-bearing; only the digest saved with the values tells them apart."""
    from nextquill_plugin.effects_cache import load_effects
    from nextquill_plugin.token_effects import TokenEffects

    run, effects, path = cached
    _, meta = load_effects(path)
    forged = TokenEffects(
        np.ones_like(effects.p_with), np.zeros_like(effects.p_without), effects.offsets
    )
    np.savez(
        path,
        p_with=forged.p_with,
        p_without=forged.p_without,
        offsets=forged.offsets,
        meta=np.array(json.dumps(meta, sort_keys=True)),  # the old digest, as a forger keeps it
    )
    with caplog.at_level(logging.WARNING):
        again, _, computed = run()
    assert computed and "do not match the digest saved with them" in caplog.text
    assert np.allclose(again.p_with, effects.p_with)


def test_a_cache_folder_that_is_a_file_is_refused_and_an_unwritable_one_warned(
    tiny_model_dir, paired_rows, tmp_path, caplog
):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from nextquill_plugin.effects_cache import cached_token_effects

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dataset = Dataset.from_list(paired_rows[:2])
    a_file = tmp_path / "cache"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match="cache folder .*cache is a file"):
        cached_token_effects(model, dataset, a_file, model_name="tiny", pad_token_id=0)
    unwritable = Path("/proc/self/nextquill-cache")  # procfs: no folder can be made there
    with caplog.at_level(logging.WARNING):
        effects, _, computed = cached_token_effects(
            model, dataset, unwritable, model_name="tiny", pad_token_id=0
        )
    assert computed and len(effects) == 2
    assert "cannot write the theta_0 cache to /proc/self/nextquill-cache" in caplog.text


def test_cache_is_written_once_and_keyed_by_model_and_data(
    sharpened_model, effect_rows, tmp_path, monkeypatch
):
    model, rows = sharpened_model, effect_rows
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


@pytest.mark.slow
def test_two_processes_split_the_rows_and_agree(effect_rows, tiny_model_dir, tmp_path):
    rows = effect_rows
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_two_processes(
        "distributed_effects.py",
        [tiny_model_dir, data, tmp_path / "cache", tmp_path / "report"],
    )
    reports = [json.loads((tmp_path / f"report.{rank}").read_text()) for rank in (0, 1)]
    assert sum(r["rows_computed"] for r in reports) == len(rows)  # each row once in total
    assert all(r["rows_computed"] > 0 for r in reports)
    assert reports[0]["p_with"] == reports[1]["p_with"]
    assert reports[0]["offsets"] == reports[1]["offsets"]
    assert len(list((tmp_path / "cache").glob("effects-*.npz"))) == 1


@pytest.mark.slow
def test_nodes_without_a_shared_disk_agree_on_the_cache(effect_rows, tiny_model_dir, tmp_path):
    """Each node has its own cache folder. First run: both compute their share and each node
    keeps a copy. Then node 1 loses its copy: node 0's is broadcast, nobody computes (deciding
    per rank, node 1 alone would compute and wait forever for node 0)."""
    rows = effect_rows
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = "distributed_effects.py"
    args = [tiny_model_dir, data, tmp_path / "cache-node{node}", tmp_path / "report"]

    def reports():
        return [json.loads((tmp_path / f"report.{rank}").read_text()) for rank in (0, 1)]

    run_two_nodes(script, args)
    first = reports()
    assert [r["computed"] for r in first] == [True, True]
    assert sum(r["rows_computed"] for r in first) == len(rows)
    (copy0,), (copy1,) = (list((tmp_path / f"cache-node{n}").glob("*.npz")) for n in (0, 1))
    assert copy0.name == copy1.name

    copy1.unlink()
    run_two_nodes(script, args)
    second = reports()
    assert [r["computed"] for r in second] == [False, False]
    assert [r["rows_computed"] for r in second] == [0, 0]
    assert second[0]["p_with"] == second[1]["p_with"] == first[0]["p_with"]
    assert copy1.exists()  # node 1 keeps the broadcast copy for the next run


def test_a_folder_where_the_cache_file_goes_is_found_before_the_pass(cached, caplog):
    """It used to be reported unreadable, the whole pass ran, and the run died at the final
    rename; now the pass's effects are used for this run only, with a warning."""
    run, effects, path = cached
    path.unlink()
    path.mkdir()
    with caplog.at_level(logging.WARNING):
        again, again_path, computed = run()
    assert computed and again_path == path and path.is_dir()
    assert np.array_equal(again.p_with, effects.p_with)
    assert "is not a file; the effects are computed and used for this run only" in caplog.text


def test_both_frameworks_default_to_the_folder_axolotl_prepares_data_in():
    """The TRL path cached under <output_dir>/nextquill and computed again what an Axolotl run
    had cached (the route: tests/test_trl.py, the NextQuill and NormOnly losses)."""
    const = pytest.importorskip("axolotl.common.const")
    from nextquill_plugin.effects_cache import DEFAULT_PREPARED_PATH, effects_cache_dir

    assert DEFAULT_PREPARED_PATH == const.DEFAULT_DATASET_PREPARED_PATH
    assert effects_cache_dir(None, None) == Path(const.DEFAULT_DATASET_PREPARED_PATH) / "nextquill"
    assert effects_cache_dir(None, "prep") == Path("prep/nextquill")
    assert effects_cache_dir("mine", "prep") == Path("mine")
