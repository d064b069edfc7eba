"""The data contract between NextQuill's dataset types (producers) and the plugin (consumer).

A tokenized NextQuill row holds Axolotl's usual ``input_ids``, ``attention_mask`` and ``labels``
(the prompt *with* the user's history), plus:

- ``cf_input_ids`` / ``cf_labels``: the counterfactual prompt (history replaced by a
  placeholder) followed by the *same* target tokens; empty lists when the row has no causal
  contrast (its history had to be dropped entirely to fit ``sequence_len``).
- ``nq_history_kept`` / ``nq_truncation`` / ``nq_prompt_settings`` / ``nq_data_source``:
  book-keeping (history entries shown; bit flags of what was shortened, see
  ``prompting.describe_truncation``; the fingerprint of the prompt settings, so that prepared
  data made by another recipe is caught; the identity of the data file the row came from, so
  that prepared rows of a file that has changed since are caught). Never passed to the model.

The collator adds ``cf_attention_mask`` and ``has_counterfactual`` (per-row bool); the plugin's
theta_0 pass adds ``nq_token_effects`` (the causal effect of the history on each target token
under theta_0, eq. 4; the objective turns them into weights omega_t, eq. 3). Labels are
``IGNORE_INDEX`` on prompt and padding positions.

Both packages import these names from here: the data side never imports the plugin.
"""

from __future__ import annotations

IGNORE_INDEX = -100  # label of positions that are not target tokens (PyTorch's ignore_index)

COUNTERFACTUAL_IDS = "cf_input_ids"
COUNTERFACTUAL_LABELS = "cf_labels"
COUNTERFACTUAL_MASK = "cf_attention_mask"  # added by the collator
HAS_COUNTERFACTUAL = "has_counterfactual"  # added by the collator
TOKEN_EFFECTS = "nq_token_effects"  # added by the theta_0 pass
HISTORY_KEPT = "nq_history_kept"
TRUNCATION = "nq_truncation"
PROMPT_SETTINGS = "nq_prompt_settings"  # fingerprint of the prompt settings that made the row
DATA_SOURCE = "nq_data_source"  # the data file the row came from: path, size, content digest

# Columns a dataset type emits besides input_ids/attention_mask/labels.
PAIRED_COLUMNS = (COUNTERFACTUAL_IDS, COUNTERFACTUAL_LABELS)
INFO_COLUMNS = (HISTORY_KEPT, TRUNCATION, PROMPT_SETTINGS, DATA_SOURCE)
# Row columns NextQuill adds to a dataset: the trainer keeps them (remove_unused_columns would
# drop what forward() does not take) and the collator takes them out before Axolotl's collator.
ROW_COLUMNS = (*PAIRED_COLUMNS, TOKEN_EFFECTS, *INFO_COLUMNS)
# Keys of a collated batch that are NextQuill's, never model inputs.
BATCH_COLUMNS = (*ROW_COLUMNS, COUNTERFACTUAL_MASK, HAS_COUNTERFACTUAL)
# The token columns that identify the data the theta_0 effects were computed on.
EFFECT_INPUT_COLUMNS = ("input_ids", "labels", *PAIRED_COLUMNS)
