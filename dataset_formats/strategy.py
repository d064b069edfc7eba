"""What every NextQuill dataset type shares: the Axolotl strategy base, the check that the plugin
is registered, and one policy for bad rows (skip and log, or stop with ``nextquill_strict_rows``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from axolotl.prompt_tokenizers import PromptTokenizingStrategy

from .prompting import PromptRenderer
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


class NextQuillStrategy(PromptTokenizingStrategy):
    """Base of the dataset types: ``row_problem`` says what is wrong with a row (or None)."""

    dataset_type = ""  # e.g. "dataset_formats.paired", for messages

    def __init__(self, tokenizer, settings: PromptSettings):
        super().__init__(None, tokenizer, train_on_inputs=False, sequence_len=settings.sequence_len)
        self.settings = settings
        self.renderer = PromptRenderer(tokenizer)

    def row_problem(self, row: Mapping[str, Any]) -> str | None:
        raise NotImplementedError

    @staticmethod
    def row_name(row: Mapping[str, Any]) -> str:
        """How a message names a row: its user id, else the start of its text."""
        if row.get("user_id") is not None:
            return f"user_id={row['user_id']!r}"
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
