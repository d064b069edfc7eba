"""What every NextQuill dataset type shares: the strategy base, the check that the plugin is
registered, one policy for bad rows (skip and log, or stop with ``nextquill_strict_rows``), and
the contract a type meets to be evaluated (``EvaluableType``).

Framework-free: Axolotl uses a strategy through what it reads of one (``tokenize_prompt``,
``filter_rows``, ``supports_batched``; its ``PromptTokenizingStrategy`` is that interface, not a
registry), and the TRL trainer tokenizes rows with the same classes without importing Axolotl.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from .contract import COUNTERFACTUAL_IDS, DATA_SOURCE, HISTORY_KEPT, TRUNCATION
from .prompting import PromptRenderer, PromptTooLong
from .settings import PromptSettings

LOG = logging.getLogger("axolotl.dataset_formats")

PLUGIN = "nextquill_plugin.NextQuillPlugin"


class BadRow(ValueError):
    """A row that does not have the schema its dataset type documents."""


def require_plugin(cfg: Mapping[str, Any], dataset_type: str) -> None:
    """Refuse to run when the recipe does not register the plugin.

    Without it Axolotl drops every ``nextquill*`` key (``nextquill: true`` included) and the
    run would silently train ContextSFT.
    """
    if "nextquill" in cfg or PLUGIN in (cfg.get("plugins") or []):
        return
    raise ValueError(
        f"`type: {dataset_type}` needs the NextQuill plugin, which this recipe does not "
        f"register; add these two lines to the recipe:\n  plugins:\n    - {PLUGIN}"
    )


@runtime_checkable
class EvaluableType(Protocol):
    """What `nextquill evaluate` and `inspect` need of a dataset type's strategy."""

    settings: PromptSettings

    def tokenize_prompt(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The training columns of a row (contract.py), counterfactual prompt included when
        ``settings.emit_counterfactual``."""

    def generation_prompts(self, row: Mapping[str, Any], max_new_tokens: int) -> dict[str, Any]:
        """``prompt_ids`` and ``counterfactual_prompt_ids`` to generate the row's target from,
        leaving room for ``max_new_tokens``; ``history_kept`` and ``truncation``."""

    def reference(self, row: Mapping[str, Any]) -> str:
        """The text the user wrote (what a generation is scored against)."""

    prompt_id_rule: str  # how prompt_id names a row, for messages

    def prompt_id(self, row: Mapping[str, Any], index: int) -> str:
        """A stable name of the row (``index``: its position in the file)."""


class NextQuillStrategy:
    """Base of the dataset types. A type says what is wrong with a row (``row_problem``), how
    to build its paired example for a target text (``paired_example``), its reference and its
    name; tokenizing for training and rendering generation prompts are the same for all.

    It has the attributes Axolotl reads of a prompt tokenizing strategy (``tokenizer``,
    ``sequence_len``, ``max_length``, ``train_on_inputs``, ``prompter``, ``supports_batched``)."""

    dataset_type = ""  # e.g. "dataset_formats.paired", for messages
    supports_batched = False  # Axolotl maps rows one at a time
    train_on_inputs = False  # prompt positions are IGNORE_INDEX; only the target is learned
    prompter = None  # Axolotl's prompters are for its own types

    def __init__(self, tokenizer, settings: PromptSettings, source: str | None = None):
        self.tokenizer = tokenizer
        self.sequence_len = self.max_length = settings.sequence_len
        self.settings = settings
        self.renderer = PromptRenderer(tokenizer)
        self.source = source  # checks.data_source of the file the rows come from, if local

    @classmethod
    def row_problem(cls, row: Mapping[str, Any]) -> str | None:
        """What is wrong with a row of this type (needs no tokenizer), or None."""
        raise NotImplementedError

    def paired_example(
        self, row: Mapping[str, Any], target_text: str, settings: PromptSettings
    ) -> dict[str, Any]:
        """``prompting.build_paired_example`` for this row with ``target_text`` as the target."""
        raise NotImplementedError

    def reference(self, row: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def prompt_id(self, row: Mapping[str, Any], index: int) -> str:
        raise NotImplementedError

    def tokenize_prompt(self, prompt: Mapping[str, Any]) -> dict[str, Any]:
        self.check_row(prompt)
        try:
            example = self.paired_example(prompt, self.reference(prompt), self.settings)
        except PromptTooLong as error:
            key, budget = self.settings.length_key, self.settings.sequence_len
            raise PromptTooLong(
                f"{self.dataset_type} row {self.row_name(prompt)}{self.source_note()}: {key}="
                f"{budget} cannot hold even the prompt without history ({error.prompt_tokens} "
                f"tokens); raise {key}, or shorten the row's query (item text)",
                error.prompt_tokens,
            ) from None
        return {**example, DATA_SOURCE: self.source}

    def source_note(self) -> str:
        """`` in FILE`` for rows of a local file, else an empty string."""
        return f" in {json.loads(self.source)['path']}" if self.source else ""

    def generation_prompts(self, row: Mapping[str, Any], max_new_tokens: int) -> dict[str, Any]:
        """Prompt token ids for generating the target: with history and counterfactual.

        Built by the same code and truncation rules as training, with room for
        ``max_new_tokens`` instead of the reference (which must not shape the prompt).
        """
        self.check_row(row)
        room = self.settings.sequence_len - max_new_tokens  # for the prompt
        settings = replace(self.settings, sequence_len=room + 1, emit_counterfactual=True)
        try:
            paired = self.paired_example(row, "", settings)  # target = EOS only
        except PromptTooLong as error:
            key = self.settings.length_key
            raise ValueError(
                f"{self.dataset_type} row {self.row_name(row)}: max_new_tokens={max_new_tokens} "
                f"leaves {max(room, 0)} of {key}={self.settings.sequence_len} tokens for the "
                f"prompt, which needs {error.prompt_tokens} even without history; lower "
                f"max_new_tokens or raise {key}"
            ) from None
        prompt = paired["input_ids"][:-1]
        counterfactual = paired[COUNTERFACTUAL_IDS][:-1] if paired[COUNTERFACTUAL_IDS] else prompt
        return {
            "prompt_ids": prompt,
            "counterfactual_prompt_ids": counterfactual,
            "history_kept": paired[HISTORY_KEPT],
            "truncation": paired[TRUNCATION],
        }

    @staticmethod
    def row_name(row: Mapping[str, Any]) -> str:
        """How a message names a row: its id, or its user and target item (a user has several
        rows, one per target), else the start of its text. (The checks before Axolotl reads a
        file name bad rows by line: ``checks.check_data_file``.)"""
        if row.get("id") is not None:
            return f"id={row['id']!r}"
        if row.get("user_id") is not None:
            target = row.get("target")
            item = target.get("item_id") if isinstance(target, Mapping) else None
            return f"user_id={row['user_id']!r}" + (f", target item_id={item!r}" if item else "")
        return f"{str(dict(row))[:80]}..."

    def check_row(self, row: Mapping[str, Any]) -> None:
        """Raise ``BadRow`` naming the row and the field when the row is malformed."""
        problem = self.row_problem(row)
        if problem:
            raise BadRow(f"{self.dataset_type} row {self.row_name(row)}: {problem}")

    def filter_rows(self, row: Mapping[str, Any]) -> bool:
        """Axolotl's row filter, run before tokenizing: bad rows are skipped with a warning
        naming them, or stop the run with ``nextquill_strict_rows: true``."""
        try:
            self.check_row(row)
        except BadRow as error:
            if self.settings.strict_rows:
                raise
            LOG.warning("%s; row skipped (nextquill_strict_rows: true stops instead)", error)
            return False
        return True
