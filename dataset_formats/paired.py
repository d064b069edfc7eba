"""Axolotl dataset type ``dataset_formats.paired``: any (query, history, response) data.

Rows need a query and a response, and a history that is a list of strings or one string::

    {"prompt": "Write a tweet about ...", "history": ["past text 1", "past text 2"],
     "response": "the user's text"}

Accepted field names: query/prompt/instruction, history/profile, response/output/completion.
For chat data, ``messages`` (a list of {role, content}) may stand in for the query: the last
assistant message is the response and the user messages before it are the query.
This lets NextQuill run on LaMP/LongLaMP-style data or a user's own.
"""

from __future__ import annotations

from typing import Any

from axolotl.prompt_tokenizers import PromptTokenizingStrategy

from .prompting import PromptRenderer, build_paired_example, shorten
from .settings import PromptSettings

QUERY_FIELDS = ("query", "prompt", "instruction")
HISTORY_FIELDS = ("history", "profile")
RESPONSE_FIELDS = ("response", "output", "completion")


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if row.get(name) is not None:
            return row[name]
    return None


def split_row(row: dict[str, Any]) -> tuple[str, list[str], str]:
    """(query, history entries, response) of a paired row; clear errors for anything else."""
    query, response = _first(row, QUERY_FIELDS), _first(row, RESPONSE_FIELDS)
    messages = row.get("messages")
    if messages and (query is None or response is None):
        last_assistant = max(
            (i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None
        )
        if last_assistant is None:
            raise ValueError("paired row: `messages` has no assistant message to learn.")
        response = messages[last_assistant]["content"]
        query = "\n".join(
            m["content"] for m in messages[:last_assistant] if m.get("role") == "user"
        )
    if query is None or response is None:
        raise ValueError(
            f"paired row needs a query ({'/'.join(QUERY_FIELDS)}) and a response "
            f"({'/'.join(RESPONSE_FIELDS)}), or chat `messages`; got fields {sorted(row)}."
        )
    history = _first(row, HISTORY_FIELDS)
    if history is None:
        history = []
    elif isinstance(history, str):
        history = [history]
    elif not isinstance(history, list):
        raise ValueError(
            f"paired row: history must be a string or a list of strings, got {type(history).__name__}."
        )
    return str(query), [str(h) for h in history if str(h).strip()], str(response)


class PairedStrategy(PromptTokenizingStrategy):
    """Query + history block (or placeholder) as the prompt, the response as the target."""

    def __init__(self, tokenizer, settings: PromptSettings):
        super().__init__(None, tokenizer, train_on_inputs=False, sequence_len=settings.sequence_len)
        self.settings = settings
        self.renderer = PromptRenderer(tokenizer)

    def tokenize_prompt(self, prompt: dict[str, Any]) -> dict[str, Any]:
        query, history, response = split_row(prompt)
        lab = self.settings.labels

        def entry(index: int, text: str):
            # Long entries are shortened with the same limits as item descriptions.
            return lambda limit: f"{lab['history_entry'].format(i=index)}: {shorten(text, limit)}"

        def user_message(block: str, _limit: int | None) -> str:
            return f"{lab['query']}: {query}\n{lab['history']}:\n{block}"

        entries = [entry(i + 1, h) for i, h in enumerate(history)]
        return build_paired_example(
            self.renderer, self.settings, user_message, entries, response, "\n".join
        )


def load(tokenizer, cfg, ds_cfg: dict[str, Any] | None = None) -> PairedStrategy:
    """Entry point Axolotl calls for ``type: dataset_formats.paired``."""
    return PairedStrategy(tokenizer, PromptSettings.from_cfg(cfg))
