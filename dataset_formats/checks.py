"""Checks of a recipe's NextQuill datasets: the types import, and the prepared rows are the
ones this recipe's prompt settings make (with at least one paired row to train on).

They read only the contract and the prompt settings; the plugin calls them from its hooks.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

from axolotl.utils.logging import get_logger

from .contract import COUNTERFACTUAL_IDS, PROMPT_SETTINGS, TRUNCATION
from .prompting import describe_truncation
from .settings import PromptSettings

LOG = get_logger("axolotl.integrations.nextquill")  # logs on the main process only

DATASET_TYPES = ("dataset_formats.amazon_reviews", "dataset_formats.paired")


def check_dataset_types(cfg: Mapping[str, Any]) -> None:
    """Raise a clear error when a ``type: dataset_formats.X`` of the recipe cannot be imported
    (Axolotl would report an import error inside it as an unknown dataset type)."""
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
                    f"{', '.join(DATASET_TYPES)}; is the package installed in this environment "
                    "(pip install nextquill-axolotl)?"
                ) from error
            if not hasattr(module, "load"):
                raise ImportError(f"NextQuill: `{kind}` is not a dataset type (it has no load()).")


def check_prompt_settings(cfg, dataset, split: str) -> None:
    """Refuse rows that other prompt settings made (e.g. a ContextSFT recipe's prepared data
    found under a shared dataset_prepared_path: Axolotl's prepared-data hash does not include
    plugin keys, so it would be loaded silently)."""
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
    columns = dataset.column_names
    paired = (
        sum(1 for ids in dataset[COUNTERFACTUAL_IDS] if ids) if COUNTERFACTUAL_IDS in columns else 0
    )
    if paired == 0:
        message = (
            f"NextQuill: nextquill is true but {split} has no row with a counterfactual prompt "
            f"(no row of type {' or '.join(DATASET_TYPES)} whose history fits sequence_len)"
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
