"""Paired prompts for NextQuill: with the user's history and counterfactual (history removed).

Both prompts of a sample end with the same target tokens (review text + EOS), tokenized once,
so the trainer can align the two forward passes token by token. Only the history block differs.
The layout follows the authors' prompt: a system message, the item, the history block (or the
placeholder), the output rating and title, then the assistant's turn.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from .contract import (
    COUNTERFACTUAL_IDS,
    COUNTERFACTUAL_LABELS,
    HISTORY_KEPT,
    IGNORE_INDEX,
    PROMPT_SETTINGS,
    TRUNCATION,
)
from .settings import PromptSettings

# Bit flags recorded per row in ``nq_truncation`` (see ``describe_truncation``).
DROPPED_OLD_HISTORY = 1
SHORTENED_DESCRIPTIONS = 2
DROPPED_ALL_HISTORY = 4
CUT_TARGET = 8
SKIPPED_LONG_ENTRY = 16
_FLAG_NAMES = {
    DROPPED_OLD_HISTORY: "oldest history entries dropped",
    SHORTENED_DESCRIPTIONS: "descriptions shortened",
    DROPPED_ALL_HISTORY: "all history dropped",
    CUT_TARGET: "target cut",
    SKIPPED_LONG_ENTRY: "a history entry too long on its own skipped",
}
# Character limits tried, in order, when descriptions must be shortened.
DESCRIPTION_LIMITS = (1000, 500, 250, 100, 40, 0)


def shorten(text: str | None, limit: int | None) -> str:
    """``text`` cut to ``limit`` characters with "..." (None: no limit; 0: nothing)."""
    text = text or ""
    if limit is None or len(text) <= limit:
        return text
    return text[:limit].rstrip() + "..." if limit > 0 else ""


def describe_truncation(counts: Mapping[int, int]) -> str:
    """Human-readable summary of a Counter of ``nq_truncation`` flags."""
    per_reason: Counter[str] = Counter()
    for flags, n in counts.items():
        for bit, name in _FLAG_NAMES.items():
            if flags & bit:
                per_reason[name] += n
    return ", ".join(f"{name}: {n} rows" for name, n in per_reason.most_common())


class PromptRenderer:
    """Turns (system, user) text into prompt token ids ending at the assistant's turn."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.use_chat_template = bool(getattr(tokenizer, "chat_template", None))

    def prompt_ids(self, system: str, user: str) -> list[int]:
        if self.use_chat_template:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        else:
            text = f"{system}\n\n{user}\n\n### Review:\n"
            if self.tokenizer.bos_token:
                text = self.tokenizer.bos_token + text
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def target_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.tokenizer.eos_token_id is None:
            raise ValueError(
                "The tokenizer has no eos_token; set special_tokens.eos_token in the recipe."
            )
        return [*ids, self.tokenizer.eos_token_id]


# A history entry renders itself given a description limit (None: full description).
HistoryEntry = Callable[[int | None], str]
# Builds the user message from the rendered history block and a description limit.
UserMessage = Callable[[str, int | None], str]


# The prompt's token ids for the history entries kept and a description limit.
PromptIds = Callable[[Sequence[HistoryEntry], int | None], list[int]]


class FittedHistory(NamedTuple):
    """The history entries that fit the budget, the description limit they needed, the
    with-history prompt they make and the ``nq_truncation`` flags of what was cut."""

    entries: list[HistoryEntry]
    limit: int | None
    prompt: list[int]
    flags: int


def build_paired_example(
    renderer: PromptRenderer,
    settings: PromptSettings,
    user_message: UserMessage,
    history: Sequence[HistoryEntry],
    target_text: str,
    history_block: Callable[[list[str]], str],
) -> dict[str, Any]:
    """Tokenize one sample into the columns the NextQuill trainer consumes.

    ``history`` is ordered most important first (newest, or most relevant); when the sample
    does not fit ``sequence_len`` the entries at the end are dropped first, then long
    descriptions are shortened; if the one entry left still does not fit, it is skipped and
    the others that fit are kept; only if none does is the history removed, and at last the
    target is cut. The item, the output rating/title and the assistant header are
    never cut.
    """
    target = renderer.target_ids(target_text)

    def prompt_ids(kept: Sequence[HistoryEntry], limit: int | None) -> list[int]:
        block = history_block([entry(limit) for entry in kept]) if kept else settings.placeholder
        return renderer.prompt_ids(settings.system_prompt, user_message(block, limit))

    candidates = list(history[: settings.history_k]) if settings.include_history else []
    fitted = _fit_history(candidates, prompt_ids, len(target), settings.sequence_len)
    cf_prompt = prompt_ids([], fitted.limit)  # the placeholder instead of the history block
    longest_prompt = max(len(fitted.prompt), len(cf_prompt))
    target, flags = _fit_target(target, longest_prompt, settings.sequence_len, fitted.flags)
    return _paired_row(settings, fitted, cf_prompt, target, flags)


