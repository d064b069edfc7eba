"""``NextQuillSFTTrainer``: TRL's ``SFTTrainer`` whose loss is NextQuill's L = Ln + alpha * Lp.

Thin glue, as the Axolotl trainer: the rows are tokenized by the dataset types (``data.py``),
theta_0 effects come from the same pass and cache (``effects_cache.py``), and the loss of a
micro-batch is ``objective.compute_batch_loss``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoTokenizer
from trl import SFTTrainer

from dataset_formats.contract import COUNTERFACTUAL_IDS, ROW_COLUMNS

from ..distributed import mean_over_ranks
from ..effects_cache import with_theta0_effects
from ..lm_head import resolve_lm_head
from ..objective import NEXTQUILL_METRICS, trainer_batch_loss
from ..settings import WeightNormalization
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


class NextQuillSFTTrainer(SFTTrainer):
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
        self.nextquill_settings = args.nextquill_settings()
        if not args.nextquill:  # ContextSFT on the same prompts: TRL's loss, as TRL sets it up
            return
        self.model_accepts_loss_kwargs = True
        resolve_lm_head(self.model)  # fails now, not at the first step, for odd heads
        if self.nextquill_settings.weights_from_theta0:
            for split in ("train_dataset", "eval_dataset"):
                if getattr(self, split, None) is not None:
                    setattr(self, split, self._with_theta0_effects(getattr(self, split), model))

    def _with_theta0_effects(self, dataset, model: Any):
        """theta_0 effects of ``dataset``'s rows, from the cache or the pass (LoRA's adapter off),
        shared by all processes; the cache is ``nextquill_weight_cache_dir`` or the output
        folder's ``nextquill/``."""
        cache = self.args.nextquill_weight_cache_dir or Path(self.args.output_dir) / "nextquill"
        return with_theta0_effects(
            self.model,
            self.processing_class,
            dataset,
            self.nextquill_settings,
            Path(cache),
            model_name=model_name_of(model),
            batch_size=self.args.nextquill_weight_batch_size,
        )

    def _set_signature_columns_if_needed(self):
        # Keep NextQuill's columns (and the mask the collator pads) when remove_unused_columns is on.
        super()._set_signature_columns_if_needed()
        for column in ("attention_mask", *ROW_COLUMNS):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if COUNTERFACTUAL_IDS not in inputs:  # ordinary rows only (or nextquill: false): TRL's loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        result = trainer_batch_loss(self, model, inputs, num_items_in_batch)
        metrics = self._metrics["train" if model.training else "eval"]
        for name, value in result.metrics().items():  # this process's; log() averages them all
            metrics[name].append(value)
        loss = result.loss.total
        if self._tokens_counted_across_processes(num_items_in_batch):
            # As TRL's own loss: num_items_in_batch counts every process's target tokens and
            # DDP averages the gradients over the processes, so the loss is scaled back up.
            loss = loss * self.accelerator.num_processes
        if return_outputs:
            result.outputs["loss"] = loss
            return loss, result.outputs
        return loss

    def _tokens_counted_across_processes(self, num_items_in_batch: Any) -> bool:
        """Whether the loss was divided by the target tokens of all processes (TRL's
        ``average_tokens_across_devices``, under the paper's token normalisation)."""
        return (
            num_items_in_batch is not None
            and self.args.average_tokens_across_devices
            and self.nextquill_settings.weight_normalization == WeightNormalization.tokens
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Every process logs at the same step: its NextQuill values become their mean over all
        # processes (one all-reduce, whatever each stored), then TRL averages and logs its lists.
        stored = self._metrics["train" if self.model.training else "eval"]
        local = {name: stored[name] for name in NEXTQUILL_METRICS if name in stored}
        for name, mean in mean_over_ranks(local, NEXTQUILL_METRICS, self.args.device).items():
            if mean is None:
                stored.pop(name, None)
            else:
                stored[name] = [mean]
        super().log(logs, start_time)
