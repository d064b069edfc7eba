"""Axolotl's trainer with NextQuill's loss: ``AxolotlTrainer`` plus ``NextQuillTrainerMixin``,
which owns the loss, the metrics' mean over ranks, the kept columns and the theta_0 effects."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

from axolotl.core.trainers.base import AxolotlTrainer

from ..config_keys import settings_from
from ..trainer_mixin import NextQuillTrainerMixin


class StoredMetricValues(MutableMapping):
    """Axolotl's stored metrics of one split (name -> {"values": [...], "reduction": ...}) seen
    as name -> values, the shape the mixin reads and writes; values written here are averaged
    by Axolotl's ``log`` ("mean")."""

    def __init__(self, stored: dict[str, dict]):
        self._stored = stored

    def __getitem__(self, name: str) -> list[float]:
        if name not in self._stored:
            raise KeyError(name)
        return self._stored[name]["values"]

    def __setitem__(self, name: str, values: list[float]) -> None:
        self._stored[name] = {"values": values, "reduction": "mean"}

    def __delitem__(self, name: str) -> None:
        del self._stored[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._stored))

    def __len__(self) -> int:
        return len(self._stored)


class NextQuillTrainer(NextQuillTrainerMixin, AxolotlTrainer):
    """Two forward passes per batch (with and without history), LM head on targets only. The
    plugin's ``post_trainer_create`` calls ``prepare_nextquill`` (theta_0 effects)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The training arguments carry each setting as nextquill_<name> (axolotl/args.py).
        self.nextquill_settings = settings_from(self.args)

    def _nextquill_metric_lists(self, split: str) -> MutableMapping[str, list[float]]:
        return StoredMetricValues(self._stored_metrics[split])

    def _logged_split(self, logs: dict[str, float]) -> str:
        return "train" if "loss" in logs else "eval"  # AxolotlTrainer.log's rule
