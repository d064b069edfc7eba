"""NextQuill for Axolotl: causal preference modeling for LLM personalization.

Enable in a recipe with::

    plugins:
      - nextquill_plugin.NextQuillPlugin
    nextquill: true

The framework-free core (settings, equations, objective, theta_0 effects, the trainer mixin)
lives in this package's top-level modules; each framework's glue in its own subpackage
(``axolotl/``, ``trl/``). The exports are imported on first use, so that the math and the
command-line tools can be imported without Axolotl: importing Axolotl imports bitsandbytes,
which asks the Hugging Face Hub for kernels unless offline mode is set before that import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nextquill_common.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from .axolotl.plugin import NextQuillPlugin
    from .config_keys import NextQuillArgs

__all__ = ["NextQuillArgs", "NextQuillPlugin"]
__getattr__ = lazy_exports(
    __name__, {"NextQuillPlugin": ".axolotl.plugin", "NextQuillArgs": ".config_keys"}
)
