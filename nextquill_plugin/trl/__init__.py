"""NextQuill under TRL: ``NextQuillSFTTrainer`` (TRL's ``SFTTrainer`` with the NextQuill loss) and
``NextQuillSFTConfig`` (``SFTConfig`` plus NextQuill's keys). No Axolotl import on this path::

    from nextquill_plugin.trl import NextQuillSFTConfig, NextQuillSFTTrainer

    trainer = NextQuillSFTTrainer(model="Qwen/Qwen2.5-3B", train_dataset=rows,
                                  args=NextQuillSFTConfig(output_dir="out", nextquill_alpha=0.05),
                                  peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    trainer.train()

``nextquill trl-sft --config recipe.yaml`` runs a TRL-style YAML config (``command.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nextquill_common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from .config import NextQuillSFTConfig
    from .trainer import NextQuillSFTTrainer

__all__ = ["NextQuillSFTConfig", "NextQuillSFTTrainer"]
# On first use, as the package's own exports: importing TRL imports transformers and accelerate.
__getattr__ = lazy_exports(
    __name__, {"NextQuillSFTConfig": ".config", "NextQuillSFTTrainer": ".trainer"}
)
