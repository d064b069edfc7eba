"""The theta_0 effects cache: one file per (model, tokenized data), checked when read, replaced
atomically, decided on by all ranks together; and the theta_0 effects column it gives a dataset.

The key is a fingerprint of the base weights and of the token columns, so that another model,
other data or other prompt settings never reuse a file; a file that does not match what it
claims to be is recomputed and replaced with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dataset_formats.contract import (
    COUNTERFACTUAL_IDS,
    EFFECT_INPUT_COLUMNS,
    IGNORE_INDEX,
    TOKEN_EFFECTS,
)
from nextquill_common.jsonl import atomic_file, write_problem

from . import distributed
from .equations import PreferenceRule
from .lm_head import unwrap_model
from .settings import WEIGHT_PASS_BATCH_SIZE, NextQuillSettings
from .token_effects import TokenEffects, compute_token_effects, initial_model_context

CACHE_FORMAT_VERSION = "1"
LOG = logging.getLogger("axolotl.integrations.nextquill")
# Axolotl's default dataset_prepared_path (axolotl.common.const), declared here so that the TRL
# path, which imports no Axolotl, caches where an Axolotl run in the same folder does.
DEFAULT_PREPARED_PATH = "last_run_prepared"


def effects_cache_dir(cache_dir: str | Path | None, prepared_path: str | Path | None) -> Path:
    """Where theta_0 effects are cached, under either framework: ``nextquill_weight_cache_dir``
    if set, else ``<dataset_prepared_path>/nextquill`` (a TRL config has no prepared path: it
    takes Axolotl's default). Files are keyed by the model and the rows, so runs of both
    frameworks share what either computed."""
    if cache_dir:
        return Path(cache_dir)
    return Path(prepared_path or DEFAULT_PREPARED_PATH) / "nextquill"


def model_fingerprint(model: nn.Module, name: str = "") -> str:
    """Identity of the base weights: name, dtypes, shapes and a sample of every tensor.

    LoRA adapter tensors are left out: theta_0 is the base model with adapters disabled.
    """
    digest = hashlib.sha256(name.encode())
    for param_name, param in unwrap_model(model).named_parameters():
        if "lora_" in param_name:
            continue
        digest.update(f"{param_name}:{tuple(param.shape)}:{param.dtype}".encode())
        flat = param.detach().reshape(-1)
        if flat.numel():
            sample = torch.cat([flat[:16], flat[-16:], flat[:: max(1, flat.numel() // 64)]])
            digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def data_fingerprint(dataset, columns: Sequence[str]) -> str:
    """Hash of the token columns of a ``datasets.Dataset`` (content, not its history)."""
    digest = hashlib.sha256()
    table = dataset.with_format("arrow")[:] if len(dataset) else None
    for column in columns:
        digest.update(column.encode())
        if table is None:
            continue
        offsets, values = list_column(table, column)
        digest.update(offsets.tobytes())
        digest.update(values.tobytes())
    return digest.hexdigest()[:16]


def list_column(table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(row offsets from 0, flat int64 values) of a list-of-ints column of an Arrow table;
    a null row (a row of another dataset type) is empty."""
    array = table.column(column).combine_chunks()
    offsets = np.asarray(array.offsets) - array.offsets[0].as_py()
    return offsets.astype(np.int64), np.asarray(array.flatten()).astype(np.int64)


def expected_target_counts(dataset) -> np.ndarray:
    """Target tokens per row that the theta_0 pass gives effects for (0 for unpaired rows),
    counted on the Arrow columns (no Python list per row: this runs on every cache hit)."""
    if not len(dataset):
        return np.zeros(0, dtype=np.int64)
    table = dataset.with_format("arrow")[:]
    offsets, labels = list_column(table, "labels")
    is_target = (labels != IGNORE_INDEX).astype(np.int64)
    starts = offsets[:-1][offsets[:-1] < offsets[1:]]
    is_target[starts] = 0  # a row's first label is never predicted (targets are labels[1:])
    running = np.concatenate([[0], np.cumsum(is_target)])
    counts = running[offsets[1:]] - running[offsets[:-1]]
    cf_offsets, _ = list_column(table, COUNTERFACTUAL_IDS)
    return np.where(np.diff(cf_offsets) > 0, counts, 0).astype(np.int64)


def values_digest(effects: TokenEffects) -> str:
    """sha256 of the stored values: a file whose values were changed after it was written
    (even to self-consistent probabilities) no longer matches the digest saved with it."""
    digest = hashlib.sha256()
    for values in (effects.p_with, effects.p_without, effects.offsets):
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def save_effects(effects: TokenEffects, path: Path, meta: dict) -> None:
    """Write atomically, with the digest of the values: a reader sees the old file or the
    complete new one."""
    meta = {**meta, "values_sha256": values_digest(effects)}
    with atomic_file(path) as handle:
        np.savez(
            handle,
            p_with=effects.p_with,
            p_without=effects.p_without,
            offsets=effects.offsets,
            meta=np.array(json.dumps(meta, sort_keys=True)),
        )


def load_effects(path: Path) -> tuple[TokenEffects, dict]:
    """(effects, the metadata saved with them); ValueError if the file is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            effects = TokenEffects(data["p_with"], data["p_without"], data["offsets"])
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"unreadable ({type(error).__name__}: {error})") from None
    return effects, meta


def effects_problems(effects: TokenEffects, expected_counts: np.ndarray) -> list[str]:
    """Why ``effects`` cannot belong to rows with ``expected_counts`` target tokens."""
    offsets = effects.offsets
    if len(offsets) != len(expected_counts) + 1:
        return [f"{len(effects)} rows, the dataset has {len(expected_counts)}"]
    counts = np.diff(offsets)
    problems = []
    if offsets[0] != 0 or not np.array_equal(counts, expected_counts):
        bad = int(np.flatnonzero(counts != expected_counts)[0]) if len(counts) else 0
        problems.append(
            f"row {bad} has {counts[bad]} target tokens, the dataset row {expected_counts[bad]}"
        )
    for name in ("p_with", "p_without"):
        values = getattr(effects, name)
        if len(values) != offsets[-1]:
            problems.append(f"{name} holds {len(values)} values for {offsets[-1]} tokens")
        elif not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
            problems.append(f"{name} holds values that are not probabilities")
    return problems


def load_checked(path: Path, key: str, expected_counts: np.ndarray) -> TokenEffects | None:
    """The cached effects if they are what they claim to be, else None (with a warning: the
    caller recomputes them and replaces the file atomically)."""
    try:
        effects, meta = load_effects(path)
        problems = [] if meta.get("key") == key else [f"its key is {meta.get('key')!r}"]
        problems += effects_problems(effects, expected_counts)
        if not problems and meta.get("values_sha256") != values_digest(effects):
            problems.append("its values do not match the digest saved with them")
    except ValueError as error:
        problems = [str(error)]
    if not problems:
        return effects
    LOG.warning(
        "NextQuill: the theta_0 cache %s does not match this model and data (%s); recomputing.",
        path,
        "; ".join(problems),
    )
    return None


def cache_key(model: nn.Module, dataset, model_name: str, extra_key: str = "") -> str:
    """The cache file's key: format version, base weights, token columns."""
    parts = [
        CACHE_FORMAT_VERSION,
        model_fingerprint(model, model_name),
        data_fingerprint(dataset, EFFECT_INPUT_COLUMNS),
        extra_key,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def cached_token_effects(
    model: nn.Module,
    dataset,
    cache_dir: Path,
    *,
    model_name: str,
    pad_token_id: int,
    batch_size: int = WEIGHT_PASS_BATCH_SIZE,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    extra_key: str = "",
) -> tuple[TokenEffects, Path, bool]:
    """theta_0 effects for ``dataset``: from the cache, or computed once across all ranks.

    Returns ``(effects, cache file, computed_now)``. In a multi-process run the ranks decide
    together: if any of them can read the cache, it is broadcast to all; otherwise each rank
    computes a disjoint share of the rows, the shares are gathered, and the first process of
    each node writes the cache. Every rank returns the same result.
    """
    refuse_a_file(Path(cache_dir))  # on every rank: none may go on to the collectives alone
    writable = distributed.is_first_on_node() and cache_dir_writable(Path(cache_dir))
    with distributed.full_parameters(model):  # the key and the pass see ZeRO-3's whole weights
        key = cache_key(model, dataset, model_name, extra_key)
        path = Path(cache_dir) / f"effects-{key}.npz"
        if writable and path.exists() and not path.is_file():
            LOG.warning(
                "NextQuill: %s, where the theta_0 cache file goes, is not a file; the effects are "
                "computed and used for this run only (move it away to keep them).",
                path,
            )
            writable = False  # found now, not at the rename after the whole pass
        meta = {"key": key, "model": model_name, "rows": len(dataset)}
        cached = load_checked(path, key, expected_target_counts(dataset)) if path.exists() else None
        cached = distributed.from_lowest_holder(cached)  # one decision for all ranks
        if cached is not None:
            if not path.exists() and writable:
                save_effects(cached, path, meta)  # a node without a shared disk keeps its copy
            return cached, path, False
        effects = _compute_shared(model, dataset, pad_token_id, batch_size, autocast)
        if writable:
            save_effects(effects, path, meta)
        distributed.barrier()
        return effects, path, True


def refuse_a_file(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"NextQuill: the theta_0 cache folder {folder} is a file; set "
            "nextquill_weight_cache_dir to a folder (or move the file away)"
        )


def cache_dir_writable(folder: Path) -> bool:
    """Whether the cache can be written to ``folder``, found out before the pass (by creating
    and removing a file in it). A read-only or immutable folder gets a warning: the effects are
    then used for this run only."""
    problem = write_problem(folder)
    if problem:
        LOG.warning(
            "NextQuill: cannot write the theta_0 cache to %s (%s); the effects are computed and "
            "used for this run only. Set nextquill_weight_cache_dir to a writable folder to "
            "keep them.",
            folder,
            problem,
        )
    return problem is None


def _compute_shared(model, dataset, pad_token_id, batch_size, autocast) -> TokenEffects:
    """Each rank computes a disjoint share of the rows; every rank returns all of them."""
    rank, world_size = distributed.rank_and_size()
    mine = np.array_split(np.arange(len(dataset)), world_size)[rank].tolist()
    part = TokenEffects.empty()
    if mine:
        rows = dataset.select(mine).select_columns(list(EFFECT_INPUT_COLUMNS)).to_dict()
        with initial_model_context(model):
            part = compute_token_effects(
                model,
                rows,
                pad_token_id=pad_token_id,
                batch_size=batch_size,
                autocast=autocast,
                show_progress=distributed.is_first_on_node(),
            )
    return TokenEffects.concatenate(distributed.gather_objects(part))


def with_theta0_effects(
    model: nn.Module,
    tokenizer,
    dataset,
    settings: NextQuillSettings,
    cache_dir: Path,
    *,
    model_name: str,
    batch_size: int,
):
    """Compute (or load) theta_0 effects and add them as the dataset's effects column (any
    trainer: the Axolotl plugin and the TRL trainer call this)."""
    if COUNTERFACTUAL_IDS not in dataset.column_names:
        return dataset
    if TOKEN_EFFECTS in dataset.column_names:
        dataset = dataset.remove_columns(TOKEN_EFFECTS)
    effects, path, computed = cached_token_effects(
        model,
        dataset,
        cache_dir,
        model_name=model_name,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        batch_size=batch_size,  # autocast: the model's mixed precision
    )
    if distributed.rank_and_size()[0] == 0:  # every rank has the same effects: say it once
        describe_effects(effects, settings, path, computed)
    # Rows without a counterfactual prompt have no effects (None): weight 1 in the objective.
    return dataset.add_column(TOKEN_EFFECTS, effects.row_effects())


def describe_effects(effects: TokenEffects, settings: NextQuillSettings, path, computed) -> None:
    """Log where the effects came from and how many tokens the rule marks."""
    LOG.info(
        "NextQuill: %s theta_0 effects for %d rows (%s).",
        "computed" if computed else "used cached",
        len(effects),
        path,
    )
    rule = PreferenceRule.from_settings(settings)
    n_tokens, n_high = len(effects.p_with), int(rule.mask(effects.effects()).sum())
    LOG.info(
        "NextQuill: %d of %d target tokens (%.1f%%) are preference-bearing (effect > delta=%s).",
        n_high,
        n_tokens,
        100.0 * n_high / max(n_tokens, 1),
        rule.delta,
    )
