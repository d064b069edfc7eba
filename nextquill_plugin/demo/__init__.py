"""The end-to-end demo (`nextquill demo`, `make demo`) and the stand-in theta_0 it runs on: the
shipped checkpoint (``theta0_model/``), the one command that retrains it
(`python -m nextquill_plugin.demo.theta0`), the tiny local models and offline `axolotl` runs
they use. Shipped in the wheel so that a user can run both commands; the tests and the
benchmarks reuse these helpers rather than keep a second copy. Not needed to train with the
plugin.

Importing this package makes the process offline (``nextquill_common.offline``): everything here
runs on local files, and transformers, huggingface_hub and Axolotl read those settings when they
are imported, which the demo's modules do at their top.
"""

from nextquill_common.offline import use_offline_mode

use_offline_mode()
