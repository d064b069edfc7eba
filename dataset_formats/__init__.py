"""Axolotl dataset types for NextQuill (``type: dataset_formats.amazon_reviews`` / ``.paired``)
and the Amazon Reviews 2023 builder (``nextquill-data``)."""
