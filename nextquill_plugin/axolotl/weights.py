"""`nextquill weights RECIPE.yml`: theta_0 effects into the cache ahead of training, with the
data prepared and the model loaded exactly as `axolotl train` does (the plugin's
``post_trainer_create`` computes or loads them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axolotl.cli.args import TrainerCliArgs
from axolotl.cli.config import load_cfg
from axolotl.common.datasets import load_datasets
from axolotl.train import setup_model_and_trainer

from nextquill_common.jsonl import input_file_problem, write_problem

from ..config_keys import settings_from
from .plugin import recipe_cache_dir


def compute_weights(recipe: str, overrides: dict[str, Any]) -> Path:
    """Prepare the data and load the model as training does, which fills the cache; returns
    the cache folder."""
    problem = input_file_problem(recipe)
    if problem:
        raise FileNotFoundError(f"recipe {recipe} {problem}")
    cfg = load_cfg(recipe, **overrides)
    if not cfg.nextquill:
        raise SystemExit(
            f"nextquill: {recipe} does not set `nextquill: true`; there are no weights to compute."
        )
    if not settings_from(cfg).weights_from_theta0:
        raise SystemExit(
            "nextquill: this recipe needs no theta_0 pass (nextquill_token_weighting is false or "
            "nextquill_weight_source is current)."
        )
    cache = recipe_cache_dir(cfg)
    problem = write_problem(cache)  # this command exists to fill the cache: find out first
    if problem:
        raise ValueError(
            f"cannot write the theta_0 cache to {cache} ({problem}); set "
            "nextquill_weight_cache_dir to a writable folder"
        )
    dataset_meta = load_datasets(cfg=cfg, cli_args=TrainerCliArgs())
    setup_model_and_trainer(cfg, dataset_meta)  # the plugin computes or loads the effects here
    if not any(cache.glob("effects-*.npz")):
        raise ValueError(f"the theta_0 pass wrote no cache file to {cache}; see the warnings above")
    return cache
