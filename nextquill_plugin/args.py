"""Recipe keys of the NextQuill plugin (merged into Axolotl's config schema) and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, model_validator


class WeightSource(StrEnum):
    """Which model's causal effects decide the token weights."""

    initial = "initial"  # the paper (eq. 4): theta_0, computed once before training
    current = "current"  # the authors' code: the model being trained, detached, every step


class HistorySelection(StrEnum):
    """How the dataset types choose the K history reviews shown in the prompt."""

    recent = "recent"  # the K most recent, newest first (the paper)
    bm25 = "bm25"  # the K most relevant to the target item by BM25 (as DPL does)


DEFAULT_SYSTEM_PROMPT = (
    "Given the title and description of an item, along with the user's past reviews and the "
    "output review rating and review title, generate a personalized item review for the user."
)


class NextQuillArgs(BaseModel):
    """Top-level recipe keys. Axolotl drops undeclared keys, so every setting lives here."""

    nextquill: bool = Field(
        default=False,
        description="Train with the NextQuill objective. False: the plugin changes nothing.",
    )
    nextquill_alpha: float = Field(default=0.05, description="alpha (eq. 7): weight of Lp.")
    nextquill_delta: float = Field(default=0.05, description="delta (eq. 3): effect threshold.")
    nextquill_high_weight: float = Field(default=0.9, description="lambda (eq. 3).")
    nextquill_low_weight: float = Field(default=0.1, description="epsilon (eq. 3).")
    nextquill_token_weighting: bool = Field(
        default=True, description="False: all omega_t = 1 (the CausalOnly ablation)."
    )
    nextquill_causal_loss: bool = Field(
        default=True,
        description="False: alpha = 0 and no counterfactual pass in training (NormOnly).",
    )
    nextquill_weight_source: WeightSource = Field(
        default=WeightSource.initial,
        description="initial: weights from theta_0 (paper); current: from the trained model.",
    )
    nextquill_weight_causal_loss: bool = Field(
        default=True, description="True: Lp weighted by omega (eq. 6); False: authors' code."
    )
    nextquill_weight_batch_size: int = Field(
        default=4, ge=1, description="Micro-batch size of the theta_0 weight pass."
    )
    nextquill_weight_cache_dir: str | None = Field(
        default=None,
        description="Where theta_0 effects are cached; default <dataset_prepared_path>/nextquill.",
    )
    # Prompt building (read by dataset_formats.amazon_reviews and dataset_formats.paired).
    nextquill_include_history: bool = Field(
        default=True, description="False: prompts without history (the SFT baseline)."
    )
    nextquill_history_k: int = Field(default=8, ge=0, description="History reviews per prompt.")
    nextquill_history_selection: HistorySelection = Field(default=HistorySelection.recent)
    nextquill_history_placeholder: str = Field(
        default="None", description="Replaces the history block in the counterfactual prompt."
    )
    nextquill_system_prompt: str = Field(default=DEFAULT_SYSTEM_PROMPT)
    nextquill_field_labels: dict[str, str] | None = Field(
        default=None,
        description="Override field labels of the prompt, e.g. {item_title: '[Book Title]'}.",
    )

    @model_validator(mode="before")
    @classmethod
    def nextquill_check_settings(cls, data: Any) -> Any:
        """Reject settings that cannot work, naming the key and the fix."""
        if not isinstance(data, dict) or not data.get("nextquill"):
            return data
        problems = nextquill_config_problems(data)
        if problems:
            raise ValueError("NextQuill config: " + " ".join(problems))
        if data.get("gradient_checkpointing") and data.get("gradient_checkpointing_kwargs") is None:
            # Axolotl would default to reentrant checkpointing, under which each of our two
            # forward passes runs its own backward and DeepSpeed ZeRO reduces gradients twice.
            data = {**data, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
        return data


def nextquill_config_problems(data: dict[str, Any]) -> list[str]:
    """Every reason the NextQuill settings in ``data`` (a raw recipe dict) cannot work."""

    def get(key: str, default: Any) -> Any:
        value = data.get(key)
        return default if value is None else value

    problems = []
    alpha = get("nextquill_alpha", 0.05)
    high = get("nextquill_high_weight", 0.9)
    low = get("nextquill_low_weight", 0.1)
    if alpha < 0:
        problems.append(f"nextquill_alpha must be >= 0 (got {alpha}); the paper uses 0.05.")
    for key, value in (("nextquill_high_weight", high), ("nextquill_low_weight", low)):
        if not 0 <= value <= 1:
            problems.append(f"{key} must lie in [0, 1] (got {value}).")
    if low > high:
        problems.append(
            f"nextquill_low_weight (epsilon={low}) must not exceed nextquill_high_weight "
            f"(lambda={high}); swap them."
        )
    delta = get("nextquill_delta", 0.05)
    if not -1 <= delta < 1:
        problems.append(f"nextquill_delta is a probability difference: use [-1, 1) (got {delta}).")
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
    if data.get("nextquill_include_history") is False:
        problems.append(
            "nextquill_include_history: false builds prompts without history, so there is no "
            "causal effect to learn; use it only with nextquill: false (the SFT baseline)."
        )
    source = str(get("nextquill_weight_source", "initial"))
    source = source.split(".")[-1]  # accept the enum as well as its value
    weighting = get("nextquill_token_weighting", True)
    if source == "initial" and weighting:
        for key in ("rl", "pretraining_dataset"):
            if data.get(key):
                problems.append(
                    f"nextquill_weight_source: initial needs a finite SFT dataset to compute theta_0 "
                    f"weights from, which {key} does not give; remove {key} or use "
                    "nextquill_weight_source: current."
                )
    return problems


@dataclass
class NextQuillTrainingArgsMixin:
    """The settings the trainer needs, carried on its TrainingArguments."""

    nextquill_alpha: float = 0.05
    nextquill_delta: float = 0.05
    nextquill_high_weight: float = 0.9
    nextquill_low_weight: float = 0.1
    nextquill_token_weighting: bool = True
    nextquill_causal_loss: bool = True
    nextquill_weight_source: str = "initial"
    nextquill_weight_causal_loss: bool = True
