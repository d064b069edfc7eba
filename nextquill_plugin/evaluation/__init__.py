"""After training: generate and score (``evaluate``), tabulate (``compare``), and look at which
tokens carry the user's preference under a model (``inspection``). Not imported by training."""
