"""Known harmless messages that libraries print on import, kept off our commands' stderr."""

from __future__ import annotations

import logging
import re
import warnings

# (logger, level) pairs and warning texts that mean nothing to our users. Silenced in our
# commands only, before anything imports those libraries.
QUIET_LOGGERS = {
    "torchao": logging.ERROR,  # its CUDA-only kernels, on a machine without them
    "torch.utils._pytree": logging.ERROR,  # a deprecation inside torchao
    "bitsandbytes.backends.cpu.ops": logging.ERROR,  # CPU kernels from the Hub, when offline
}
QUIET_WARNINGS = (
    "Skipping publisher trust check",  # bitsandbytes, in offline mode
    "You are importing from 'trl.experimental'",  # Axolotl's own imports
)


def quiet_library_noise() -> None:
    """Keep the known harmless import-time messages of torchao, torch, bitsandbytes and trl off
    our commands' stderr; every other warning still shows."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for text in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(text))
