"""Shared fixtures: offline environment and one tiny local model per test session."""

from __future__ import annotations

import os

from nextquill_common.offline import use_offline_mode

# No test may reach a hub: set before transformers/datasets/axolotl are imported (importing
# nextquill_common.offline imports neither).
use_offline_mode()
# Axolotl's load_cfg tees sys.stdout/stderr into debug.log for the rest of the process; in a test
# process (load_recipe) the tee wraps pytest's capture files, which a later test finds closed.
# This is Axolotl's own switch for tests; `axolotl` subprocesses inherit it (no test reads their
# debug.log).
os.environ["AXOLOTL_TEE_STDOUT"] = "0"

import importlib.util  # noqa: E402

import pytest  # noqa: E402

# Importing axolotl.cli configures logging anew (dictConfig), which closes every handler there
# is, and with them a stream pytest captures into: a test after the one that first imported it
# in a worker found pytest's capture file closed. Imported here once, before any test runs.
if importlib.util.find_spec("axolotl"):  # absent in the TRL-only lane
    import logging

    import axolotl.cli  # noqa: E402, F401

    # Axolotl's logging setup stops its loggers (NextQuill's is one) at their own handlers; the
    # tests read what NextQuill logs through pytest's caplog, which listens at the root logger.
    logging.getLogger("axolotl").propagate = True

