"""What Axolotl needs of NextQuill's keys beyond the shared schema (``config_keys.NextQuillArgs``,
which the plugin hands Axolotl as its input args): the settings carried on the trainer's
TrainingArguments, and the checks of a recipe that Axolotl's own loading skips (plugin keys typed
on its command line, keys it would drop, a key written twice)."""

from __future__ import annotations

import difflib
from dataclasses import field, fields, make_dataclass
from pathlib import Path
from typing import Any

import yaml
from axolotl.integrations.config import merge_input_args

from nextquill_common.recipe_yaml import read_mapping
from nextquill_common.refusals import REFUSAL_PREFIX

from ..config_keys import SETTING_TYPES, NextQuillArgs, ObjectiveArgs, recipe_key
from ..settings import NextQuillSettings

# Keys Axolotl itself adds to a loaded config before the plugins see it.
AXOLOTL_ADDED_KEYS = {"axolotl_config_path"}
# The keys that only the NextQuill objective reads: under nextquill: false they change nothing.
OBJECTIVE_ONLY_KEYS = (
    *ObjectiveArgs.model_fields,
    "nextquill_weight_batch_size",
    "nextquill_weight_cache_dir",
)

# The settings the trainer needs, carried on its TrainingArguments (Axolotl mixes this in). Built
# from the settings' fields so that a new setting reaches the trainer without a second declaration.
NextQuillTrainingArgsMixin = make_dataclass(
    "NextQuillTrainingArgsMixin",
    [
        (recipe_key(setting), SETTING_TYPES[setting.name], field(default=setting.default))
        for setting in fields(NextQuillSettings)
    ],
)
NextQuillTrainingArgsMixin.__module__ = __name__
NextQuillTrainingArgsMixin.__doc__ = "NextQuillSettings as nextquill_* training arguments."


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


def recipe_file(cfg: Any) -> Path | None:
    """The recipe file Axolotl loaded (None for a config built in memory)."""
    path = cfg.get("axolotl_config_path")
    return Path(path) if path and Path(path).is_file() else None


def written_keys(cfg: Any) -> dict[str, Any]:
    """The keys as the recipe file writes them (the loaded config also holds the values of
    Axolotl's own command-line options, which are no recipe keys)."""
    path = recipe_file(cfg)
    written = yaml.safe_load(path.read_text()) if path else None
    return written if isinstance(written, dict) else dict(cfg)


def refuse_duplicate_keys(cfg: Any) -> None:
    """Read the recipe file again (Axolotl's YAML keeps the last value of a key written twice)
    and refuse a key written twice, or a file that is not a mapping, naming it."""
    path = recipe_file(cfg)
    if path:
        try:
            read_mapping(path)
        except ValueError as error:
            raise ValueError(f"{REFUSAL_PREFIX}: {error}") from None


def known_keys() -> set[str]:
    """Every top-level key Axolotl's schema (with every registered plugin's) declares, by name
    and by alias."""
    _, schema = merge_input_args()
    return {
        name
        for key, info in schema.model_fields.items()
        for name in (key, info.alias, info.validation_alias)
        if isinstance(name, str)
    }


def unknown_keys(cfg: Any) -> list[tuple[str, str | None]]:
    """Top-level keys that neither Axolotl's schema nor NextQuill's declares (Axolotl drops them
    without a word), in the given order, each with the closest known key (or None)."""
    known = known_keys() | set(NextQuillArgs.model_fields) | AXOLOTL_ADDED_KEYS
    return [
        (key, close[0] if close else None)
        for key in cfg
        if isinstance(key, str) and key not in known
        for close in [difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)]
    ]


def recipe_chat_template(recipe: dict[str, Any], tokenizer: Any) -> str:
    """The chat template Axolotl's load_tokenizer sets for a recipe's ``chat_template`` /
    ``chat_template_jinja`` (with ``default_system_message`` in ChatML's)."""
    from axolotl.utils.chat_templates import get_chat_template_from_config  # on use: jinja

    if recipe.get("chat_template_jinja") and not recipe.get("chat_template"):
        recipe = {**recipe, "chat_template": "jinja"}  # as Axolotl's validation completes it
    template = get_chat_template_from_config(cfg=recipe, tokenizer=tokenizer)
    if recipe.get("default_system_message") and recipe["chat_template"] == "chatml":
        template = template.replace(
            "You are a helpful assistant.", recipe["default_system_message"]
        )
    return template


def schema_types() -> dict[str, Any]:
    """Each key of Axolotl's schema with its type (an override's value is checked against it)."""
    _, schema = merge_input_args()
    return {key: info.annotation for key, info in schema.model_fields.items()}


def keys_without_effect(cfg: Any) -> list[str]:
    """The objective's keys a recipe sets although ``nextquill`` is off (ContextSFT or SFT):
    they change nothing in that run."""
    if cfg.get("nextquill"):
        return []
    return [key for key in OBJECTIVE_ONLY_KEYS if cfg.get(key) is not None]
