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

from dataset_formats.prompting import DROPPED_ALL_HISTORY
from dataset_formats.sources import file_identity
from nextquill_common.cli_options import UsageError, option, output_folder
from nextquill_common.jsonl import (
    nearest_write_problem,
    read_jsonl,
    write_jsonl,
    write_text_atomic,
)

from .. import distributed
from ..batching import length_buckets
from .generation import (
    GenerationSettings,
    generate_continuations,
    load_model_for_generation,
)
from .metrics import METRIC_NAMES, evaluate_texts
from .predictions_store import PARTIAL_GLOB, PartialPredictions
from .recipe_data import FirstRowsRequest, load_strategy, recipe_tokenizer
from .wordnet_data import require_wordnet


@dataclass
class EvaluationRequest(FirstRowsRequest):
    """What to evaluate, on which rows, and where to write; one command-line option a field."""

    out: str | None = option(
        "output folder (default: <checkpoint>/eval-<split>)", type=output_folder
    )
    name: str | None = option("the row's name in `nextquill compare`")
    dtype: str = option(
        "model dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16")
    )
    resamples: int = option("bootstrap resamples", default=1000, flag="--bootstrap")
    score_only: bool = option(
        "score the existing predictions.jsonl in --out again; no generation", default=False
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resamples < 1:
            raise ValueError(f"--bootstrap must be >= 1 resamples (got {self.resamples})")


def changed_generation_settings(generation: GenerationSettings) -> dict[str, Any]:
    """The generation settings that differ from the defaults."""
    defaults = GenerationSettings().as_dict()
    return {key: value for key, value in generation.as_dict().items() if value != defaults[key]}


def default_out_dir(
    request: EvaluationRequest, generation: GenerationSettings, split_name: str
) -> Path:
    """``<checkpoint>/eval-<split>``, with every generation setting that differs from the
    defaults, and the row limit, in the name (``eval-test-cos_gamma-1``, ``eval-test-limit-16``),
    so that evaluations of other settings or rows never share a folder."""
    base = Path(request.checkpoint) if request.checkpoint else Path("outputs") / "base_model"
    changed = [
        f"{key}-{value:g}" if isinstance(value, float) else f"{key}-{value}"
        for key, value in changed_generation_settings(generation).items()
    ]
    if request.dtype != "auto":
        changed.append(f"dtype-{request.dtype}")
    if request.limit is not None:  # the rows are part of what was evaluated
        changed.append(f"limit-{request.limit}")
    return base / "-".join([f"eval-{split_name}", *changed])


def check_results_are_this_runs(out: Path, key: str) -> None:
    """Refuse to write over the results of another evaluation (other settings, rows or model):
    two evaluations must never share a folder silently."""
    metrics = out / "metrics.json"
    if not metrics.is_file():
        if (out / "predictions.jsonl").exists():  # ours writes metrics.json right after it
            raise ValueError(
                f"{out} holds a predictions.jsonl without the metrics.json an evaluation writes "
                "beside it: not ours to write over; pass --out to write this one elsewhere"
            )
        return
    try:
        found = json.loads(metrics.read_text()).get("run_key")
    except (ValueError, AttributeError):
        found = None
    if found != key:
        raise ValueError(
            f"{out} holds the results of another evaluation ({metrics}); pass --out to write "
            "this one elsewhere (or remove that folder if you no longer need it)"
        )


@dataclass
class GenerationPrompts:
    """Every row's prompts (with history and counterfactual), name and reference."""

    prompts: list[dict[str, Any]]  # EvaluableType.generation_prompts of each row
    ids: list[str]
    references: list[str]

    @classmethod
    def of(cls, strategy, rows: list[dict], data: Path, max_new_tokens: int) -> GenerationPrompts:
        """Prompts leaving room for ``max_new_tokens``; a bad row stops with its line number."""
        built = cls([], [], [])
        for index, row in enumerate(rows):
            try:
                built.prompts.append(strategy.generation_prompts(row, max_new_tokens))
            except ValueError as error:
                raise ValueError(f"{data} row {index + 1}: {error}") from None
            built.ids.append(strategy.prompt_id(row, index))
            built.references.append(strategy.reference(row))
        first_row: dict[str, int] = {}
        for index, prompt_id in enumerate(built.ids):
            if prompt_id in first_row:
                raise ValueError(
                    f"{data}: rows {first_row[prompt_id] + 1} and {index + 1} have the same "
                    f"prompt id {prompt_id!r} (a row's id is {strategy.prompt_id_rule}); remove "
                    "the repeated row, or make the ids differ"
                )
            first_row[prompt_id] = index
        return built

    def token_ids(self, rows: list[int], key: str = "prompt_ids") -> list[list[int]]:
        return [self.prompts[i][key] for i in rows]

    def rows_without_history(self) -> int:
        """Rows whose whole history had to go to leave room for the generated tokens."""
        return sum(1 for p in self.prompts if p["truncation"] & DROPPED_ALL_HISTORY)


def check_history_kept(
    without_history: int, n_rows: int, generation: GenerationSettings, sequence_len: int
) -> None:
    """Say loudly when rows lose their history to the generation budget; refuse context
    steering when no row keeps any (it would contrast two identical prompts)."""
    if not without_history:
        return
    budget = (
        f"sequence_len {sequence_len} - max_new_tokens {generation.max_new_tokens} leaves "
        f"{sequence_len - generation.max_new_tokens} tokens for the prompt"
    )
    if without_history == n_rows and generation.cos_gamma > 0:
        raise ValueError(
            f"no row keeps any history ({budget}), so --cos-gamma would contrast two identical "
            "prompts; lower --max-new-tokens or raise the recipe's sequence_len"
        )
    print(
        f"nextquill evaluate: WARNING: {without_history} of {n_rows} rows lost their whole "
        f"history ({budget}); they are generated without it (metrics.json: "
        "rows_without_history). Lower --max-new-tokens or raise the recipe's sequence_len.",
        file=sys.stderr,
    )


def checkpoint_files(checkpoint: str | None) -> list[tuple[str, int, int]] | None:
    """(name, size, modification time) of a checkpoint folder's files: a model trained again
    into the same folder is another model (its weights are not hashed: they may be gigabytes)."""
    if not checkpoint or not Path(checkpoint).is_dir():
        return None
    folder = Path(checkpoint)
    return [
        (str(file.relative_to(folder)), file.stat().st_size, file.stat().st_mtime_ns)
        for file in sorted(folder.iterdir())
        if file.is_file()
    ]


def run_key(request: EvaluationRequest, generation: GenerationSettings, data: Path) -> str:
    """What partial predictions must have been made by to be resumed: the recipe's and the
    rows' content (an edited prompt key is another evaluation), the checkpoint's files, and
    every setting."""
    identity = {
        "recipe": str(Path(request.recipe).resolve()),
        "recipe_sha256": hashlib.sha256(Path(request.recipe).read_bytes()).hexdigest(),
        "overrides": request.overrides,
        "checkpoint": str(Path(request.checkpoint).resolve()) if request.checkpoint else None,
        "checkpoint_files": checkpoint_files(request.checkpoint),
        "data": str(data.resolve()),
        "data_sha256": file_identity(data)["sha256"],
        "dtype": request.dtype,
        "generation": generation.as_dict(),
        "limit": request.limit,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def run_evaluation(
    request: EvaluationRequest, generation: GenerationSettings, show_progress: bool = True
) -> dict[str, Any] | None:
    """Generate a review for every row, score them, write predictions and metrics; return the
    metrics document (None on ranks other than 0).

    Everything that can fail is checked before the model loads (recipe, rows, WordNet for
    METEOR). Under torchrun / accelerate launch every process generates its share of the
    length-sorted batches (the batches of a one-process run, so greedy predictions are the
    same); rank 0 scores and writes. Generated tokens are kept batch by batch in
    ``PartialPredictions``; a rerun of the same evaluation continues from them. The final
    files are written atomically.
    """
    recipe, dataset_type, data, rows = request.load_recipe_and_rows(request.limit)
    out = Path(request.out) if request.out else default_out_dir(request, generation, data.stem)
    problem = None if request.out else nearest_write_problem(out)
    if problem:  # the default lies inside the checkpoint, which may be someone else's
        raise UsageError(f"the default --out {out}: {problem}; pass --out FOLDER")
    require_wordnet()  # METEOR needs it: fail now, not after hours of generation
    if request.score_only:
        changed = sorted(changed_generation_settings(generation))
        if changed:
            raise UsageError(
                f"--score-only generates nothing, so generation options have no effect: "
                f"{', '.join(changed)}; leave them out"
            )
        return score_existing(out, request.resamples, request.name)
    rank, world = distributed.join_processes()
    tokenizer, prompts = checked_prompts(request, generation, recipe, dataset_type, data, rows)
    key = run_key(request, generation, data)
    check_results_are_this_runs(out, key)
    out.mkdir(parents=True, exist_ok=True)
    store = PartialPredictions(out, key, prompts.ids)
    done = store.resume()
    if done and rank == 0:
        print(f"nextquill evaluate: resuming: {len(done)} of {len(rows)} rows already generated")
    started = time.time()
    model_description = generate_missing(
        request, generation, recipe, tokenizer, prompts, store, set(done), show_progress
    )
    distributed.barrier()
    seconds = time.time() - started  # until the last process is done
    if rank != 0:
        return None

    tokens = store.complete(len(rows))
    document = {
        "name": request.name or _default_name(request, generation),
        "n": len(rows),
        "model": model_description,
        "checkpoint": request.checkpoint,
        "recipe": str(request.recipe),
        "data": str(data),
        "dataset_type": dataset_type,
        "generation": generation.as_dict(),
        "bootstrap_resamples": request.resamples,
        "run_key": key,
        "rows_truncated": sum(1 for p in prompts.prompts if p["truncation"]),
        "rows_without_history": prompts.rows_without_history(),
        "rows_resumed": len(done),
        "processes": world,
        "generation_seconds": round(seconds, 2),
        "generated_tokens": sum(len(t) for t in tokens),
    }
    records = prediction_records(rows, prompts, tokens, tokenizer)
    document = write_scored(out, records, document, request.resamples, show_progress)
    store.remove()  # their content is in predictions.jsonl now
    return document


def checked_prompts(
    request: EvaluationRequest,
    generation: GenerationSettings,
    recipe: dict[str, Any],
    dataset_type: str,
    data: Path,
    rows: list[dict],
) -> tuple[Any, GenerationPrompts]:
    """(tokenizer, every row's prompts), after the checks that need the tokenizer but not the
    model: room for the generated tokens, and rows that lose their history to it."""
    tokenizer = recipe_tokenizer(recipe, request.checkpoint)
    strategy = load_strategy(dataset_type, tokenizer, recipe)
    sequence_len = strategy.settings.sequence_len
    check_generation_budget(generation, sequence_len)
    prompts = GenerationPrompts.of(strategy, rows, data, generation.max_new_tokens)
    check_history_kept(prompts.rows_without_history(), len(rows), generation, sequence_len)
    return tokenizer, prompts


def prediction_records(
    rows: list[dict], prompts: GenerationPrompts, tokens: list[list[int]], tokenizer
) -> list[dict[str, Any]]:
    """predictions.jsonl's records, before scoring: each row's user, prompt id, decoded
    prediction, reference and how many history items its prompt kept."""
    return [
        {
            "user_id": row.get("user_id"),
            "prompt_id": prompts.ids[index],
            "prediction": tokenizer.decode(tokens[index], skip_special_tokens=True).strip(),
            "reference": prompts.references[index],
            "history_kept": prompts.prompts[index]["history_kept"],
        }
        for index, row in enumerate(rows)
    ]


def check_generation_budget(generation: GenerationSettings, sequence_len: int) -> None:
    if generation.max_new_tokens >= sequence_len:
        raise ValueError(
            f"max_new_tokens ({generation.max_new_tokens}) must be smaller than the recipe's "
            f"sequence_len ({sequence_len}): the prompt needs room too."
        )


def generate_missing(
    request: EvaluationRequest,
    generation: GenerationSettings,
    recipe: dict[str, Any],
    tokenizer,
    prompts: GenerationPrompts,
    store: PartialPredictions,
    done: set[int],
    show_progress: bool = True,
) -> str:
    """Generate the rows not in ``done``; this process takes its share of the length-sorted
    batches and keeps each batch in ``store`` as soon as it is generated. Returns what model
    was loaded, in words."""
    rank, world = distributed.rank_and_size()
    todo = [i for i in range(len(prompts.ids)) if i not in done]
    prompt_ids = prompts.token_ids(todo)
    batches = list(length_buckets([len(p) for p in prompt_ids], generation.batch_size))
    model, _, model_description = load_model_for_generation(
        recipe["base_model"], request.checkpoint, request.dtype
    )
    generate_continuations(
        model,
        prompt_ids,
        generation,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        counterfactual_prompts=prompts.token_ids(todo, "counterfactual_prompt_ids"),
        show_progress=show_progress and rank == 0,
        on_batch=lambda batch, tokens: store.keep([todo[j] for j in batch], tokens),
        batches=batches[rank::world],
    )
    return model_description


def write_scored(
    out: Path,
    records: list[dict[str, Any]],
    document: dict[str, Any],
    resamples: int,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Score ``records`` (prediction, reference), write predictions.jsonl with per-sample
    scores and metrics.json (``document`` plus the metrics), atomically; return the document."""
    scores = evaluate_texts(
        [r["prediction"] for r in records],
        [r["reference"] for r in records],
        resamples=resamples,
        show_progress=show_progress,
    )
    for index, record in enumerate(records):
        record.update({k: float(v[index]) for k, v in scores.per_sample.items()})
    write_jsonl(out / "predictions.jsonl", records)
    document = {
        **document,
        "metrics": {k: v.as_dict() for k, v in scores.metrics.items()},
        "meteor_tokenizer": scores.meteor_tokenizer,
        "bootstrap_resamples": resamples,
    }
    write_text_atomic(out / "metrics.json", json.dumps(document, indent=2) + "\n")
    return {**document, "out_dir": str(out)}


def score_existing(out: Path, resamples: int, name: str | None = None) -> dict[str, Any]:
    """``--score-only``: score ``out/predictions.jsonl`` again (e.g. after a metric fix, or
    after WordNet was installed), keeping what metrics.json says of the run (its name unless
    ``name`` is given)."""
    predictions = out / "predictions.jsonl"
    if not predictions.is_file():
        partial = sorted(out.glob(PARTIAL_GLOB))
        hint = (
            " (only partial generations: run without --score-only to finish them)"
            if partial
            else ""
        )
        raise FileNotFoundError(f"{predictions} does not exist{hint}")
    records = [
        {k: v for k, v in r.items() if k not in METRIC_NAMES} for r in read_jsonl(predictions)
    ]
    document = {}
    if (out / "metrics.json").is_file():
        document = json.loads((out / "metrics.json").read_text())
    document.update(n=len(records), scored_again=True)
    if name:
        document["name"] = name
    return write_scored(out, records, document, resamples)


def _default_name(request: EvaluationRequest, generation: GenerationSettings) -> str:
    name = Path(request.recipe).stem if request.checkpoint else "base model (no fine-tuning)"
    if generation.cos_gamma > 0:
        name += f" + CoS {generation.cos_gamma:g}"
    return name
