"""Loading a trained model and generating reviews in batches (left-padded), with optional
context steering (CoS): next-token scores  s_h + gamma * (s_h - s_none)  where s_h and s_none
are the log-probabilities with and without the user's history.

CoS reuses transformers' classifier-free guidance processor: with ``guidance_scale = 1 + gamma``
and the counterfactual prompt as the "negative prompt" it computes exactly
``s_none + (1 + gamma) * (s_h - s_none)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..batching import length_buckets, padded_batch

PENALTY_SCOPES = ("all", "generated")


@dataclass
class GenerationSettings:
    """Decoding settings; the defaults are the authors' evaluation (greedy, penalty 1.2)."""

    max_new_tokens: int = 256
    batch_size: int = 8
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy"})
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.2
    # "all": transformers' penalty, which also counts the prompt's tokens (the authors' setting;
    # it penalises the user's own words shown in the history); "generated": only new tokens.
    penalty_scope: str = field(
        default="all",
        metadata={
            "choices": PENALTY_SCOPES,
            "help": "all: transformers' penalty, prompt tokens included (the authors'); "
            "generated: only new tokens",
        },
    )
    cos_gamma: float = field(
        default=0.0,
        metadata={"help": "context steering: s_h + gamma * (s_h - s_no_history); 0 = off"},
    )
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be a finite number (got {getattr(self, name)})"
            for name in ("temperature", "top_p", "repetition_penalty", "cos_gamma")
            if not math.isfinite(getattr(self, name))
        ]
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")
        if self.penalty_scope not in PENALTY_SCOPES:
            problems.append(f"penalty_scope must be one of {PENALTY_SCOPES}")
        if self.cos_gamma < 0:
            problems.append(f"cos_gamma must be >= 0 (got {self.cos_gamma})")
        # Checked under greedy decoding too: metrics.json records them with the results.
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            problems.append(
                f"temperature must be > 0 and top_p in (0, 1] (got {self.temperature}, {self.top_p})"
            )
        if problems:
            raise ValueError("generation settings: " + "; ".join(problems))

    def as_dict(self) -> dict:
        return asdict(self)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_sources(base_model: str, checkpoint: str | None) -> tuple[str, Path | None]:
    """(where the full weights are, the LoRA adapter folder or None) for a checkpoint."""
    if not checkpoint:
        return base_model, None
    folder = Path(checkpoint)
    if (folder / "adapter_config.json").is_file():
        config = json.loads((folder / "adapter_config.json").read_text())
        return config.get("base_model_name_or_path") or base_model, folder
    if (folder / "config.json").is_file():
        return str(folder), None
    raise FileNotFoundError(
        f"checkpoint {folder} holds neither adapter_config.json (a LoRA adapter) nor "
        "config.json (a full model); pass the folder `axolotl train` saved to "
        "(output_dir or one of its checkpoint-N folders)."
    )


