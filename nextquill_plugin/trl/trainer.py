"""``NextQuillSFTTrainer``: TRL's ``SFTTrainer`` whose loss is NextQuill's L = Ln + alpha * Lp.

Thin glue, as the Axolotl trainer: the rows are tokenized by the dataset types (``data.py``);
the loss, the metrics, the kept columns and the theta_0 effects are ``NextQuillTrainerMixin``'s.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from transformers import AutoTokenizer
from trl import SFTTrainer

from ..config_keys import settings_from
from ..effects_cache import effects_cache_dir
from ..trainer_mixin import NextQuillTrainerMixin
from .config import NextQuillSFTConfig
from .data import NextQuillSFTCollator, tokenized_rows


def model_name_of(model: Any) -> str:
    """The model's name or path (a string, or a loaded model's ``name_or_path``)."""
    return model if isinstance(model, str) else str(getattr(model, "name_or_path", "") or "")


def reentrant_under_zero3(args: Any, peft_config: Any) -> bool:
    """Whether TRL will force reentrant gradient checkpointing (it does for PEFT models under
    DeepSpeed ZeRO-3, see SFTTrainer.__init__)."""
    plugin = getattr(args, "deepspeed_plugin", None)
    return (
        peft_config is not None
        and plugin is not None
        and getattr(plugin, "zero_stage", None) == 3
        and bool(args.gradient_checkpointing)
    )


class NextQuillSFTTrainer(NextQuillTrainerMixin, SFTTrainer):
    """TRL's SFTTrainer on NextQuill rows, with two forward passes per batch (with and without
    history) and the LM head on targets only.

    ``train_dataset`` / ``eval_dataset`` hold rows of ``args.nextquill_dataset_type`` (a
    ``datasets.Dataset`` or a list of dicts), not text: the trainer tokenizes them into the
    paired prompts and brings its own collator. As in the Axolotl trainer the loss of a
    micro-batch is divided by the target tokens of the whole accumulation window (TRL's
    ``num_items_in_batch``), hence ``model_accepts_loss_kwargs = True``.
    """

    def __init__(
        self,
        model: Any,
        args: NextQuillSFTConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        data_collator: Any = None,
        **kwargs: Any,
    ):
        if not isinstance(args, NextQuillSFTConfig):
            raise TypeError(
                "NextQuillSFTTrainer needs args=NextQuillSFTConfig(...) (SFTConfig plus NextQuill's "
                f"keys), got {type(args).__name__}"
            )
        if data_collator is not None:
            raise ValueError(
                "NextQuillSFTTrainer collates its own batches (with the counterfactual prompts); "
                "do not pass data_collator"
            )
        if train_dataset is None:
            raise ValueError("NextQuillSFTTrainer: train_dataset is required")
        if kwargs.get("formatting_func") is not None:
            raise ValueError(
                "NextQuillSFTTrainer: formatting_func does not apply; the dataset type "
                f"{args.nextquill_dataset_type} builds the prompts"
            )
        if args.nextquill and reentrant_under_zero3(args, kwargs.get("peft_config")):
            raise ValueError(
                "NextQuillSFTTrainer: with a PEFT adapter, DeepSpeed ZeRO-3 and gradient "
                "checkpointing, TRL switches to reentrant checkpointing, which runs a separate "
                "backward for each of NextQuill's two forward passes; use ZeRO-1/2 or full "
                "fine-tuning there, or turn gradient_checkpointing off"
            )
        tokenizer = processing_class or AutoTokenizer.from_pretrained(model_name_of(model))
        if tokenizer.pad_token is None:  # as TRL: the end-of-text token pads
            tokenizer.pad_token = tokenizer.eos_token
        prompts = args.prompt_settings()
        train = tokenized_rows(
            train_dataset, args.nextquill_dataset_type, tokenizer, prompts, "train"
        )
        evals = None
        if eval_dataset is not None:
            evals = tokenized_rows(
                eval_dataset, args.nextquill_dataset_type, tokenizer, prompts, "eval"
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=NextQuillSFTCollator(
                tokenizer, pad_to_multiple_of=args.pad_to_multiple_of
            ),
            train_dataset=train,
            eval_dataset=evals,
            processing_class=tokenizer,
            **kwargs,
        )
        self.nextquill_settings = settings_from(args)
        if args.nextquill:  # else ContextSFT on the same prompts: TRL's loss, as TRL sets it up
            self.prepare_nextquill(
                effects_cache_dir(args.nextquill_weight_cache_dir, prepared_path=None),
                model_name=model_name_of(model),
                batch_size=args.nextquill_weight_batch_size,
            )

    def _nextquill_metric_lists(self, split: str) -> MutableMapping[str, list[float]]:
        return self._metrics[split]

    def _logged_split(self, logs: dict[str, float]) -> str:
        return "train" if self.model.training else "eval"  # SFTTrainer.log's rule
