"""Axolotl dataset type ``dataset_formats.paired``: any (query, history, response) data.

Rows need a query and a response, and a history that is a list of strings or one string::

    {"prompt": "Write a tweet about ...", "history": ["past text 1", "past text 2"],
     "response": "the user's text"}

Accepted field names: query/prompt/instruction, history/profile, response/output/completion.
For chat data, ``messages`` (a list of {role, content}) may stand in for the query: the last
assistant message is the response and the user messages before it are the query (a system
message, an earlier assistant turn or a turn after the last answer, which would be dropped,
makes the row a bad row).
This lets NextQuill run on LaMP/LongLaMP-style data or a user's own.
"""

from __future__ import annotations

from typing import Any

from .prompting import build_paired_example, shorten
from .settings import PromptSettings
from .sources import data_source
from .strategy import NextQuillStrategy, require_plugin

QUERY_FIELDS = ("query", "prompt", "instruction")
HISTORY_FIELDS = ("history", "profile")
RESPONSE_FIELDS = ("response", "output", "completion")


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if row.get(name) is not None:
            return row[name]
    return None


def split_row(row: dict[str, Any]) -> tuple[str, list[str], str]:
    """(query, history entries, response) of a paired row; ValueError naming the field for
    anything else."""
    query, response = _first(row, QUERY_FIELDS), _first(row, RESPONSE_FIELDS)
    messages = row.get("messages")
    if messages and (query is None or response is None):
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        ):
            raise ValueError("paired row: `messages` must be a list of {role, content} objects.")
        last_assistant = max(
            (i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None
        )
        if last_assistant is None:
            raise ValueError("paired row: `messages` has no assistant message to learn.")
        others = sorted({str(m.get("role")) for m in messages[:last_assistant]} - {"user"})
        if others:  # the query keeps user turns only: their context would be dropped unseen
            raise ValueError(
                f"paired row: `messages` has {', '.join(others)} turns before the last assistant "
                "message, which the paired type would drop (it keeps the user turns as the "
                "query); write that context into `query` instead."
            )
        if last_assistant != len(messages) - 1:
            raise ValueError(
                f"paired row: `messages` goes on after its last assistant message "
                f"({len(messages) - 1 - last_assistant} more), which the paired type would drop; "
                "end the conversation with the assistant message to learn."
            )
        response = messages[last_assistant]["content"]
        query = "\n".join(
            m["content"] for m in messages[:last_assistant] if m.get("role") == "user"
        )
    if query is None or response is None:
        raise ValueError(
            f"paired row needs a query ({'/'.join(QUERY_FIELDS)}) and a response "
            f"({'/'.join(RESPONSE_FIELDS)}), or chat `messages`; got fields {sorted(row)}."
        )
    for name, value in (("query", query), ("response", response)):
        if not isinstance(value, str):
            raise ValueError(f"paired row: the {name} must be text, got {type(value).__name__}.")
    if not response.strip():
        raise ValueError("paired row: the response is empty (there would be nothing to learn).")
    history = _first(row, HISTORY_FIELDS)
    if history is None:
        history = []
    elif isinstance(history, str):
        history = [history]
    elif not isinstance(history, list):
        raise ValueError(
            f"paired row: history must be a string or a list of strings, got {type(history).__name__}."
        )
    for index, entry in enumerate(history):
        if not isinstance(entry, str):
            raise ValueError(
                f"paired row: history[{index}] must be text, got {type(entry).__name__}."
            )
    return query, [h for h in history if h.strip()], response


class PairedStrategy(NextQuillStrategy):
    """Query + history block (or placeholder) as the prompt, the response as the target."""

    dataset_type = "dataset_formats.paired"

    @classmethod
    def row_problem(cls, row: dict[str, Any]) -> str | None:
        try:
            split_row(row)
        except ValueError as error:
            return str(error).removeprefix("paired row: ").rstrip(".")
        return None

    def reference(self, row: dict[str, Any]) -> str:
        return split_row(row)[2]

    prompt_id_rule = "its id field, else user_id/its position in the file"

    def prompt_id(self, row: dict[str, Any], index: int) -> str:
        for key in ("id", "user_id"):
            if row.get(key) is not None:
                return f"{row[key]}" if key == "id" else f"{row[key]}/{index}"
        return str(index)

    def paired_example(
        self, row: dict[str, Any], target_text: str, settings: PromptSettings
    ) -> dict[str, Any]:
        query, history, _ = split_row(row)
        lab = settings.labels

        def entry(index: int, text: str):
            # Long entries are shortened with the same limits as item descriptions.
            return lambda limit: f"{lab['history_entry'].format(i=index)}: {shorten(text, limit)}"

        def user_message(block: str, _limit: int | None) -> str:
            return f"{lab['query']}: {query}\n{lab['history']}:\n{block}"

        entries = [entry(i + 1, h) for i, h in enumerate(history)]
        return build_paired_example(
            self.renderer, settings, user_message, entries, target_text, "\n".join
        )


def load(tokenizer, cfg, ds_cfg: dict[str, Any] | None = None) -> PairedStrategy:
    """Entry point Axolotl calls for ``type: dataset_formats.paired``."""
    require_plugin(cfg, PairedStrategy.dataset_type)
    return PairedStrategy(tokenizer, PromptSettings.from_cfg(cfg), data_source(ds_cfg))


STRATEGY = PairedStrategy  # the class `nextquill_plugin` checks rows with (dataset_formats.checks)
