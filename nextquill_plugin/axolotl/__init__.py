"""NextQuill under Axolotl: the plugin's hooks (``plugin.py``), the training arguments it adds
(``args.py``), the trainer (``trainer.py``) and collator (``collator.py``), the `nextquill weights`
pass as Axolotl prepares a run (``weights.py``), and ``axolotl nextquill`` (``command.py``).

Recipes name the plugin ``nextquill_plugin.NextQuillPlugin`` (the package exports it lazily), so
importing the top-level package does not import Axolotl.
"""
