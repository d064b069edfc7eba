"""The theta_0 effects cache: a file that is not what it claims to be is recomputed and replaced."""

from __future__ import annotations

import logging

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
