"""Axolotl dataset types for NextQuill (``type: dataset_formats.amazon_reviews`` / ``.paired``)
and the Amazon Reviews 2023 builder (``nextquill-data``)."""

from __future__ import annotations

import importlib

# The dataset types (the names a recipe's `type:` gives); each module's STRATEGY tokenizes rows.
DATASET_TYPES = ("dataset_formats.amazon_reviews", "dataset_formats.paired")


def strategy_class(dataset_type: str) -> type:
    """The strategy class of a dataset type, by the name a recipe gives it."""
    if dataset_type not in DATASET_TYPES:
        raise ValueError(
            f"unknown NextQuill dataset type {dataset_type!r}; the types are {', '.join(DATASET_TYPES)}"
        )
    return importlib.import_module(dataset_type).STRATEGY
