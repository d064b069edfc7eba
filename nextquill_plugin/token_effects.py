"""The data-side identification (eq. 3-4): causal effects of the history under theta_0, cached.

The cache stores the per-token probabilities p(y_t | x, h, y<t) and p(y_t | x, 0, y<t) under the
initial model, keyed by the model's identity and the tokenized data. Token weights are a pure
function of those (``preference_weights``), so changing delta, lambda or epsilon reuses the cache
without a single forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dataset_formats.contract import (
    COUNTERFACTUAL_IDS,
    COUNTERFACTUAL_LABELS,
    EFFECT_INPUT_COLUMNS,
    IGNORE_INDEX,
)
from dataset_formats.jsonl import atomic_file

from .batching import length_buckets, pad_sequences, padded_batch
from .equations import causal_effects, preference_weights
from .lm_head import head_token_log_probs, resolve_lm_head, target_hidden_states, unwrap_model

CACHE_FORMAT_VERSION = "1"
LOG = logging.getLogger("axolotl.integrations.nextquill")


@dataclass
class TokenEffects:
    """Per-row target-token probabilities with and without history, flattened with offsets."""

    p_with: np.ndarray  # float32 [total target tokens]
    p_without: np.ndarray  # float32 [total target tokens]
    offsets: np.ndarray  # int64 [rows + 1]; row i owns [offsets[i], offsets[i+1])

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.p_with[lo:hi], self.p_without[lo:hi]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row_weights(self, delta: float, high_weight: float, low_weight: float) -> list[list[float]]:
        """omega_t for every row (eq. 3), from the cached effects (eq. 4)."""
        effects = causal_effects(torch.from_numpy(self.p_with), torch.from_numpy(self.p_without))
        flat = preference_weights(effects, delta, high_weight, low_weight).numpy()
        return [flat[self.offsets[i] : self.offsets[i + 1]].tolist() for i in range(len(self))]

    def preference_token_count(self, delta: float) -> int:
        """How many target tokens cross delta, i.e. get lambda (eq. 3)."""
        return int((self.p_with - self.p_without > delta).sum())

    def save(self, path: Path, meta: dict) -> None:
        """Write atomically: a reader sees the old file or the complete new one."""
        with atomic_file(path) as handle:
            np.savez(
                handle,
                p_with=self.p_with,
                p_without=self.p_without,
                offsets=self.offsets,
                meta=np.array(json.dumps(meta, sort_keys=True)),
            )

    @classmethod
    def load(cls, path: Path) -> tuple[TokenEffects, dict]:
        """(effects, the metadata saved with them); ValueError if the file is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                effects = cls(data["p_with"], data["p_without"], data["offsets"])
                meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"unreadable ({type(error).__name__}: {error})") from None
        return effects, meta

    def problems(self, expected_counts: np.ndarray) -> list[str]:
        """Why these effects cannot belong to rows with ``expected_counts`` target tokens."""
        if len(self.offsets) != len(expected_counts) + 1:
            return [f"{len(self)} rows, the dataset has {len(expected_counts)}"]
        counts = np.diff(self.offsets)
        problems = []
        if self.offsets[0] != 0 or not np.array_equal(counts, expected_counts):
            bad = int(np.flatnonzero(counts != expected_counts)[0]) if len(counts) else 0
            problems.append(
                f"row {bad} has {counts[bad]} target tokens, the dataset row {expected_counts[bad]}"
            )
        for name in ("p_with", "p_without"):
            values = getattr(self, name)
            if len(values) != self.offsets[-1]:
                problems.append(f"{name} holds {len(values)} values for {self.offsets[-1]} tokens")
            elif not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
                problems.append(f"{name} holds values that are not probabilities")
        return problems

    @classmethod
    def concatenate(cls, parts: Sequence[TokenEffects]) -> TokenEffects:
        lengths = np.concatenate([np.diff(p.offsets) for p in parts]) if parts else np.zeros(0)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(
            np.concatenate([p.p_with for p in parts]).astype(np.float32),
            np.concatenate([p.p_without for p in parts]).astype(np.float32),
            offsets,
        )


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


