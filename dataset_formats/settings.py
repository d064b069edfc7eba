"""The recipe keys that shape NextQuill prompts, declared once.

``PromptArgs`` is the pydantic schema of the keys (the plugin's ``NextQuillArgs`` composes it
into Axolotl's config); ``PromptSettings`` is what a dataset type works with, resolved from a
recipe (a validated Axolotl config or a raw dict) by ``PromptSettings.from_cfg``. A field of
``PromptSettings`` read from a recipe key names that key once (``from_recipe_key``) and takes
its default from ``PromptArgs``, so a default is never written twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator


class HistorySelection(StrEnum):
    """How the dataset types choose the K history reviews shown in the prompt."""

    recent = "recent"  # the K most recent, newest first (the paper)
    bm25 = "bm25"  # the K most relevant to the target item by BM25 (as DPL does)


DEFAULT_SYSTEM_PROMPT = (
    "Given the title and description of an item, along with the user's past reviews and the "
    "output review rating and review title, generate a personalized item review for the user."
)

DEFAULT_FIELD_LABELS: dict[str, str] = {
    "item_title": "[Item Title]",
    "item_description": "[Item Description]",
    "history": "[User's Past Reviews]",
    "review": "[Review {i}]",
    "review_item_title": "- [Item Title]",
    "review_item_description": "- [Item Description]",
    "review_rating": "- [Review Rating]",
    "review_title": "- [Review Title]",
    "review_text": "- [Review Text]",
    "output_rating": "[Output Review Rating]",
    "output_title": "[Output Review Title]",
    "query": "[Query]",
    "history_entry": "[Entry {i}]",
}

# Labels filled in with str.format (the entry's number, {i}); the others are shown as written.
LABEL_PLACEHOLDERS = {
    key: set(re.findall(r"{(\w+)}", label))
    for key, label in DEFAULT_FIELD_LABELS.items()
    if "{" in label
}


def label_problem(key: str, label: Any) -> str | None:
    """Why ``label`` cannot stand for ``key`` in a prompt, or None."""
    if not isinstance(label, str):
        return f"{key}: a label must be text, got {type(label).__name__}"
    if key not in LABEL_PLACEHOLDERS:
        return None
    allowed = ", ".join("{" + name + "}" for name in sorted(LABEL_PLACEHOLDERS[key]))
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(label) if name is not None}
    except ValueError as error:
        return f"{key}: {label!r} is not a valid label ({error}); write a literal brace as {{{{"
    unknown = sorted(used - LABEL_PLACEHOLDERS[key])
    if unknown:
        shown = ", ".join("{" + name + "}" for name in unknown)
        return f"{key}: {label!r} uses {shown}; it may use {allowed} (the entry's number)"
    return None


DEFAULT_SEQUENCE_LEN = 2048  # Axolotl's own default for sequence_len


def refuse_booleans(value: Any) -> Any:
    """pydantic reads YAML's `true` as the integer 1 (and a bare `--key` override is true)."""
    if isinstance(value, bool):
        raise ValueError(f"a whole number is needed, not {str(value).lower()}")
    return value


# An integer setting that a YAML boolean does not pass for.
WholeNumber = Annotated[int, BeforeValidator(refuse_booleans)]


