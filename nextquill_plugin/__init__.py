"""NextQuill for Axolotl: causal preference modeling for LLM personalization.

Enable in a recipe with::

    plugins:
      - nextquill_plugin.NextQuillPlugin
    nextquill: true

The plugin class is imported lazily (PEP 562), so that the math
(:mod:`nextquill_plugin.equations`, :mod:`nextquill_plugin.objective`) and the command-line
tools can be imported without Axolotl: importing Axolotl imports bitsandbytes, which asks the
Hugging Face Hub for kernels unless offline mode is set before that import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .args import NextQuillArgs
    from .plugin import NextQuillPlugin

__all__ = ["NextQuillArgs", "NextQuillPlugin"]


def __getattr__(name: str) -> Any:
    if name == "NextQuillPlugin":
        from .plugin import NextQuillPlugin

        return NextQuillPlugin
    if name == "NextQuillArgs":
        from .args import NextQuillArgs

        return NextQuillArgs
    raise AttributeError(f"module 'nextquill_plugin' has no attribute {name!r}")
