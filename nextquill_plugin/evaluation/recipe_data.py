"""What evaluation and inspection read: a recipe (with overrides) and the built rows of a split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dataset_formats.cli_options import option
from dataset_formats.jsonl import read_jsonl

SUPPORTED_TYPE = "dataset_formats.amazon_reviews"


def read_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe as a dict with command-line overrides applied (as `axolotl train` would)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {path} is not a YAML mapping")
    recipe.update(overrides or {})
    if not recipe.get("base_model"):
        raise ValueError(f"recipe {path} has no base_model")
    return recipe


def split_path(recipe: dict[str, Any], split: str) -> Path:
    """``<folder of the recipe's training file>/<split>.jsonl``: the builder writes
    train/validation/test side by side."""
    datasets = recipe.get("datasets") or []
    if not datasets or not datasets[0].get("path"):
        raise ValueError(
            "the recipe has no datasets[0].path to find the split next to; pass --data"
        )
    return Path(datasets[0]["path"]).parent / f"{split}.jsonl"


def check_dataset_type(recipe: dict[str, Any]) -> None:
    """Refuse recipes whose rows are not ``SUPPORTED_TYPE`` (their prompts cannot be rendered)."""
    types = {d.get("type") for d in recipe.get("datasets") or []}
    if types and types != {SUPPORTED_TYPE}:
        raise ValueError(
            f"nextquill evaluate renders prompts of `{SUPPORTED_TYPE}` rows; this recipe's "
            f"datasets have types {sorted(map(str, types))}."
        )


def read_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL (or .jsonl.gz) file; a bad line is reported with its line number."""
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluation data {path} does not exist (build it with `nextquill-data build`, "
            "or pass --data FILE)"
        )
    rows = read_jsonl(path, limit)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def prompt_id(row: dict[str, Any], index: int) -> str:
    """``user_id/item_id`` of a built row (the row's index when it names no item)."""
    target = row.get("target") or {}
    return f"{row.get('user_id')}/{target.get('item_id') or index}"


@dataclass
class RecipeRowsRequest:
    """A model (a recipe's base model, or a checkpoint) and the rows to run it on; the
    evaluate and inspect requests extend it. One command-line option a field."""

    recipe: str
    checkpoint: str | None = option(
        "LoRA adapter or full model folder from training (default: the recipe's base_model)"
    )
    split: str = option("file <split>.jsonl next to the recipe's training data", default="test")
    data: str | None = option("a JSONL file of built rows instead of --split")
    overrides: dict[str, Any] | None = field(default=None, metadata={"cli": False})

    def load_recipe_and_rows(self, limit: int | None) -> tuple[dict[str, Any], Path, list]:
        """(the recipe with overrides, the rows' file, its first ``limit`` rows)."""
        recipe = read_recipe(self.recipe, self.overrides)
        check_dataset_type(recipe)
        data = Path(self.data) if self.data else split_path(recipe, self.split)
        return recipe, data, read_rows(data, limit)
