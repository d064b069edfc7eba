"""``NextQuillSFTConfig``: TRL's ``SFTConfig`` plus every NextQuill key, derived, not redeclared.

The keys are the Axolotl recipe's (``args.NextQuillArgs``: the objective's settings from
``settings.NextQuillSettings`` with their paper symbols, the prompt keys of the dataset types,
the theta_0 pass's), with the same defaults and checks, so a key means one thing under both
frameworks. Two differ, and say why: ``nextquill`` defaults to true (the trainer is NextQuill's;
false trains ContextSFT on the same prompts), and ``nextquill_dataset_type`` names the rows'
type (Axolotl's recipes give it per dataset as ``type:``). The prompt's length is TRL's
``max_length``.
"""

from __future__ import annotations

from dataclasses import field, fields, make_dataclass, replace
from typing import Any

from pydantic import ValidationError
from trl import SFTConfig

from dataset_formats import DATASET_TYPES
from dataset_formats.settings import PromptSettings, describe_validation_error

from ..config_keys import NextQuillArgs, checkpointing_kwargs, nextquill_config_problems

DATASET_TYPE_KEY = "nextquill_dataset_type"
# The first key of a shipped config: `trl sft`, which does not know it, stops there naming it,
# so the first line a TRL user reads says which command runs the file.
MARKER_KEY = "use_nextquill_trl_sft"
NLL_LOSS_TYPES = ("nll", "chunked_nll")  # TRL's loss types that are the plain NLL
# TRL's own switches that NextQuill's rows and loss cannot honour when on: (key, why).
REFUSED_TRL_OPTIONS = (
    ("packing", "the counterfactual sequence has no packed layout"),
    ("padding_free", "the counterfactual sequence has no padding-free layout"),
    ("use_liger_kernel", "NextQuill computes its own loss from the final hidden states"),
    ("assistant_only_loss", "the dataset types already mask everything but the review"),
    ("completion_only_loss", "the dataset types already mask everything but the review"),
)
# TRL options that change the tokenizer inside SFTTrainer, after NextQuill has tokenized the rows
# with the model's own: training would not use them, the saved model would carry them.
REFUSED_WHEN_SET = ("chat_template_path", "eos_token")


# The one key whose default differs from the recipe's: the trainer's name already says NextQuill.
TRL_DEFAULTS = {
    "nextquill": (
        True,
        "Train with the NextQuill objective (default here: true); false: ContextSFT.",
    )
}


def _field_of(name: str, info: Any) -> tuple[str, Any, Any]:
    """A dataclass field of ``NextQuillArgs``'s key ``name`` (its default and description)."""
    default, help_text = TRL_DEFAULTS.get(name, (info.default, info.description or ""))
    return name, info.annotation, field(default=default, metadata={"help": help_text})


def recipe_keys(self: Any) -> dict[str, Any]:
    """This config's values of the recipe keys (``NextQuillArgs``'s)."""
    return {name: getattr(self, name) for name in NextQuillArgs.model_fields}


def _check(self: Any) -> None:
    """SFTConfig's own checks, then NextQuill's: each key's type and bounds and the rules
    across keys, as for an Axolotl recipe, and TRL options that NextQuill cannot honour."""
    SFTConfig.__post_init__(self)
    values = recipe_keys(self)
    values.update(
        gradient_checkpointing=self.gradient_checkpointing,
        gradient_checkpointing_kwargs=self.gradient_checkpointing_kwargs,
    )
    try:  # each key's type and bounds (the rules across keys follow, in our words)
        NextQuillArgs.model_validate({**values, "nextquill": False})
    except ValidationError as error:
        raise ValueError("NextQuillSFTConfig: " + describe_validation_error(error)) from None
    problems = nextquill_config_problems(values) if self.nextquill else []
    problems += [
        f"{key}: True cannot be combined with NextQuill ({why}); set {key}: false."
        for key, why in REFUSED_TRL_OPTIONS
        if getattr(self, key, None) is True
    ]
    problems += [
        f"{key}: {getattr(self, key)!r} is not applied by the NextQuill trainer (it tokenizes the "
        "rows with the model's own tokenizer before TRL would apply it, while the saved model "
        f"would carry it); remove {key} and give the model a tokenizer that has it."
        for key in REFUSED_WHEN_SET
        if getattr(self, key, None) is not None
    ]
    if self.max_length is None:
        problems.append(
            "max_length: None leaves the prompts untruncated; NextQuill truncates the history to "
            "fit max_length (set it, e.g. 4096)."
        )
    if self.nextquill and self.loss_type not in NLL_LOSS_TYPES:
        # nll and chunked_nll are both NLL; NextQuill computes its own in chunks (lm_head.py).
        problems.append(
            f"loss_type: {self.loss_type!r} is not NextQuill's loss; use {' or '.join(NLL_LOSS_TYPES)}."
        )
    if getattr(self, DATASET_TYPE_KEY) not in DATASET_TYPES:
        problems.append(
            f"{DATASET_TYPE_KEY}: {getattr(self, DATASET_TYPE_KEY)!r} is none of {', '.join(DATASET_TYPES)}."
        )
    if getattr(self, MARKER_KEY) is not True:
        problems.append(
            f"{MARKER_KEY}: it only marks a config for `nextquill trl-sft`; leave it true."
        )
    if problems:
        raise ValueError("NextQuillSFTConfig: " + " ".join(problems))
    self.gradient_checkpointing_kwargs = checkpointing_kwargs(
        self.gradient_checkpointing, self.gradient_checkpointing_kwargs
    )
    # The trainer tokenizes the rows itself (the dataset types' prompts), so TRL must not.
    self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}


def prompt_settings(self: Any) -> PromptSettings:
    """The dataset types' prompt settings of this config (``max_length`` is the sequence length;
    counterfactual prompts when ``nextquill``)."""
    settings = PromptSettings.from_cfg({**recipe_keys(self), "sequence_len": self.max_length})
    return replace(settings, length_key="max_length")


NextQuillSFTConfig = make_dataclass(
    "NextQuillSFTConfig",
    [
        *(_field_of(name, info) for name, info in NextQuillArgs.model_fields.items()),
        (
            MARKER_KEY,
            bool,
            field(
                default=True,
                metadata={
                    "help": "Marks a config for `nextquill trl-sft` (`trl sft` stops at it)."
                },
            ),
        ),
        (
            DATASET_TYPE_KEY,
            str,
            field(
                default=DATASET_TYPES[0],
                metadata={"help": f"The rows' dataset type: {' or '.join(DATASET_TYPES)}."},
            ),
        ),
    ],
    bases=(SFTConfig,),
    namespace={
        "__post_init__": _check,
        "prompt_settings": prompt_settings,
    },
)
NextQuillSFTConfig.__module__ = __name__
NextQuillSFTConfig.__doc__ = (
    "TRL's SFTConfig plus NextQuill's keys (the Axolotl recipe's, same defaults and checks; "
    "nextquill defaults to true here), and nextquill_dataset_type."
)
NEXTQUILL_KEYS = tuple(f.name for f in fields(NextQuillSFTConfig) if f.name.startswith("nextquill"))
