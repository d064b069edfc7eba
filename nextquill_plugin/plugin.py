"""The Axolotl plugin: hooks that wire NextQuill's trainer, collator and theta_0 effects into a
run. Each hook calls the module that owns its job:

- ``args.py``: the recipe keys and their checks (``refuse_cli_overrides`` included);
- ``dataset_formats.checks``: the dataset types import, the prepared rows fit the recipe;
- ``effects_cache.py``: theta_0 effects for the datasets, computed once and cached;
- ``trainer.py`` and ``collator.py``: the loss and the batches.

Recipes name the plugin ``nextquill_plugin.NextQuillPlugin``; the package's lazy
``__getattr__`` imports this module (and with it Axolotl) only then.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin

from dataset_formats.checks import (
    check_data_files,
    check_data_sources,
    check_dataset_types,
    check_prompt_settings,
    describe_rows,
)
from dataset_formats.strategy import PLUGIN

from .args import refuse_cli_overrides, settings_from
from .settings import SETTING_PREFIX, NextQuillSettings

DATASET_SPLITS = ("train_dataset", "eval_dataset")


def effects_cache_dir(cfg: Any) -> Path:
    """Where theta_0 effects are cached: next to the prepared dataset unless configured."""
    if cfg.nextquill_weight_cache_dir:
        return Path(cfg.nextquill_weight_cache_dir)
    from axolotl.common.const import DEFAULT_DATASET_PREPARED_PATH

    return Path(cfg.dataset_prepared_path or DEFAULT_DATASET_PREPARED_PATH) / "nextquill"


def attach_theta0_effects(cfg: Any, settings: NextQuillSettings, trainer, dataset):
    """theta_0 effects for an Axolotl run: the recipe's cache folder, base model and pass
    batch size (``effects_cache.with_theta0_effects``)."""
    from .effects_cache import with_theta0_effects

    return with_theta0_effects(
        trainer.model,
        trainer.processing_class,
        dataset,
        settings,
        effects_cache_dir(cfg),
        model_name=str(cfg.base_model),
        batch_size=cfg.nextquill_weight_batch_size,
    )


def nextquill_enabled(cfg: Any) -> bool:
    """True when the recipe asks for the NextQuill objective (``nextquill: true``)."""
    return bool(getattr(cfg, "nextquill", False))


class NextQuillPlugin(BasePlugin):
    """Adds NextQuill's trainer, collator and theta_0 token weights to an Axolotl SFT run.

    Inert unless the recipe sets ``nextquill: true``: axolotl >= 0.21 loads entry-point
    plugins for every config, and a recipe may list the plugin only for its prompt keys.
    """

    def register(self, cfg: dict):
        """Before validation: the recipe's dataset types import, their data files can be read,
        and no plugin key was typed on Axolotl's command line (which does not pass them on)."""
        check_dataset_types(cfg)
        check_data_files(cfg)
        refuse_cli_overrides(sys.argv)

    def pre_model_load(self, cfg):
        """Seed with the recipe's ``seed`` before the model and its adapter are built: Axolotl
        initialises LoRA before it seeds, so two runs of one recipe would start apart."""
        if cfg.seed is not None and (nextquill_enabled(cfg) or PLUGIN in (cfg.plugins or [])):
            from transformers import set_seed

            set_seed(int(cfg.seed))

    def get_input_args(self) -> str:
        return "nextquill_plugin.args.NextQuillArgs"

    def get_training_args_mixin(self) -> str:
        return "nextquill_plugin.args.NextQuillTrainingArgsMixin"

    def get_training_args(self, cfg):
        """The objective's settings as ``nextquill_*`` training arguments (the mixin's fields)."""
        if not nextquill_enabled(cfg):
            return None
        return {SETTING_PREFIX + name: value for name, value in asdict(settings_from(cfg)).items()}

    def get_trainer_cls(self, cfg):
        if not nextquill_enabled(cfg):
            return None
        from .trainer import NextQuillTrainer

        return NextQuillTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval=False):
        if not nextquill_enabled(cfg):
            return None
        from .collator import NextQuillDataCollator

        return NextQuillDataCollator, {}

    def post_trainer_create(self, cfg, trainer):
        """Before the first optimizer step: check the prepared rows against the recipe, then
        attach theta_0 effects to the datasets."""
        enabled = nextquill_enabled(cfg)
        settings = settings_from(cfg)
        if enabled:
            from .lm_head import resolve_lm_head

            resolve_lm_head(trainer.model)  # fails now, not at the first step, for odd heads
        for split in DATASET_SPLITS:
            dataset = getattr(trainer, split, None)
            if dataset is None or not hasattr(dataset, "column_names"):
                continue
            check_prompt_settings(cfg, dataset, split)  # also for ContextSFT recipes
            check_data_sources(cfg, dataset, split)
            if not enabled:
                continue
            describe_rows(dataset, split)
            if settings.weights_from_theta0:
                setattr(trainer, split, attach_theta0_effects(cfg, settings, trainer, dataset))