def _fit_history(
    candidates: list[HistoryEntry], prompt_ids: PromptIds, target_length: int, budget: int
) -> FittedHistory:
    """The truncation order of ``build_paired_example``, up to (not including) the target."""

    def fits(prompt: list[int]) -> bool:
        return len(prompt) + target_length <= budget

    entries, limit, flags = list(candidates), None, 0
    prompt = prompt_ids(entries, limit)
    while not fits(prompt) and len(entries) > 1:
        entries.pop()
        flags |= DROPPED_OLD_HISTORY
        prompt = prompt_ids(entries, limit)
    for candidate in DESCRIPTION_LIMITS:
        if fits(prompt):
            break
        limit, flags = candidate, flags | SHORTENED_DESCRIPTIONS
        prompt = prompt_ids(entries, limit)
    if not fits(prompt) and entries:
        # The most important entry is too long on its own: keep the others that fit.
        entries, flags = [], flags | SKIPPED_LONG_ENTRY
        for entry in candidates[1:]:
            if fits(prompt_ids([*entries, entry], limit)):
                entries.append(entry)
        if not entries:
            flags = (flags & ~SKIPPED_LONG_ENTRY) | DROPPED_ALL_HISTORY
        prompt = prompt_ids(entries, limit)
    return FittedHistory(entries, limit, prompt, flags)


class PromptTooLong(ValueError):
    """Not even the shortest prompt (no history) fits with a target token; ``prompt_tokens``
    is its length."""

    def __init__(self, message: str, prompt_tokens: int):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens

    def __reduce__(self):
        # Axolotl's dataset workers send errors to the main process pickled; the default
        # (the message alone) cannot rebuild this one, and the main process waited forever.
        return type(self), (self.args[0], self.prompt_tokens)


def _fit_target(
    target: list[int], longest_prompt: int, budget: int, flags: int
) -> tuple[list[int], int]:
    """The target cut (keeping its EOS) to fit beside the longer of the two prompts, and the
    flags with ``CUT_TARGET`` if it was."""
    if longest_prompt + len(target) <= budget:
        return target, flags
    room = budget - longest_prompt
    if room < 2:
        raise PromptTooLong(
            f"sequence_len={budget} cannot hold even the prompt without history "
            f"({longest_prompt} tokens); raise sequence_len.",
            longest_prompt,
        )
    return [*target[: room - 1], target[-1]], flags | CUT_TARGET


def _paired_row(
    settings: PromptSettings,
    fitted: FittedHistory,
    cf_prompt: list[int],
    target: list[int],
    flags: int,
) -> dict[str, Any]:
    """The columns of one sample: the with-history sequence, and the counterfactual one when
    the settings ask for it."""
    prompt = fitted.prompt
    row: dict[str, Any] = {
        "input_ids": prompt + target,
        "attention_mask": [1] * (len(prompt) + len(target)),
        "labels": [IGNORE_INDEX] * len(prompt) + target,
        HISTORY_KEPT: len(fitted.entries),
        TRUNCATION: flags,
        PROMPT_SETTINGS: settings.fingerprint(),
    }
    if settings.emit_counterfactual:
        # A row whose history had to go entirely has no causal contrast: no counterfactual.
        has_pair = bool(fitted.entries)
        row[COUNTERFACTUAL_IDS] = cf_prompt + target if has_pair else []
        row[COUNTERFACTUAL_LABELS] = [IGNORE_INDEX] * len(cf_prompt) + target if has_pair else []
    return row
