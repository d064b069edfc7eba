"""`nextquill prompts`: the exact text `nextquill evaluate` generates from, for other tools.

Prints the rendered generation prompt of rows of a split (chat template, special tokens and all),
so that `axolotl inference` on a merged model (or any other generator) starts from the same
prompt as our evaluation:

    nextquill prompts recipes/books_nextquill.yml --limit 1 | \\
        axolotl inference recipes/books_nextquill.yml --lora-model-dir outputs/books_nextquill
"""

from __future__ import annotations

from dataclasses import dataclass

from nextquill_common.cli_options import option

from .generation import GenerationSettings
from .recipe_data import FirstRowsRequest, load_strategy, recipe_tokenizer

DEFAULT_ROOM = GenerationSettings().max_new_tokens


@dataclass
class PromptsRequest(FirstRowsRequest):
    """Which rows' prompts to render; one command-line option a field."""

    without_history: bool = option("the counterfactual prompt (history replaced)", default=False)
    max_new_tokens: int = option("room left for the generation", default=DEFAULT_ROOM)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1 (got {self.max_new_tokens})")


def render_prompts(request: PromptsRequest) -> list[str]:
    """The prompt text of each row, as evaluation renders it (room left for
    ``max_new_tokens``); with ``without_history`` the counterfactual prompt instead."""
    recipe, dataset_type, _, rows = request.load_recipe_and_rows(request.limit)
    tokenizer = recipe_tokenizer(recipe, request.checkpoint)
    strategy = load_strategy(dataset_type, tokenizer, recipe)
    key = "counterfactual_prompt_ids" if request.without_history else "prompt_ids"
    return [
        tokenizer.decode(strategy.generation_prompts(row, request.max_new_tokens)[key])
        for row in rows
    ]
