"""What ``nextquill evaluate``, ``inspect`` and ``prompts`` read of a TRL-style config: they take
Axolotl-shaped recipes, and a TRL config says the same things under TRL's names. Imports TRL
only for its defaults, when a view is made."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from dataset_formats import DATASET_TYPES

# A TRL config names its model by this key; an Axolotl recipe by base_model.
TRL_MODEL_KEY = "model_name_or_path"


def is_trl_config(config: dict[str, Any]) -> bool:
    """Whether a YAML mapping is a TRL-style config (``nextquill trl-sft``'s) rather than an
    Axolotl recipe."""
    return TRL_MODEL_KEY in config and "base_model" not in config


def training_file(config: dict[str, Any]) -> str | None:
    """The local file the config trains on: the first dataset's ``data_files`` (a path, a list,
    or a split mapping), or the train split of ``dataset_name`` read as a folder of
    ``nextquill-data build`` splits."""
    datasets = config.get("datasets") or []
    if datasets and isinstance(datasets[0], dict):
        files = datasets[0].get("data_files")
        if isinstance(files, dict):
            files = files.get(config.get("dataset_train_split", "train")) or next(
                iter(files.values()), None
            )
        if isinstance(files, list):
            files = files[0] if files else None
        return str(files) if files else None
    name = config.get("dataset_name")  # a Hub name has no local file: evaluate then asks for --data
    if name:
        return str(Path(name) / f"{config.get('dataset_train_split', 'train')}.jsonl")
    return None


def sft_default(key: str) -> Any:
    """TRL's default of an SFTConfig key (read from TRL, not restated here)."""
    from trl import SFTConfig  # on use: evaluation reads Axolotl recipes without TRL

    return next(f.default for f in fields(SFTConfig) if f.name == key)


def recipe_view(config: dict[str, Any]) -> dict[str, Any]:
    """The Axolotl-shaped recipe a TRL config amounts to, for evaluation and inspection: its
    model, sequence length, NextQuill keys, and its training file with its dataset type."""
    view = {key: value for key, value in config.items() if key.startswith("nextquill")}
    view.pop("nextquill_dataset_type", None)
    view["nextquill"] = config.get("nextquill", True)
    view["base_model"] = config[TRL_MODEL_KEY]
    view["sequence_len"] = config.get("max_length") or sft_default("max_length")
    dataset_type = config.get("nextquill_dataset_type", DATASET_TYPES[0])
    view["datasets"] = [{"path": training_file(config), "type": dataset_type}]
    return view