@torch.no_grad()
def compute_token_effects(
    model: nn.Module,
    rows: dict[str, list[list[int]]],
    *,
    pad_token_id: int,
    batch_size: int = 4,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    show_progress: bool = True,
) -> TokenEffects:
    """Target-token probabilities with and without history for every row, under ``model``.

    ``rows`` holds the columns ``input_ids``, ``labels``, ``cf_input_ids`` and ``cf_labels``.
    Rows without a counterfactual prompt get no effects (zero target tokens). ``autocast``
    (a context factory) defaults to ``mixed_precision_autocast(model)``.
    """
    autocast = autocast or mixed_precision_autocast(model)
    lm_head = resolve_lm_head(model)
    device = lm_head.weight.device
    n_rows = len(rows["input_ids"])
    p_with: list[np.ndarray | None] = [None] * n_rows
    p_without: list[np.ndarray | None] = [None] * n_rows
    lengths = [
        len(a) + len(b or [])
        for a, b in zip(rows["input_ids"], rows[COUNTERFACTUAL_IDS], strict=True)
    ]
    was_training = model.training
    model.eval()
    try:
        batches = list(length_buckets(lengths, batch_size))
        for batch in tqdm(batches, desc="NextQuill theta_0 effects", disable=not show_progress):
            batch = [i for i in batch if rows[COUNTERFACTUAL_IDS][i]]
            if not batch:
                continue
            probs = []
            for ids_key, labels_key in (
                ("input_ids", "labels"),
                (COUNTERFACTUAL_IDS, COUNTERFACTUAL_LABELS),
            ):
                ids = [rows[ids_key][i] for i in batch]
                input_ids, mask = (t.to(device) for t in padded_batch(ids, pad_token_id))
                labels = pad_sequences([rows[labels_key][i] for i in batch], IGNORE_INDEX)
                labels = labels.to(device)
                with autocast():
                    hidden, targets, _ = target_hidden_states(model, input_ids, mask, labels)
                    # in chunks: no [N, V] logits for the whole batch
                    log_probs = head_token_log_probs(lm_head, hidden, targets.token_ids)
                probs.append((log_probs.exp().cpu().numpy(), targets))
            (pw, tw), (pc, tc) = probs
            if not torch.equal(tw.token_ids, tc.token_ids):
                raise ValueError("NextQuill: with/without-history target tokens differ in a row.")
            rows_of_token = tw.rows.cpu().numpy()
            for j, i in enumerate(batch):
                p_with[i] = pw[rows_of_token == j]
                p_without[i] = pc[rows_of_token == j]
    finally:
        model.train(was_training)
    empty = np.zeros(0, dtype=np.float32)
    lengths_out = [len(p) if p is not None else 0 for p in p_with]
    return TokenEffects(
        np.concatenate([p if p is not None else empty for p in p_with] or [empty]).astype(
            np.float32
        ),
        np.concatenate([p if p is not None else empty for p in p_without] or [empty]).astype(
            np.float32
        ),
        np.concatenate([[0], np.cumsum(lengths_out)]).astype(np.int64),
    )


