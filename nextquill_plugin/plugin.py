"""The Axolotl plugin: wires NextQuill's trainer, collator and theta_0 weights into a run.

The pure math lives in :mod:`nextquill_plugin.equations` and :mod:`nextquill_plugin.objective`,
the column contract with the dataset types in :mod:`dataset_formats.contract`.
Recipes name the plugin ``nextquill_plugin.NextQuillPlugin``; the package's lazy ``__getattr__``
imports this module (and with it Axolotl) only then.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger

LOG = get_logger("axolotl.integrations.nextquill")


def nextquill_enabled(cfg: Any) -> bool:
    """True when the recipe asks for the NextQuill objective (``nextquill: true``)."""
    return bool(getattr(cfg, "nextquill", False))


def effects_cache_dir(cfg: Any) -> Path:
    """Where theta_0 effects are cached: next to the prepared dataset unless configured."""
    if cfg.nextquill_weight_cache_dir:
        return Path(cfg.nextquill_weight_cache_dir)
    from axolotl.common.const import DEFAULT_DATASET_PREPARED_PATH

    return Path(cfg.dataset_prepared_path or DEFAULT_DATASET_PREPARED_PATH) / "nextquill"


class NextQuillPlugin(BasePlugin):
    """Adds NextQuill's trainer, collator and theta_0 token weights to an Axolotl SFT run.

    Inert unless the recipe sets ``nextquill: true``: axolotl >= 0.21 loads entry-point
    plugins for every config, and a recipe may list the plugin only for its prompt keys.
    """

    def register(self, cfg: dict):
        """Import the recipe's dataset_formats types now, so a broken install fails clearly
        (Axolotl would report an import error inside them as an unknown dataset type), and
        refuse command-line overrides of plugin keys, which Axolotl's CLI does not pass on."""
        check_dataset_types(cfg)
        refuse_cli_overrides(sys.argv)

    def get_input_args(self) -> str:
        return "nextquill_plugin.args.NextQuillArgs"

    def get_training_args_mixin(self) -> str:
        return "nextquill_plugin.args.NextQuillTrainingArgsMixin"

    def get_training_args(self, cfg):
        """The objective's settings as ``nextquill_*`` training arguments (the mixin's fields)."""
        if not nextquill_enabled(cfg):
            return None
        from dataclasses import asdict

        from .args import SETTING_PREFIX, settings_from

        settings = asdict(settings_from(cfg))
        return {SETTING_PREFIX + name: value for name, value in settings.items()}

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
        attach theta_0 token weights to the datasets."""
        from .args import settings_from
        from .lm_head import resolve_lm_head
        from .settings import WeightSource

        enabled = nextquill_enabled(cfg)
        settings = settings_from(cfg)
        if enabled:
            resolve_lm_head(
                trainer.model
            )  # fails now, not at the first step, for unsupported heads
        for split in ("train_dataset", "eval_dataset"):
            dataset = getattr(trainer, split, None)
            if dataset is None or not hasattr(dataset, "column_names"):
                continue
            check_prompt_settings(cfg, dataset, split)  # also for ContextSFT recipes
            if not enabled:
                continue
            describe_rows(dataset, split)
            if settings.token_weighting and settings.weight_source == WeightSource.initial:
                setattr(trainer, split, attach_initial_weights(cfg, trainer, dataset))


def refuse_cli_overrides(argv: list[str]) -> None:
    """Fail when ``axolotl train recipe.yml --nextquill_alpha 0.7`` was typed.

    Axolotl's command line only knows its own keys: a plugin key given there is dropped (or,
    under some launchers, rejected), so the run would use the recipe's value without a word.
    """
    program = Path(argv[0]) if argv else Path()
    from_axolotl_cli = program.name == "axolotl" or {"axolotl", "cli"} <= set(program.parts)
    given = [a.split("=")[0] for a in argv[1:] if a.startswith("--nextquill")]
    if from_axolotl_cli and given:
        raise ValueError(
            f"NextQuill: {', '.join(given)} on the command line does not reach the plugin "
            "(Axolotl's CLI passes on only its own keys). Set the key in the recipe, or run a "
            "grid with `axolotl train recipe.yml --sweep sweep.yml` (see the README)."
        )


def check_dataset_types(cfg: dict) -> None:
    """Raise a clear error when a ``type: dataset_formats.X`` of the recipe cannot be imported."""
    import importlib

    for key in ("datasets", "test_datasets"):
        for dataset in cfg.get(key) or []:
            kind = dataset.get("type") if isinstance(dataset, dict) else None
            if not isinstance(kind, str) or not kind.startswith("dataset_formats."):
                continue
            try:
                module = importlib.import_module(kind)
            except ImportError as error:
                raise ImportError(
                    f"NextQuill: dataset type `{kind}` cannot be imported ({error}). Known types: "
                    "dataset_formats.amazon_reviews, dataset_formats.paired; is the package "
                    "installed in this environment (pip install nextquill-axolotl)?"
                ) from error
            if not hasattr(module, "load"):
                raise ImportError(f"NextQuill: `{kind}` is not a dataset type (it has no load()).")


def check_prompt_settings(cfg, dataset, split: str) -> None:
    """Refuse rows that other prompt settings made (e.g. a ContextSFT recipe's prepared data
    found under a shared dataset_prepared_path: Axolotl's prepared-data hash does not include
    plugin keys, so it would be loaded silently)."""
    from dataset_formats.contract import PROMPT_SETTINGS, TRUNCATION
    from dataset_formats.settings import PromptSettings

    columns = dataset.column_names
    if TRUNCATION not in columns:
        return  # no rows of a NextQuill dataset type
    expected = PromptSettings.from_cfg(cfg).fingerprint()
    found = set(dataset.unique(PROMPT_SETTINGS)) if PROMPT_SETTINGS in columns else {"unknown"}
    found.discard(None)  # rows of other dataset types mixed in
    if found - {expected}:
        raise ValueError(
            f"NextQuill: the prepared {split} rows were made with other NextQuill settings than "
            "this recipe's (nextquill, nextquill_history_*, prompt or sequence_len keys), e.g. "
            "by another recipe sharing this dataset_prepared_path "
            f"({cfg.dataset_prepared_path}). Give each recipe its own dataset_prepared_path, "
            "or delete the prepared data so that it is made again."
        )


def describe_rows(dataset, split: str) -> None:
    """Log how many rows are NextQuill rows and how many prompts had to be shortened; refuse a
    training split without a single paired row (NextQuill would silently be plain SFT)."""
    from dataset_formats.contract import COUNTERFACTUAL_IDS, TRUNCATION
    from dataset_formats.prompting import describe_truncation

    columns = dataset.column_names
    paired = (
        sum(1 for ids in dataset[COUNTERFACTUAL_IDS] if ids) if COUNTERFACTUAL_IDS in columns else 0
    )
    if paired == 0:
        message = (
            f"NextQuill: nextquill is true but {split} has no row with a counterfactual prompt "
            "(no row of type dataset_formats.amazon_reviews or dataset_formats.paired whose "
            "history fits sequence_len)"
        )
        if split == "train_dataset":
            raise ValueError(
                message + ": it would train plain SFT. Add such a dataset, raise sequence_len, "
                "or set nextquill: false."
            )
        LOG.warning("%s: it is evaluated with the plain loss.", message)
        return
    LOG.info(
        "NextQuill: %s has %d paired rows and %d ordinary rows.",
        split,
        paired,
        len(dataset) - paired,
    )
    if TRUNCATION in columns:
        counts = Counter(flag for flag in dataset[TRUNCATION] if flag)
        if counts:
            LOG.info(
                "NextQuill: %s prompts shortened to fit sequence_len: %s",
                split,
                describe_truncation(counts),
            )


def attach_initial_weights(cfg, trainer, dataset):
    """Compute (or load) theta_0 effects and add the ``nq_token_weights`` column."""
    from dataset_formats.contract import COUNTERFACTUAL_IDS, TOKEN_WEIGHTS

    from .token_effects import cached_token_effects

    if COUNTERFACTUAL_IDS not in dataset.column_names:
        return dataset
    if TOKEN_WEIGHTS in dataset.column_names:
        dataset = dataset.remove_columns(TOKEN_WEIGHTS)
    tokenizer = trainer.processing_class
    effects, path, computed = cached_token_effects(
        trainer.model,
        dataset,
        effects_cache_dir(cfg),
        model_name=str(cfg.base_model),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        batch_size=cfg.nextquill_weight_batch_size,  # autocast: the model's mixed precision
    )
    LOG.info(
        "NextQuill: %s theta_0 effects for %d rows (%s).",
        "computed" if computed else "used cached",
        len(effects),
        path,
    )
    weights = effects.row_weights(
        cfg.nextquill_delta, cfg.nextquill_high_weight, cfg.nextquill_low_weight
    )
    n_tokens, n_high = len(effects.p_with), effects.preference_token_count(cfg.nextquill_delta)
    LOG.info(
        "NextQuill: %d of %d target tokens (%.1f%%) are preference-bearing (effect > delta=%s).",
        n_high,
        n_tokens,
        100.0 * n_high / max(n_tokens, 1),
        cfg.nextquill_delta,
    )
    # Rows without a counterfactual prompt have no effects: None means weight 1 in the collator.
    return dataset.add_column(TOKEN_WEIGHTS, [w if w else None for w in weights])
