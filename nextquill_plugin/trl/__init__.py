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

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import NextQuillSFTConfig
    from .trainer import NextQuillSFTTrainer

__all__ = ["NextQuillSFTConfig", "NextQuillSFTTrainer"]


def __getattr__(name: str) -> Any:
    # Lazy, as the package's own __init__: importing TRL imports transformers and accelerate.
    if name == "NextQuillSFTConfig":
        from .config import NextQuillSFTConfig

        return NextQuillSFTConfig
    if name == "NextQuillSFTTrainer":
        from .trainer import NextQuillSFTTrainer

        return NextQuillSFTTrainer
    raise AttributeError(f"module 'nextquill_plugin.trl' has no attribute {name!r}")