def mixed_precision_autocast(model: nn.Module) -> Callable[[], contextlib.AbstractContextManager]:
    """Autocast to the model's half-precision dtype when its parameters mix it with float32.

    For bf16 training Axolotl keeps some modules in float32 and relies on the Trainer's
    autocast; the theta_0 pass runs before and outside the Trainer's step (transformers' own
    autocast helper is a no-op there), so without this it multiplies bf16 by float32 and fails.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    half = dtypes & {torch.bfloat16, torch.float16}
    if len(half) != 1 or torch.float32 not in dtypes:
        return contextlib.nullcontext
    dtype = half.pop()
    device_type = next(p for p in model.parameters() if p.dtype == dtype).device.type
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def initial_model_context(model: nn.Module) -> contextlib.AbstractContextManager:
    """theta_0: with LoRA, the base model with adapters disabled; otherwise the model as loaded."""
    base = unwrap_model(model)
    if hasattr(base, "disable_adapter") and hasattr(base, "peft_config"):
        return base.disable_adapter()
    return contextlib.nullcontext()


def cached_token_effects(
    model: nn.Module,
    dataset,
    cache_dir: Path,
    *,
    model_name: str,
    pad_token_id: int,
    batch_size: int = 4,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    extra_key: str = "",
) -> tuple[TokenEffects, Path, bool]:
    """theta_0 effects for ``dataset``: from the cache, or computed once across all ranks.

    Returns ``(effects, cache file, computed_now)``. In a multi-process run the ranks decide
    together: if any of them can read the cache, it is broadcast to all; otherwise each rank
    computes a disjoint share of the rows, the shares are gathered, and the first process of
    each node writes the cache. Every rank returns the same result.
    """
    with full_parameters(model):  # the key and the pass see ZeRO-3's whole weights
        columns = EFFECT_INPUT_COLUMNS
        key = hashlib.sha256(
            "|".join(
                [
                    CACHE_FORMAT_VERSION,
                    model_fingerprint(model, model_name),
                    data_fingerprint(dataset, columns),
                    extra_key,
                ]
            ).encode()
        ).hexdigest()[:24]
        path = Path(cache_dir) / f"effects-{key}.npz"
        meta = {"key": key, "model": model_name, "rows": len(dataset)}
        cached = load_checked(path, key, expected_target_counts(dataset)) if path.exists() else None
        rank, world_size = distributed_rank_and_size()
        if world_size > 1:  # one decision for all ranks, whatever each node's disk holds
            cached = shared_cache_hit(cached, rank, world_size)
        if cached is not None:
            if not path.exists() and node_writes_cache():
                cached.save(path, meta)  # a node without a shared disk keeps its own copy
            return cached, path, False

        n_rows = len(dataset)
        shares = np.array_split(np.arange(n_rows), world_size)
        mine = shares[rank].tolist()
        subset = dataset.select(mine) if mine else None
        rows = subset.select_columns(list(columns)).to_dict() if subset is not None else None
        with initial_model_context(model):
            part = (
                compute_token_effects(
                    model,
                    rows,
                    pad_token_id=pad_token_id,
                    batch_size=batch_size,
                    autocast=autocast,
                    show_progress=int(os.environ.get("LOCAL_RANK", "0")) == 0,
                )
                if rows
                else TokenEffects(
                    np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(1, np.int64)
                )
            )
        parts = [part]
        if world_size > 1:
            parts = [None] * world_size
            torch.distributed.all_gather_object(parts, part)
        effects = TokenEffects.concatenate(parts)
        if node_writes_cache():
            effects.save(path, meta)
        if world_size > 1:
            torch.distributed.barrier()
        return effects, path, True


def full_parameters(model: nn.Module) -> contextlib.AbstractContextManager:
    """Every parameter whole, on every rank, while the context lasts (ZeRO-3); else nothing.

    ZeRO-3 loads the model already partitioned: outside a gather each rank holds shape-(0,)
    tensors. The theta_0 pass runs before the DeepSpeed engine exists, and ranks run different
    numbers of batches, so DeepSpeed's per-module fetching would leave ranks waiting for each
    other: gather everything once, on every rank (a whole copy of the weights per process for
    the pass), and release it after."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def node_writes_cache() -> bool:
    """The first process of each node writes the cache (atomically): on a shared disk they
    write the same bytes; on nodes without one, each node gets its own copy."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def shared_cache_hit(cached: TokenEffects | None, rank: int, world_size: int):
    """The cache decision of all ranks: if any rank read a valid cache, the lowest such rank
    broadcasts it and every rank uses it; otherwise every rank gets None (all compute). Ranks
    that decided alone would run different collectives and hang."""
    dist = torch.distributed
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    source = torch.tensor([rank if cached is not None else world_size], device=device)
    dist.all_reduce(source, op=dist.ReduceOp.MIN)
    source_rank = int(source.item())
    if source_rank == world_size:
        return None
    box = [cached if rank == source_rank else None]
    dist.broadcast_object_list(box, src=source_rank)
    return box[0]


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


def load_checked(path: Path, key: str, expected_counts: np.ndarray) -> TokenEffects | None:
    """The cached effects if they are what they claim to be, else None (with a warning: the
    caller recomputes them and replaces the file atomically)."""
    try:
        effects, meta = TokenEffects.load(path)
        problems = [] if meta.get("key") == key else [f"its key is {meta.get('key')!r}"]
        problems += effects.problems(expected_counts)
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


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
