"""What evaluation and inspection read: a recipe (with overrides) and the built rows of a split."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataset_formats import DATASET_TYPES
from dataset_formats.sources import local_data_path
from dataset_formats.strategy import EvaluableType
from nextquill_common.cli_options import option
from nextquill_common.jsonl import input_file_problem, read_jsonl
from nextquill_common.recipe_yaml import missing_local_model, read_mapping

from ..trl.recipe_view import is_trl_config, recipe_view

EVALUABLE_TYPES = DATASET_TYPES


def read_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe as a dict with command-line overrides applied (as `axolotl train` would). A
    TRL-style config (``nextquill trl-sft``'s) is read as the Axolotl recipe it amounts to."""
    path = Path(path)
    problem = input_file_problem(path)
    if problem:
        raise FileNotFoundError(f"recipe {path} {problem}")
    recipe = read_mapping(path)
    if is_trl_config(recipe):
        recipe = recipe_view(recipe)
    recipe.update(overrides or {})
    if not recipe.get("base_model"):
        raise ValueError(f"recipe {path} has no base_model")
    problem = missing_local_model(recipe["base_model"])
    if problem:
        raise FileNotFoundError(f"recipe {path}: {problem}")
    return recipe


def recipe_tokenizer(recipe: dict[str, Any], checkpoint: str | None):
    """The tokenizer the recipe trains with: the checkpoint's (or base model's), with the
    recipe's ``chat_template`` / ``chat_template_jinja`` set as Axolotl sets them before
    training (without it, the base model's own template rendered other prompts)."""
    from .generation import load_tokenizer  # on use: transformers

    tokenizer = load_tokenizer(recipe["base_model"], checkpoint)
    if not (recipe.get("chat_template") or recipe.get("chat_template_jinja")):
        return tokenizer
    try:  # on use, and only for such recipes: Axolotl renders the recipe's templates
        from ..axolotl.args import recipe_chat_template
    except ModuleNotFoundError:
        raise ValueError(
            "the recipe sets a chat template, which Axolotl renders; install Axolotl "
            "(pip install 'nextquill-axolotl[axolotl]')"
        ) from None
    template = recipe_chat_template(recipe, tokenizer)
    tokenizer.chat_template = template
    return tokenizer


def evaluated_dataset(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's first dataset of a NextQuill type (a mixed recipe's other rows have no
    history to personalize from, so they are not evaluated)."""
    datasets = [d for d in recipe.get("datasets") or [] if isinstance(d, dict)]
    for dataset in datasets:
        if dataset.get("type") in EVALUABLE_TYPES:
            return dataset
    raise ValueError(
        f"nextquill evaluates rows of the types {', '.join(EVALUABLE_TYPES)}; this recipe's "
        f"datasets have types {sorted(str(d.get('type')) for d in datasets)}."
    )


def split_path(dataset: dict[str, Any], split: str) -> Path:
    """``<split>.jsonl`` beside the dataset's file (``path``, or ``data_files`` under
    ``path: json``), or inside it when the recipe names the builder's folder: the builder
    writes train/validation/test side by side."""
    path = local_data_path(dataset)
    if path is None:
        raise ValueError(
            "the evaluated dataset names no local file or folder to find the split next to; "
            "pass --data"
        )
    return (path if path.is_dir() else path.parent) / f"{split}.jsonl"


def load_strategy(dataset_type: str, tokenizer, recipe: dict[str, Any]) -> EvaluableType:
    """The dataset type's strategy for this recipe (what training tokenizes rows with)."""
    strategy = importlib.import_module(dataset_type).load(tokenizer, recipe)
    if not isinstance(strategy, EvaluableType):
        raise TypeError(f"{dataset_type} does not meet the EvaluableType contract")
    return strategy


def read_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL (or .jsonl.gz) file; a bad line is reported with its line number."""
    problem = input_file_problem(path)
    if problem == "does not exist":
        raise FileNotFoundError(
            f"evaluation data {path} does not exist (build it with `nextquill-data build`, "
            "or pass --data FILE)"
        )
    if problem:
        raise FileNotFoundError(f"evaluation data {path} {problem}")
    rows = read_jsonl(path, limit)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


@dataclass
class RecipeRowsRequest:
    """A model (a recipe's base model, or a checkpoint) and the rows to run it on; the
    evaluate and inspect requests extend it. One command-line option a field."""

    recipe: str = field(
        metadata={
            "help": "the recipe the model was trained with (its prompt keys, base_model, data)"
        }
    )
    checkpoint: str | None = option(
        "LoRA adapter or full model folder from training (default: the recipe's base_model)"
    )
    split: str | None = option(
        "file <split>.jsonl next to the recipe's training data (default: test)"
    )
    data: str | None = option("a JSONL file of built rows instead of --split")
    overrides: dict[str, Any] | None = field(default=None, metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.split and self.data:
            raise ValueError("--split and --data both name the rows to use; give one of them")
        if self.split is None and not self.data:
            self.split = "test"

    def load_recipe_and_rows(self, limit: int | None) -> tuple[dict[str, Any], str, Path, list]:
        """(the recipe with overrides, the dataset type, the rows' file, its first ``limit``
        rows)."""
        recipe = read_recipe(self.recipe, self.overrides)
        dataset = evaluated_dataset(recipe)
        data = Path(self.data) if self.data else split_path(dataset, self.split)
        return recipe, dataset["type"], data, read_rows(data, limit)


@dataclass
class FirstRowsRequest(RecipeRowsRequest):
    """A RecipeRowsRequest that may stop after the first N rows (evaluate, prompts)."""

    limit: int | None = option("only the first N rows")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1 (got {self.limit})")
