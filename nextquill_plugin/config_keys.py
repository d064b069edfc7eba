"""NextQuill's configuration keys (``nextquill_*``) and their checks, shared by both frameworks:
an Axolotl recipe's keys (``NextQuillArgs`` is merged into Axolotl's config schema) and a TRL
config's (``trl.config.NextQuillSFTConfig`` derives its fields from ``NextQuillArgs``).

Nothing is declared here twice: the objective's keys are derived from
``settings.NextQuillSettings`` and the prompt keys are the dataset types' own
(``dataset_formats.settings.PromptArgs``); ``NextQuillArgs`` composes them with the keys of the
theta_0 pass.

The schemas are built at import (``create_model``) from the settings' dataclass fields, which
type checkers cannot see through; writing each key out as a class attribute would declare every
setting twice, which is the drift this module exists to prevent.
"""

from __future__ import annotations

import difflib
from dataclasses import Field, fields
from enum import Enum
from typing import Any, get_type_hints

from pydantic import (
    BaseModel,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic import Field as PydanticField
from pydantic_core import PydanticCustomError

from dataset_formats.settings import (
    PromptArgs,
    PromptSettings,
    WholeNumber,
    describe_validation_error,
)
from nextquill_common.refusals import SETTING_ERROR

from .settings import SETTING_PREFIX, WEIGHT_PASS_BATCH_SIZE, NextQuillSettings, WeightSource

SETTING_TYPES = get_type_hints(NextQuillSettings)


def recipe_key(setting: Field) -> str:
    """The recipe key of a ``NextQuillSettings`` field."""
    return SETTING_PREFIX + setting.name


BOUNDS = ("ge", "le", "lt")  # the pydantic bounds a setting may declare in its metadata


def _schema_field(setting: Field) -> Any:
    """The pydantic field of a setting, with the bounds declared in its metadata. Numbers are
    strict and finite: the text "0.05" is refused rather than parsed, and so are nan and inf
    (a nan weight trains to a nan loss)."""
    number = SETTING_TYPES[setting.name] is float
    return PydanticField(
        default=setting.default,
        description=f"{setting.metadata['symbol']}: {setting.metadata['description']}",
        strict=number or None,
        allow_inf_nan=False if number else None,
        **{bound: setting.metadata[bound] for bound in BOUNDS if bound in setting.metadata},
    )


def _bounds_message(setting: Field, value: Any) -> str:
    """How a value outside the setting's bounds is refused: the key, the range and the value."""
    key, bounds = recipe_key(setting), setting.metadata
    low, high = bounds.get("ge"), bounds.get("le", bounds.get("lt"))
    if high is None:
        return f"{key} must be >= {low} (got {value}); the paper uses {setting.default}."
    closing = "]" if "le" in bounds else ")"
    return f"{key} must lie in [{low}, {high}{closing} (got {value})."


def _describe_errors(value: Any, handler: Any, info: ValidationInfo) -> Any:
    """pydantic checks each setting's type and bounds; a refused value is described in our
    words, naming the key, what it takes and the value given."""
    try:
        return handler(value)
    except ValidationError as error:
        setting = _SETTINGS_BY_KEY[info.field_name]
        if any(e["type"] in _BOUND_ERRORS for e in error.errors()):
            message = _bounds_message(setting, value)
        else:
            message = f"{info.field_name}: {error.errors()[0]['msg']} (got {value!r})"
            if isinstance(value, str) and _reads_as_number(value):
                message += (
                    f"; YAML reads {value} as text: write it as a decimal (e.g. 0.05) or with a "
                    "dot and a signed exponent (5.0e-2)"
                )
        raise PydanticCustomError(SETTING_ERROR, message) from None


def _reads_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_BOUND_ERRORS = {"greater_than_equal", "less_than_equal", "less_than"}
_SETTINGS_BY_KEY = {recipe_key(f): f for f in fields(NextQuillSettings)}

# pydantic schema of the objective's keys: nextquill_alpha, nextquill_delta, ...
ObjectiveArgs: type[BaseModel] = create_model(
    "ObjectiveArgs",
    __doc__="Recipe keys of the objective, derived from ``NextQuillSettings``.",
    __validators__={
        "describe_errors": field_validator(*_SETTINGS_BY_KEY, mode="wrap")(_describe_errors)
    },
    **{key: (SETTING_TYPES[f.name], _schema_field(f)) for key, f in _SETTINGS_BY_KEY.items()},
)


def settings_from(source: Any) -> NextQuillSettings:
    """``NextQuillSettings`` from anything with ``nextquill_*`` attributes or keys: a validated
    Axolotl config, training arguments, or a raw recipe dict (validated here)."""
    if isinstance(source, dict):
        source = objective_args(source)
    values = {f.name: getattr(source, recipe_key(f)) for f in fields(NextQuillSettings)}
    for name, kind in SETTING_TYPES.items():  # enum settings arrive as their text
        if isinstance(kind, type) and issubclass(kind, Enum):
            values[name] = kind(values[name])
    return NextQuillSettings(**values)


def objective_args(data: dict[str, Any]) -> BaseModel:
    """The objective's keys of a raw recipe, type-checked, with defaults filled in."""
    given = {key: data[key] for key in ObjectiveArgs.model_fields if data.get(key) is not None}
    try:
        return ObjectiveArgs.model_validate(given)
    except ValidationError as error:
        raise ValueError(describe_validation_error(error)) from None


class NextQuillArgs(ObjectiveArgs, PromptArgs):
    """Top-level recipe keys. Axolotl drops undeclared keys, so every setting lives here."""

    nextquill: bool = PydanticField(
        default=False,
        description="Train with the NextQuill objective. False: the plugin changes nothing.",
    )
    nextquill_weight_batch_size: WholeNumber = PydanticField(
        default=WEIGHT_PASS_BATCH_SIZE,
        ge=1,
        description="Micro-batch size of the theta_0 weight pass.",
    )
    nextquill_weight_cache_dir: str | None = PydanticField(
        default=None,
        description="Where theta_0 effects are cached; default <dataset_prepared_path>/nextquill.",
    )

    @model_validator(mode="before")
    @classmethod
    def nextquill_check_settings(cls, data: Any) -> Any:
        """Reject settings that cannot work, naming the key and the fix."""
        if not isinstance(data, dict):
            return data
        misspelled = misspelled_keys(data, known=set(cls.model_fields))
        if misspelled:
            raise ValueError("NextQuill config: " + " ".join(misspelled))
        if not data.get("nextquill"):
            return data
        problems = nextquill_config_problems(data)
        if problems:
            raise ValueError("NextQuill config: " + " ".join(problems))
        kwargs = checkpointing_kwargs(
            data.get("gradient_checkpointing"), data.get("gradient_checkpointing_kwargs")
        )
        return {**data, "gradient_checkpointing_kwargs": kwargs} if kwargs is not None else data


def checkpointing_kwargs(gradient_checkpointing: Any, kwargs: dict | None) -> dict | None:
    """NextQuill's default for ``gradient_checkpointing_kwargs``: non-reentrant when checkpointing
    is on and the config gives none. Under reentrant checkpointing (Axolotl's and TRL's default)
    each of NextQuill's two forward passes runs its own backward and DeepSpeed ZeRO reduces
    gradients twice. Applied where each framework reads its config: Axolotl's model loader
    enables checkpointing from the recipe, before any trainer exists."""
    if gradient_checkpointing and kwargs is None:
        return {"use_reentrant": False}
    return kwargs


def misspelled_keys(data: dict[str, Any], known: set[str]) -> list[str]:
    """Keys that look like NextQuill's but are none of them (Axolotl would drop them and the
    run would use the default without a word), each with the closest valid name."""
    ours = sorted(key for key in NextQuillArgs.model_fields if key.startswith("nextquill"))
    problems = []
    for key in data:
        if not isinstance(key, str) or key in known:
            continue
        close = difflib.get_close_matches(key, ours, n=1, cutoff=0.8)
        if key.lower().startswith("nextq") or close:
            hint = f"did you mean {close[0]}?" if close else f"NextQuill's keys: {', '.join(ours)}."
            problems.append(f"unknown key {key}: {hint}")
    return problems


def raw_settings(data: dict[str, Any]) -> NextQuillSettings | None:
    """The objective's settings of a raw recipe dict for the rules across fields; None when a
    value is not of its type (pydantic then refuses that field, naming it)."""
    try:
        return settings_from(data)
    except ValueError:
        return None


def history_included(data: dict[str, Any]) -> bool:
    """nextquill_include_history as validation reads it ("false" and 0 are false too); True
    for a value that is not a bool (its validation names it)."""
    try:
        return PromptSettings.from_cfg(data).include_history
    except ValueError:
        return True


def nextquill_config_problems(data: dict[str, Any]) -> list[str]:
    """Every reason the NextQuill settings in ``data`` (a raw recipe dict) cannot work
    together. Each field's own type and bounds are pydantic's (``ObjectiveArgs``); these are
    the rules across fields and across Axolotl's keys, read before Axolotl rewrites them."""
    settings = raw_settings(data)
    if settings is None:
        return []  # the field validation that follows names the bad value
    problems = []
    if settings.token_weighting and settings.high_weight == 0:
        problems.append(
            "nextquill_high_weight (lambda) is 0, so every token weight is 0 (epsilon <= lambda) "
            "and Ln trains nothing; the paper uses lambda 0.9 and epsilon 0.1 (or set "
            "nextquill_token_weighting: false for weights of 1)."
        )
    if settings.low_weight > settings.high_weight:
        problems.append(
            f"nextquill_low_weight (epsilon={settings.low_weight}) must not exceed "
            f"nextquill_high_weight (lambda={settings.high_weight}); swap them."
        )
    if data.get("sample_packing"):
        problems.append(
            "sample_packing cannot be combined with NextQuill (the counterfactual sequence has no "
            "packed layout); set sample_packing: false."
        )
    checkpointing = data.get("gradient_checkpointing_kwargs") or {}
    if data.get("gradient_checkpointing") and checkpointing.get("use_reentrant") is True:
        problems.append(
            "gradient_checkpointing_kwargs.use_reentrant: true runs a separate backward for each of "
            "NextQuill's two forward passes (DeepSpeed ZeRO then fails with 'Gradient computed twice'); "
            "set gradient_checkpointing_kwargs: {use_reentrant: false}."
        )
    if not history_included(data):
        problems.append(
            "nextquill_include_history: false builds prompts without history, so there is no "
            "causal effect to learn; use it only with nextquill: false (the SFT baseline)."
        )
    problems += distributed_problems(data, settings)
    if settings.weight_source == WeightSource.initial and settings.token_weighting:
        for key in ("rl", "pretraining_dataset"):
            if data.get(key):
                problems.append(
                    f"nextquill_weight_source: initial needs a finite SFT dataset to compute theta_0 "
                    f"weights from, which {key} does not give; remove {key} or use "
                    "nextquill_weight_source: current."
                )
    return problems


def distributed_problems(data: dict[str, Any], settings: NextQuillSettings) -> list[str]:
    """Distributed settings NextQuill refuses, each with the key and the fix (the others are
    tested with 2 CPU processes: see the README's table)."""
    initial = settings.token_weighting and settings.weight_source == WeightSource.initial
    fsdp = data.get("fsdp_config") if isinstance(data.get("fsdp_config"), dict) else {}
    problems = []
    # Axolotl's rule: FSDP1 unless fsdp_version (top level or in fsdp_config) says 2.
    version = data.get("fsdp_version") or fsdp.get("fsdp_version") or 1
    if (fsdp or data.get("fsdp")) and str(version) != "2":
        problems.append(
            f"fsdp_version: {version} (FSDP1, Axolotl's default when no fsdp_version is given, "
            "deprecated by Axolotl) has no multi-process test with NextQuill; set "
            "fsdp_version: 2 (tested, with reshard_after_forward true or false)."
        )
    ram_efficient = fsdp.get(
        "cpu_ram_efficient_loading", fsdp.get("fsdp_cpu_ram_efficient_loading")
    )
    if initial and ram_efficient:
        problems.append(
            "fsdp_config.cpu_ram_efficient_loading: true leaves every rank but the first with "
            "uninitialised weights when the theta_0 pass runs (before FSDP copies rank 0's); "
            "set it to false, or nextquill_weight_source: current."
        )
    return problems
