"""`nextquill evaluate`: the paper's Table 1 numbers for any recipe.

recipe + checkpoint (or none: the untuned base model) + a split of built rows ->
``predictions.jsonl`` (user id, prompt id, prediction, reference, per-sample scores) and
``metrics.json`` (ROUGE-1, ROUGE-L, METEOR, BLEU with 95% bootstrap intervals, and every setting).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset_formats.cli_options import option
from dataset_formats.jsonl import (
    append_jsonl,
    read_jsonl_tolerant,
    write_jsonl,
    write_text_atomic,
)

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


PARTIAL = "predictions.partial.jsonl"  # generated so far, one record a prompt, appended


def run_key(request: EvaluationRequest, generation: GenerationSettings, data: Path) -> str:
    """What a partial predictions file must have been made by to be resumed."""
    identity = {
        "recipe": str(Path(request.recipe).resolve()),
        "overrides": request.overrides,
        "checkpoint": str(Path(request.checkpoint).resolve()) if request.checkpoint else None,
        "data": str(data.resolve()),
        "dtype": request.dtype,
        "generation": generation.as_dict(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def resumable_tokens(partial: Path, key: str, prompt_ids: list[str]) -> dict[int, list[int]]:
    """Generated token ids by row index from a partial file of the same run (else nothing)."""
    if not partial.is_file():
        return {}
    records = read_jsonl_tolerant(partial)
    usable = {
        r["index"]: r["tokens"]
        for r in records
        if r.get("run") == key
        and isinstance(r.get("index"), int)
        and 0 <= r["index"] < len(prompt_ids)
        and r.get("prompt_id") == prompt_ids[r["index"]]
    }
    if len(usable) < len(records):
        print(
            f"nextquill evaluate: {partial} was written by another evaluation "
            f"({len(records) - len(usable)} of {len(records)} rows differ); starting over",
            file=sys.stderr,
        )
        partial.unlink()
        return {}
    return usable


def run_evaluation(
    request: EvaluationRequest, generation: GenerationSettings, show_progress: bool = True
) -> dict[str, Any]:
    """Generate a review for every row, score them, write predictions and metrics; return the
    metrics document.

    Everything that can fail is checked before the model loads (recipe, rows, WordNet for
    METEOR). Generated tokens are appended to ``predictions.partial.jsonl`` batch by batch; a
    rerun of the same evaluation continues from there. The final files are written atomically.
    """
    from dataset_formats.amazon_reviews import load as load_strategy

    from .wordnet_data import require_wordnet

    recipe, data, rows = request.load_recipe_and_rows(request.limit)
    out = Path(request.out) if request.out else default_out_dir(request, data.stem)
    require_wordnet()  # METEOR needs it: fail now, not after hours of generation
    out.mkdir(parents=True, exist_ok=True)
    ids = [prompt_id(row, index) for index, row in enumerate(rows)]
    key, partial = run_key(request, generation, data), out / PARTIAL
    done = resumable_tokens(partial, key, ids)
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
    todo = [i for i in range(len(rows)) if i not in done]
    if done:
        print(f"nextquill evaluate: resuming: {len(done)} of {len(rows)} rows already generated")

    def keep(batch: list[int], tokens: list[list[int]]) -> None:
        append_jsonl(
            partial,
            [
                {"run": key, "index": todo[j], "prompt_id": ids[todo[j]], "tokens": t}
                for j, t in zip(batch, tokens, strict=True)
            ],
        )

    started = time.time()
    generate_continuations(
        model,
        [prompts[i]["prompt_ids"] for i in todo],
        generation,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        counterfactual_prompts=[prompts[i]["counterfactual_prompt_ids"] for i in todo],
        show_progress=show_progress,
        on_batch=keep,
    )
    seconds = time.time() - started
    continuations = resumable_tokens(partial, key, ids) if todo else done
    missing = [i for i in range(len(rows)) if i not in continuations]
    if missing:
        raise RuntimeError(f"{len(missing)} rows have no prediction in {partial}")
    tokens = [continuations[i] for i in range(len(rows))]
    predictions = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
    references = [row["target"]["text"] for row in rows]
    scores = evaluate_texts(predictions, references, resamples=request.resamples)

    records = [
        {
            "user_id": row.get("user_id"),
            "prompt_id": ids[index],
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
        "rows_resumed": len(done),
        "generation_seconds": round(seconds, 2),
        "generated_tokens": sum(len(t) for t in tokens),
    }
    write_text_atomic(out / "metrics.json", json.dumps(document, indent=2) + "\n")
    partial.unlink(missing_ok=True)  # its content is in predictions.jsonl now
    document["out_dir"] = str(out)
    return document


def _default_name(request: EvaluationRequest, generation: GenerationSettings) -> str:
    name = Path(request.recipe).stem if request.checkpoint else "base model (no fine-tuning)"
    if generation.cos_gamma > 0:
        name += f" + CoS {generation.cos_gamma:g}"
    return name
