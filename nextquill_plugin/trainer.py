"""AxolotlTrainer subclass whose compute_loss is NextQuill's L = Ln + alpha * Lp."""

from __future__ import annotations

from axolotl.core.trainers.base import AxolotlTrainer
from typing_extensions import override

from dataset_formats.contract import COUNTERFACTUAL_IDS, ROW_COLUMNS

from .args import settings_from
from .distributed import mean_over_ranks
from .objective import NEXTQUILL_METRICS, trainer_batch_loss


class NextQuillTrainer(AxolotlTrainer):
    """Two forward passes per batch (with and without history), LM head on targets only.

    The loss of a micro-batch is ``sum_t omega_t * l_t / num_items_in_batch`` (plus alpha times
    the same for Lp), where ``num_items_in_batch`` counts the target tokens of the whole
    gradient-accumulation window. Hence ``model_accepts_loss_kwargs = True``: transformers must
    not divide again by the number of accumulation steps.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True
        # The training arguments carry each setting as nextquill_<name> (args.py's mixin).
        self.nextquill_settings = settings_from(self.args)

    def _set_signature_columns_if_needed(self):
        # Keep our columns when remove_unused_columns is on (the KD trainer's pattern).
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None:
            for column in ROW_COLUMNS:
                if column not in self._signature_columns:
                    self._signature_columns.append(column)

    @override
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if COUNTERFACTUAL_IDS not in inputs:  # a batch of ordinary rows only: stock loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        result = trainer_batch_loss(self, model, inputs, num_items_in_batch)
        metrics = result.metrics()  # each rank stores its own; log() averages them over ranks
        if metrics:
            self.store_metrics(metrics, train_eval="train" if model.training else "eval")
        if return_outputs:
            result.outputs["loss"] = result.loss.total
            return result.loss.total, result.outputs
        return result.loss.total

    @override
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Every rank logs at the same step (the Trainer has just averaged the loss over them):
        # replace each rank's stored NextQuill values by their mean over all ranks.
        stored = getattr(self, "_stored_metrics", {}).get("train" if "loss" in logs else "eval")
        if stored is None:  # an Axolotl without stored metrics: nothing of ours to reduce
            return super().log(logs, start_time)
        local = {name: stored[name]["values"] for name in NEXTQUILL_METRICS if name in stored}
        for name, mean in mean_over_ranks(local, NEXTQUILL_METRICS, self.args.device).items():
            if mean is None:
                stored.pop(name, None)
            else:
                stored[name]["values"] = [mean]
                stored[name]["reduction"] = "mean"
        return super().log(logs, start_time)