# Files whose tests each run their own subprocesses and share no costly fixture: under
# `--dist loadgroup` each of their tests goes to whichever worker is free. Every other file's
# tests stay together in one worker, in file order, as under `--dist loadfile`.
SPREAD_FILES = {
    "test_axolotl_features.py",
    "test_benchmarks.py",
    "test_e2e_train.py",
    "test_recipes.py",
    "test_trl.py",
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    """e2e and distributed tests are slow ones too: `pytest -m "not slow"` leaves them out.
    Each test gets an xdist group (see SPREAD_FILES) unless its file gives one."""
    for item in items:
        if item.get_closest_marker("e2e") or item.get_closest_marker("distributed"):
            item.add_marker(pytest.mark.slow)
        if not item.get_closest_marker("xdist_group"):
            spread = item.path.name in SPREAD_FILES
            item.add_marker(pytest.mark.xdist_group(item.nodeid if spread else item.path.name))


@pytest.fixture(scope="session")
def synthetic_splits():
    from dataset_formats.build.synthetic import synthetic_rows

    return synthetic_rows(n_users=16, reviews_per_user=12, seed=0)


@pytest.fixture(scope="session")
def build_folder(tmp_path_factory):
    """A `nextquill-data build` output folder (splits, dataset card, stats.json) of 30
    synthetic users, made through the command, once."""
    from dataset_formats.build.cli import main as nextquill_data

    raw, built = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("built") / "books"
    nextquill_data(["synthetic", "--out", str(raw), "--users", "30"])
    nextquill_data(
        ["build", "--reviews", str(raw / "reviews.jsonl.gz"), "--meta", str(raw / "meta.jsonl.gz")]
        + ["--out", str(built)]
    )
    return built


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, synthetic_splits):
    """A random-init 2-layer Qwen2 with a locally trained tokenizer, built once."""
    from dataset_formats.build.synthetic import corpus_texts
    from nextquill_plugin.demo.tiny_model import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("tiny_model"),
        corpus_texts(synthetic_splits["train"]),
        vocab_size=600,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def sharpened_tiny_model(model_dir, scale: float):
    """The tiny model with weights scaled up: random but far from uniform predictions, so that
    with/without-history probabilities differ clearly."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


@pytest.fixture(scope="session")
def paired_rows(tiny_tokenizer, synthetic_splits):
    """Tokenized NextQuill rows (history K=2, sequence_len 512) of the first training users."""
    from dataset_formats.amazon_reviews import load

    strategy = load(
        tiny_tokenizer, {"nextquill": True, "sequence_len": 512, "nextquill_history_k": 2}
    )
    return [strategy.tokenize_prompt(r) for r in synthetic_splits["train"][:5]]


@pytest.fixture()
def load_recipe(tmp_path, tiny_model_dir, synthetic_splits):
    """``load_recipe(**overrides)``: the tiny CPU recipe with overrides, through Axolotl's own
    config loading (validation included) with the plugin registered."""
    import yaml
    from axolotl.cli.config import load_cfg

    from nextquill_common.jsonl import write_jsonl
    from nextquill_plugin.demo.local_runs import tiny_recipe

    def _load(**overrides):
        recipe = tiny_recipe(tiny_model_dir, tmp_path / "train.jsonl", tmp_path, **overrides)
        write_jsonl(tmp_path / "train.jsonl", synthetic_splits["train"][:1])
        path = tmp_path / "recipe.yml"
        path.write_text(yaml.safe_dump(recipe))
        return load_cfg(str(path))

    return _load


@pytest.fixture(scope="session")
def recipes(tmp_path_factory, tiny_model_dir, synthetic_splits):
    """An amazon_reviews recipe, a paired recipe, and recipes/mixed_example.yml with local paths
    (8 rows of each split), written once for every evaluation test."""
    import yaml

    from nextquill_common.jsonl import write_jsonl

    from .evaluation_helpers import PLUGIN, ROOT, paired_rows_of

    folder = tmp_path_factory.mktemp("recipes")
    amazon, paired = folder / "amazon", folder / "paired"
    for split in ("train", "test"):
        write_jsonl(amazon / f"{split}.jsonl", synthetic_splits[split][:8])
        write_jsonl(paired / f"{split}.jsonl", paired_rows_of(synthetic_splits[split][:8]))
    common = {
        "base_model": str(tiny_model_dir),
        "plugins": PLUGIN,
        "nextquill": True,
        "nextquill_history_k": 2,
        "sequence_len": 512,
    }
    made = {}
    for name, data, kind in (("amazon", amazon, "amazon_reviews"), ("paired", paired, "paired")):
        dataset = {"path": str(data / "train.jsonl"), "type": f"dataset_formats.{kind}"}
        made[name] = folder / f"{name}.yml"
        made[name].write_text(yaml.safe_dump({**common, "datasets": [dataset]}))
    mixed = yaml.safe_load((ROOT / "recipes" / "mixed_example.yml").read_text())
    mixed["datasets"][0]["path"] = str(folder / "instructions.jsonl")
    mixed["datasets"][1]["path"] = str(amazon / "train.jsonl")
    mixed.update(common)
    made["mixed"] = folder / "mixed.yml"
    made["mixed"].write_text(yaml.safe_dump(mixed))
    return made


@pytest.fixture(scope="session")
def untuned_run(recipes, tmp_path_factory):
    """The folder of one `nextquill evaluate` of ``recipes["amazon"]`` (``evaluate``'s quick
    settings plus ``UNTUNED_RUN``), shared: a test that changes its files works on a copy."""
    from .evaluation_helpers import UNTUNED_RUN, evaluate

    out = tmp_path_factory.mktemp("untuned_run") / "eval"
    evaluate(recipes["amazon"], out, *UNTUNED_RUN)
    return out


@pytest.fixture(scope="session")
def sharpened_model(tiny_model_dir):
    """The tiny model with sharpened logits, so that the history changes probabilities."""
    return sharpened_tiny_model(tiny_model_dir, 6.0)


@pytest.fixture(scope="session")
def effect_rows(paired_rows):
    """Tokenized paired rows for the theta_0 pass, one of them an ordinary SFT row."""
    tokenized = list(paired_rows)
    tokenized[2] = {**tokenized[2], "cf_input_ids": [], "cf_labels": []}  # an ordinary SFT row
    keys = ("input_ids", "labels", "cf_input_ids", "cf_labels")
    return [{k: r[k] for k in keys} for r in tokenized]
