"""`nextquill evaluate`: the paper's Table 1 numbers for any recipe.

recipe + checkpoint (or none: the untuned base model) + a split of built rows ->
``predictions.jsonl`` (user id, prompt id, prediction, reference, per-sample scores) and
``metrics.json`` (ROUGE-1, ROUGE-L, METEOR, BLEU with 95% bootstrap intervals, and every setting).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset_formats.cli_options import option
from dataset_formats.jsonl import write_jsonl

from .generation import GenerationSettings, generate_continuations, load_model_for_generation
from .metrics import evaluate_texts
from .recipe_data import RecipeRowsRequest, prompt_id


@dataclass
class EvaluationRequest(RecipeRowsRequest):
    """What to evaluate, on which rows, and where to write; one command-line option a field."""

    out: str | None = option("output folder (default: <checkpoint>/eval-<split>)")
    name: str | None = option("the row's name in `nextquill compare`")
    limit: int | None = option("only the first N rows")
    dtype: str = option(
        "model dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16")
    )
    resamples: int = option("bootstrap resamples", default=1000, flag="--bootstrap")


def default_out_dir(request: EvaluationRequest, split_name: str) -> Path:
    base = Path(request.checkpoint) if request.checkpoint else Path("outputs") / "base_model"
    return base / f"eval-{split_name}"


def run_evaluation(
    request: EvaluationRequest, generation: GenerationSettings, show_progress: bool = True
) -> dict[str, Any]:
    """Generate a review for every row, score them, write predictions and metrics; return the
    metrics document."""
    from dataset_formats.amazon_reviews import load as load_strategy

    recipe, data, rows = request.load_recipe_and_rows(request.limit)
    out = Path(request.out) if request.out else default_out_dir(request, data.stem)
    model, tokenizer, model_description = load_model_for_generation(
        recipe["base_model"], request.checkpoint, request.dtype
    )
    strategy = load_strategy(tokenizer, recipe)
    sequence_len = strategy.settings.sequence_len
    if generation.max_new_tokens >= sequence_len:
        raise ValueError(
            f"max_new_tokens ({generation.max_new_tokens}) must be smaller than the recipe's "
            f"sequence_len ({sequence_len}): the prompt needs room too."
        )
    prompts = []
    for index, row in enumerate(rows):
        try:
            prompts.append(strategy.generation_prompts(row, generation.max_new_tokens))
        except ValueError as error:
            raise ValueError(f"{data} row {index + 1}: {error}") from None
    started = time.time()
    continuations = generate_continuations(
        model,
        [p["prompt_ids"] for p in prompts],
        generation,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        counterfactual_prompts=[p["counterfactual_prompt_ids"] for p in prompts],
        show_progress=show_progress,
    )
    seconds = time.time() - started
    predictions = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in continuations]
    references = [row["target"]["text"] for row in rows]
    scores = evaluate_texts(predictions, references, resamples=request.resamples)

    records = [
        {
            "user_id": row.get("user_id"),
            "prompt_id": prompt_id(row, index),
            "prediction": prediction,
            "reference": reference,
            "history_kept": prompts[index]["history_kept"],
            **{k: float(v[index]) for k, v in scores.per_sample.items()},
        }
        for index, (row, prediction, reference) in enumerate(
            zip(rows, predictions, references, strict=True)
        )
    ]
    write_jsonl(out / "predictions.jsonl", records)
    document = {
        "name": request.name or _default_name(request, generation),
        "n": len(rows),
        "metrics": {k: v.as_dict() for k, v in scores.metrics.items()},
        "model": model_description,
        "checkpoint": request.checkpoint,
        "recipe": str(request.recipe),
        "data": str(data),
        "generation": generation.as_dict(),
        "meteor_tokenizer": scores.meteor_tokenizer,
        "bootstrap_resamples": request.resamples,
        "rows_truncated": sum(1 for p in prompts if p["truncation"]),
        "generation_seconds": round(seconds, 2),
        "generated_tokens": sum(len(c) for c in continuations),
    }
    (out / "metrics.json").write_text(json.dumps(document, indent=2) + "\n")
    document["out_dir"] = str(out)
    return document


def _default_name(request: EvaluationRequest, generation: GenerationSettings) -> str:
    name = Path(request.recipe).stem if request.checkpoint else "base model (no fine-tuning)"
    if generation.cos_gamma > 0:
        name += f" + CoS {generation.cos_gamma:g}"
    return name
