"""Checks of a recipe's NextQuill datasets: the types import, and the prepared rows are the
ones this recipe's prompt settings make (with at least one paired row to train on).

They read only the contract and the prompt settings; the plugin calls them from its hooks.
"""

from __future__ import annotations

import importlib
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from axolotl.utils.logging import get_logger

from nextquill_common.jsonl import (
    JSON_SUFFIXES,
    check_json_lines,
    check_json_rows_file,
    first_json_line,
)

from . import DATASET_TYPES
from .contract import COUNTERFACTUAL_IDS, DATA_SOURCE, PROMPT_SETTINGS, TRUNCATION
from .prompting import describe_truncation
from .settings import PromptSettings
from .sources import changed_source, files_a_loader_reads, local_data_files, local_data_path

LOG = get_logger("axolotl.integrations.nextquill")  # logs on the main process only


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


OUTPUT_KEYS = ("output_dir", "dataset_prepared_path", "nextquill_weight_cache_dir")


def check_output_paths(cfg: Mapping[str, Any]) -> None:
    """Refuse, before Axolotl, an output folder that is a file (Axolotl stops with a trace), or
    one inside a dataset folder: a folder's files are its data's identity, so what a run
    writes there would make the prepared rows out of date at every run."""
    folders = [
        path
        for key in ("datasets", "test_datasets")
        for dataset in cfg.get(key) or []
        if isinstance(dataset, Mapping)
        for path in [local_data_path(dataset)]
        if path is not None and path.is_dir()
    ]
    for key in OUTPUT_KEYS:
        value = cfg.get(key)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser().absolute()
        if path.exists() and not path.is_dir():
            raise ValueError(f"NextQuill: {key} {value} is a file; give a folder")
        for folder in folders:  # resolved: a link to the folder leads inside it too
            if path.resolve().is_relative_to(folder.resolve()):
                raise ValueError(
                    f"NextQuill: {key} {value} is inside the dataset folder {folder}, whose "
                    "files are the data: what is written there would change it at every run; "
                    "put it outside that folder"
                )


ROWS_SAMPLED = 1000  # rows of a NextQuill data file checked for their fields (all: for JSON)


def check_data_files(cfg: Mapping[str, Any]) -> None:
    """Checks of each local JSON(L) file of the recipe before Axolotl reads it (its loader
    stops on these with errors that name no file, or a wrong row): the file is not empty and
    every line is a JSON object. A NextQuill type's file must be JSON Lines, and not every one
    of its first rows may be malformed; bad rows among those are named by line (the dataset
    type skips them when it loads). Another type's file is checked when it is JSON Lines."""
    for key in ("datasets", "test_datasets"):
        for dataset in cfg.get(key) or []:
            if not isinstance(dataset, Mapping):
                continue
            kind = dataset.get("type")
            for path in local_data_files(dataset):
                for file in files_a_loader_reads(path) if path.exists() else []:
                    if kind in DATASET_TYPES:
                        check_data_file(file, kind)
                    elif dataset.get("ds_type") == "json" or file.name.endswith(JSON_SUFFIXES):
                        check_other_json_file(file)


def check_data_file(path: Path, kind: str) -> None:
    """Raise ValueError naming ``path`` (and the line) when Axolotl could not load it."""
    try:
        sample = check_json_rows_file(path, keep_rows=ROWS_SAMPLED)
    except ValueError as error:
        raise ValueError(f"NextQuill: {error} ({kind} data)") from None
    if sample is None:
        return  # a JSON array, not JSON Lines: Axolotl reads it whole
    strategy = importlib.import_module(kind).STRATEGY
    bad = [
        f"{path}:{number}: {problem}"
        for number, row in sample
        for problem in [strategy.row_problem(row)]
        if problem
    ]
    if bad and len(bad) == len(sample):
        raise ValueError(
            f"NextQuill: none of the first {len(sample)} rows of {path} is a {kind} row: "
            + "; ".join(bad[:3])
        )
    for message in bad[:5]:
        LOG.warning("NextQuill: %s; the row will be skipped", message)
    if len(bad) > 5:
        LOG.warning(
            "NextQuill: %d more bad rows among the first %d of %s", len(bad) - 5, len(sample), path
        )


def check_other_json_file(path: Path) -> None:
    """A stock type's file (alpaca, chat_template, ...): when it is JSON Lines (its first line
    is a JSON object), every line must be one; a JSON document is left to its loader."""
    first = first_json_line(path)
    if first is None:
        raise ValueError(f"NextQuill: {path} is empty: it holds no rows")
    try:
        if not isinstance(json.loads(first[1]), dict):
            return
    except json.JSONDecodeError:
        return  # a JSON document over several lines, not JSON Lines
    try:
        check_json_lines(path)
    except ValueError as error:
        raise ValueError(f"NextQuill: {error}") from None


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


def check_data_sources(cfg, dataset, split: str) -> None:
    """Refuse prepared rows whose data file has changed since they were made: Axolotl loads
    prepared data by the recipe's hash alone, so a rebuilt file would train as its old rows."""
    if DATA_SOURCE not in dataset.column_names:
        return
    changed = [
        why for source in dataset.unique(DATA_SOURCE) if source and (why := changed_source(source))
    ]
    if changed:
        raise ValueError(
            f"NextQuill: the prepared {split} rows are out of date: {'; '.join(changed)}. Axolotl "
            "would train on the old rows. Delete the prepared data so that it is made again "
            f"(dataset_prepared_path: {cfg.dataset_prepared_path})."
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