def load_tokenizer(base_model: str, checkpoint: str | None):
    """The tokenizer saved with the checkpoint, else the base model's; pad = EOS if unset."""
    from transformers import AutoTokenizer  # seconds to import; `nextquill --help` needs none

    source, _ = model_sources(base_model, checkpoint)
    tokenizer_source = checkpoint if checkpoint and _has_tokenizer(Path(checkpoint)) else source
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_for_generation(base_model: str, checkpoint: str | None, dtype: str = "auto"):
    """(model, tokenizer, description) for a base model, a LoRA adapter folder (merged into its
    base for speed) or a full fine-tuned model folder."""
    from transformers import AutoModelForCausalLM  # as in load_tokenizer

    device = default_device()
    if dtype == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        torch_dtype = torch.bfloat16 if use_bf16 else torch.float32
    else:
        torch_dtype = {
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[dtype]
    source, adapter = model_sources(base_model, checkpoint)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    if adapter is not None:
        from peft import PeftModel  # imports transformers too; only for a LoRA checkpoint

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.to(device).eval()
    description = f"{source}" + (f" + LoRA adapter {adapter}" if adapter else "")
    return model, load_tokenizer(base_model, checkpoint), description


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


@torch.no_grad()
def generate_continuations(
    model,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    pad_token_id: int,
    eos_token_id: int | None,
    counterfactual_prompts: Sequence[Sequence[int]] | None = None,
    show_progress: bool = True,
    on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
    batches: Sequence[list[int]] | None = None,
) -> list[list[int]]:
    """New token ids for every prompt (EOS and padding removed), in the prompts' order.

    Prompts are batched by length (longest first) so that left padding stays small. With
    ``settings.cos_gamma > 0`` the ``counterfactual_prompts`` steer decoding (see module doc).
    ``on_batch(prompt indices, their new token ids)`` is called after every batch, so that a
    caller can keep what is done if the run is interrupted. ``batches`` (lists of prompt
    indices) replaces the length-sorted batches, e.g. with one process's share of them; prompts
    in no batch get no continuation. Sampling is seeded per batch by its first prompt index, so
    a batch gives the same tokens whichever process runs it.
    """
    if settings.cos_gamma > 0 and counterfactual_prompts is None:
        raise ValueError("context steering (cos_gamma > 0) needs the counterfactual prompts")
    device = next(model.parameters()).device
    if batches is None:
        batches = list(length_buckets([len(p) for p in prompts], settings.batch_size))
    outputs: list[list[int]] = [[] for _ in prompts]
    for batch in tqdm(batches, desc="generating", disable=not show_progress):
        input_ids, mask = padded_batch([prompts[i] for i in batch], pad_token_id, side="left")
        kwargs = decoding_arguments(settings, input_ids.shape[1], pad_token_id, eos_token_id)
        if settings.do_sample:
            torch.manual_seed(settings.seed + batch[0])
        if settings.cos_gamma > 0:
            cf_ids, cf_mask = padded_batch(
                [counterfactual_prompts[i] for i in batch], pad_token_id, side="left"
            )
            kwargs.update(
                guidance_scale=1.0 + settings.cos_gamma,
                negative_prompt_ids=cf_ids.to(device),
                negative_prompt_attention_mask=cf_mask.to(device),
            )
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs
        )
        new_tokens = generated[:, input_ids.shape[1] :].tolist()
        for row, tokens in zip(batch, new_tokens, strict=True):
            outputs[row] = continuation(tokens, pad_token_id, eos_token_id)
        if on_batch is not None:
            on_batch(list(batch), [outputs[row] for row in batch])
    return outputs


def decoding_arguments(
    settings: GenerationSettings, prompt_length: int, pad_token_id: int, eos_token_id: int | None
) -> dict:
    """``model.generate``'s keyword arguments for a batch of left-padded prompts of
    ``prompt_length`` tokens (context steering's are added per batch)."""
    # transformers only when decoding, as in load_tokenizer
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    kwargs: dict = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "pad_token_id": pad_token_id,
        "eos_token_id": eos_token_id,
    }
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:  # greedy: unset the model's own sampling defaults so transformers does not warn
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if settings.repetition_penalty != 1.0 and settings.penalty_scope == "generated":
        kwargs["logits_processor"] = LogitsProcessorList(
            [
                RepetitionPenaltyLogitsProcessor(
                    settings.repetition_penalty, prompt_ignore_length=prompt_length
                )
            ]
        )
    else:
        kwargs["repetition_penalty"] = settings.repetition_penalty
    return kwargs


def continuation(tokens: list[int], pad_token_id: int, eos_token_id: int | None) -> list[int]:
    """A generated row's new tokens up to its first EOS, without padding."""
    if eos_token_id is not None and eos_token_id in tokens:
        tokens = tokens[: tokens.index(eos_token_id)]
    return [t for t in tokens if t != pad_token_id]
