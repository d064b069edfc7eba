"""What Axolotl needs of NextQuill's keys beyond the shared schema (``config_keys.NextQuillArgs``,
which the plugin hands Axolotl as its input args): the settings carried on the trainer's
TrainingArguments, and the refusal of plugin keys typed on Axolotl's command line."""

from __future__ import annotations

from dataclasses import field, fields, make_dataclass
from pathlib import Path

from ..config_keys import SETTING_TYPES, recipe_key
from ..settings import NextQuillSettings

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