class PromptArgs(BaseModel):
    """Recipe keys read by the dataset types (``dataset_formats.amazon_reviews`` / ``.paired``)."""

    nextquill_include_history: bool = Field(
        default=True, description="False: prompts without history (the SFT baseline)."
    )
    nextquill_history_k: WholeNumber = Field(
        default=8,
        ge=1,
        description="K: history reviews per prompt (for prompts without history, "
        "nextquill_include_history: false).",
    )
    nextquill_history_selection: HistorySelection = Field(
        default=HistorySelection.recent,
        description="recent: the K newest (the paper); bm25: the K most relevant to the item.",
    )
    nextquill_history_placeholder: str = Field(
        default="None", description="Replaces the history block in the counterfactual prompt."
    )
    nextquill_system_prompt: str = Field(
        default=DEFAULT_SYSTEM_PROMPT, description="The system message (the authors' prompt)."
    )
    nextquill_field_labels: dict[str, str] | None = Field(
        default=None,
        description="Override field labels of the prompt, e.g. {item_title: '[Book Title]'}.",
    )
    nextquill_strict_rows: bool = Field(
        default=False,
        description="False: a malformed row is skipped with a warning naming it; true: it stops "
        "the run.",
    )

    @field_validator("nextquill_field_labels")
    @classmethod
    def known_labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        unknown = set(labels or {}) - set(DEFAULT_FIELD_LABELS)
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)}; known: {sorted(DEFAULT_FIELD_LABELS)}"
            )
        for key, label in (labels or {}).items():
            problem = label_problem(key, label)
            if problem:
                raise ValueError(problem)
        return labels


def from_recipe_key(key: str) -> Any:
    """A ``PromptSettings`` field read from the recipe key ``key``, with that key's default
    (declared once, in ``PromptArgs``)."""
    return field(default=PromptArgs.model_fields[key].default, metadata={"recipe_key": key})


# Settings that change no row: how bad rows are handled, how messages name a key.
NOT_ROW_SHAPING = frozenset({"strict_rows", "length_key"})


@dataclass
class PromptSettings:
    """What a dataset type needs to build prompts: ``PromptArgs`` resolved for one recipe."""

    system_prompt: str = from_recipe_key("nextquill_system_prompt")
    placeholder: str = from_recipe_key("nextquill_history_placeholder")
    history_k: int = from_recipe_key("nextquill_history_k")
    selection: HistorySelection = from_recipe_key("nextquill_history_selection")
    include_history: bool = from_recipe_key("nextquill_include_history")
    # Counterfactual prompts are only needed by the NextQuill trainer (the recipe's `nextquill`).
    emit_counterfactual: bool = True
    # The defaults with the recipe's nextquill_field_labels over them.
    labels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FIELD_LABELS))
    sequence_len: int = DEFAULT_SEQUENCE_LEN
    strict_rows: bool = from_recipe_key("nextquill_strict_rows")
    # The key a user sets sequence_len with, for messages (a TRL config's is max_length).
    length_key: str = "sequence_len"

    def fingerprint(self) -> str:
        """Identity of what these settings make of a row (the prepared data's settings)."""
        values = {k: v for k, v in asdict(self).items() if k not in NOT_ROW_SHAPING}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> PromptSettings:
        """Settings from a recipe: an Axolotl config (already validated) or a raw dict."""

        def get(key: str) -> Any:
            return cfg.get(key) if hasattr(cfg, "get") else None

        given = {key: get(key) for key in PromptArgs.model_fields if get(key) is not None}
        try:
            args = PromptArgs.model_validate(given)
        except ValidationError as error:
            raise ValueError(describe_validation_error(error)) from None
        from_keys = {
            f.name: getattr(args, f.metadata["recipe_key"])
            for f in fields(cls)
            if "recipe_key" in f.metadata
        }
        return cls(
            **from_keys,
            emit_counterfactual=bool(get("nextquill")),
            labels={**DEFAULT_FIELD_LABELS, **(args.nextquill_field_labels or {})},
            sequence_len=int(get("sequence_len") or DEFAULT_SEQUENCE_LEN),
        )


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad key: ``key: what is wrong (got value)``, or the message alone where it
    already names the key (our own messages name the key and the value)."""
    lines = []
    for e in error.errors():
        key = ".".join(map(str, e["loc"])) or "recipe"
        message = e["msg"]
        if message.startswith(f"{key}:") or message.startswith(f"{key} "):
            lines.append(message)
        else:
            lines.append(f"{key}: {message} (got {e.get('input')!r})")
    return "; ".join(lines)
