"""The Axolotl plugin: hooks that wire NextQuill's trainer, collator and theta_0 effects into a
run. Each hook calls the module that owns its job:

- ``config_keys.py``: the recipe keys and their checks; ``args.py``: what Axolotl adds to them;
- ``dataset_formats.checks``: the dataset types import, the prepared rows fit the recipe;
- ``trainer.py`` (with ``trainer_mixin.py``) and ``collator.py``: the loss, the batches and the
  theta_0 effects.

Recipes name the plugin ``nextquill_plugin.NextQuillPlugin``; the package's lazy
``__getattr__`` imports this module (and with it Axolotl) only then.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin
from transformers import set_seed

from dataset_formats.checks import (
    LOG,
    check_data_files,
    check_data_sources,
    check_dataset_types,
    check_output_paths,
    check_prompt_settings,
    describe_rows,
)
from dataset_formats.strategy import PLUGIN
from nextquill_common.recipe_yaml import missing_deepspeed_config, missing_local_model
from nextquill_common.refusals import install_refusal_hook

from ..config_keys import settings_from
from ..effects_cache import effects_cache_dir
from ..settings import SETTING_PREFIX
from ..trainer_mixin import DATASET_SPLITS
from .args import (
    keys_without_effect,
    refuse_cli_overrides,
    refuse_duplicate_keys,
    unknown_keys,
    written_keys,
)


def recipe_cache_dir(cfg: Any) -> Path:
    """The recipe's theta_0 cache folder (``effects_cache_dir``'s rule)."""
    return effects_cache_dir(cfg.nextquill_weight_cache_dir, cfg.dataset_prepared_path)


def check_recipe_keys(cfg: Any) -> None:
    """Name the keys Axolotl would drop and those without effect in this run (warnings: the run
    goes on), then refuse a key written twice."""
    written = written_keys(cfg)
    unknown = unknown_keys(written)
    if unknown:
        LOG.warning(
            "NextQuill: the recipe sets keys that neither Axolotl nor NextQuill declares; "
            "Axolotl drops them and the run goes on without them: %s",
            "; ".join(
                key + (f" (did you mean {close}?)" if close else "")
                for key, close in sorted(unknown)
            ),
        )
    ignored = keys_without_effect(written)
    if ignored:
        LOG.warning(
            "NextQuill: nextquill is false (ContextSFT/SFT), so these keys have no effect in "
            "this run: %s",
            ", ".join(ignored),
        )
    refuse_duplicate_keys(cfg)


def nextquill_enabled(cfg: Any) -> bool:
    """True when the recipe asks for the NextQuill objective (``nextquill: true``)."""
    return bool(getattr(cfg, "nextquill", False))


class NextQuillPlugin(BasePlugin):
    """Adds NextQuill's trainer, collator and theta_0 token weights to an Axolotl SFT run.

    Inert unless the recipe sets ``nextquill: true``: axolotl >= 0.21 loads entry-point
    plugins for every config, and a recipe may list the plugin only for its prompt keys.
    """

    def register(self, cfg: dict):
        """Before validation: the recipe writes each key once; keys Axolotl would drop and keys
        without effect in this run are named; the dataset types import, their data files can be
        read, and no plugin key was typed on Axolotl's command line (which does not pass them
        on). From here on a refusal of ours prints its message without a stack trace."""
        install_refusal_hook()
        if nextquill_enabled(cfg) or PLUGIN in (cfg.get("plugins") or []):
            check_recipe_keys(cfg)
            for problem in (
                missing_local_model(cfg.get("base_model")),
                missing_deepspeed_config(cfg.get("deepspeed")),
            ):
                if problem:
                    raise FileNotFoundError(f"NextQuill: {problem}")
            check_output_paths(cfg)
        check_dataset_types(cfg)
        check_data_files(cfg)
        refuse_cli_overrides(sys.argv)

    def load_datasets(self, cfg, preprocess: bool = False):
        """Axolotl's own loading, always (None); under `axolotl preprocess` (which loads no
        model, so cannot run the theta_0 pass) say which command fills the effects cache."""
        if preprocess and nextquill_enabled(cfg) and settings_from(cfg).weights_from_theta0:
            LOG.warning(
                "NextQuill: `axolotl preprocess` prepares the rows only; the theta_0 effects are "
                "computed by `nextquill weights %s` (before a multi-GPU run) or at the start of "
                "`axolotl train`, and cached in %s.",
                cfg.get("axolotl_config_path") or "recipe.yml",
                recipe_cache_dir(cfg),
            )
        return None

    def pre_model_load(self, cfg):
        """Seed with the recipe's ``seed`` before the model and its adapter are built: Axolotl
        initialises LoRA before it seeds, so two runs of one recipe would start apart."""
        if cfg.seed is not None and (nextquill_enabled(cfg) or PLUGIN in (cfg.plugins or [])):
            set_seed(int(cfg.seed))

    def get_input_args(self) -> str:
        return "nextquill_plugin.config_keys.NextQuillArgs"

    def get_training_args_mixin(self) -> str:
        return "nextquill_plugin.axolotl.args.NextQuillTrainingArgsMixin"

    def get_training_args(self, cfg):
        """The objective's settings as ``nextquill_*`` training arguments (the mixin's fields)."""
        if not nextquill_enabled(cfg):
            return None
        return {SETTING_PREFIX + name: value for name, value in asdict(settings_from(cfg)).items()}

    def get_trainer_cls(self, cfg):
        if not nextquill_enabled(cfg):
            return None
        # Imported on use, as Axolotl's own plugins do: Axolotl loads plugins for every command
        # (preprocess, inference, merge-lora), and the trainer module imports TRL and torch.
        from .trainer import NextQuillTrainer

        return NextQuillTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval=False):
        if not nextquill_enabled(cfg):
            return None
        from .collator import NextQuillDataCollator  # on use, as the trainer above

        return NextQuillDataCollator, {}

    def post_trainer_create(self, cfg, trainer):
        """Before the first optimizer step: check the prepared rows against the recipe, then
        attach theta_0 effects to the datasets (``NextQuillTrainer.prepare_nextquill``)."""
        enabled = nextquill_enabled(cfg)
        for split in DATASET_SPLITS:
            dataset = getattr(trainer, split, None)
            if dataset is None or not hasattr(dataset, "column_names"):
                continue
            check_prompt_settings(cfg, dataset, split)  # also for ContextSFT recipes
            check_data_sources(cfg, dataset, split)
            if enabled:
                describe_rows(dataset, split)
        if enabled and cfg.lora_model_dir and settings_from(cfg).weights_from_theta0:
            raise ValueError(
                f"NextQuill: lora_model_dir {cfg.lora_model_dir} starts training from a trained "
                "adapter, so theta_0 (the initial model) is the base model with that adapter, "
                "while the theta_0 pass runs the base model with the adapter off. Merge the "
                "adapter into the model (axolotl merge-lora) and name that as base_model."
            )
        if enabled:
            trainer.prepare_nextquill(
                recipe_cache_dir(cfg),
                model_name=str(cfg.base_model),
                batch_size=cfg.nextquill_weight_batch_size,
            )
