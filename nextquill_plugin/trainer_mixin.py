"""What every NextQuill trainer does, whatever the framework: one mixin over a transformers
``Trainer`` subclass (Axolotl's ``AxolotlTrainer``, TRL's ``SFTTrainer``, ...).

It owns the loss (``compute_loss``: L = Ln + alpha * Lp through ``objective``), the metrics'
mean over ranks at each log, the columns the trainer must keep, and attaching theta_0 effects to
the datasets. A framework's trainer supplies only where it stores metrics
(``_nextquill_metric_lists``) and which split a log belongs to (``_logged_split``), and calls
``prepare_nextquill`` once its model and datasets exist. A third framework is one folder and a
short subclass (see ``axolotl/trainer.py`` and ``trl/trainer.py``).

Imports no framework: only transformers' Trainer protocol (``self.args``, ``self.model``, ...).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from dataset_formats.contract import COUNTERFACTUAL_IDS, ROW_COLUMNS

from .distributed import mean_over_ranks
from .effects_cache import with_theta0_effects
from .lm_head import resolve_lm_head
from .objective import NEXTQUILL_METRICS, trainer_batch_loss
from .settings import NextQuillSettings, WeightNormalization

DATASET_SPLITS = ("train_dataset", "eval_dataset")
# The columns a batch must keep when remove_unused_columns is on: NextQuill's and the mask the
# collator pads (the model's forward does not name ours, so the Trainer would drop them).
KEPT_COLUMNS = ("attention_mask", *ROW_COLUMNS)


class NextQuillTrainerMixin:
    """NextQuill's loss, metrics, kept columns and theta_0 effects for a transformers Trainer.

    The loss of a micro-batch is ``sum_t omega_t * l_t / num_items_in_batch`` (plus alpha times
    the same for Lp), where ``num_items_in_batch`` counts the target tokens of the whole
    gradient-accumulation window. Hence ``model_accepts_loss_kwargs = True``: transformers must
    not divide again by the number of accumulation steps.
    """

    nextquill_settings: NextQuillSettings

    # --- what each framework's trainer supplies -------------------------------------------------

    def _nextquill_metric_lists(self, split: str) -> MutableMapping[str, list[float]]:
        """The framework's store of this split's metrics: name -> the values since the last log."""
        raise NotImplementedError

    def _logged_split(self, logs: dict[str, float]) -> str:
        """Which split ("train" or "eval") the framework's ``log`` reports for these logs."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------

    def prepare_nextquill(self, cache_dir: Path, model_name: str, batch_size: int) -> None:
        """Before the first step: check the LM head now (not at the first step, for odd heads),
        let transformers hand the window's token count to the loss, and add theta_0 effects to
        the datasets when the weights come from theta_0 (``effects_cache``: computed once,
        cached in ``cache_dir`` under a key of ``model_name`` and the rows)."""
        resolve_lm_head(self.model)
        self.model_accepts_loss_kwargs = True
        if not self.nextquill_settings.weights_from_theta0:
            return
        for split in DATASET_SPLITS:
            dataset = getattr(self, split, None)
            if dataset is None or not hasattr(dataset, "column_names"):
                continue
            with_effects = with_theta0_effects(
                self.model,
                self.processing_class,
                dataset,
                self.nextquill_settings,
                Path(cache_dir),
                model_name=model_name,
                batch_size=batch_size,
            )
            setattr(self, split, with_effects)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None:
            for column in KEPT_COLUMNS:
                if column not in self._signature_columns:
                    self._signature_columns.append(column)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if COUNTERFACTUAL_IDS not in inputs:  # ordinary rows only (or ContextSFT): stock loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        result = trainer_batch_loss(self, model, inputs, num_items_in_batch)
        store = self._nextquill_metric_lists("train" if model.training else "eval")
        for name, value in result.metrics().items():  # this rank's; log() averages all ranks'
            store.setdefault(name, []).append(value)
        loss = result.loss.total
        if self._tokens_counted_across_processes(num_items_in_batch):
            # As transformers' own loss: num_items_in_batch counts every process's target tokens
            # and DDP averages the gradients over the processes, so the loss is scaled back up.
            loss = loss * self.accelerator.num_processes
        if return_outputs:
            result.outputs["loss"] = loss
            return loss, result.outputs
        return loss

    def _tokens_counted_across_processes(self, num_items_in_batch: Any) -> bool:
        """Whether the loss was divided by the target tokens of all processes (transformers'
        ``average_tokens_across_devices``, which Axolotl turns off and TRL leaves on, under the
        paper's token normalisation)."""
        return (
            num_items_in_batch is not None
            and bool(getattr(self.args, "average_tokens_across_devices", False))
            and self.nextquill_settings.weight_normalization == WeightNormalization.tokens
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Every rank logs at the same step: its NextQuill values become their mean over all
        # ranks (one all-reduce, whatever each stored), then the framework reduces and logs them.
        store = self._nextquill_metric_lists(self._logged_split(logs))
        local = {name: store[name] for name in NEXTQUILL_METRICS if name in store}
        for name, mean in mean_over_ranks(local, NEXTQUILL_METRICS, self.args.device).items():
            if mean is None:
                store.pop(name, None)
            else:
                store[name] = [mean]
        return super().log(logs, start_time)
