"""The theta_0 effects cache: a file that is not what it claims to be is recomputed and replaced."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest


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
